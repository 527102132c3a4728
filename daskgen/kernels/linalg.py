"""Linear algebra of Gaussians: PSD roots, triangular sampling factors, precision Cholesky, log-sum-exp.

Pure numpy (and SciPy's LAPACK for the precision Cholesky, imported when first used). Covariances are float64, full (D, D) or diagonal (D,); a
singular covariance (pixels that never vary) is factored on its support, never
regularised here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.linalg import LinAlgError  # what scipy.linalg raises too

#: Eigenvalues below ``EIG_RTOL * max(eigenvalue)`` count as zero (scipy's _PSD default).
EIG_RTOL = 1e6 * np.finfo(np.float64).eps
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class ClassFactor:
    """A PSD square root of one class covariance, restricted to its non-constant features.

    ``x = mean`` on features whose variance is exactly 0; on the others (``active``),
    ``x[active] = mean[active] + root @ z`` with ``root`` of shape (n_active, rank),
    ``root @ root.T == covariance[active][:, active]`` up to the dropped eigenvalues.
    """

    active: np.ndarray  # (D,) bool
    root: np.ndarray  # (n_active, rank) float64
    eigvals: np.ndarray  # (rank,) kept eigenvalues, descending
    basis: np.ndarray  # (n_active, rank) orthonormal eigenvectors

    @property
    def rank(self) -> int:
        return int(self.root.shape[1])


def factor_covariance(cov: np.ndarray, rtol: float = EIG_RTOL) -> ClassFactor:
    """Factor one covariance (full (D, D) or diagonal (D,)) once, for sampling and scoring."""
    if cov.ndim == 1:
        active = cov > 0
        var = cov[active]
        order = np.argsort(var)[::-1]
        n_act = int(active.sum())
        basis = np.zeros((n_act, n_act))
        basis[order, np.arange(n_act)] = 1.0
        eig = var[order]
    else:
        diag = np.diagonal(cov)
        active = diag > 0
        sub = cov[np.ix_(active, active)]
        w, V = np.linalg.eigh(sub)
        w, V = w[::-1], V[:, ::-1]
        keep = w > rtol * max(w[0], 0.0) if len(w) else np.zeros(0, bool)
        eig, basis = w[keep], np.ascontiguousarray(V[:, keep])
    root = basis * np.sqrt(eig)
    return ClassFactor(active, np.ascontiguousarray(root), eig, basis)


#: Column panels of the triangular product in :meth:`Sampler.draw`: 8 panels do ~56% of
#: a full product's flops and keep each GEMM large enough to run at full speed.
PANELS = 8


def triangular_factor(factor: ClassFactor, n_features: int, panels: int = PANELS):
    """An upper-trapezoidal ``T`` (rank, D) with ``T.T @ T == root @ root.T`` on the
    active features and zero columns elsewhere, and its column panels.

    ``root.T = Q R`` (QR), so ``root = R.T Q.T`` and ``x = mean + R.T (Q.T z)``: ``Q.T z``
    is again standard normal, and ``R`` is upper trapezoidal, so output column ``j``
    needs only the first ``j + 1`` normals. The eigendecomposition fixes the rank and
    the distribution; the rotation only halves the sampling flops. Returns ``T`` and
    ``[(start, stop, k), ...]``: columns ``start:stop`` of a draw are
    ``z[:, :k] @ T[:k, start:stop]``.
    """
    rank = factor.rank
    T = np.zeros((rank, n_features))
    if rank:
        T[:, np.flatnonzero(factor.active)] = np.linalg.qr(factor.root.T, mode="r")
    active_before = np.concatenate([[0], np.cumsum(factor.active)])
    edges = np.unique(np.linspace(0, n_features, panels + 1).round().astype(int))
    spans = [(int(lo), int(hi), int(min(rank, active_before[hi]))) for lo, hi in itertools.pairwise(edges)]
    return T, spans


def cholesky_factor(cov: np.ndarray, panels: int = PANELS):
    """``(T, spans)`` as :func:`triangular_factor` gives, from a Cholesky factorization
    of a positive definite full covariance (D, D): ``T = L.T`` is upper triangular
    with ``T.T @ T == cov``, no eigendecomposition or QR needed (~30x cheaper at
    D = 784). None when ``cov`` is not positive definite."""
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    D = cov.shape[0]
    edges = np.unique(np.linspace(0, D, panels + 1).round().astype(int))
    return np.ascontiguousarray(L.T), [(int(lo), int(hi), int(hi)) for lo, hi in itertools.pairwise(edges)]


def precision_cholesky(cov: np.ndarray) -> tuple[np.ndarray, float]:
    """(P, log det P) with P upper triangular, P P^T = inv(cov); raises LinAlgError if not PD."""
    if cov.ndim == 1:
        if not (np.all(np.isfinite(cov)) and np.all(cov > 0)):
            raise LinAlgError("variance not positive")
        p = 1.0 / np.sqrt(cov)
        return p, float(np.log(p).sum())
    if not np.all(np.isfinite(cov)):
        raise LinAlgError("covariance not finite")
    from scipy.linalg.lapack import dpotrf, dtrtri  # here: scoring one Gaussian per class never loads SciPy

    # LAPACK directly on a Fortran view of the symmetric matrix: its upper triangle
    # factor U (cov = U^T U) is the transposed lower factor L, and inv(U) is P.
    U, info = dpotrf(cov.T, lower=0, clean=1, overwrite_a=0)
    if info != 0:
        raise LinAlgError("covariance not positive definite")
    P, info = dtrtri(U, lower=0, overwrite_c=1)
    if info != 0:
        raise LinAlgError("covariance not positive definite")
    return np.ascontiguousarray(P), float(np.log(np.diagonal(P)).sum())


def factor_all(covs: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
    """:func:`precision_cholesky` of each covariance (None where it is not positive definite)."""

    def one(cov):
        try:
            return precision_cholesky(cov)
        except (LinAlgError, ValueError):
            return None

    # One after the other: scipy's LAPACK wrappers hold the GIL, so threads would not help.
    return [one(c) for c in covs]



def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum_j exp(a[i, j]) per row, exact for rows of -inf (gives -inf)."""
    top = a.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (safe + np.log(np.exp(a - safe).sum(axis=1, keepdims=True)))[:, 0]
