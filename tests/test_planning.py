"""The memory plan: its arithmetic against hand-computed bytes, its refusals, and the
command line's ``--dry-run`` (exit codes, one line, nothing written, no data read)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from daskgen.cli import main
from daskgen.models import registry
from daskgen.models.memory import Workload
from daskgen.planning import (
    CLIENT_BASELINE,
    WORKER_BASELINE,
    MemoryPlanError,
    Resources,
    cluster_resources,
    local_resources,
    make_plan,
)

GiB = 2**30


def on(workers=1, threads=1, memory=2 * GiB, machine=24 * GiB, in_process=False) -> Resources:
    return Resources(workers, threads, memory, machine, in_process, True, "a test cluster", 0.8)


# ---------------------------------------------------------------------------- arithmetic
def test_gaussian_fit_in_copies_of_the_statistic():
    K, D = 10, 4096
    U = K * D * D * 8
    assert U == 1_342_177_280  # 1.25 GiB: one statistic
    plan = registry.get("gaussian").memory_plan(K, D, Workload("fit", threads=2, block_rows=1000, itemsize=1))
    assert list(plan) == ["statistics", "to_class_stats", "finalize", "write"]
    # statistics: 1 per running task = 2 statistics; each task's block: 1,000 rows of
    # 4,096 uint8 values plus 0.75 float64 copies (float32 rows): 7 bytes a value
    assert plan["statistics"].worker == 2 * U + 2 * 1000 * 4096 * 7 == 2_741_698_560
    C = D * D * 8  # one class's D x D
    # the client's total, filled class by class (two D x D received at a time)
    assert plan["statistics"].client == U + 2 * C
    # the sums turned into the scatter in place, and four D x D buffers
    assert plan["to_class_stats"].client == U + 4 * C == 1_879_048_192 and plan["to_class_stats"].worker == 0
    assert plan["finalize"].client == U + 2 * C  # covariances derived class by class
    # the scatter, and up to ten chunks in zarr's buffers: every class here; two D x D per Cholesky task
    assert plan["write"].client == U + 10 * C == 2 * U and plan["write"].worker == 2 * 2 * C
    few = registry.get("gaussian").memory_plan(4, D, Workload("fit", threads=2, block_rows=1000))
    assert few["write"].client == 4 * C + 4 * C  # four classes: four chunks at most
    # one worker in the client's process: each lane folds into its own total, nothing is received
    lanes = registry.get("gaussian").memory_plan(K, D, Workload("fit", threads=2, block_rows=1000, in_process=True))
    assert lanes["statistics"].worker == 2 * U + 2 * 1000 * 4096 * 7
    assert "2 x statistic (K·D²·8 = 1.25 GiB)" in plan["statistics"].dominant


def test_float_data_merge_by_a_tree_of_split_every():
    K, D = 3, 100
    U = K * D * D * 8
    plan = registry.get("gaussian").memory_plan(
        K, D, Workload("fit", threads=2, block_rows=10, itemsize=8, exact=False, split_every=4))
    # a merge holds split_every statistics and its total; one more per running task;
    # a block: 10 rows of float64 values and 1.5 float64 copies (20 bytes a value)
    assert plan["statistics"].worker == (4 + 1 + 2) * U + 2 * 10 * 100 * 20
    assert "to_class_stats" not in plan


def test_diagonal_and_mixture_units():
    diag = registry.get("gaussian").memory_plan(10, 4096, Workload("fit", covariance="diag", threads=1,
                                                                   block_rows=1000, exact=False))
    assert diag["finalize"].client == (1 + 2 / 10) * 10 * 4096 * 8  # K·D·8 per copy, D·8 per class
    K, M, D = 4, 3, 200
    U = K * M * D * D * 8
    mix = registry.get("mixture").memory_plan(K, D, Workload("evaluate", components=M, threads=1, block_rows=50,
                                                             itemsize=1))
    assert mix["factor"].client == 2 * U
    assert mix["score"].worker == 1 * U + 50 * 200 * (1 + 4 * 8)


def test_sample_draw_holds_the_sampler_and_its_chunks():
    K, D = 10, 1024
    U = K * D * D * 8
    C = D * D * 8
    plan = registry.get("gaussian").memory_plan(K, D, Workload("sample", threads=2, n=5000, chunk_size=10_000))
    # the sampler (float32 factors, assembled: one statistic), three D x D per factoring
    # task; float32 draws: 1.5 float64 copies of a chunk (5,000 rows: n < chunk)
    assert plan["draw"].worker == U + 2 * 3 * C + 2 * 5000 * 1024 * 12
    assert plan["draw"].client == 0 and plan["load"].total == 0
    few = registry.get("gaussian").memory_plan(2, D, Workload("sample", threads=2, n=10, chunk_size=10))
    assert few["draw"].worker == 2 * C + 2 * C + 2 * 10 * 1024 * 12  # at most one array per class


def test_process_peaks_add_the_baselines_and_share_a_process_in_process():
    stages = registry.get("gaussian").memory_plan(10, 1024, Workload("fit", threads=2, block_rows=100))
    U = 10 * 1024 * 1024 * 8
    separate = make_plan("gaussian", 10, 1024, [Workload("fit", block_rows=100)], on(threads=2, memory=64 * GiB))
    s = separate.stages["fit/statistics"]
    assert separate.worker_peak(s) == stages["statistics"].worker + WORKER_BASELINE
    assert separate.client_peak(separate.stages["fit/finalize"]) == U + 2 * U // 10 + CLIENT_BASELINE
    shared = make_plan("gaussian", 10, 1024, [Workload("fit", block_rows=100)],
                       on(threads=2, memory=64 * GiB, in_process=True))
    lanes = registry.get("gaussian").memory_plan(10, 1024, Workload("fit", threads=2, block_rows=100, in_process=True))
    assert shared.worker_peak(shared.stages["fit/statistics"]) == lanes["statistics"].worker + CLIENT_BASELINE
    assert lanes["statistics"].worker == stages["statistics"].worker  # no worker receives a total either way
    assert shared.fits and separate.fits
    # a worker in the client's process shares what the client holds (here: a mixture's
    # precision factors, shipped to its E-step tasks)
    em = make_plan("mixture", 10, 1024, [Workload("fit", components=1, block_rows=100, rows=0, split_every=2)],
                   on(threads=1, in_process=True)).stages["fit/em"]
    assert em.shared == U and em.total == em.worker + em.client - U


def test_d16384_on_a_2gib_worker_is_refused_with_what_would_fit():
    plan = make_plan("gaussian", 10, 16_384, [Workload("fit", block_rows=1000)], on(workers=2, memory=2 * GiB))
    assert not plan.fits
    line = plan.refusal()
    assert "\n" not in line
    U = 10 * 16_384**2 * 8  # 20 GiB a statistic
    need = U + 1000 * 16_384 * 7 + WORKER_BASELINE  # one task per worker: its lane's statistic
    assert f"needs ~{need / GiB:.1f} GiB per worker" in line
    assert "1.60 GiB usable (80% of its 2.00 GiB limit)" in line
    # fa's range passes: 2 + 1 + 2 x 8 + 1 sketches of K·D·(q + 10)·8, a block of 1,000 rows
    # (1 + 2/K x 8 bytes a value)
    fa = (20 * 10 * 16_384 * (32 + 10) * 8) + int(1000 * 16_384 * 2.6) + WORKER_BASELINE
    assert fa <= 0.8 * 2 * GiB < 20 * 10 * 16_384 * (64 + 10) * 8  # rank 32 fits, 64 does not
    assert f"--covariance ppca|fa --rank 32 (~{fa / GiB:.2f} GiB)" in line and "--tiles T" in line
    assert "--covariance diag (~" in line  # diagonal statistics fit
    assert f"workers of at least {need / 0.8 / GiB:.1f} GiB" in line
    with pytest.raises(MemoryPlanError, match="memory plan: fit of a gaussian"):
        plan.check()


def test_low_rank_fit_in_copies_of_one_sketch():
    K, D, q, ell = 10, 65_536, 64, 74  # ell = rank + the default oversampling
    U = K * D * ell * 8  # every class's (D, ell) sketch: 0.36 GiB
    assert U == 387_973_120
    for kind, workspace in (("ppca", 1), ("fa", 8)):
        plan = registry.get(kind).memory_plan(K, D, Workload("fit", covariance=kind, rank=q, threads=2,
                                                             block_rows=256, split_every=8))
        assert list(plan) == ["sketch", "range", "factor"]
        # a block: 256 rows as read (uint8) and one class's rows at a time in float64 (twice 1/K of them)
        block = 256 * D * (1 + 2 / K * 8)
        # sketch: the merge's total, 8 partials of its own and 8 of the next merge, one per running
        # task, and each task's regenerated Omega (one class's share)
        assert plan["sketch"].worker == int((1 + 2 * 8 + 2 + 2 / K) * U) + 2 * int(block)
        assert plan["sketch"].client == 3 * U  # the merged sketch received (frames and array) and its Q
        # range: Q received (frames and array), the total, 2 x 8 partials, one per task
        assert plan["range"].worker == int((2 + 1 + 2 * 8 + 2) * U) + 2 * int(block) and plan["range"].shared == U
        assert plan["range"].client == 5 * U  # Q, S·Q received (frames and array), the products, the next Q
        assert plan["factor"].client == int((4 + workspace / K) * U) and plan["factor"].worker == 0
        assert "sketch (K·D·ℓ·8, ℓ = 74: 0.36 GiB)" in plan["sketch"].dominant
        assert all(max(s.worker, s.client) < D * D * 8 for s in plan.values())  # less than one D x D
    # 10 blocks, fan-in 2, two workers (the measured run of benchmarks/memory.py): 2 x 2 partials
    few = registry.get("ppca").memory_plan(K, D, Workload("fit", covariance="ppca", rank=q, rows=10_000,
                                                          block_rows=1024, split_every=2))
    assert few["range"].worker == int((2 + 1 + 4 + 1) * U) + int(1024 * D * 2.6)
    # 3 blocks, fan-in 8 (N = 30,000 in blocks of 10,000): 3 partials a merge; Q in the process once
    lanes = registry.get("ppca").memory_plan(K, D, Workload("fit", covariance="ppca", rank=q, rows=30_000,
                                                            block_rows=10_000, in_process=True))
    assert lanes["range"].worker == int((1 + 1 + 6 + 1) * U) + int(10_000 * D * 2.6)
    V = K * D * q * 8  # sample and evaluate: the loadings
    ev = registry.get("ppca").memory_plan(K, D, Workload("evaluate", covariance="ppca", rank=q, threads=1,
                                                         block_rows=100))
    assert ev["score"].worker == V + 100 * D * (1 + 4 * 8) and ev["score"].client == 2 * V


def test_mfa_units_are_per_class_and_component_statistics():
    K, M, D, q = 10, 5, 784, 16
    U = K * M * D * (q + 10) * 8  # the initial pass's sketches: l = q + 10 columns
    rows, per_worker = 60_000, 60_000 * 784 // 2  # the persisted uint8 rows, over 2 workers
    plan = registry.get("mfa").memory_plan(K, D, Workload("fit", covariance="ppca", components=M, rank=q, threads=1,
                                                          workers=2, block_rows=1000, rows=rows, split_every=4))
    assert plan["em"].worker == (4 + 2 + 1) * U + 1000 * D * (1 + 1.5 * 8) + per_worker
    assert plan["em"].client == 4 * U + 2 * rows * D * 8  # parameters x 4, the initial sample (6,000 a class) x 2
    V = K * M * D * q * 8
    s = registry.get("mfa").memory_plan(K, D, Workload("sample", covariance="ppca", components=M, rank=q))
    assert s["factor"].client == int(2.5 * V)


def test_fit_kind_of_several_low_rank_components_is_mfa():
    from daskgen.planning import fit_kind

    assert fit_kind("ppca", 4) == "mfa" and fit_kind("fa", 1) == "fa" and fit_kind("full", 3) == "mixture"
    # a refused full mixture suggests the rank whose mixture of low-rank Gaussians fits
    w = Workload("fit", components=4, rows=20_000, block_rows=1000)
    plan = make_plan("mixture", 10, 16_384, [w], on(workers=2, memory=4 * GiB))
    q = int(plan.refusal().split("--covariance ppca|fa --rank ")[1].split()[0])
    assert make_plan("mfa", 10, 16_384, [replace(w, covariance="fa", rank=q)], on(workers=2, memory=4 * GiB)).fits
    assert not make_plan("mfa", 10, 16_384, [replace(w, covariance="fa", rank=2 * q)],
                         on(workers=2, memory=4 * GiB)).fits


def test_tiled_fit_holds_tiles_never_a_class_matrix():
    K, D, T = 10, 4096, 1024
    U = K * T * T * 8  # one tile of every class: 80 MiB
    plan = registry.get("gaussian").memory_plan(K, D, Workload("fit", tiles=T, threads=2, block_rows=1000,
                                                               split_every=8))
    assert list(plan) == ["moments", "scatter", "cholesky"]
    # scatter: per running task its (K, T, T) total and a block's part, plus one class's
    # mirrored tile per task; a block as read and two float32 spans of T columns
    assert plan["scatter"].worker == int((2 * 2 + 2 / K) * U) + 2 * int(1000 * D * (1 + 2 * T / D * 8))
    assert plan["scatter"].client == 0
    assert plan["cholesky"].worker == int(min(5 * 2, K) / K * U)  # five tiles of one class per task
    assert plan["moments"].client == int(2 * D / T**2 * U) == 2 * K * D * 8
    ev = registry.get("gaussian").memory_plan(K, D, Workload("evaluate", tiles=T, threads=1, block_rows=100))
    assert ev["score"].worker == int(U / K) + 100 * D * 33  # one tile and the block's deviations
    assert registry.get("gaussian").memory_plan(K, D, Workload("fit", threads=1))["write"].client > 10 * U


def test_d65536_low_rank_fits_where_full_is_refused(tmp_path):
    data = unreadable_zarr(tmp_path / "wide.zarr", 20, 256)  # D = 65,536: its metadata only
    out = tmp_path / "m.zarr"
    limit = ["--memory-limit", "8GiB", "--workers", "2", "--threads-per-worker", "1"]
    full = invoke(["fit", data, "--out", str(out), *limit])
    assert full.exit_code == 2 and "D=65,536" in full.output and not out.exists()
    suggested = int(full.output.split("--covariance ppca|fa --rank ")[1].split()[0])
    low = invoke(["fit", data, "--out", str(out), "--covariance", "ppca", "--rank", "64", "--dry-run", *limit])
    assert low.exit_code == 0, low.output
    assert "fit/sketch" in low.output and "fits: peak" in low.output and not out.exists()
    # the suggestion is a rank whose plan fits (fa's, the larger), and twice it does not
    on8 = on(workers=2, threads=1, memory=8 * GiB)
    w = Workload("fit", rows=20, block_rows=10)  # the synthetic input: 20 rows in blocks of 10
    assert make_plan("fa", 10, 65_536, [replace(w, covariance="fa", rank=suggested)], on8).fits
    assert not make_plan("fa", 10, 65_536, [replace(w, covariance="fa", rank=2 * suggested)], on8).fits


def test_the_plan_counts_the_oversampling_the_command_asks_for(tmp_path):
    """``--oversampling`` widens every sketch (ℓ = q + oversampling columns): the plan the
    command prints grows with it, and a width that does not fit is refused before reading."""
    data = unreadable_zarr(tmp_path / "wide.zarr", 20, 256)  # D = 65,536: its metadata only
    out = tmp_path / "m.zarr"
    limit = ["--memory-limit", "8GiB", "--workers", "2", "--threads-per-worker", "1"]
    base = ["fit", data, "--out", str(out), "--covariance", "ppca", "--rank", "64", *limit]

    def peak(output: str) -> float:
        return float(output.split("fits: peak ~")[1].split()[0])

    narrow = invoke([*base, "--dry-run"])
    wide = invoke([*base, "--oversampling", "100", "--dry-run"])
    assert narrow.exit_code == 0 and wide.exit_code == 0, wide.output
    assert peak(wide.output) > 1.8 * peak(narrow.output)  # ℓ = 164 columns instead of 74
    huge = invoke([*base, "--oversampling", "6000"])
    assert huge.exit_code == 2 and "D=65,536" in huge.output and not out.exists()


def test_the_client_counts_against_the_machine():
    plan = make_plan("gaussian", 10, 4096, [Workload("fit")], on(memory=None, machine=2 * GiB))
    assert not plan.fits and "on this machine" in plan.refusal() and "2.00 GiB" in plan.refusal()


def test_local_resources_follow_the_options():
    r = local_resources(workers=2, threads_per_worker=1, memory_limit="3GiB")
    assert (r.workers, r.threads, r.worker_memory, r.in_process) == (2, 1, 3 * GiB, False)
    default = local_resources()
    assert default.in_process and default.workers == 1 and default.worker_memory <= default.machine


# ---------------------------------------------------------------------------- the command line
def unreadable_zarr(path: Path, n: int, side: int, classes: int = 10) -> str:
    """A uint8 Zarr dataset whose images cannot be read: every chunk file is garbage."""
    from daskgen.datasets import write_zarr_dataset

    rng = np.random.default_rng(0)
    write_zarr_dataset(str(path), rng.integers(0, 256, (n, side, side), dtype=np.uint8),
                       np.arange(n) % classes, chunk_rows=max(n // 2, 1))
    chunks = [p for p in (path / "images").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for p in chunks:
        p.write_bytes(b"not a chunk")
    with pytest.raises(Exception):  # noqa: B017 - whatever zarr's codec raises
        zarr.open_group(str(path), mode="r")["images"][...]
    return str(path)


def invoke(args):
    return CliRunner().invoke(main, args)


def test_dry_run_plans_without_reading_the_images(tmp_path):
    data = unreadable_zarr(tmp_path / "d.zarr", 40, 16)
    out = tmp_path / "m.zarr"
    r = invoke(["fit", data, "--out", str(out), "--dry-run", "--memory-limit", "4GiB"])
    assert r.exit_code == 0, r.output
    assert "K=10 classes, D=256 features" in r.output and "fit/statistics" in r.output and "fits: peak" in r.output
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["d.zarr"]


def test_a_fit_that_does_not_fit_stops_in_one_line_before_reading(tmp_path):
    data = unreadable_zarr(tmp_path / "wide.zarr", 20, 128)  # D = 16,384, K = 10
    out = tmp_path / "m.zarr"
    r = invoke(["fit", data, "--out", str(out), "--memory-limit", "2GiB", "--workers", "2"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskgen: error: memory plan: fit of a gaussian (full), K=10, "
                                                   "D=16,384 needs ~")
    assert "--covariance ppca|fa --rank " in lines[0] and "--tiles T" in lines[0]
    assert not out.exists()
    dry = invoke(["fit", data, "--out", str(out), "--memory-limit", "2GiB", "--workers", "2", "--dry-run"])
    assert dry.exit_code == 2 and "fit/statistics" in dry.output
    assert dry.output.strip().splitlines()[-1] == lines[0]  # the table, then the same line
    assert not out.exists()


@pytest.fixture
def stored_model(tmp_path, digits):
    """A small full-covariance model whose covariance chunks are then made unreadable."""
    from daskgen import GaussianClassifier

    X, y = digits
    path = tmp_path / "model.zarr"
    GaussianClassifier(scale=1 / 16).fit(X[:300], y[:300]).model_.save(str(path))
    for name in ("covariances", "scatter"):
        for p in (path / name).rglob("*"):
            if p.is_file() and p.name != "zarr.json":
                p.write_bytes(b"not a chunk")
    return str(path)


def test_sample_and_evaluate_plan_from_the_model_metadata(tmp_path, stored_model):
    out = tmp_path / "s.zarr"
    r = invoke(["sample", stored_model, "--out", str(out), "--n", "1000", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "K=10 classes, D=64 features" in r.output and "sample/draw" in r.output and not out.exists()
    data = unreadable_zarr(tmp_path / "test.zarr", 40, 8)
    r = invoke(["evaluate", stored_model, data, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "evaluate/score" in r.output
    r = invoke(["sample", stored_model, "--out", str(out), "--n", "1000", "--memory-limit", "1MiB"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "memory plan: sample" in r.output
    assert not out.exists()


def test_a_stored_low_rank_model_plans_in_its_own_rank(tmp_path, digits):
    from daskgen import GaussianClassifier

    X, y = digits
    path = tmp_path / "ppca.zarr"
    GaussianClassifier(covariance="ppca", rank=4, reg_covar=0.01, scale=1 / 16).fit(X[:300], y[:300]).model_.save(
        str(path))
    r = invoke(["sample", str(path), "--out", str(tmp_path / "s.zarr"), "--n", "100", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "fit of" not in r.output and "loadings (K·D·q·8, q = 4: " in r.output and "sample/draw" in r.output


def test_run_dry_run_plans_fit_and_sample(tmp_path):
    data = unreadable_zarr(tmp_path / "d.zarr", 40, 16)
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{data}]\nout: {tmp_path / 'run'}\nsample: {{n: 500}}\n")
    r = invoke(["run", str(job), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "fit and sample of a gaussian (full) model" in r.output and "sample/draw" in r.output
    assert not (tmp_path / "run").exists()


def test_a_scheduler_reports_its_workers_memory(cluster):
    r = cluster_resources(scheduler=cluster.scheduler_address)
    assert (r.workers, r.threads, r.worker_memory, r.in_process, r.local) == (2, 1, 3 * GiB, False, False)


def test_a_sample_refusal_names_a_chunk_size_that_fits_and_no_refit():
    work = [Workload("sample", n=400_000, chunk_size=400_000, dtype="float64")]
    plan = make_plan("gaussian", 10, 196, work, on(workers=2, memory=400 * 10**6))
    assert not plan.fits
    (suggested,) = [a for a in plan.alternatives if a.startswith("--chunk-size ")]
    size = int(suggested.split()[1])
    assert make_plan("gaussian", 10, 196, [replace(work[0], chunk_size=size)], on(workers=2, memory=400 * 10**6)).fits
    assert not make_plan("gaussian", 10, 196, [replace(work[0], chunk_size=2 * size)],
                         on(workers=2, memory=400 * 10**6)).fits
    assert not any(a.startswith(("--covariance", "--tiles")) for a in plan.alternatives)  # sample does not refit


def test_ignore_plan_warns_and_goes_on(tmp_path):
    from daskgen.planning import enforce

    plan = make_plan("gaussian", 10, 16_384, [Workload("fit")], on(memory=2 * GiB))
    warnings: list[str] = []
    assert enforce(plan, False, warn=warnings.append) is False  # the command goes on
    assert len(warnings) == 1 and warnings[0].startswith("daskgen: warning: memory plan: fit")
    with pytest.raises(Exception, match="memory plan: fit"):
        enforce(plan, False)
