"""Gaussians with a low-rank-plus-diagonal covariance ``C = W Wᵀ + diag(ψ)``.

Pure numpy. Everything here costs O(D·q) per row and O(D·q²) per Gaussian: no D×D
matrix (covariance, precision or factor) is ever formed. Probabilistic PCA is the case
``ψ = σ²·1``; factor analysis has one ψ per feature.

Stable API (the mixtures of these Gaussians build on it):

* :func:`prepare` ``(W, psi) -> LowRankFactor`` — factor one covariance once: the
  whitened loading ``A = Ψ^{-1/2} W``, the Cholesky ``L`` of ``M = I_q + AᵀA``, the
  projection ``B = A L^{-T}`` (D, q) and ``log|C|`` by the matrix determinant lemma
  ``log|C| = Σ log ψ + log|M|``. ``W`` is (D, q) (q may be 0), ``psi`` (D,) > 0 or a
  positive scalar (broadcast to (D,)).
* :func:`log_density` ``(X, mean, factor) -> (n,)`` — ``log N(x; mean, C)`` of each row
  of ``X`` (n, D) by Woodbury: with ``u = (x − mean)/√ψ``,
  ``(x − mean)ᵀ C⁻¹ (x − mean) = ‖u‖² − ‖u B‖²``. One (n, D)·(D, q) product per call.
* :func:`log_density_many` ``(X, means, factors) -> (n, G)`` — the same for G Gaussians
  (``means`` (G, D), ``factors`` a sequence of G :class:`LowRankFactor`).
* :func:`latent_posterior` ``(X, mean, W, factor) -> (E[z|x] (n, q), Cov[z|x] (q, q))`` —
  ``z | x ~ N(M⁻¹ Wᵀ Ψ⁻¹ (x − mean), M⁻¹)``, what EM for factor analysers needs.
* :func:`sample` ``(n, mean, W, psi, rng, dtype=float64) -> (n, D)`` —
  ``x = mean + W z + √ψ · ε`` with ``z ~ N(0, I_q)`` drawn first as one (n, q) block and
  then ``ε ~ N(0, I_D)`` as one (n, D) block from ``rng``: the result depends only on
  ``rng``'s state and the inputs.
* :class:`LowRankSampler` ``(priors, means, loadings, noise, dtype)`` — a model sampler
  (``draw_classes``, ``draw``) of G such Gaussians, each drawn with :func:`sample`.
* :func:`dense_covariance` ``(W, psi)`` — ``W Wᵀ + diag(ψ)`` as a D×D array: for tests
  and references at small D only, never on a fitting, scoring or sampling path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sampling import Sampler

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class LowRankFactor:
    """One covariance ``W Wᵀ + diag(psi)`` prepared for scoring (see :func:`prepare`)."""

    psi: np.ndarray  # (D,) noise variances, > 0
    inv_sqrt_psi: np.ndarray  # (D,) 1/√ψ
    chol_m: np.ndarray  # (q, q) lower L with L Lᵀ = I + Wᵀ Ψ⁻¹ W
    proj: np.ndarray  # (D, q) B = Ψ^{-1/2} W L^{-T}
    logdet: float  # log |W Wᵀ + diag(psi)|

    @property
    def rank(self) -> int:
        return int(self.proj.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.psi.shape[0])


def _psi_vector(psi, n_features: int) -> np.ndarray:
    psi = np.asarray(psi, dtype=np.float64)
    if psi.ndim == 0:
        psi = np.full(n_features, float(psi))
    if psi.shape != (n_features,):
        raise ValueError(f"psi has shape {psi.shape}, expected ({n_features},) or a scalar")
    if not (np.all(np.isfinite(psi)) and np.all(psi > 0)):
        raise ValueError("psi must be finite and > 0 (floor it at reg_covar)")
    return psi


def prepare(W: np.ndarray, psi) -> LowRankFactor:
    """Factor ``W Wᵀ + diag(psi)`` once: O(D·q²) time, O(D·q) memory."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"W must be (D, q), got shape {W.shape}")
    D, q = W.shape
    psi = _psi_vector(psi, D)
    inv_sqrt = 1.0 / np.sqrt(psi)
    A = W * inv_sqrt[:, None]
    M = A.T @ A
    M[np.diag_indices(q)] += 1.0
    L = np.linalg.cholesky(M) if q else np.zeros((0, 0))
    # B = A L^{-T}  <=>  B Lᵀ = A  <=>  L Bᵀ = Aᵀ
    B = np.linalg.solve(L, A.T).T if q else np.zeros((D, 0))
    logdet = float(np.log(psi).sum() + 2.0 * np.log(np.diagonal(L)).sum())
    return LowRankFactor(psi, inv_sqrt, L, np.ascontiguousarray(B), logdet)


def mahalanobis(X: np.ndarray, mean: np.ndarray, factor: LowRankFactor) -> np.ndarray:
    """(x − mean)ᵀ C⁻¹ (x − mean) per row, by Woodbury, O(D·q) per row."""
    U = np.asarray(X, dtype=np.float64) - mean
    U *= factor.inv_sqrt_psi
    quad = np.einsum("ij,ij->i", U, U)
    if factor.rank:
        P = U @ factor.proj
        quad -= np.einsum("ij,ij->i", P, P)
    return quad


def log_density(X: np.ndarray, mean: np.ndarray, factor: LowRankFactor) -> np.ndarray:
    """log N(x; mean, W Wᵀ + diag ψ) of each row of ``X`` (n, D): (n,) float64."""
    quad = mahalanobis(X, mean, factor)
    return -0.5 * (factor.n_features * LOG_2PI + factor.logdet + quad)


def log_density_many(X: np.ndarray, means: np.ndarray, factors: Sequence[LowRankFactor]) -> np.ndarray:
    """(n, G) log-densities of each row under each of G low-rank Gaussians."""
    X = np.asarray(X, dtype=np.float64)
    out = np.empty((X.shape[0], len(factors)))
    for g, f in enumerate(factors):
        out[:, g] = log_density(X, means[g], f)
    return out


def latent_posterior(X: np.ndarray, mean: np.ndarray, W: np.ndarray, factor: LowRankFactor):
    """``E[z | x]`` (n, q) and ``Cov[z | x] = M⁻¹`` (q, q) for ``x = mean + W z + noise``."""
    q = factor.rank
    L = factor.chol_m
    if q == 0:
        return np.zeros((np.shape(X)[0], 0)), np.zeros((0, 0))
    U = (np.asarray(X, dtype=np.float64) - mean) * (factor.inv_sqrt_psi / np.sqrt(factor.psi))
    R = U @ np.asarray(W, dtype=np.float64)  # (x-μ)ᵀ Ψ⁻¹ W, (n, q)
    Linv = np.linalg.solve(L, np.eye(q))
    Minv = Linv.T @ Linv
    return R @ Minv, Minv


def sample(n: int, mean: np.ndarray, W: np.ndarray, psi, rng: np.random.Generator,
           dtype: Any = np.float64) -> np.ndarray:
    """``n`` rows of ``mean + W z + √ψ ε`` in ``dtype`` (float32 or float64); z then ε."""
    work = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
    W = np.asarray(W)
    D, q = W.shape
    sd = np.sqrt(_psi_vector(psi, D)).astype(work)
    z = rng.standard_normal((n, q), dtype=work) if q else None
    out = rng.standard_normal((n, D), dtype=work)
    out *= sd
    if q:
        out += z @ np.ascontiguousarray(W.T, dtype=work)
    out += np.asarray(mean, dtype=work)
    return out


def dense_covariance(W: np.ndarray, psi) -> np.ndarray:
    """``W Wᵀ + diag(psi)`` (D, D): a reference for tests at small D only."""
    W = np.asarray(W, dtype=np.float64)
    C = W @ W.T
    C[np.diag_indices(W.shape[0])] += _psi_vector(psi, W.shape[0])
    return C


class LowRankSampler(Sampler):
    """Draws rows of G low-rank Gaussians (the model sampler of the ``ppca``/``fa`` kinds).

    ``priors`` (G,), ``means`` (G, D), ``loadings`` (G, D, q), ``noise`` (G, D) variances.
    :meth:`draw` visits the Gaussians in increasing index order and draws each one's rows
    with :func:`sample`, so the result depends only on the generator's state and the
    inputs. Parameters are kept in the working dtype (float32 when the output is float32).
    Picklable: generation ships it to each worker once. ``draw_classes`` is
    :class:`~daskgen.kernels.sampling.Sampler`'s.
    """

    def __init__(self, priors: np.ndarray, means: np.ndarray, loadings: np.ndarray, noise: np.ndarray,
                 dtype: Any = np.float64):
        self.work = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        self.priors = np.asarray(priors, dtype=np.float64)
        #: p(y) of draw_classes
        self.class_priors = self.priors
        self.n_features = int(np.shape(means)[1])
        self.means = np.ascontiguousarray(means, dtype=self.work)
        self.loadings = np.ascontiguousarray(loadings, dtype=self.work)
        self.noise = np.asarray(noise, dtype=np.float64)

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample per entry of ``class_index``, shape (n, D), in the working dtype."""
        out = np.empty((len(class_index), self.n_features), dtype=self.work)
        for k in np.unique(class_index):
            rows = np.flatnonzero(class_index == k)
            out[rows] = sample(len(rows), self.means[k], self.loadings[k], self.noise[k], rng, self.work)
        return out
