"""Full covariances factored once: Cholesky factors stored at fit time, covariances derived
on demand, scoring and sampling from the factors, older stores still read."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import stats as sps

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.evaluation.heldout import evaluate, split_blocks
from daskgen.io.arrays import from_arrays
from daskgen.io.inputs import open_inputs
from daskgen.kernels.class_stats import chunk_stats
from daskgen.kernels.linalg import factor_covariance
from daskgen.models import gaussian
from daskgen.models.base import fingerprint_arrays
from daskgen.models.gaussian import GaussianClassModel, GaussianScorer, finalize, write_lower

S = 1 / 255


@pytest.fixture(scope="module")
def pixels():
    """8-bit rows of 3 classes (D = 12), one pixel constant in class 2, and held-out rows."""
    rng = np.random.default_rng(5)
    D = 12
    X, y = [], []
    for k in range(3):
        A = rng.normal(size=(D, D)) * (8 + 4 * k)
        Z = rng.normal(size=(300, D)) @ A + 60 + 40 * k
        X.append(np.clip(np.rint(Z), 0, 255))
        y.append(np.full(300, k))
    X, y = np.concatenate(X), np.concatenate(y)
    X[y == 2, 0] = 17
    perm = rng.permutation(len(X))
    return X[perm[:750]].astype(np.uint8), y[perm[:750]], X[perm[750:]].astype(np.uint8), y[perm[750:]]


@pytest.fixture(scope="module")
def model(pixels):
    X, y, *_ = pixels
    return GaussianClassModel.from_stats(chunk_stats(X, y, scale=S), reg_covar=S * S / 12, image_shape=(3, 4), scale=S)


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("factor") / "model.zarr"
    model.save(str(path))
    return str(path)


def old_layout(store: str, dest) -> str:
    """A copy of ``store`` as stores were written before the factors were: ``covariances``
    (K, D, D) beside ``scatter``, no ``cholesky``."""
    import shutil

    shutil.copytree(store, dest)
    g = zarr.open_group(str(dest), mode="r+", use_consolidated=False)
    covs = daskgen.load_model(store).covariances
    del g["cholesky"]
    g.create_array("covariances", shape=covs.shape, dtype="float64", chunks=(1, *covs.shape[1:]),
                   compressors=None)[...] = covs
    daskgen.io.store.consolidate(g)
    return str(dest)


def test_derived_covariances_and_fingerprint_are_the_fits_to_the_bit(pixels):
    X, y, *_ = pixels
    stats = chunk_stats(X, y, scale=S)
    for shrinkage in ("none", "oas"):
        m = GaussianClassModel.from_stats(stats, reg_covar=0.25, shrinkage=shrinkage)
        ref = finalize(stats, reg_covar=0.25, shrinkage=shrinkage)["covariances"]
        np.testing.assert_array_equal(m.covariances, ref)
        assert m.fingerprint == fingerprint_arrays(m.classes, m.priors, m.means, ref, *m.transform.fingerprint_parts())


def test_store_keeps_scatter_and_cholesky_not_covariances(model, store):
    g = zarr.open_group(store, mode="r")
    assert set(g.array_keys()) == {"classes", "counts", "priors", "means", "scatter", "cholesky"}
    L = g["cholesky"][...]
    assert g["cholesky"].chunks == (1, 12, 12)
    np.testing.assert_array_equal(np.triu(L, 1), 0)
    for k in range(3):
        np.testing.assert_allclose(L[k] @ L[k].T, model.covariances[k], rtol=1e-12, atol=1e-15)
    back = daskgen.load_model(store)
    assert back.fingerprint == model.fingerprint == dict(g.attrs)["daskgen"]["fingerprint"]
    np.testing.assert_array_equal(back.covariances, model.covariances)
    np.testing.assert_array_equal(back.stats.scatter, model.stats.scatter)


def test_cholesky_scores_equal_scipy_and_the_eigh_path(model, pixels):
    *_, Xte, _ = pixels
    Z = Xte * S
    ll = model.class_log_likelihood(Z)
    factors = [factor_covariance(c) for c in model.covariances]
    eigh = GaussianScorer(model.classes, model.priors, model.means, tuple(factors), model.fingerprint)
    np.testing.assert_allclose(ll, eigh.class_log_likelihood(Z), rtol=1e-9)
    for k in range(3):
        ref = sps.multivariate_normal(model.means[k], model.covariances[k]).logpdf(Z)
        np.testing.assert_allclose(ll[:, k], ref, rtol=1e-9)


def test_samples_have_the_models_moments(model):
    X, y = model.sample(60_000, seed=3)
    for k in range(3):
        Xk = X[y == k]
        n = len(Xk)
        sd = np.sqrt(np.diagonal(model.covariances[k]))
        assert np.abs(Xk.mean(axis=0) - model.means[k]).max() <= 5 * sd.max() / np.sqrt(n)
        cov = np.cov(Xk.T)
        corr_err = (cov - model.covariances[k]) / np.outer(sd, sd)
        assert np.abs(corr_err).max() <= 6 / np.sqrt(n)


def test_sample_and_evaluate_read_the_stored_factors(store, pixels, tmp_path, monkeypatch, sync_scheduler):
    """With ``cholesky`` stored, sample and evaluate factor nothing: the factor functions raise."""
    *_, Xte, yte = pixels
    model = daskgen.load_model(store)
    expected = model.sample(50, seed=1)
    test = tmp_path / "test.zarr"
    write_zarr_dataset(str(test), Xte.reshape(-1, 3, 4), yte, chunk_rows=1000, attrs={"daskgen": {"scale": S}})
    rep = evaluate(model, str(test))

    def refuse(*args, **kwargs):
        raise AssertionError("factored a covariance although its factor is stored")

    monkeypatch.setattr(gaussian, "cholesky_lower", refuse)
    monkeypatch.setattr(gaussian, "factor_covariance", refuse)
    monkeypatch.setattr(np.linalg, "cholesky", refuse)
    monkeypatch.setattr(np.linalg, "eigh", refuse)
    fresh = daskgen.load_model(store)
    np.testing.assert_array_equal(fresh.sample(50, seed=1)[0], expected[0])
    daskgen.generate(fresh, 40, str(tmp_path / "samples.zarr"), seed=0, chunk_size=16)
    again = evaluate(daskgen.load_model(store), str(test))
    assert again["log_likelihood"]["nats_per_image"] == pytest.approx(rep["log_likelihood"]["nats_per_image"], rel=1e-12)
    assert again["classifier"] == rep["classifier"]


def test_an_older_store_with_covariances_still_loads_and_works(model, store, pixels, tmp_path, sync_scheduler):
    *_, Xte, _ = pixels
    old = daskgen.load_model(old_layout(store, tmp_path / "old.zarr"))
    assert old.fingerprint == model.fingerprint
    np.testing.assert_array_equal(old.covariances, model.covariances)
    np.testing.assert_allclose(old.class_log_likelihood(Xte * S), model.class_log_likelihood(Xte * S), rtol=1e-12)
    np.testing.assert_array_equal(old.sample(30, seed=2)[0], model.sample(30, seed=2)[0])
    daskgen.generate(old, 20, str(tmp_path / "samples.zarr"), seed=0)
    # saved again, it takes the new layout
    old.save(str(tmp_path / "resaved.zarr"))
    g = zarr.open_group(str(tmp_path / "resaved.zarr"), mode="r")
    assert "covariances" not in g and "cholesky" in g
    assert daskgen.load_model(str(tmp_path / "resaved.zarr")).fingerprint == model.fingerprint


def test_singular_covariances_store_no_factors_and_keep_the_eigh_path(pixels, tmp_path, sync_scheduler):
    X, y, Xte, _ = pixels
    m = GaussianClassModel.from_stats(chunk_stats(X, y, scale=S), reg_covar=0.0, scale=S)
    path = str(tmp_path / "singular.zarr")
    m.save(path)
    assert "cholesky" not in zarr.open_group(path, mode="r")
    back = daskgen.load_model(path)
    ll = back.class_log_likelihood(Xte * S)
    inside = Xte[Xte[:, 0] == 17] * S  # on class 2's support
    ref = sps.multivariate_normal(m.means[2], m.covariances[2], allow_singular=True).logpdf(inside)
    np.testing.assert_allclose(back.class_log_likelihood(inside)[:, 2], ref, rtol=1e-8)
    assert np.isneginf(ll[Xte[:, 0] != 17, 2]).all()
    Xs, ys = back.sample(200, seed=0)
    assert (Xs[ys == 2, 0] == m.means[2, 0]).all()


def test_factors_above_the_diagonal_are_never_written(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(10, 10))
    L = np.linalg.cholesky(A @ A.T + np.eye(10))
    arr = zarr.create_array(str(tmp_path / "tiles.zarr"), shape=(2, 10, 10), chunks=(1, 4, 4), dtype="float64",
                            fill_value=0.0)
    write_lower(arr, 1, L)
    np.testing.assert_array_equal(arr[1], L)
    np.testing.assert_array_equal(arr[0], 0)
    assert arr.nchunks_initialized == 6  # the 3 x 3 tiles of class 1 on or below the diagonal


def test_wide_zarr_blocks_are_cut_in_rows_and_score_the_same(model, pixels, tmp_path, sync_scheduler):
    *_, Xte, yte = pixels
    test = tmp_path / "test.zarr"
    write_zarr_dataset(str(test), Xte.reshape(-1, 3, 4), yte, chunk_rows=1000, attrs={"daskgen": {"scale": S}})
    dataset = open_inputs([str(test)], image_shape=(3, 4), scale=S)
    assert len(dataset.blocks) == 1
    cut = split_blocks(dataset, 64)
    assert len(cut.blocks) == 3 and [b.stop - b.start for b in cut.blocks] == [50, 50, 50]
    whole = evaluate(model, dataset)
    parts = evaluate(model, cut)
    assert parts["classifier"] == whole["classifier"]
    assert parts["log_likelihood"]["nats_per_image"] == pytest.approx(whole["log_likelihood"]["nats_per_image"],
                                                                      rel=1e-12)


@pytest.mark.parametrize("block", [7, 64, 500])
def test_blocked_whitening_is_a_triangular_solve(block):
    from scipy.linalg import solve_triangular

    from daskgen.kernels.linalg import CholeskyScore

    rng = np.random.default_rng(1)
    A = rng.normal(size=(150, 150))
    cov = A @ A.T / 150 + 0.05 * np.eye(150)
    mean = rng.normal(size=150)
    L = np.linalg.cholesky(cov)
    X = mean + rng.normal(size=(40, 150)) @ L.T
    f = CholeskyScore.from_lower(L, block=block)
    z = f.whiten(X - mean)
    ref = solve_triangular(L, (X - mean).T, lower=True).T
    np.testing.assert_allclose(z, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
    np.testing.assert_allclose(f.log_likelihood(X - mean), sps.multivariate_normal(mean, cov).logpdf(X), rtol=1e-11)


def test_store_hands_class_k_to_the_cluster_before_writing_class_k_plus_1():
    """A full model's per-class arrays: class k's factor task is handed to ``run`` as soon
    as class k's scatter is written, so the client's serial writes overlap the factoring;
    an array some class has nothing for is reported for dropping."""
    from daskgen.io.store import _write_class_arrays
    from daskgen.models.base import ClassArray

    log = []

    def scatter(arrays, k):
        log.append(("scatter", k))
        return True

    def factor(arrays, k):
        log.append(("factor", k))
        return k != 2  # class 2: not positive definite

    def run(calls):  # a scheduler that starts each call as it arrives
        return [call() for call in calls]

    specs = {"scatter": ClassArray((3, 4, 4), scatter), "cholesky": ClassArray((3, 4, 4), factor, parallel=True)}
    assert _write_class_arrays(specs, {}, run) == ["cholesky"]
    assert log == [("scatter", 0), ("factor", 0), ("scatter", 1), ("factor", 1), ("scatter", 2), ("factor", 2)]


def test_run_calls_on_a_cluster_returns_results_in_order():
    from distributed import Client, LocalCluster

    from daskgen.distributed.factors import run_calls

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        assert run_calls(iter([lambda i=i: i * i for i in range(7)])) == [i * i for i in range(7)]


def test_wide_class_matrices_are_stored_as_triangles_of_tiles_and_read_back_whole(tmp_path, sync_scheduler):
    """Past 2 x MATRIX_TILE features the stored Cholesky factor and scatter are chunked in
    square tiles, and only the factor's tiles on or below the diagonal and the scatter's on
    or above it are written (56% of the bytes each at D = 4,096). A class reads back as the
    whole L of its covariance and the whole scatter, bit for bit, and the model samples and
    scores from them as from the arrays in memory; a second save of the loaded model (its
    scatter read from disk) writes the same store."""
    rng = np.random.default_rng(0)
    D, n = 2 * gaussian.MATRIX_TILE + 100, 3000
    X = np.clip(rng.normal(128, 40, (n, D)) + rng.normal(0, 30, (n, 1)), 0, 255).astype(np.uint8)
    y = rng.integers(0, 2, n)
    model = daskgen.fit(from_arrays(X, y))
    path = tmp_path / "wide.zarr"
    model.save(str(path))
    g = zarr.open_group(str(path), mode="r")
    T = gaussian.MATRIX_TILE
    assert g["cholesky"].chunks == (1, T, T)
    written = {p.relative_to(path / "cholesky" / "c").parts for p in (path / "cholesky" / "c").rglob("*") if p.is_file()}
    tiles = -(-D // T)
    assert written == {(str(k), str(i), str(j)) for k in range(2) for i in range(tiles) for j in range(i + 1)}
    for k in range(2):
        np.testing.assert_array_equal(g["cholesky"][k], np.linalg.cholesky(model.covariances[k]))
    # the symmetric scatter: the tiles on or above the diagonal, mirrored back on reading
    upper = {p.relative_to(path / "scatter" / "c").parts for p in (path / "scatter" / "c").rglob("*") if p.is_file()}
    assert upper == {(str(k), str(i), str(j)) for k in range(2) for i in range(tiles) for j in range(i, tiles)}
    back = daskgen.load_model(str(path))
    np.testing.assert_array_equal(back.stats.scatter, model.stats.scatter)
    np.testing.assert_array_equal(back.covariances, model.covariances)
    np.testing.assert_array_equal(back.sample(20, seed=3)[0], model.sample(20, seed=3)[0])
    np.testing.assert_allclose(back.log_prob(X[:50] / 255), model.log_prob(X[:50] / 255), rtol=1e-12)
    back.save(str(tmp_path / "again.zarr"))
    again = zarr.open_group(str(tmp_path / "again.zarr"), mode="r")
    for name in ("scatter", "cholesky"):
        np.testing.assert_array_equal(again[name][...], g[name][...])


def test_update_of_a_wide_store_equals_a_fit_on_everything(tmp_path, sync_scheduler):
    """--update reads a wide store's scatter from its upper tiles: folding the rest of the
    rows into it gives the fit on all rows (to rounding: the update merges centred
    statistics by Chan's formula, as for any store)."""
    rng = np.random.default_rng(1)
    D, n = 2 * gaussian.MATRIX_TILE + 30, 1600
    X = np.clip(rng.normal(128, 40, (n, D)) + rng.normal(0, 30, (n, 1)), 0, 255).astype(np.uint8)
    y = rng.integers(0, 2, n)
    both = daskgen.fit(from_arrays(X, y))
    daskgen.fit(from_arrays(X[:900], y[:900])).save(str(tmp_path / "m.zarr"))
    updated = daskgen.fit(from_arrays(X[900:], y[900:]), update=daskgen.load_model(str(tmp_path / "m.zarr")))
    scale = np.abs(both.covariances).max()
    assert np.abs(updated.covariances - both.covariances).max() <= 1e-12 * scale
    np.testing.assert_array_equal(updated.counts, both.counts)
