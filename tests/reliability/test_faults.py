"""Faults on a real cluster (a ``dask scheduler`` and 2 ``dask worker`` processes on
127.0.0.1): a worker SIGKILLed mid-fit and mid-generation, every worker at once, the
job's own process killed, a task that kills every worker it runs on, a writer killed
mid-chunk, and the scheduler lost (not survived: the run fails and a rerun resumes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from _cluster import snapshot, wait_until
from _helpers import store_bytes

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.kernels.class_stats import chunk_stats
from daskgen.models.gaussian import GaussianClassModel

N_FIT_ROWS, FIT_CHUNK_ROWS = 9600, 300  # 32 chunk-stats tasks, each result 10 x 784 x 784 float64
N_SAMPLES, SAMPLE_CHUNK = 60_000, 400  # 150 generate + write tasks


@pytest.fixture(scope="module")
def fashion_store(fashion_small, tmp_path_factory):
    X, y = fashion_small
    path = tmp_path_factory.mktemp("faults-data") / "fashion.zarr"
    write_zarr_dataset(str(path), X[:N_FIT_ROWS], y[:N_FIT_ROWS], chunk_rows=FIT_CHUNK_ROWS)
    return str(path)


@pytest.fixture(scope="module")
def fashion_model(fashion_small, tmp_path_factory):
    """A model of Fashion-MNIST at 14 x 14 (2 x 2 means): D = 196 keeps generation quick."""
    X, y = fashion_small
    X = np.rint(X.reshape(len(X), 14, 2, 14, 2).mean(axis=(2, 4))).astype(np.uint8)
    stats = chunk_stats(X.reshape(len(X), -1), y, scale=1 / 255)
    model = GaussianClassModel.from_stats(stats, image_shape=(14, 14), scale=1 / 255)
    path = tmp_path_factory.mktemp("faults-model") / "model.zarr"
    model.save(str(path))
    return str(path)


def completed(cluster, prefix: str) -> int:
    """How many times a task of ``prefix`` (e.g. 'chunk-stats') reached memory on the scheduler."""

    def count(dask_scheduler, prefix=prefix):
        tp = dask_scheduler.task_prefixes.get(prefix)
        return 0 if tp is None else int(tp.state_counts["memory"])

    return cluster.client.run_on_scheduler(count)


def done_chunks(out: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(out), mode="r")["done"][...]).sum())
    except Exception:  # not created yet
        return 0


def partials(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*.partial"))


def wait_for_idle(cluster, timeout: float = 60) -> None:
    """Until no worker executes a task: a task running when its client died is released by
    the scheduler but finishes on its worker (and writes its chunk)."""

    def executing(dask_worker):
        return len(dask_worker.state.executing) + len(dask_worker.state.long_running)

    wait_until(lambda: not any(cluster.client.run(executing).values()), timeout, "idle workers", interval=0.2)


def kill_every_worker(cluster) -> None:
    """SIGKILL both worker processes at once (a host's workers restarting); nannies start new ones."""
    for pid in cluster.worker_pids().values():
        os.kill(pid, signal.SIGKILL)


def run_losing_every_worker(cluster, args: tuple, out: Path, clean: Path, prefix: str, n_blocks: int,
                            after: int = 4) -> None:
    """``daskgen ARGS --out OUT`` with every worker SIGKILLed once ``after`` of its ``n_blocks``
    tasks of ``prefix`` are done, then a clean run to ``clean``: both must succeed."""
    proc = cluster.popen(*args, "--out", out, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_until(lambda: (n := completed(cluster, prefix)) >= after and n, 240, f"{after} {prefix} tasks done")
        kill_every_worker(cluster)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert seen < n_blocks - after, f"{prefix} was not interrupted mid-way ({seen} of {n_blocks} blocks)"
    assert proc.returncode == 0, err[-3000:]
    p = cluster.daskgen(*args, "--out", clean)
    assert p.returncode == 0, p.stderr[-3000:]


# ---------------------------------------------------------------------------- fit
@pytest.mark.slow
def test_worker_killed_mid_fit_completes_with_the_clean_model(start_cluster, fashion_store, tmp_path):
    """A worker SIGKILLed while chunk statistics are being computed (no nanny: it stays dead).

    The other worker recomputes what was lost; the model is bit-identical to a clean
    fit's, because the reduction tree (and the order of every merge) is fixed by the
    block list, not by which worker ran what.
    """
    cluster = start_cluster(nanny=False)
    n_blocks = N_FIT_ROWS // FIT_CHUNK_ROWS
    out = tmp_path / "killed.zarr"
    proc = cluster.popen("fit", fashion_store, "--out", out, "--blocksize", "1MiB", stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_until(lambda: (n := completed(cluster, "chunk-stats")) >= 6 and n, 120, "6 chunk-stats tasks done")
        victim, _ = cluster.kill_worker()
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert seen < n_blocks - 6, f"the fit was not interrupted mid-way ({seen} of {n_blocks} blocks done)"
    assert proc.returncode == 0, err
    assert victim not in cluster.workers() and len(cluster.workers()) == 1  # finished on the survivor
    clean = daskgen.fit(fashion_store, blocksize=2**20)  # the same graph, on Dask's local scheduler
    killed = daskgen.load_model(str(out))
    assert killed.fingerprint == clean.fingerprint
    for name in ("counts", "means", "covariances"):
        np.testing.assert_array_equal(getattr(killed, name), getattr(clean, name))
    np.testing.assert_array_equal(killed.stats.scatter, clean.stats.scatter)


# ---------------------------------------------------------------------------- generation
@pytest.mark.slow
def test_worker_killed_mid_generation_gives_byte_identical_samples(start_cluster, fashion_model, tmp_path):
    """A worker SIGKILLed while chunks are being written; its nanny starts a new one."""
    cluster = start_cluster(nanny=True)
    args = ("sample", fashion_model, "--n", N_SAMPLES, "--chunk-size", SAMPLE_CHUNK, "--seed", 7)
    n_chunks = N_SAMPLES // SAMPLE_CHUNK
    out = tmp_path / "killed.zarr"
    proc = cluster.popen(*args, "--out", out, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_until(lambda: (n := done_chunks(out)) >= 10 and n, 120, "10 chunks written")
        _, pid = cluster.kill_worker()
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert seen < n_chunks - 10, f"generation was not interrupted mid-way ({seen} of {n_chunks} chunks)"
    assert proc.returncode == 0, err
    cluster.wait_for_workers(2)
    assert pid not in cluster.worker_pids().values()  # the worker really died and was replaced
    clean = tmp_path / "clean.zarr"
    p = cluster.daskgen(*args, "--out", clean)
    assert p.returncode == 0, p.stderr
    assert partials(out) == []  # a writer killed mid-chunk leaves nothing behind in a finished store
    assert store_bytes(out) == store_bytes(clean)


@pytest.mark.slow
def test_job_killed_mid_generation_resumes_on_the_external_scheduler(start_cluster, fashion_model, tmp_path):
    """``daskgen sample --scheduler-file`` SIGKILLed, rerun: it writes exactly the chunks not
    marked done, the store is byte-identical to a clean run's, and a third run writes nothing."""
    cluster = start_cluster(nanny=True)
    args = ("sample", fashion_model, "--n", N_SAMPLES, "--chunk-size", SAMPLE_CHUNK, "--seed", 3, "--dtype", "uint8")
    n_chunks = N_SAMPLES // SAMPLE_CHUNK
    out = tmp_path / "killed.zarr"
    proc = cluster.popen(*args, "--out", out)
    try:
        wait_until(lambda: done_chunks(out) >= 10, 120, "10 chunks written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    wait_for_idle(cluster)  # tasks already running when the client died finish on their own
    before = done_chunks(out)
    assert 10 <= before < n_chunks - 10, f"the job was not interrupted mid-way ({before} of {n_chunks} chunks)"
    assert not dict(zarr.open_group(str(out), mode="r").attrs)["daskgen"]["complete"]
    rerun = cluster.daskgen(*args, "--out", out, quiet=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: wrote {n_chunks - before} of {n_chunks} chunks" in rerun.stderr  # only what was missing
    clean = tmp_path / "clean.zarr"
    p = cluster.daskgen(*args, "--out", clean)
    assert p.returncode == 0, p.stderr
    assert store_bytes(out) == store_bytes(clean)
    stamp = snapshot(out)
    third = cluster.daskgen(*args, "--out", out, quiet=False, timeout=120)
    assert third.returncode == 0, third.stderr
    assert f"resumed: wrote 0 of {n_chunks} chunks" in third.stderr
    assert snapshot(out) == stamp  # not a byte, not a modification time


def test_task_that_kills_every_worker_is_a_one_line_error_not_a_hang(start_cluster, fashion_model, tmp_path):
    """A chunk of 400,000 x 196 float64 (630 MB) on workers limited to 400 MB: the nanny
    kills each worker that runs it; after distributed's allowed failures the scheduler
    gives up (KilledWorker) and daskgen exits 1 with one line naming the stage and the
    way out, well within the test's deadline."""
    cluster = start_cluster(nanny=True, memory_limit="400MB")
    out = tmp_path / "s.zarr"
    args = ("sample", fashion_model, "--n", 400_000, "--chunk-size", 400_000, "--dtype", "float64", "--seed", 1,
            "--out", out)
    # The memory plan sees it coming: one line, exit 2, nothing written, a chunk size that fits.
    p = cluster.daskgen(*args, timeout=120)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("daskgen: error: memory plan: sample") and "--chunk-size " in line, line
    assert "--covariance" not in line and "--tiles" not in line  # a fitted model is not refitted by sample
    assert not out.exists()
    # Told to go on anyway, the workers die: distributed gives up and daskgen says so.
    start = time.monotonic()
    p = cluster.daskgen(*args, "--ignore-plan", timeout=180)
    took = time.monotonic() - start
    assert "daskgen: warning: memory plan: sample" in p.stderr
    assert p.returncode == 1, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("daskgen: error: ")]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(errors) == 1, p.stderr[-3000:]
    assert "generate" in errors[0] and "--chunk-size" in errors[0] and "memory" in errors[0]
    assert not dict(zarr.open_group(str(out), mode="r").attrs)["daskgen"]["complete"]
    assert took < 150


def test_writer_killed_mid_chunk_leaves_no_complete_chunk_and_the_rerun_repairs(start_cluster, fashion_model, tmp_path):
    """What a writer killed mid-chunk can leave: a ``*.partial`` file, an images chunk of
    garbage bytes, images written but labels not. None is marked done, so nothing reads
    as complete: ``daskgen fit`` refuses the store. The rerun rewrites exactly those
    chunks (the marked ones keep their files) and the result is byte-identical."""
    cluster = start_cluster(nanny=True)
    args = ("sample", fashion_model, "--n", 20_000, "--chunk-size", 1000, "--seed", 5)
    clean, out = tmp_path / "clean.zarr", tmp_path / "s.zarr"
    assert cluster.daskgen(*args, "--out", clean).returncode == 0
    shutil.copytree(clean, out)
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["daskgen"] = {**dict(g.attrs["daskgen"]), "complete": False}  # as before the last marker
    images = out / "images" / "c"
    g["done"][4] = 0  # killed while compressing: garbage where chunk 4's images go
    (images / "4" / "0" / "0").write_bytes(b"\x28\xb5\x2f\xfd garbage, not a zstd frame")
    g["done"][9] = 0  # killed between the images and the labels
    g["labels"][9000:10000] = 0
    g["done"][13] = 0  # killed mid-write: zarr's temporary file, the chunk itself absent
    (images / "13" / "0" / "0").unlink()
    (images / "13" / "0" / "0.0123456789abcdef.partial").write_bytes(b"half a chunk")
    refused = cluster.daskgen("fit", out, "--out", tmp_path / "m.zarr", timeout=120)
    assert refused.returncode == 2 and "incomplete" in refused.stderr, refused.stderr
    assert not (tmp_path / "m.zarr").exists()
    kept = {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.is_file() and p.parts[-3] not in ("4", "9", "13")}
    rerun = cluster.daskgen(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert partials(out) == []
    assert store_bytes(out) == store_bytes(clean)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # chunks marked done were not rewritten
    assert dict(zarr.open_group(str(out), mode="r").attrs)["daskgen"]["complete"]


@pytest.mark.slow
def test_generation_survives_losing_every_worker_at_once(start_cluster, fashion_model, tmp_path):
    """Both worker processes SIGKILLed mid-generation (a host's workers restarting): the
    nannies start new ones, and the run must go on from what the scheduler still knows.
    Data that lived only on the dead workers (the sampler each task needs) must be
    recomputable from the graph, not lost with them."""
    cluster = start_cluster(nanny=True)
    args = ("sample", fashion_model, "--n", N_SAMPLES, "--chunk-size", SAMPLE_CHUNK, "--seed", 11)
    n_chunks = N_SAMPLES // SAMPLE_CHUNK
    out = tmp_path / "killed.zarr"
    proc = cluster.popen(*args, "--out", out, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_until(lambda: (n := done_chunks(out)) >= 5 and n, 120, "5 chunks written")
        kill_every_worker(cluster)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert seen < n_chunks - 5, f"generation was not interrupted mid-way ({seen} of {n_chunks} chunks)"
    assert proc.returncode == 0, err[-3000:]
    clean = tmp_path / "clean.zarr"
    assert cluster.daskgen(*args, "--out", clean).returncode == 0
    assert store_bytes(out) == store_bytes(clean)


@pytest.mark.slow
def test_em_pass_survives_losing_every_worker_at_once(start_cluster, fashion_store, tmp_path):
    """Both workers SIGKILLed during the first E-step pass of a mixture fit. The pass's
    parameters travel inside its graph (one key), so the new workers recompute them, the
    persisted blocks and the lost statistics from the graph; the fixed tree makes the model
    bit-identical to a clean run's."""
    cluster = start_cluster(nanny=True)
    args = ("fit", fashion_store, "--components", 2, "--max-iter", 2, "--tol", 0, "--reg-covar", 0.01,
            "--blocksize", "1MiB")
    out, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    run_losing_every_worker(cluster, args, out, clean, "em-estep", N_FIT_ROWS // FIT_CHUNK_ROWS)
    killed, fresh = daskgen.load_model(str(out)), daskgen.load_model(str(clean))
    assert killed.fingerprint == fresh.fingerprint
    for name in ("weights", "means", "covariances", "mass"):
        np.testing.assert_array_equal(getattr(killed, name), getattr(fresh, name))
    assert killed.config["em"]["log_likelihood"] == fresh.config["em"]["log_likelihood"]


@pytest.fixture(scope="module")
def fashion_model_784(fashion_small, tmp_path_factory):
    """One Gaussian per class at full size (D = 784): scoring a block takes long enough to be interrupted."""
    X, y = fashion_small
    stats = chunk_stats(X[:N_FIT_ROWS].reshape(N_FIT_ROWS, -1), y[:N_FIT_ROWS], scale=1 / 255)
    model = GaussianClassModel.from_stats(stats, image_shape=(28, 28), scale=1 / 255, reg_covar=1e-2)
    path = tmp_path_factory.mktemp("faults-model-784") / "model.zarr"
    model.save(str(path))
    return str(path)


@pytest.mark.slow
def test_evaluate_survives_losing_every_worker_at_once(start_cluster, fashion_model_784, fashion_store, tmp_path):
    """Both workers SIGKILLed mid-evaluate: the scorer is a key of the graph, not scattered
    data, so the run goes on and reports exactly what a clean run reports."""
    cluster = start_cluster(nanny=True)
    args = ("evaluate", fashion_model_784, fashion_store, "--blocksize", "1MiB", "--seed", 3)
    run_losing_every_worker(cluster, args, tmp_path / "killed", tmp_path / "clean", "evaluate",
                            N_FIT_ROWS // FIT_CHUNK_ROWS)
    killed = json.loads((tmp_path / "killed" / "evaluation.json").read_text())
    clean = json.loads((tmp_path / "clean" / "evaluation.json").read_text())
    assert killed == clean


def test_a_killed_writers_partial_file_is_not_left_in_a_finished_store(fashion_model, tmp_path, monkeypatch):
    """A worker killed while zarr writes a chunk leaves ``<chunk>.<uuid>.partial``; the
    scheduler reruns the task elsewhere and the run finishes without a resume. The
    finished store must not keep the dead writer's file (simulated deterministically:
    the first attempt at chunk 2 leaves one, as a SIGKILL mid-write does)."""
    import dask

    import daskgen.distributed.generation as gen

    model = daskgen.load_model(fashion_model)
    real = gen._write_chunk

    def write_after_a_killed_attempt(url, storage_options, index, start, data):
        if index == 2:
            chunk = Path(url) / "images" / "c" / "2" / "0" / "0"
            chunk.parent.mkdir(parents=True, exist_ok=True)
            chunk.with_suffix(".0123456789abcdef0123456789abcdef.partial").write_bytes(b"half a chunk")
        return real(url, storage_options, index, start, data)

    with dask.config.set(scheduler="synchronous"):
        gen.generate(model, 4000, str(tmp_path / "clean.zarr"), seed=2, chunk_size=500)
        monkeypatch.setattr(gen, "_write_chunk", write_after_a_killed_attempt)
        result = gen.generate(model, 4000, str(tmp_path / "s.zarr"), seed=2, chunk_size=500)
    assert not result.resumed and result.chunks_written == 8
    assert partials(tmp_path / "s.zarr") == []
    assert store_bytes(tmp_path / "s.zarr") == store_bytes(tmp_path / "clean.zarr")


@pytest.mark.slow
def test_scheduler_lost_mid_generation_fails_in_bounded_time_and_a_rerun_resumes(start_cluster, fashion_model, tmp_path):
    """Not survived: the loss of the scheduler ends the run (with an error, not a hang).
    What is promised is the rerun on a new cluster: it resumes, byte-identical."""
    cluster = start_cluster(nanny=True)
    args = ("sample", fashion_model, "--n", N_SAMPLES, "--chunk-size", SAMPLE_CHUNK, "--seed", 13)
    n_chunks = N_SAMPLES // SAMPLE_CHUNK
    out = tmp_path / "lost.zarr"
    proc = cluster.popen(*args, "--out", out, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: done_chunks(out) >= 10, 120, "10 chunks written")
        cluster.kill_scheduler()
        start = time.monotonic()
        _, err = proc.communicate(timeout=150)
        failed_after = time.monotonic() - start
    finally:
        proc.kill()
    print(f"daskgen exited {proc.returncode} {failed_after:.1f}s after the scheduler died")
    assert proc.returncode == 1
    # distributed logs the broken connections above it; daskgen's own word is one line, last
    last = err.strip().splitlines()[-1]
    assert last.startswith("daskgen: error: ") and "scheduler" in last and "rerun" in last, err[-2000:]
    cluster.stop()  # the orphaned workers too
    before = done_chunks(out)
    assert before < n_chunks, "the run was not interrupted"
    second = start_cluster(nanny=True)
    rerun = second.daskgen(*args, "--out", out, quiet=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: wrote {n_chunks - before} of {n_chunks} chunks" in rerun.stderr
    clean = tmp_path / "clean.zarr"
    assert second.daskgen(*args, "--out", clean).returncode == 0
    assert store_bytes(out) == store_bytes(clean)
