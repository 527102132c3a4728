"""One pass of EM over one block: the E-step, or hard assignment to initial centres.

Pure numpy (and scipy's BLAS). :class:`Components` holds what scoring a row under a
per-class mixture needs (log-weights, means, precision Cholesky factors); the pass
turns a block's rows (pixel units, any real dtype) into
:class:`~daskgen.kernels.weighted.WeightedStats` in model units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dtrmm

from .._blas import one_blas_thread, threads_shared
from .class_stats import as_model_units, class_rows
from .kmeans import sq_distances
from .linalg import LOG_2PI, factor_all, logsumexp_rows
from .weighted import WeightedStats, keep_worst, weighted_moments


@dataclass
class Components:
    """What an E-step needs: per (class, component) log-weight, mean and precision factor.

    ``prec_chol[k, m]`` is the upper-triangular ``P`` with ``P P^T = Sigma^-1``
    (scikit-learn's ``precisions_cholesky_``), or ``1 / sqrt(variances)`` for
    diagonal covariances; ``log_det[k, m]`` is ``log det P``. Dropped components
    have ``log_weights = -inf`` and are skipped.
    """

    classes: np.ndarray
    log_weights: np.ndarray  # (K, M)
    means: np.ndarray  # (K, M, D)
    prec_chol: np.ndarray  # (K, M, D, D) or (K, M, D)
    log_det: np.ndarray  # (K, M)

    @property
    def diagonal(self) -> bool:
        return self.prec_chol.ndim == 3

    @classmethod
    def from_covariances(cls, classes, weights, means, covariances) -> Components:
        K, M = means.shape[:2]
        prec = np.empty_like(covariances, dtype=np.float64)
        log_det = np.empty((K, M))
        with one_blas_thread():
            factors = factor_all([covariances[k, m] for k in range(K) for m in range(M)])
        for i, f in enumerate(factors):
            if f is None:
                raise ValueError(f"the covariance of class {classes[i // M]!r} component {i % M} is not positive definite")
            prec[i // M, i % M], log_det[i // M, i % M] = f
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        return cls(np.asarray(classes), log_w, np.asarray(means, dtype=np.float64), prec, log_det)

    def component_log_prob(self, Xs: np.ndarray, k: int) -> np.ndarray:
        """``log w[k, m] + log N(x; mu[k, m], Sigma[k, m])`` for rows ``Xs`` (float64), shape (n, M)."""
        n, D = Xs.shape
        M = self.means.shape[1]
        out = np.full((n, M), -np.inf)
        # scipy's BLAS wrappers (trmm) hold the GIL, which would serialise tasks running in
        # other threads of this process; numpy's matmul releases it. Alone in its process
        # (a worker process per core, or in memory) trmm's half flops win.
        trmm = not threads_shared()
        for m in range(M):
            if not np.isfinite(self.log_weights[k, m]):
                continue
            C = Xs - self.means[k, m]  # C-contiguous (n, D)
            if self.diagonal:
                C *= self.prec_chol[k, m]
            elif n and trmm:
                # C := C @ P with P upper triangular, in place (trmm: half the flops of gemm);
                # C.T is the Fortran-ordered (D, n) view, so P^T C^T overwrites C.
                dtrmm(1.0, self.prec_chol[k, m], C.T, side=0, lower=0, trans_a=1, overwrite_b=1)
            elif n:
                C = C @ self.prec_chol[k, m]
            maha = np.einsum("ij,ij->i", C, C)
            out[:, m] = self.log_weights[k, m] + self.log_det[k, m] - 0.5 * (D * LOG_2PI + maha)
        return out


class ClassScan:
    """The rows of one block class by class, in model units: iterate for ``(j, k, Xs)`` with
    ``j`` the position among the classes ``present`` in the block, ``k`` in ``classes`` and
    ``Xs`` (n_k, D) float64; ``range`` is then the smallest and largest value seen."""

    def __init__(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray, scale: float = 1.0):
        self.X, self.scale = X, scale
        self.pos, self.rows, self.present = class_rows(np.asarray(y), classes)
        self.range = (np.nan, np.nan)

    def __iter__(self):
        lo = hi = np.nan
        for j, (k, idx) in enumerate(zip(self.pos, self.rows)):
            Xs = as_model_units(self.X, idx, self.scale)
            lo, hi = np.fmin(lo, Xs.min()), np.fmax(hi, Xs.max())
            self.range = (float(lo), float(hi))
            yield j, k, Xs


def responsibilities(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of ``log w + log N`` per row and component (n, M): log p(x) (n,) and the responsibilities
    (n, M) (0 for rows of zero likelihood)."""
    ll = logsumexp_rows(lp)
    with np.errstate(invalid="ignore"):
        resp = np.exp(lp - ll[:, None])
    resp[~np.isfinite(ll)] = 0.0
    return ll, resp


def estep_stats(X: np.ndarray, y: np.ndarray, comps: Components, scale: float = 1.0) -> WeightedStats:
    """E-step of one chunk: responsibilities under ``comps`` and their weighted statistics.

    ``X`` (n, D) in pixel units (any real dtype), ``y`` (n,) labels; rows are scaled to
    model units per class. ``loglik`` sums ``log p(x | y)``.
    """
    _, M, D = comps.means.shape
    scan = ClassScan(X, y, comps.classes, scale)
    out = WeightedStats.empty(len(scan.present), M, D, comps.diagonal, scan.present)
    for j, k, Xs in scan:
        lp = comps.component_log_prob(Xs, k)
        ll, resp = responsibilities(lp)
        out.counts[j] = len(Xs)
        out.loglik[j] = ll.sum()
        for m in range(M):
            out.mass[j, m], out.means[j, m], out.scatter[j, m] = weighted_moments(Xs, resp[:, m], comps.diagonal)
        out.worst_score[j], out.worst_x[j] = keep_worst(ll, Xs, M)
    out.minimum, out.maximum = scan.range
    return out


def assign_nearest(Xs: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's nearest centre (M, D) (NaN rows: never) and its score ``-|x - c|^2``."""
    d2 = sq_distances(Xs, centers)
    nearest = np.argmin(d2, axis=1)
    return nearest, -d2[np.arange(len(Xs)), nearest]


def hard_stats(X: np.ndarray, y: np.ndarray, classes: np.ndarray, centers: np.ndarray, diagonal: bool,
               scale: float = 1.0) -> WeightedStats:
    """Statistics of hard assignments to the nearest of ``centers`` (K, M, D) (NaN rows: unused).

    The score of a row is ``-min_m |x - c_m|^2``: the farthest rows are the worst.
    """
    _, M, D = centers.shape
    scan = ClassScan(X, y, classes, scale)
    out = WeightedStats.empty(len(scan.present), M, D, diagonal, scan.present)
    for j, k, Xs in scan:
        nearest, score = assign_nearest(Xs, centers[k])
        out.counts[j] = len(Xs)
        out.loglik[j] = score.sum()
        for m in range(M):
            r = (nearest == m).astype(np.float64)
            out.mass[j, m], out.means[j, m], out.scatter[j, m] = weighted_moments(Xs, r, diagonal)
        out.worst_score[j], out.worst_x[j] = keep_worst(score, Xs, M)
    out.minimum, out.maximum = scan.range
    return out
