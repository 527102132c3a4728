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
    iso = lowrank.sample(100_000, mean, np.zeros((6, 0)), 0.25, np.random.default_rng(2))
    np.testing.assert_allclose(iso.var(0), 0.25, rtol=0.03)


def _reference_draw(class_index, means, loadings, noise, rng, dtype):
    """mean + W z + √ψ ε row by row in float64 from the documented stream: ε (n, D) then z (n, q)."""
    n, (D, q) = len(class_index), loadings.shape[1:]
    eps = rng.standard_normal((n, D), dtype=dtype).astype(np.float64)
    z = rng.standard_normal((n, q), dtype=dtype).astype(np.float64)
    return np.stack([means[k] + loadings[k] @ z[i] + np.sqrt(noise[k]) * eps[i] for i, k in enumerate(class_index)])


@pytest.mark.parametrize("out_dtype, work, rtol", [(np.float64, np.float64, 1e-12), (np.float32, np.float32, 1e-5),
                                                   ("uint8", np.float32, 1e-5)])
def test_sampler_draws_the_documented_stream_in_its_working_precision(out_dtype, work, rtol):
    # float64 output keeps float64 normals and arithmetic; float32 and 8-bit output draw in float32
    rng = np.random.default_rng(7)
    G, D, q = 3, 9, 2
    means, loadings, noise = rng.normal(size=(G, D)) * 50, rng.normal(size=(G, D, q)), rng.uniform(0.1, 2, (G, D))
    sampler = lowrank.LowRankSampler(np.full(G, 1 / G), means, loadings, noise, out_dtype)
    assert lowrank.working_dtype(out_dtype) == work
    idx = np.array([2, 0, 0, 1, 2, 2, 1, 0])
    X = sampler.draw(idx, np.random.default_rng(3))
    assert X.dtype == work and X.shape == (8, D)
    ref = _reference_draw(idx, means, loadings, noise, np.random.default_rng(3), work)
    np.testing.assert_allclose(X, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    one = sampler.draw(np.full(5, 1), np.random.default_rng(3))  # a single class: drawn in place
    np.testing.assert_allclose(one, _reference_draw([1] * 5, means, loadings, noise, np.random.default_rng(3), work),
                               rtol=rtol, atol=rtol * np.abs(ref).max())


def test_float32_samples_have_the_model_covariance_per_class():
    rng = np.random.default_rng(11)
    G, D, q = 2, 5, 2
    means, loadings, noise = rng.normal(size=(G, D)), rng.normal(size=(G, D, q)), rng.uniform(0.1, 1, (G, D))
    sampler = lowrank.LowRankSampler(np.array([0.3, 0.7]), means, loadings, noise, np.float32)
    gen = np.random.default_rng(4)
    idx = sampler.draw_classes(300_000, gen)
    X = sampler.draw(idx, gen).astype(np.float64)
    for k in range(G):
        C = lowrank.dense_covariance(loadings[k], noise[k])
        np.testing.assert_allclose(X[idx == k].mean(0), means[k], atol=0.02)
        np.testing.assert_allclose(np.cov(X[idx == k].T), C, atol=0.03 * np.abs(C).max())


def test_prepare_rejects_bad_psi():
    with pytest.raises(ValueError, match="psi"):
        lowrank.prepare(np.ones((3, 1)), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        lowrank.prepare(np.ones((3, 1)), np.ones(4))
