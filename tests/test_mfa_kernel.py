"""Mixtures of low-rank Gaussians, the kernels: the E-step against scipy's dense normal, the
merge against one block, the M-step against a dense numpy EM step of factor analysis / PPCA."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from daskgen.kernels.lowrank import dense_covariance
from daskgen.kernels.mfa import (
    LowRankComponents,
    estep_lowrank,
    hard_lowrank,
    m_step_component,
    merge_lowrank,
    mixture_covariance_factors,
    nystrom_init,
    sketch_columns,
    sketch_matrix,
)

D, Q, M = 12, 3, 3
CLASSES = np.array([3, 7])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    K = len(CLASSES)
    weights = rng.uniform(0.5, 1.5, (K, M))
    weights /= weights.sum(1, keepdims=True)
    means = rng.normal(size=(K, M, D))
    loadings = rng.normal(size=(K, M, D, Q)) * 0.8
    noise = rng.uniform(0.2, 1.0, (K, M, D))
    y = rng.choice(CLASSES, 300)
    X = rng.normal(size=(300, D)) * 1.5 + 0.3
    return weights, means, loadings, noise, X, y


def dense_resp(X, w, means, loadings, noise):
    """Per row, log p(x) and responsibilities under one class's mixture, with dense covariances."""
    lp = np.stack([np.log(w[m]) + multivariate_normal(means[m], dense_covariance(loadings[m], noise[m])).logpdf(X)
                   for m in range(len(w))], axis=1)
    ll = logsumexp(lp, axis=1)
    return ll, np.exp(lp - ll[:, None])


def test_estep_matches_a_dense_reference(problem):
    weights, means, loadings, noise, X, y = problem
    comps = LowRankComponents.from_params(CLASSES, weights, means, loadings, noise)
    stats = estep_lowrank(X, y, comps)
    np.testing.assert_array_equal(stats.classes, CLASSES)
    for k, c in enumerate(CLASSES):
        Xk = X[y == c]
        ll, r = dense_resp(Xk, weights[k], means[k], loadings[k], noise[k])
        assert stats.counts[k] == len(Xk)
        np.testing.assert_allclose(stats.loglik[k], ll.sum(), rtol=1e-11)
        np.testing.assert_allclose(comps.component_log_prob(Xk, k),
                                   np.log(r) + ll[:, None], rtol=1e-10, atol=1e-10)
        for m in range(M):
            d = Xk - means[k, m]
            f = comps.factors[k][m]
            A1 = f.proj * f.inv_sqrt_psi[:, None]  # A' = Ψ^{-1/2} B
            np.testing.assert_allclose(stats.mass[k, m], r[:, m].sum(), rtol=1e-11)
            np.testing.assert_allclose(stats.first[k, m], r[:, m] @ d, rtol=1e-9, atol=1e-11)
            np.testing.assert_allclose(stats.second[k, m], r[:, m] @ (d * d), rtol=1e-10)
            np.testing.assert_allclose(stats.proj[k, m], (d * r[:, m, None]).T @ d @ A1, rtol=1e-9, atol=1e-11)


def test_blocks_merge_to_one_block(problem):
    weights, means, loadings, noise, X, y = problem
    comps = LowRankComponents.from_params(CLASSES, weights, means, loadings, noise)
    whole = estep_lowrank(X, y, comps)
    parts = merge_lowrank([estep_lowrank(X[a:a + 70], y[a:a + 70], comps) for a in range(0, 300, 70)])
    for name in ("counts", "mass", "first", "proj", "second", "loglik", "worst_score", "worst_x"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-11, atol=1e-11, err_msg=name)
    assert (parts.minimum, parts.maximum) == (X.min(), X.max())


def dense_em_step(X, r, W, psi, reg, isotropic):
    """An EM step of factor analysis (isotropic: PPCA) on weighted rows, with D×D matrices."""
    R = r.sum()
    mu = r @ X / R
    C = X - mu
    S = (C * r[:, None]).T @ C / R
    beta = W.T @ np.linalg.inv(W @ W.T + np.diag(psi))
    W_new = S @ beta.T @ np.linalg.inv(np.eye(W.shape[1]) - beta @ W + beta @ S @ beta.T)
    psi_new = np.diag(S - W_new @ beta @ S)
    psi_new = np.full(len(psi), max(psi_new.mean(), reg)) if isotropic else np.maximum(psi_new, reg)
    return mu, W_new, psi_new


@pytest.mark.parametrize("isotropic", [False, True])
def test_m_step_matches_a_dense_em_step(problem, isotropic):
    weights, means, loadings, noise, X, y = problem
    if isotropic:
        noise = np.broadcast_to(noise.mean(axis=2, keepdims=True), noise.shape).copy()
    comps = LowRankComponents.from_params(CLASSES, weights, means, loadings, noise)
    stats = estep_lowrank(X, y, comps)
    reg = 0.05
    for k, c in enumerate(CLASSES):
        _, r = dense_resp(X[y == c], weights[k], means[k], loadings[k], noise[k])
        for m in range(M):
            b, W, psi = m_step_component(stats.mass[k, m], stats.first[k, m], stats.proj[k, m], stats.second[k, m],
                                         loadings[k, m], noise[k, m], reg, isotropic)
            mu_ref, W_ref, psi_ref = dense_em_step(X[y == c], r[:, m], loadings[k, m], noise[k, m], reg, isotropic)
            np.testing.assert_allclose(means[k, m] + b, mu_ref, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(psi, psi_ref, rtol=1e-8, atol=1e-10)


def test_m_step_prior_borrows_the_class_covariance(problem):
    """prior_rows = ν: the scatter becomes (S + ν C) / (R + ν) for C the class mixture's covariance."""
    weights, means, loadings, noise, X, y = problem
    comps = LowRankComponents.from_params(CLASSES, weights, means, loadings, noise)
    stats = estep_lowrank(X, y, comps)
    F, psi_c = mixture_covariance_factors(weights[0], means[0], loadings[0], noise[0])
    mu = weights[0] @ means[0]
    C_ref = sum(w * (dense_covariance(Wm, p) + np.outer(mm - mu, mm - mu))
                for w, Wm, p, mm in zip(weights[0], loadings[0], noise[0], means[0]))
    np.testing.assert_allclose(F @ F.T + np.diag(psi_c), C_ref, rtol=1e-12, atol=1e-12)
    nu, reg = 7.0, 1e-3
    b, W, psi = m_step_component(stats.mass[0, 1], stats.first[0, 1], stats.proj[0, 1], stats.second[0, 1],
                                 loadings[0, 1], noise[0, 1], reg, False, nu, (F, psi_c))
    Xk = X[y == CLASSES[0]]
    _, r = dense_resp(Xk, weights[0], means[0], loadings[0], noise[0])
    r = r[:, 1]
    R = r.sum()
    mu_new = r @ Xk / R
    S = ((Xk - mu_new) * r[:, None]).T @ (Xk - mu_new)
    S = (S + nu * C_ref) / (R + nu)
    Wo, po = loadings[0, 1], noise[0, 1]
    beta = Wo.T @ np.linalg.inv(Wo @ Wo.T + np.diag(po))
    W_ref = S @ beta.T @ np.linalg.inv(np.eye(Q) - beta @ Wo + beta @ S @ beta.T)
    np.testing.assert_allclose(means[0, 1] + b, mu_new, rtol=1e-10)
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(psi, np.maximum(np.diag(S - W_ref @ beta @ S), reg), rtol=1e-8, atol=1e-10)


def test_hard_pass_sketch_and_nystrom_init():
    """Hard assignments give Σ d dᵀ Ω about the centres; on rank-q data plus small noise the
    Nyström start recovers the top-q covariance (Tipping & Bishop's closed form of the sample)."""
    rng = np.random.default_rng(2)
    n, q = 2000, 3
    basis = np.linalg.qr(rng.normal(size=(D, q)))[0]
    X = rng.normal(size=(n, q)) * [3.0, 2.0, 1.5] @ basis.T + 0.05 * rng.normal(size=(n, D)) + 4.0
    y = np.zeros(n, dtype=int)
    centers = np.stack([X[:1] + 0.1, np.full((1, D), np.nan)], axis=1)  # (1, 2, D): one centre unused
    stats = hard_lowrank(X, y, np.array([0]), centers, q, seed=11)
    omega = sketch_matrix(11, D, sketch_columns(q, D))
    d = X - centers[0, 0]
    np.testing.assert_allclose(stats.proj[0, 0], d.T @ d @ omega, rtol=1e-10)
    assert stats.mass[0, 1] == 0 and stats.mass[0, 0] == n
    np.testing.assert_allclose(stats.loglik[0], -((X - centers[0, 0]) ** 2).sum(), rtol=1e-12)
    b, W, psi = nystrom_init(stats.mass[0, 0], stats.first[0, 0], stats.proj[0, 0], stats.second[0, 0], omega,
                             q, 1e-6, isotropic=True)
    S = np.cov(X.T, bias=True)
    lam, V = np.linalg.eigh(S)
    lam, V = lam[::-1], V[:, ::-1]
    sigma2 = lam[q:].mean()
    np.testing.assert_allclose(centers[0, 0] + b, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(W @ W.T, V[:, :q] * (lam[:q] - sigma2) @ V[:, :q].T, rtol=0, atol=2e-3 * lam[0])
    np.testing.assert_allclose(psi, sigma2, rtol=0.2)
