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


def covariance_spectrum(cov: np.ndarray, rtol: float = EIG_RTOL) -> np.ndarray:
    """The eigenvalues :func:`factor_covariance` keeps (descending), without its eigenvectors:
    an ``eigvalsh`` of the active features (a third of ``eigh``'s time)."""
    if cov.ndim == 1:
        return np.sort(cov[cov > 0])[::-1]
    active = np.diagonal(cov) > 0
    w = np.linalg.eigvalsh(cov[np.ix_(active, active)])[::-1]
    return w[w > rtol * max(w[0], 0.0)] if len(w) else w


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


def triangular_spans(n_features: int, panels: int = PANELS) -> list[tuple[int, int, int]]:
    """Column panels ``(start, stop, stop)`` of a product with a full-rank upper triangular
    (D, D) matrix ``T``: columns ``start:stop`` of ``A @ T`` are ``A[:, :stop] @ T[:stop, start:stop]``."""
    edges = np.unique(np.linspace(0, n_features, panels + 1).round().astype(int))
    return [(int(lo), int(hi), int(hi)) for lo, hi in itertools.pairwise(edges)]


def upper_product(A: np.ndarray, T: np.ndarray, spans: list[tuple[int, int, int]], out: np.ndarray) -> np.ndarray:
    """``out = A @ T`` for an upper trapezoidal ``T`` (rank, D) by column panels (see
    :func:`triangular_factor`): ~56% of a full product's flops with 8 panels, each panel
    one GEMM (which releases the GIL: threads of one process multiply side by side)."""
    for lo, hi, used in spans:
        if used:
            np.matmul(A[:, :used], T[:used, lo:hi], out=out[:, lo:hi])
        else:
            out[:, lo:hi] = 0
    return out


def cholesky_lower(cov: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor ``L`` (``L @ L.T == cov``) of a full covariance (D, D), or
    None when ``cov`` is not positive definite (or not finite)."""
    if not np.all(np.isfinite(np.diagonal(cov))):
        return None
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    return L if np.all(np.isfinite(np.diagonal(L))) else None


def cholesky_factor(cov: np.ndarray, panels: int = PANELS, lower: np.ndarray | None = None):
    """``(T, spans)`` as :func:`triangular_factor` gives, from a Cholesky factorization
    of a positive definite full covariance (D, D): ``T = L.T`` is upper triangular
    with ``T.T @ T == cov``, no eigendecomposition or QR needed (~30x cheaper at
    D = 784). None when ``cov`` is not positive definite. ``lower``: ``L`` already
    computed (``cov`` is then not used)."""
    L = cholesky_lower(cov) if lower is None else lower
    if L is None:
        return None
    return np.ascontiguousarray(L.T), triangular_spans(L.shape[0], panels)


#: Columns per step of :meth:`CholeskyScore.whiten`: the diagonal blocks' products cost
#: ``2 * SOLVE_BLOCK / D`` of the solve's flops (12% at D = 4,096).
SOLVE_BLOCK = 256


@dataclass(frozen=True, eq=False)
class CholeskyScore:
    """What scoring rows under one positive definite Gaussian needs: its Cholesky factor
    ``lower`` (``L``, ``L L^T = cov``), the transposed inverses of ``L``'s diagonal blocks
    (small), and ``log_det = log |cov| = 2 sum log diag L``.

    Rows are whitened by a blocked forward substitution made only of matrix products
    (:meth:`whiten`): as many flops as a triangular solve, but GEMMs, which release the
    GIL, so threads of one worker score side by side (SciPy's triangular solve holds it).
    """

    lower: np.ndarray
    inv_blocks: tuple[np.ndarray, ...]
    log_det: float

    @classmethod
    def from_lower(cls, L: np.ndarray, block: int = SOLVE_BLOCK) -> CholeskyScore:
        from scipy.linalg.lapack import dtrtri  # here: sampling never loads SciPy

        L = np.ascontiguousarray(L, dtype=np.float64)
        D = L.shape[0]
        inv = []
        for a in range(0, D, block):
            b = min(D, a + block)
            Ti, info = dtrtri(L[a:b, a:b], lower=1)
            if info != 0:
                raise LinAlgError("Cholesky factor is singular")
            inv.append(np.ascontiguousarray(Ti.T))
        return cls(L, tuple(inv), 2.0 * float(np.log(np.diagonal(L)).sum()))

    def whiten(self, dev: np.ndarray) -> np.ndarray:
        """``L^-1 dev^T`` as rows: ``z`` (n, D) with ``z @ L.T == dev``."""
        L = self.lower
        z = np.empty_like(dev)
        a = 0
        for Ti in self.inv_blocks:
            b = a + Ti.shape[0]
            rest = dev[:, a:b]
            if a:
                rest = rest - z[:, :a] @ L[a:b, :a].T
            np.matmul(rest, Ti, out=z[:, a:b])
            a = b
        return z

    def log_likelihood(self, dev: np.ndarray) -> np.ndarray:
        """log N(x; mean, cov) of centred rows ``dev = x - mean`` (n, D)."""
        z = self.whiten(dev)
        maha = np.einsum("ij,ij->i", z, z)
        return -0.5 * (dev.shape[1] * LOG_2PI + self.log_det + maha)


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
