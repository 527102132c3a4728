"""The ppca and fa kinds: sketches, spectra, likelihoods and samples against numpy and scikit-learn."""

from __future__ import annotations

import tracemalloc

import dask
import numpy as np
import pytest
from _helpers import assert_one_line_error, run_cli

from daskgen.fitting import fit
from daskgen.io.arrays import from_arrays
from daskgen.kernels import sketch
from daskgen.models.lowrank import FAClassModel, PPCAClassModel, fa_parameters


@pytest.fixture
def sync():
    with dask.config.set(scheduler="synchronous"):
        yield


def _centered_scatter(X):
    C = X - X.mean(0)
    return C.T @ C


def test_sketch_merges_by_chan_as_the_scatter_does():
    """Pass 1 over blocks, merged, equals S Ω of all rows (numpy), class by class."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20)) * 3 + 1000  # a large offset: centered statistics keep it exact
    y = rng.integers(0, 3, 300)
    parts = [sketch.chunk_sketch(X[i : i + 70], y[i : i + 70], seed=5, width=6) for i in range(0, 300, 70)]
    merged = sketch.merge_sketches([sketch.merge_sketches(parts[:2]), sketch.merge_sketches(parts[2:])])
    omega = sketch.test_matrix(5, 20, 6)
    for k in range(3):
        Xk = X[y == k]
        S = _centered_scatter(Xk)
        np.testing.assert_allclose(merged.sketch[k], S @ omega, rtol=1e-9, atol=1e-9 * np.abs(S @ omega).max())
        np.testing.assert_allclose(merged.stats.scatter[k], np.diagonal(S), rtol=1e-10)
        np.testing.assert_allclose(merged.stats.means[k], Xk.mean(0), rtol=1e-13)
        assert merged.stats.counts[k] == len(Xk)
    ranges = sketch.add_ranges([sketch.chunk_range(X[i : i + 100], y[i : i + 100], np.arange(3), merged.stats.means,
                                                   np.stack([omega] * 3)) for i in range(0, 300, 100)])
    for k in range(3):
        np.testing.assert_allclose(ranges.products[k], merged.sketch[k], rtol=1e-9, atol=1e-9 * np.abs(merged.sketch[k]).max())


def test_rayleigh_ritz_finds_the_top_eigenpairs_of_a_low_rank_scatter():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 40))
    S = _centered_scatter(X)
    Q = sketch.orthonormal(S @ sketch.test_matrix(0, 40, 8))
    theta, U = sketch.rayleigh_ritz(Q, S @ Q)
    w = np.linalg.eigvalsh(S)[::-1]
    np.testing.assert_allclose(theta[:5], w[:5], rtol=1e-10)
    np.testing.assert_allclose(np.abs(U[:, :5].T @ S @ U[:, :5]), np.diag(w[:5]), rtol=1e-8, atol=1e-8 * w[0])


def _digits_fit(digits, covariance, **kw):
    X, y = digits
    return fit(from_arrays(X, y, scale=1 / 16), covariance=covariance, **kw)


def test_ppca_likelihood_is_scikit_learns_pca_score_samples(digits, sync):
    """Given our components, eigenvalues and σ², scikit-learn's PCA scores every row the same."""
    from sklearn.decomposition import PCA

    X, y = digits
    model = _digits_fit(digits, "ppca", rank=8, oversampling=12, power_iterations=10, reg_covar=0.01)
    ll = model.class_log_likelihood(X / 16)
    for k in range(model.n_classes):
        Xk = X[y == k] / 16
        # the sketch found the top eigenpairs: compare with numpy's eigh of the class covariance
        w, V = np.linalg.eigh(np.cov(Xk.T))
        w, V = w[::-1], V[:, ::-1]
        np.testing.assert_allclose(model.eigenvalues[k, :8], w[:8], rtol=1e-8)
        sigma2 = (w.sum() - w[:8].sum()) / (64 - 8)
        np.testing.assert_allclose(model.noise[k], sigma2 + 0.01, rtol=1e-8)
        pca = PCA(n_components=8)
        W = model.loadings[k]
        norms = np.sqrt((W * W).sum(0))
        pca.components_ = (W / norms).T
        pca.explained_variance_ = norms**2 + model.noise[k, 0]
        pca.noise_variance_ = model.noise[k, 0]
        pca.mean_ = model.means[k]
        pca.n_components_, pca.n_features_in_, pca.whiten = 8, 64, False
        np.testing.assert_allclose(ll[:, k], pca.score_samples(X / 16), rtol=1e-9)


def test_fa_likelihood_is_scikit_learns_factor_analysis_score_samples(digits, sync):
    from sklearn.decomposition import FactorAnalysis

    X, _ = digits
    model = _digits_fit(digits, "fa", rank=6, reg_covar=0.003)
    assert isinstance(model, FAClassModel) and model.noise.min() >= 0.003
    ll = model.class_log_likelihood(X / 16)
    for k in (0, 7):
        fa = FactorAnalysis(n_components=6)
        fa.components_, fa.noise_variance_, fa.mean_ = model.loadings[k].T, model.noise[k], model.means[k]
        fa.n_features_in_ = 64
        np.testing.assert_allclose(ll[:, k], fa.score_samples(X / 16), rtol=1e-9)


def test_fa_em_against_an_exact_spectrum_matches_scikit_learn():
    """With every eigenpair (ℓ = D: Ŝ is the covariance itself), the in-memory EM reaches
    scikit-learn's FactorAnalysis optimum (maximum likelihood on the same covariance)."""
    from sklearn.decomposition import FactorAnalysis
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    D, q, n = 15, 3, 600
    X = rng.normal(size=(n, q)) @ rng.normal(size=(q, D)) + rng.normal(size=(n, D)) * rng.uniform(0.2, 1.5, D)
    cov = np.cov(X.T, bias=True)
    w, V = np.linalg.eigh(cov)
    W, psi, _ = fa_parameters(w[::-1], V[:, ::-1], np.diagonal(cov), q, reg_covar=1e-9, max_iter=20000, tol=1e-12)
    with threadpool_limits(1):  # scikit-learn's SVD of a 600 x 15 matrix, per iteration
        ref = FactorAnalysis(n_components=q, tol=1e-11, max_iter=20000, svd_method="lapack").fit(X)
    np.testing.assert_allclose(W @ W.T + np.diag(psi), ref.get_covariance(), rtol=1e-4, atol=1e-4)


def test_fa_floor_keeps_constant_pixels_at_reg_covar(sync):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 256, size=(400, 36)).astype(np.uint8)
    X[:, :6] = 0  # always-black border
    y = rng.integers(0, 2, 400)
    model = fit(from_arrays(X, y), covariance="fa", rank=3)
    reg = (1 / 255) ** 2 / 12
    assert model.config["reg_covar"] == pytest.approx(reg)
    np.testing.assert_allclose(model.noise[:, :6], reg)
    assert np.isfinite(model.log_prob(X / 255)).all()


def test_fit_never_allocates_a_d_by_d_array(sync):
    """D = 2,500: one D×D float64 array is 50 MB; the whole fit, scoring and sampling stay far below."""
    rng = np.random.default_rng(5)
    D = 2500
    X = (rng.normal(size=(120, 4)) @ rng.normal(size=(4, D)) * 20 + 128).clip(0, 255).astype(np.uint8)
    y = np.repeat([0, 1], 60)

    def everything(X):
        for kind in ("ppca", "fa"):
            model = fit(from_arrays(X, y, blocksize=40 * X.shape[1]), covariance=kind, rank=4, oversampling=4)
            model.log_prob(X / 255)
            model.sample(50, seed=0)

    everything(X[:, :16])  # the modules the fit imports on first use are not what is measured
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        everything(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < D * D * 8 / 2, peak - before  # measured: 5.6 MB


def test_samples_have_the_model_covariance_and_are_deterministic(sync, digits):
    model = _digits_fit(digits, "fa", rank=4, reg_covar=0.003)
    a, ya = model.sample(20_000, seed=3, label=2)
    b, _ = model.sample(20_000, seed=3, label=2)
    np.testing.assert_array_equal(a, b)
    k = model.class_index(2)
    cov = model.loadings[k] @ model.loadings[k].T + np.diag(model.noise[k])
    np.testing.assert_allclose(np.cov(a.T), cov, atol=0.04 * np.abs(cov).max())
    assert (ya == 2).all()


def test_power_iterations_do_not_lower_the_likelihood(digits, sync):
    X, _ = digits
    lls = [_digits_fit(digits, "ppca", rank=8, power_iterations=p).log_prob(X / 16).mean() for p in (0, 4)]
    assert lls[1] >= lls[0] - 1e-9


@pytest.mark.slow
def test_cli_fit_evaluate_sample_plot(tmp_path):
    from daskgen.datasets import load_digits_dataset, write_zarr_dataset
    from daskgen.io.store import read_model

    images, labels = load_digits_dataset()
    data = tmp_path / "digits.zarr"
    write_zarr_dataset(str(data), images, labels, chunk_rows=500)
    model = tmp_path / "ppca.zarr"
    r = run_cli("fit", data, "--covariance", "ppca", "--rank", "5", "--out", model, "--workers", "1",
                "--threads-per-worker", "1")
    assert r.exit_code == 0, r.output
    m = read_model(str(model))
    assert isinstance(m, PPCAClassModel) and m.rank == 5 and m.config["sketch"]["passes"] == 4
    r = run_cli("evaluate", model, data, "--out", tmp_path / "eval", "--workers", "1")
    assert r.exit_code == 0, r.output
    samples = tmp_path / "samples.zarr"
    r = run_cli("sample", model, "--n", "300", "--chunk-size", "100", "--seed", "1", "--out", samples, "--workers", "1")
    assert r.exit_code == 0, r.output
    r = run_cli("plot", model, "--out", tmp_path / "fig")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fig" / "directions.png").stat().st_size > 0
    assert_one_line_error(run_cli("fit", data, "--covariance", "full", "--rank", "4", "--out", tmp_path / "x.zarr"),
                          "--rank")
    assert_one_line_error(run_cli("fit", data, "--update", model), "ppca model", "fit it again")
    assert_one_line_error(run_cli("fit", data, "--covariance", "ppca", "--rank", "60", "--out", tmp_path / "y.zarr"),
                          "--rank 60")


def test_exact_top_eigenpairs_at_d784(fashion, sync):
    """Fashion-MNIST (D = 784): with enough power iterations the sketch's top-16 eigenvalues and
    subspace equal numpy's eigh of the full class covariance to 1e-6 relative."""
    images, labels = fashion
    X = images.reshape(len(images), -1)[:12000]
    y = labels[:12000]
    model = fit(from_arrays(X, y), covariance="ppca", rank=16, oversampling=20, power_iterations=16, reg_covar=0)
    for k in (0, 6):
        w, V = np.linalg.eigh(np.cov((X[y == k] / 255).T))
        w, V = w[::-1], V[:, ::-1]
        np.testing.assert_allclose(model.eigenvalues[k, :16], w[:16], rtol=1e-6)
        U = model.loadings[k] / np.sqrt((model.loadings[k] ** 2).sum(0))
        sines = np.sqrt(np.maximum(0, 1 - np.linalg.svd(V[:, :16].T @ U, compute_uv=False) ** 2))
        assert sines.max() <= 1e-6


def test_estimator_fits_ppca_in_data_units(digits, sync):
    from sklearn.base import clone

    from daskgen.estimators import GaussianClassifier

    X, y = digits
    est = clone(GaussianClassifier(covariance="ppca", rank=4, reg_covar=0.01, scale=1 / 16)).fit(X, y)
    model = est.model_
    assert est.loadings_.shape == (10, 64, 4) and est.noise_variance_.shape == (10, 64)
    np.testing.assert_allclose(est.loadings_, model.loadings * 16)
    np.testing.assert_allclose(est.score_samples(X[:50]), model.log_prob(X[:50] / 16) + 64 * np.log(1 / 16), rtol=1e-12)
    assert (est.predict(X) == y).mean() > 0.9
    with pytest.raises(ValueError, match="rank"):
        GaussianClassifier(covariance="ppca", rank=0).fit(X, y)


def test_uint8_samples_same_bytes_on_one_process_and_on_a_two_process_cluster(digits, tmp_path, client):
    """The float32 draw of 8-bit samples is a function of (seed, chunk) only, and a cluster
    runs the chunks on every worker (the small plan is copied to each)."""
    from _helpers import store_bytes
    from distributed import get_task_stream

    from daskgen.distributed.generation import generate

    with dask.config.set(scheduler="synchronous"):
        model = _digits_fit(digits, "ppca", rank=4)
        generate(model, 8000, str(tmp_path / "a.zarr"), seed=5, chunk_size=4000, dtype="uint8")
    with get_task_stream() as ts:
        generate(model, 8000, str(tmp_path / "b.zarr"), seed=5, chunk_size=4000, dtype="uint8")
    assert store_bytes(tmp_path / "a.zarr") == store_bytes(tmp_path / "b.zarr")
    workers = {t["worker"] for t in ts.data if str(t["key"]).startswith("generate-")}
    assert len(workers) == len(client.scheduler_info()["workers"]) == 2
