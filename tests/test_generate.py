"""Generation: the prior, the class Gaussians, determinism, resumption, the round trip through fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from _helpers import store_bytes
from scipy import stats as sps

import daskgen
from daskgen.distributed.generation import generate
from daskgen.errors import OutputExistsError
from daskgen.kernels.class_stats import chunk_stats
from daskgen.models.gaussian import GaussianClassModel


@pytest.fixture(scope="module")
def digits_model(digits):
    X, y = digits
    return GaussianClassModel.from_stats(chunk_stats(X / 16, y), image_shape=(8, 8), scale=1 / 16)


def read(path):
    g = zarr.open_group(str(path), mode="r")
    return g["images"][...], g["labels"][...], dict(g.attrs)["daskgen"]


def test_classes_follow_the_prior_and_gaussians_match(digits_model, tmp_path, sync_scheduler):
    m = digits_model
    n = 120_000
    generate(m, n, str(tmp_path / "s.zarr"), seed=11, chunk_size=25_000, dtype="float64")
    X, y, meta = read(tmp_path / "s.zarr")
    assert X.shape == (n, 8, 8) and meta["complete"] and meta["seed"] == 11
    counts = np.array([(y == c).sum() for c in m.classes])
    assert sps.chisquare(counts, m.priors * n).pvalue > 1e-3
    X = X.reshape(n, -1)
    for k, c in enumerate(m.classes):
        Xk = X[y == c]
        nk = len(Xk)
        var = np.diagonal(m.covariances[k])
        assert (np.abs(Xk.mean(0) - m.means[k]) <= 5 * np.sqrt(var / nk) + 1e-12).all()
        cov = np.cov(Xk.T)
        sd = np.sqrt((np.outer(var, var) + m.covariances[k] ** 2) / nk)
        assert (np.abs(cov - m.covariances[k]) <= 6 * sd + 1e-12).all()
        # pixels that are always 0 in the data stay exactly 0 (singular covariances)
        const = var == 0
        assert const.any() and (Xk[:, const] == m.means[k][const]).all()


def test_one_class_and_uint8(digits_model, tmp_path, sync_scheduler):
    generate(digits_model, 3000, str(tmp_path / "c.zarr"), seed=1, label=7, dtype="uint8", chunk_size=1000)
    X, y, meta = read(tmp_path / "c.zarr")
    assert set(y.tolist()) == {7} and meta["class"] == "7"
    assert X.dtype == np.uint8 and X.max() == 16  # clipped to the data's range, in pixel units
    generate(digits_model, 3000, str(tmp_path / "f.zarr"), seed=1, label=7, dtype="float64", chunk_size=1000)
    F, _, _ = read(tmp_path / "f.zarr")  # the same draws in model units
    np.testing.assert_array_equal(X, np.rint(np.clip(F * 16, 0, 16)).astype(np.uint8))
    back = daskgen.fit(str(tmp_path / "c.zarr"))  # a uint8 store carries the model's scale
    assert back.scale == digits_model.scale and back.classes.tolist() == [7]


def test_xarray_reads_the_samples_store_with_named_dimensions(digits_model, tmp_path, sync_scheduler):
    xr = pytest.importorskip("xarray")
    generate(digits_model, 500, str(tmp_path / "x.zarr"), seed=2, chunk_size=200)
    ds = xr.open_zarr(str(tmp_path / "x.zarr"), consolidated=False)
    assert ds["images"].dims == ("sample", "y", "x") and ds["labels"].dims == ("sample",)
    assert ds["images"].shape == (500, 8, 8) and ds.attrs["daskgen"]["seed"] == 2
    np.testing.assert_array_equal(ds["labels"].values, read(tmp_path / "x.zarr")[1])


def test_float64_keeps_the_spread_of_offset_data(tmp_path, sync_scheduler):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3)) * 0.01 + 1e6
    m = GaussianClassModel.from_stats(chunk_stats(X, np.zeros(2000, int)))
    generate(m, 20_000, str(tmp_path / "o.zarr"), seed=0, dtype="float64")
    S, _, _ = read(tmp_path / "o.zarr")
    np.testing.assert_allclose(S.std(0), X.std(0), rtol=0.05)


def test_same_bytes_on_one_process_and_on_a_two_process_cluster(digits_model, tmp_path, client):
    import dask

    generate(digits_model, 50_000, str(tmp_path / "a.zarr"), seed=5, chunk_size=4000)
    with dask.config.set(scheduler="synchronous"):
        generate(digits_model, 50_000, str(tmp_path / "b.zarr"), seed=5, chunk_size=4000)
    a, b = store_bytes(tmp_path / "a.zarr"), store_bytes(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and a == b
    with dask.config.set(scheduler="synchronous"):
        generate(digits_model, 50_000, str(tmp_path / "c.zarr"), seed=6, chunk_size=4000)
    assert store_bytes(tmp_path / "c.zarr") != a


def test_resume_writes_only_missing_chunks_and_cleans_partials(digits_model, tmp_path, sync_scheduler):
    out = tmp_path / "r.zarr"
    generate(digits_model, 10_000, str(out), seed=3, chunk_size=1000)
    full = store_bytes(out)
    g = zarr.open_group(str(out), mode="r+")
    g["done"][3] = 0
    g["done"][7] = 0
    g["images"][3000:4000] = 0  # as if the writer died before the marker
    meta = dict(g.attrs["daskgen"])
    g.attrs["daskgen"] = {**meta, "complete": False}
    partial = out / "images" / "c" / "7" / "0" / "0.deadbeef.partial"
    partial.write_bytes(b"half a chunk")
    r = generate(digits_model, 10_000, str(out), seed=None, chunk_size=1000)  # the stored seed is reused
    assert r.resumed and r.chunks_written == 2 and r.seed == 3
    assert not partial.exists()
    assert store_bytes(out) == full


def test_a_store_begun_by_another_draw_version_is_refused_not_finished(digits_model, tmp_path, sync_scheduler):
    """Draws of another version of the sampler would give other bits: an unfinished store
    begun by one is refused (naming the draw versions), and nothing in it is touched."""
    from daskgen.distributed.generation import DRAW_VERSION

    out = tmp_path / "v.zarr"
    generate(digits_model, 4000, str(out), seed=3, chunk_size=1000)
    g = zarr.open_group(str(out), mode="r+")
    g["done"][2] = 0
    g.attrs["daskgen"] = {**dict(g.attrs["daskgen"]), "complete": False, "draw": DRAW_VERSION - 1}
    before = store_bytes(out)
    with pytest.raises(OutputExistsError, match=f"draw {DRAW_VERSION - 1} -> {DRAW_VERSION}"):
        generate(digits_model, 4000, str(out), seed=3, chunk_size=1000)
    assert store_bytes(out) == before


@pytest.mark.slow
def test_interrupted_process_resumes_byte_identical(digits_model, tmp_path):
    digits_model.save(str(tmp_path / "m.zarr"))
    exe = os.path.join(os.path.dirname(sys.executable), "daskgen")
    args = [exe, "sample", str(tmp_path / "m.zarr"), "--n", "400000", "--chunk-size", "2000", "--seed", "9",
            "--dtype", "float64", "--quiet"]
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            done = int(np.asarray(zarr.open_group(str(out), mode="r")["done"][...]).sum())
        except Exception:
            continue
        if done >= 10:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 10 <= done < 200, f"the run was not interrupted mid-way ({done} chunks done)"
    assert not dict(zarr.open_group(str(out), mode="r").attrs)["daskgen"]["complete"]
    rerun = subprocess.run([*args[:-1], "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stderr
    written = int(rerun.stderr.split("wrote ")[1].split(" of")[0])
    assert written < 200
    clean = tmp_path / "clean.zarr"
    subprocess.run([*args, "--out", str(clean)], check=True, timeout=300)
    assert store_bytes(out) == store_bytes(clean)
    third = subprocess.run([*args[:-1], "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert "wrote 0 of 200 chunks" in third.stderr


@pytest.mark.slow
def test_a_million_samples_fit_back_to_the_model(tmp_path, sync_scheduler):
    rng = np.random.default_rng(4)
    D = 6
    X = np.concatenate([rng.normal(size=(3000, D)) @ rng.normal(size=(D, D)) + k for k in range(3)])
    X[:, 0] = 2.0  # a constant feature
    y = np.repeat(np.array(["a", "b", "c"]), [1000, 3000, 5000])[: len(X)]
    m = GaussianClassModel.from_stats(chunk_stats(X, y))
    generate(m, 1_000_000, str(tmp_path / "big.zarr"), seed=1, chunk_size=100_000, dtype="float64")
    back = daskgen.fit(str(tmp_path / "big.zarr"))
    assert back.classes.tolist() == ["a", "b", "c"]
    assert (np.abs(back.priors - m.priors) <= 5 * np.sqrt(m.priors / 1e6)).all()
    for k in range(3):
        var = np.diagonal(m.covariances[k])
        nk = back.counts[k]
        assert (np.abs(back.means[k] - m.means[k]) <= 5 * np.sqrt(var / nk) + 1e-12).all()
        sd = np.sqrt((np.outer(var, var) + m.covariances[k] ** 2) / nk)
        assert (np.abs(back.covariances[k] - m.covariances[k]) <= 6 * sd + 1e-12).all()
    assert back.covariances[:, 0, 0].max() == 0.0


def test_chunks_equal_to_the_fill_value_are_still_written(tmp_path):
    """A chunk of zeros (e.g. every label 0) is stored, not skipped as empty, and zarr's
    process-wide config is left alone (other tasks run beside the writer)."""
    import zarr

    from daskgen.distributed.generation import _write_chunk

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    g.create_array("images", shape=(4, 2), chunks=(2, 2), dtype="float32", fill_value=0)
    g.create_array("labels", shape=(4,), chunks=(2,), dtype="int64", fill_value=0)
    g.create_array("done", shape=(2,), chunks=(1,), dtype="uint8", fill_value=0)
    _write_chunk(str(tmp_path / "s.zarr"), None, 0, 0, (np.zeros((2, 2), np.float32), np.zeros(2, np.int64)))
    assert (tmp_path / "s.zarr" / "images" / "c" / "0" / "0").exists()
    assert (tmp_path / "s.zarr" / "labels" / "c" / "0").exists()
    assert zarr.config.get("array.write_empty_chunks") is False
