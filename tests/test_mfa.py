"""Mixtures of low-rank Gaussians per class (``--components M --covariance ppca|fa --rank q``):
EM's log-likelihood never decreases, the model scores as a dense scipy mixture, the
distributed fit equals the in-memory one, and the store, sampling, figures and CLI work."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import daskgen
from daskgen.cli import main
from daskgen.distributed.em import fit_mixture
from daskgen.kernels.lowrank import dense_covariance
from daskgen.models.mfa import LowRankMixtureClassModel
from daskgen.models.mfa_em import fit_em_lowrank

SCALE = 1 / 16
REG = SCALE**2 / 12


@pytest.fixture(scope="module")
def mfa(digits_pixels):
    X, y = digits_pixels
    return fit_em_lowrank(X, y, 3, scale=SCALE, covariance="fa", rank=4, reg_covar=REG, max_iter=8, tol=0,
                          block_rows=400, image_shape=(8, 8))


@pytest.mark.parametrize("covariance", ["fa", "ppca"])
def test_log_likelihood_never_decreases(digits_pixels, covariance):
    X, y = digits_pixels
    m = fit_em_lowrank(X, y, 4, scale=SCALE, covariance=covariance, rank=5, reg_covar=REG, max_iter=15, tol=0,
                       block_rows=500, prior_rows=0.0)
    history = np.array(m.config["em"]["log_likelihood"])
    assert len(history) == 15 and not m.config["em"]["events"]
    assert (np.diff(history) >= -1e-9 * np.abs(history[1:])).all(), np.diff(history)
    assert history[-1] > history[0] + 0.5  # it moved
    assert m.covariance_type == covariance and m.rank == 5 and m.n_components == 4
    assert (m.noise >= REG).all()
    if covariance == "ppca":
        np.testing.assert_array_equal(m.noise, m.noise[..., :1] * np.ones(m.n_features))


def test_scores_are_a_dense_mixtures(mfa, digits_pixels):
    X = digits_pixels[0][::9] * SCALE
    ours = mfa.class_log_likelihood(X)
    for k in range(mfa.n_classes):
        lp = [np.log(mfa.weights[k, m]) + multivariate_normal(
            mfa.means[k, m], dense_covariance(mfa.loadings[k, m], mfa.noise[k, m])).logpdf(X)
            for m in range(3)]
        np.testing.assert_allclose(ours[:, k], logsumexp(lp, axis=0), rtol=1e-10)
    # the last E-step's mean log-likelihood is that of the parameters before the last M-step: below
    Xall, yall = digits_pixels
    ll = mfa.class_log_likelihood(Xall * SCALE)[np.arange(len(yall)), np.searchsorted(mfa.classes, yall)].mean()
    assert ll >= mfa.config["em"]["log_likelihood"][-1] - 1e-9


def test_distributed_fit_is_the_in_memory_fit(mfa, digits_store, sync_scheduler):
    d = fit_mixture(digits_store, 3, covariance="fa", rank=4, reg_covar=REG, max_iter=8, tol=0)
    assert isinstance(d, LowRankMixtureClassModel)
    np.testing.assert_array_equal(d.classes, mfa.classes)
    np.testing.assert_allclose(d.config["em"]["log_likelihood"], mfa.config["em"]["log_likelihood"], rtol=1e-10)
    for name in ("weights", "means", "loadings", "noise"):
        np.testing.assert_allclose(getattr(d, name), getattr(mfa, name), rtol=1e-6, atol=1e-9, err_msg=name)
    assert d.config["rank"] == 4 and d.config["covariance"] == "fa" and d.config["components"] == 3


@pytest.mark.slow
def test_store_sampling_and_figures(mfa, tmp_path, sync_scheduler):
    from daskgen.distributed.generation import generate
    from daskgen.plot import load_samples, plot_all

    mfa.save(str(tmp_path / "m.zarr"))
    back = daskgen.load_model(str(tmp_path / "m.zarr"))
    assert isinstance(back, LowRankMixtureClassModel) and back.fingerprint == mfa.fingerprint
    for name in LowRankMixtureClassModel.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(mfa, name))
    assert back.covariance_type == "fa" and back.image_shape == (8, 8)
    a, la = back.sample(3000, seed=3)
    b, lb = back.sample(3000, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    # the sample's class means approach the model's
    k = int(np.argmax(np.bincount(np.searchsorted(back.classes, la))))
    rows = a[la == back.classes[k]]
    assert np.abs(rows.mean(0) - back.class_means[k]).max() < 6 * np.sqrt(back.noise[k].max() + 1) / np.sqrt(len(rows))
    result = generate(back, 250, str(tmp_path / "s.zarr"), seed=7, chunk_size=100, dtype="uint8")
    assert result.chunks_written == 3
    X, y = load_samples(str(tmp_path / "s.zarr"), n=250)
    assert X.shape == (250, 64) and X.dtype == np.uint8
    files = plot_all(back, str(tmp_path / "figs"), samples=(X, y))
    assert set(files) == {"means-and-samples", "samples-grid", "spectrum", "component-means"}


@pytest.mark.slow
def test_cli_fit_evaluate(digits_store, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "m.zarr")
    r = runner.invoke(main, ["fit", digits_store, "--components", "3", "--covariance", "ppca", "--rank", "4",
                             "--max-iter", "3", "--tol", "0", "--out", out, "--workers", "1",
                             "--threads-per-worker", "1"])
    assert r.exit_code == 0, r.output
    assert "EM iteration 3" in r.output and "x 3 components" in r.output
    m = daskgen.load_model(out)
    assert isinstance(m, LowRankMixtureClassModel) and m.covariance_type == "ppca" and m.rank == 4
    e = runner.invoke(main, ["evaluate", out, digits_store, "--workers", "1", "-q"])
    assert e.exit_code == 0, e.output
    assert "bits/dim" in e.output
    bad = runner.invoke(main, ["fit", digits_store, "--components", "2", "--covariance", "fa", "--rank", "64",
                               "-o", str(tmp_path / "b.zarr"), "-q"])
    assert bad.exit_code == 2 and "rank" in bad.output


def test_a_collapsed_component_is_reseeded_then_dropped():
    """50 copies of one far point: k-means++ puts a centre there, the component's variance is 0;
    it is re-seeded at the worst-explained rows max_reseeds times, then dropped, as the
    Gaussian mixtures' components are."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 6)), np.full((50, 6), 40.0)])
    y = np.zeros(len(X), dtype=int)
    m = fit_em_lowrank(X, y, 2, covariance="fa", rank=2, reg_covar=1e-8, max_iter=12, tol=0, max_reseeds=2)
    events = m.config["em"]["events"]
    assert events and events[0]["problem"].startswith("collapsed") and events[0]["iteration"] == 0
    actions = [e["action"] for e in events]
    assert actions == ["re-seeded at the worst-explained row"] * 2 + ["dropped"]
    np.testing.assert_array_equal(m.weights, [[1.0, 0.0]])
    assert np.isfinite(m.class_log_likelihood(X)).all()
    assert (m.noise >= 1e-8).all()


def test_the_mixture_estimator_takes_low_rank_components(digits_pixels, sync_scheduler):
    from daskgen.estimators import GaussianMixtureClassifier

    X, y = digits_pixels
    est = GaussianMixtureClassifier(3, covariance="fa", rank=4, reg_covar=REG, max_iter=8, tol=0,
                                    scale=SCALE).fit(X, y)
    ref = fit_em_lowrank(X, y, 3, scale=SCALE, covariance="fa", rank=4, reg_covar=REG, max_iter=8, tol=0)
    np.testing.assert_allclose(est.loadings_, ref.loadings / SCALE, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(est.noise_variance_, ref.noise / SCALE**2, rtol=1e-6)
    assert not hasattr(est, "covariances_")
    assert (est.predict(X) == y).mean() > 0.9
    with pytest.raises(ValueError, match="rank"):
        GaussianMixtureClassifier(2, covariance="full", rank=4, scale=SCALE).fit(X, y)


def test_no_d_by_d_array_in_fit_score_or_sample():
    """At D = 4,096 one D×D float64 array is 128 MiB: the fit (initialisation included),
    scoring and sampling together allocate less than a quarter of one (tracemalloc sees
    every numpy allocation)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    D = 4096
    y = np.repeat([0, 1], 120)
    X = rng.normal(size=(240, 6)) @ rng.normal(size=(6, D)) * 8 + rng.normal(size=(240, D)) * 5 + 100 + 20 * y[:, None]
    X = np.clip(X, 0, 255).astype(np.uint8)
    tracemalloc.start()
    try:
        m = fit_em_lowrank(X, y, 2, scale=1 / 255, covariance="fa", rank=3, reg_covar=1e-5, max_iter=3, tol=0,
                           block_rows=80)
        assert np.isfinite(m.class_log_likelihood(X / 255)).all()
        m.sample(200, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < D * D * 8 / 4, f"peak {peak / 2**20:.0f} MiB"
    assert m.loadings.shape == (2, 2, D, 3)
