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
  ``x = mean + W z + √ψ · ε`` with ``ε ~ N(0, I_D)`` drawn first as one (n, D) block and
  then ``z ~ N(0, I_q)`` as one (n, q) block from ``rng``: the result depends only on
  ``rng``'s state and the inputs. Drawn in :func:`working_dtype` of ``dtype`` (float32
  unless the output is float64).
* :class:`LowRankSampler` ``(priors, means, loadings, noise, dtype)`` — a model sampler
  (``draw_classes``, ``draw``) of G such Gaussians.
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


def working_dtype(dtype: Any) -> np.dtype:
    """The dtype low-rank samples are drawn in for output ``dtype``: float64 for float64
    output, float32 otherwise (float32 or 8-bit pixels, where a float32 draw's ~1e-7
    relative error is far below one pixel level; numpy's float32 normals and single-precision
    BLAS are faster and the chunk's working arrays half the size)."""
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def sample(n: int, mean: np.ndarray, W: np.ndarray, psi, rng: np.random.Generator,
           dtype: Any = np.float64) -> np.ndarray:
    """``n`` rows of ``mean + W z + √ψ ε`` in :func:`working_dtype` of ``dtype``: ε then z."""
    W = np.asarray(W)
    sampler = LowRankSampler(np.ones(1), np.asarray(mean)[None], W[None], _psi_vector(psi, W.shape[0])[None], dtype)
    return sampler.draw(np.zeros(n, dtype=np.intp), rng)


def dense_covariance(W: np.ndarray, psi) -> np.ndarray:
    """``W Wᵀ + diag(psi)`` (D, D): a reference for tests at small D only."""
    W = np.asarray(W, dtype=np.float64)
    C = W @ W.T
    C[np.diag_indices(W.shape[0])] += _psi_vector(psi, W.shape[0])
    return C


class LowRankSampler(Sampler):
    """Draws rows of G low-rank Gaussians (the model sampler of the ``ppca``/``fa`` kinds).

    ``priors`` (G,), ``means`` (G, D), ``loadings`` (G, D, q), ``noise`` (G, D) variances.
    :meth:`draw` draws, from the generator, ε for all n rows as one (n, D) block into the
    output, then z for all rows as one (n, q) block, and turns each Gaussian's rows (in
    increasing index order) into ``mean + W z + √ψ ε`` in place: the result depends only on
    the generator's state and the inputs, and a chunk costs one block of normals, one
    (n, q)·(q, D) product and no (n, D) temporary beyond one Gaussian's rows. Parameters
    are kept in :func:`working_dtype` (float32 unless the output is float64).
    Picklable: generation ships it to each worker once. ``draw_classes`` is
    :class:`~daskgen.kernels.sampling.Sampler`'s.
    """

    def __init__(self, priors: np.ndarray, means: np.ndarray, loadings: np.ndarray, noise: np.ndarray,
                 dtype: Any = np.float64):
        self.work = working_dtype(dtype)
        self.priors = np.asarray(priors, dtype=np.float64)
        #: p(y) of draw_classes
        self.class_priors = self.priors
        self.n_features = int(np.shape(means)[1])
        self.means = np.ascontiguousarray(means, dtype=self.work)
        # Wᵀ per Gaussian (G, q, D), so z (n, q) @ Wᵀ writes rows of the output's layout
        self.loadings_t = np.ascontiguousarray(np.swapaxes(np.asarray(loadings), 1, 2), dtype=self.work)
        self.noise_sd = np.sqrt(np.asarray(noise, dtype=np.float64)).astype(self.work)

    @property
    def rank(self) -> int:
        return int(self.loadings_t.shape[1])

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample per entry of ``class_index``, shape (n, D), in the working dtype."""
        class_index = np.asarray(class_index)
        n = len(class_index)
        out = np.empty((n, self.n_features), dtype=self.work)
        rng.standard_normal(dtype=self.work, out=out)  # ε of every row
        z = rng.standard_normal((n, self.rank), dtype=self.work)
        ks = np.unique(class_index)
        whole = len(ks) == 1  # one Gaussian: work on the output itself, no gather/scatter
        for k in ks:
            rows = slice(None) if whole else np.flatnonzero(class_index == k)
            x = out if whole else out[rows]
            x *= self.noise_sd[k]
            x += self.means[k]
            if self.rank:
                x += z[rows] @ self.loadings_t[k]
            if not whole:
                out[rows] = x
        return out
