"""The low-rank-plus-diagonal Gaussian kernels against scipy's dense multivariate normal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from daskgen.kernels import lowrank


def _params(rng, D=12, q=3, isotropic=False):
    W = rng.normal(size=(D, q))
    psi = 0.7 if isotropic else rng.uniform(0.05, 2.0, size=D)
    mean = rng.normal(size=D)
    return mean, W, psi


@pytest.mark.parametrize("isotropic", [False, True])
@pytest.mark.parametrize("q", [0, 1, 4])
def test_log_density_matches_scipy(q, isotropic):
    rng = np.random.default_rng(q + 10 * isotropic)
    mean, W, psi = _params(rng, D=12, q=q, isotropic=isotropic)
    X = rng.normal(size=(50, 12)) * 2
    f = lowrank.prepare(W, psi)
    C = W @ W.T + np.diag(np.broadcast_to(psi, (12,)))
    ref = multivariate_normal(mean, C).logpdf(X)
    np.testing.assert_allclose(lowrank.log_density(X, mean, f), ref, rtol=1e-12, atol=1e-10)
    assert f.logdet == pytest.approx(np.linalg.slogdet(C)[1], rel=1e-12)
    np.testing.assert_allclose(lowrank.dense_covariance(W, psi), C, rtol=0, atol=1e-14)


def test_log_density_many_and_latent_posterior():
    rng = np.random.default_rng(3)
    D, q = 9, 2
    params = [_params(rng, D, q) for _ in range(3)]
    X = rng.normal(size=(20, D))
    factors = [lowrank.prepare(W, psi) for _, W, psi in params]
    means = np.stack([m for m, _, _ in params])
    got = lowrank.log_density_many(X, means, factors)
    for g, (m, W, psi) in enumerate(params):
        np.testing.assert_allclose(got[:, g], multivariate_normal(m, W @ W.T + np.diag(psi)).logpdf(X), rtol=1e-12)
    # z | x by the dense Gaussian conditioning formula: E = Wᵀ C⁻¹ (x-μ), Cov = I - Wᵀ C⁻¹ W
    m, W, psi = params[0]
    C = W @ W.T + np.diag(psi)
    Ez, Cz = lowrank.latent_posterior(X, m, W, factors[0])
    np.testing.assert_allclose(Ez, (X - m) @ np.linalg.solve(C, W), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Cz, np.eye(q) - W.T @ np.linalg.solve(C, W), rtol=1e-10, atol=1e-12)


def test_sample_moments_and_determinism():
    rng = np.random.default_rng(5)
    mean, W, psi = _params(rng, D=6, q=2)
    a = lowrank.sample(200_000, mean, W, psi, np.random.default_rng(1))
    b = lowrank.sample(200_000, mean, W, psi, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    C = W @ W.T + np.diag(psi)
    np.testing.assert_allclose(a.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(a.T), C, atol=0.05 * np.abs(C).max())
    f32 = lowrank.sample(10, mean, W, psi, np.random.default_rng(1), dtype=np.float32)
    assert f32.dtype == np.float32 and f32.shape == (10, 6)
    iso = lowrank.sample(100_000, mean, np.zeros((6, 0)), 0.25, np.random.default_rng(2))
    np.testing.assert_allclose(iso.var(0), 0.25, rtol=0.03)


def test_prepare_rejects_bad_psi():
    with pytest.raises(ValueError, match="psi"):
        lowrank.prepare(np.ones((3, 1)), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        lowrank.prepare(np.ones((3, 1)), np.ones(4))
