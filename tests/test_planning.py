"""The memory plan: its arithmetic against hand-computed bytes, its refusals, and the
command line's ``--dry-run`` (exit codes, one line, nothing written, no data read)."""

from __future__ import annotations

import os
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
    assert "--covariance ppca|fa --rank q (low-rank kinds)" in line and "--tiles T" in line
    assert "--covariance diag (~" in line  # diagonal statistics fit
    assert f"workers of at least {need / 0.8 / GiB:.1f} GiB" in line
    with pytest.raises(MemoryPlanError, match="memory plan: fit of a gaussian"):
        plan.check()


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
    assert "--covariance ppca|fa --rank q (low-rank kinds)" in lines[0] and "--tiles T" in lines[0]
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
