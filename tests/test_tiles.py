"""Tiled full covariances (``fit --tiles``): the tile kernels against numpy/scipy on whole
matrices, a tiled fit against the untiled one (bit-equal statistics on 8-bit pixels),
and tiled scoring and sampling against numpy's Cholesky of the untiled covariance."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from _helpers import assert_one_line_error, run_cli
from scipy.linalg import solve_triangular
from scipy.stats import multivariate_normal

from daskgen.fitting import fit
from daskgen.io.store import read_model
from daskgen.kernels.class_stats import pixel_sums
from daskgen.kernels.tiles import (
    add_tile_parts,
    centered_tile,
    cholesky_tile,
    finish_pixel_tile,
    gaussian_log_likelihood,
    pixel_gram_tile,
    tile_spans,
    tiled_colour,
    upper_tiles,
)

FMNIST32 = "/work/data/fmnist32-train.zarr"


def _spd(D, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D + 5))
    return A @ A.T / D + 0.1 * np.eye(D)


def _tile_cholesky(cov, spans):
    """The left-looking tile algorithm of the fit, in memory."""
    n = len(spans)
    L = {}
    for j in range(n):
        for i in range(j, n):
            (a, b), (c, d) = spans[i], spans[j]
            left = [(L[i, m], L[j, m]) for m in range(j)] + ([(L[j, j], None)] if i != j else [])
            L[i, j] = cholesky_tile(cov[a:b, c:d], iter(left))
    out = np.zeros_like(cov)
    for (i, j), t in L.items():
        out[spans[i][0]:spans[i][1], spans[j][0]:spans[j][1]] = t
    return out


def test_tile_kernels_against_whole_matrices():
    rng = np.random.default_rng(1)
    D, T = 50, 16  # an uneven last tile
    spans = tile_spans(D, T)
    assert spans[-1] == (48, 50)
    X = rng.integers(0, 256, size=(300, D), dtype=np.uint8)
    y = rng.integers(0, 3, size=300)
    classes = np.arange(3)
    whole = pixel_sums(X, y).to_class_stats(1 / 255)
    sums = pixel_sums(X, y)
    for i, j in upper_tiles(len(spans)):
        (a, b), (c, d) = spans[i], spans[j]
        part = add_tile_parts([pixel_gram_tile(X[:120], y[:120], classes, spans[i], spans[j]),
                               pixel_gram_tile(X[120:], y[120:], classes, spans[i], spans[j])])
        for k in range(3):
            S = finish_pixel_tile(part.tiles[k], sums.sums[k, a:b], sums.sums[k, c:d], int(sums.counts[k]), 1 / 255)
            np.testing.assert_array_equal(S, whole.scatter[k, a:b, c:d])  # to the bit
    F = rng.normal(5.0, 2.0, size=(200, D))
    yf = np.repeat([0, 2], 100)
    means = np.stack([F[:100].mean(0), np.zeros(D), F[100:].mean(0)])
    part = centered_tile(F, yf, classes, means, spans[0], spans[2])
    assert part.index.tolist() == [0, 2]
    np.testing.assert_allclose(part.tiles[1], np.cov(F[100:].T, bias=True)[0:16, 32:48] * 100, rtol=1e-12)

    cov = _spd(D)
    L = _tile_cholesky(cov, spans)
    Lref = np.linalg.cholesky(cov)
    np.testing.assert_allclose(L, Lref, rtol=0, atol=1e-12)

    def tile(i, j):
        return L[spans[i][0]:spans[i][1], spans[j][0]:spans[j][1]]

    mean = rng.normal(size=D)
    pts = rng.normal(size=(20, D)) + mean
    np.testing.assert_allclose(gaussian_log_likelihood(pts - mean, spans, tile),
                               multivariate_normal(mean, cov).logpdf(pts), rtol=1e-12)
    z = rng.standard_normal((7, D))
    np.testing.assert_allclose(tiled_colour(z, spans, tile, np.empty_like(z)), z @ Lref.T, rtol=0, atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError):
        cholesky_tile(-np.eye(3), iter([]))


@pytest.fixture
def small_pixels(tmp_path):
    """Three classes of 8-bit rows of D = 1,024 (Fashion-MNIST upsampled to 32x32) as a Zarr
    dataset of two blocks, or random 8-bit rows of D = 96 when that dataset is absent."""
    from daskgen.datasets import write_zarr_dataset

    try:
        g = zarr.open_group(FMNIST32, mode="r")
        X, y = np.asarray(g["images"][:2000]), np.asarray(g["labels"][:2000])
        X, y = X[y < 3], y[y < 3]  # three classes: ~600 rows, two blocks
    except Exception:
        rng = np.random.default_rng(0)
        X, y = rng.integers(0, 256, (600, 96), dtype=np.uint8), rng.integers(0, 4, 600)
    path = tmp_path / "pixels.zarr"
    write_zarr_dataset(str(path), X, y, chunk_rows=400)
    return str(path), X.reshape(len(X), -1), y


def _check_tiled_equals_untiled(path, X, y, tiles, tmp_path):
    untiled = fit(path)
    tiled = fit(path, tiles=tiles, tile_store=str(tmp_path / "scratch"))
    K, D = untiled.means.shape
    np.testing.assert_array_equal(tiled.means, untiled.means)
    np.testing.assert_array_equal(tiled.counts, untiled.counts)
    scatter = tiled.group["scatter"]
    assert scatter.chunks == (1, tiles, tiles)
    for k in range(K):  # one class at a time
        np.testing.assert_array_equal(np.asarray(scatter[k]), untiled.stats.scatter[k])  # bit-equal
    tiled.save(str(tmp_path / "model.zarr"))
    assert not (tmp_path / "scratch").exists()  # the tiles were moved into the store
    loaded = read_model(str(tmp_path / "model.zarr"))
    assert loaded.tiles == tiles and loaded.fingerprint == tiled.fingerprint
    chol = loaded.group["cholesky"]
    rows = X[:40] * untiled.scale
    ll = np.empty((len(rows), K))
    for k in range(K):  # numpy's whole-matrix Cholesky of the untiled covariance, and its scores
        L = np.linalg.cholesky(untiled.covariances[k])
        np.testing.assert_allclose(np.asarray(chol[k]), L, rtol=0, atol=1e-9 * np.abs(L).max())
        w = solve_triangular(L, (rows - untiled.means[k]).T, lower=True)
        ll[:, k] = -0.5 * (D * np.log(2 * np.pi) + 2 * np.log(np.diagonal(L)).sum() + (w * w).sum(0))
    np.testing.assert_allclose(loaded.class_log_likelihood(rows), ll, rtol=1e-9)
    np.testing.assert_array_equal(loaded.predict(rows), untiled.classes[np.argmax(ll + np.log(untiled.priors), 1)])
    return untiled, loaded


def test_tiled_fit_equals_untiled_in_process(tmp_path, sync_scheduler):
    """Random 8-bit rows, D = 100, tiles of 40 (the last one narrower), three blocks."""
    from daskgen.datasets import write_zarr_dataset

    rng = np.random.default_rng(3)
    X, y = rng.integers(0, 256, (900, 100), dtype=np.uint8), rng.integers(0, 4, 900)
    path = str(tmp_path / "pixels.zarr")
    write_zarr_dataset(path, X, y, chunk_rows=300)
    untiled, _ = _check_tiled_equals_untiled(path, X, y, 40, tmp_path)
    # blocks summed in groups of one, by a fixed tree of fan-in 2: the same bits
    from daskgen.distributed.tiled import fit_tiles
    from daskgen.fitting import prepare

    dataset = prepare(path, blocksize=300 * 100)
    assert len(dataset.blocks) == 3
    fit_tiles(dataset, 40, str(tmp_path / "grouped"), reg_covar=1e-3, blocks_per_task=1, split_every=2)
    grouped = np.asarray(zarr.open_group(str(tmp_path / "grouped"), mode="r")["scatter"][...])
    np.testing.assert_array_equal(grouped, untiled.stats.scatter)


@pytest.mark.slow
def test_tiled_fit_on_two_workers(small_pixels, tmp_path, client):
    """D = 1,024, T = 256 on a 2-worker cluster: the tiled scatter equals the untiled fit's to the
    bit; the factor, the scores and the samples equal numpy's on the untiled covariance."""
    from daskgen.distributed.generation import chunk_rng, generate

    path, X, y = small_pixels
    untiled, tiled = _check_tiled_equals_untiled(path, X, y, 256, tmp_path)
    out = str(tmp_path / "samples.zarr")
    generate(tiled, 300, out, seed=5, chunk_size=300, dtype="float64")
    got = np.asarray(zarr.open_group(out, mode="r")["images"][...]).reshape(300, -1)
    rng = chunk_rng(5, 0)  # the reference: the same normals through numpy's whole factor
    idx = rng.choice(len(untiled.classes), size=300, p=untiled.priors)
    want = np.empty_like(got)
    for k in np.unique(idx):
        z = rng.standard_normal(((idx == k).sum(), X.shape[1]))
        want[idx == k] = untiled.means[k] + z @ np.linalg.cholesky(untiled.covariances[k]).T
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # and the untiled model's own sampler (its Cholesky factor) draws the same rows from the same seed
    (a, ya), (b, yb) = untiled.sample(200, seed=2), tiled.sample(200, seed=2)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)


def test_tiled_float_and_logit_fits_match_untiled(tmp_path, digits, sync_scheduler):
    X, y = digits
    from daskgen.datasets import write_zarr_dataset

    path = str(tmp_path / "digits.zarr")
    write_zarr_dataset(path, X.astype(np.float32) / 16, y, chunk_rows=400)
    for transform in ("none", "logit"):
        untiled = fit(path, reg_covar=1e-3, transform=transform)
        tiled = fit(path, reg_covar=1e-3, transform=transform, tiles=24)
        np.testing.assert_array_equal(tiled.means, untiled.means)  # the same Chan merge
        S = tiled.group["scatter"]
        for k in range(len(untiled.classes)):
            np.testing.assert_allclose(np.asarray(S[k]), untiled.stats.scatter[k], rtol=0,
                                       atol=1e-11 * np.abs(untiled.stats.scatter[k]).max())
        rows = untiled.transform.forward(np.clip(X[:30] / 16, 0.01, 0.99)) if transform == "logit" else X[:30] / 16
        np.testing.assert_allclose(tiled.class_log_likelihood(rows), untiled.class_log_likelihood(rows), rtol=1e-9)


def test_cli_tiled_store_layout_and_refusals(tmp_path, digits):
    X, y = digits
    from daskgen.datasets import write_zarr_dataset

    data = str(tmp_path / "d.zarr")
    write_zarr_dataset(data, X.astype(np.uint8), y, chunk_rows=600)
    out = tmp_path / "m.zarr"
    r = run_cli("fit", data, "--out", out, "--tiles", 24)
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["daskgen"]["tiles"] == 24 and g.attrs["daskgen"]["model_kind"] == "gaussian"
    assert "covariances" not in g and g["cholesky"].chunks == (1, 24, 24)
    chunks = {p.name for p in (out / "cholesky" / "c" / "0").iterdir()}  # rows of tiles of class 0
    assert chunks == {"0", "1", "2"}
    assert {p.name for p in (out / "cholesky" / "c" / "0" / "0").iterdir()} == {"0"}  # above the diagonal: none
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left
    r = run_cli("sample", out, "--out", tmp_path / "s.zarr", "--n", 50, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert_one_line_error(run_cli("fit", data, "--out", tmp_path / "x.zarr", "--tiles", 0), "--tiles")
    assert_one_line_error(run_cli("fit", data, "--out", tmp_path / "x.zarr", "--tiles", 8, "--shrinkage", "oas"),
                          "--tiles", "--shrinkage")
    assert_one_line_error(run_cli("fit", data, "--out", tmp_path / "x.zarr", "--tiles", 8, "--reg-covar", 0),
                          "not positive definite")
    assert not (tmp_path / "x.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_estimator_with_tiles(digits, sync_scheduler):
    from daskgen.estimators import GaussianClassifier

    X, y = digits
    whole = GaussianClassifier(reg_covar=1e-2).fit(X, y)
    tiled = GaussianClassifier(reg_covar=1e-2, tiles=20).fit(X, y)
    assert tiled.covariances_ is None  # kept on disk, as tiles
    np.testing.assert_allclose(tiled.score_samples(X[:50]), whole.score_samples(X[:50]), rtol=1e-10)
    np.testing.assert_array_equal(tiled.predict(X), whole.predict(X))


def test_tiles_through_an_fsspec_store(tmp_path, sync_scheduler):
    """Tiles written to a URL (here ``memory://``), copied tile by tile into a model store
    at a URL, the scratch group removed; the store reads back bit-equal."""
    import fsspec

    from daskgen.datasets import write_zarr_dataset

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, (400, 60), dtype=np.uint8), rng.integers(0, 3, 400)
    path = str(tmp_path / "r.zarr")
    write_zarr_dataset(path, X, y, chunk_rows=200)
    untiled = fit(path)
    tiled = fit(path, tiles=25, tile_store="memory://tiles-scratch")
    tiled.save("memory://tiles-models/t.zarr")
    assert not fsspec.filesystem("memory").exists("/tiles-scratch")
    loaded = read_model("memory://tiles-models/t.zarr")
    np.testing.assert_array_equal(np.asarray(loaded.group["scatter"][...]), untiled.stats.scatter)
    assert loaded.fingerprint == tiled.fingerprint
    fsspec.filesystem("memory").rm("/tiles-models", recursive=True)


@pytest.mark.slow
def test_job_file_with_tiles(tmp_path, digits):
    """``fit: {tiles: T}`` in a job file: the model is tiled, the run samples from its store."""
    from daskgen.datasets import write_zarr_dataset

    X, y = digits
    write_zarr_dataset(str(tmp_path / "d.zarr"), X.astype(np.uint8), y, chunk_rows=600)
    (tmp_path / "job.yaml").write_text("inputs: d.zarr\nout: run\nfit: {tiles: 24}\n"
                                       "sample: {n: 100, seed: 0, chunk_size: 50, dtype: float32}\nplot: false\n")
    r = run_cli("run", tmp_path / "job.yaml")
    assert r.exit_code == 0, r.output
    model = read_model(str(tmp_path / "run" / "model.zarr"))
    assert model.tiles == 24
    got = np.asarray(zarr.open_group(str(tmp_path / "run" / "samples.zarr"), mode="r")["images"][...])
    assert got.shape == (100, 8, 8) and np.isfinite(got).all()
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []
