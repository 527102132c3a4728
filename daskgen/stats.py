"""Per-class sufficient statistics: chunk, merge — pure numpy, no Dask.

The statistic of a set of rows with labels is, per class k:

* ``counts[k]``   number of rows,
* ``means[k]``    their mean (shape ``(D,)``),
* ``scatter[k]``  the centered scatter ``sum_i (x_i - mean_k)(x_i - mean_k)^T``
  (shape ``(D, D)``, or ``(D,)`` for diagonal statistics).

Keeping the scatter centered about the class mean (rather than a raw sum of
squares) is what keeps covariances exact when values carry a large offset, and
two statistics merge exactly (Chan, Golub & LeVeque) with::

    n = na + nb;  d = mb - ma
    mean    = ma + d * nb / n
    scatter = Sa + Sb + (na * nb / n) * d d^T

Chunk -> merge -> finalize mirrors flox's chunk/combine/finalize split: each step is
a plain function on numpy arrays, and the Dask graph is built elsewhere (``reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClassStats:
    """Sufficient statistics of labelled rows, per class.

    Attributes
    ----------
    classes : ndarray of shape (K,)
        Sorted class labels (integers, floats or strings).
    counts : ndarray of shape (K,), int64
    means : ndarray of shape (K, D), float64
    scatter : ndarray of shape (K, D, D) or (K, D), float64
        Centered outer-product sums (full) or centered sums of squares (diag).
    minimum, maximum : float
        Smallest and largest value seen in any feature (NaN when empty).
    """

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    scatter: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def diagonal(self) -> bool:
        return self.scatter.ndim == 2

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def empty(cls, n_features: int, diagonal: bool = False, label_dtype=np.int64) -> ClassStats:
        shape = (0, n_features) if diagonal else (0, n_features, n_features)
        return cls(
            classes=np.empty(0, dtype=label_dtype),
            counts=np.zeros(0, dtype=np.int64),
            means=np.zeros((0, n_features)),
            scatter=np.zeros(shape),
        )


def _centered_scatter(C: np.ndarray) -> np.ndarray:
    """``C.T @ C`` for a C-contiguous (n, D) float64 block.

    NumPy recognises ``A.T @ A`` and calls BLAS syrk (half the flops of gemm), mirrors
    the triangle (exactly symmetric), and releases the GIL — which scipy's f2py BLAS
    wrappers do not, serialising a threaded worker's tasks.
    """
    return C.T @ C


def chunk_stats(X: np.ndarray, y: np.ndarray, diagonal: bool = False, scale: float = 1.0) -> ClassStats:
    """Statistics of one block of rows, of ``X * scale``.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Feature values, any real dtype and memory layout (uint8 pixels stay uint8
        until each class slice is converted to float64: 8x less memory traffic).
    y : ndarray of shape (n,)
        Class label of each row.
    diagonal : bool
        Keep only per-feature sums of squares instead of the full scatter.
    scale : float
        Statistics are of ``X * scale``: means scale by ``scale``, scatter by ``scale**2``.
    """
    X = np.asarray(X)
    if X.dtype.kind not in "iufb":
        raise ValueError(f"chunk_stats needs numbers, got dtype {X.dtype}")
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"chunk_stats needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    K, D = len(classes), X.shape[1]
    lo = float(X.min()) if X.size else np.nan
    hi = float(X.max()) if X.size else np.nan
    means = np.zeros((K, D))
    scatter = np.zeros((K, D) if diagonal else (K, D, D))
    # Rows sorted by class in their stored dtype, each class slice converted into one
    # new float64 buffer, centered in place, and one BLAS call per class.
    Xs = X[np.argsort(inverse, kind="stable")]
    start = 0
    exact_sums = X.dtype.kind in "iub"  # integer sums are exact in float64 (below 2**53)
    for k, stop in enumerate(np.cumsum(counts)):
        rows = Xs[start:stop]
        start = stop
        m = rows.mean(axis=0, dtype=np.float64)
        C = np.subtract(rows, m, dtype=np.float64)  # convert and center in one pass
        if not exact_sums:
            # Second pass: remove the rounding error of the first mean (large offsets).
            correction = C.mean(axis=0)
            C -= correction
            m += correction
        means[k] = m
        scatter[k] = np.einsum("ij,ij->j", C, C) if diagonal else _centered_scatter(C)
    if scale != 1.0:
        means *= scale
        scatter *= scale * scale
        lo, hi = lo * scale, hi * scale
    return ClassStats(classes, counts.astype(np.int64), means, scatter, lo, hi)


def _union_classes(parts: list[ClassStats]) -> np.ndarray:
    labelled = [p.classes for p in parts if len(p.classes)]
    if not labelled:
        return parts[0].classes
    kinds = {"num" if c.dtype.kind in "iufb" else "str" for c in labelled}
    if len(kinds) > 1:  # numpy would silently turn the numbers into strings
        raise TypeError("labels of different types (numbers and strings) cannot be merged")
    return np.unique(np.concatenate(labelled))


def merge(parts: list[ClassStats] | tuple[ClassStats, ...]) -> ClassStats:
    """Combine statistics of disjoint row sets into the statistics of their union.

    Exact up to float64 rounding; associative and commutative up to rounding. The
    inputs are not modified; the result is accumulated in place in one new buffer
    (so a combine step holds its inputs plus one statistic, not a pairwise chain of
    temporaries).
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge needs at least one ClassStats")
    D = parts[0].n_features
    diagonal = parts[0].diagonal
    for p in parts:
        if p.n_features != D or p.diagonal != diagonal:
            raise ValueError("cannot merge statistics of different shapes")
    classes = _union_classes(parts)
    K = len(classes)
    counts = np.zeros(K, dtype=np.int64)
    means = np.zeros((K, D))
    scatter = np.zeros((K, D) if diagonal else (K, D, D))
    for p in parts:
        if not len(p.classes):
            continue
        idx = np.searchsorted(classes, p.classes)
        for j, k in enumerate(idx):
            nb = int(p.counts[j])
            if nb == 0:
                continue
            na = int(counts[k])
            n = na + nb
            delta = p.means[j] - means[k]
            means[k] += delta * (nb / n)
            scatter[k] += p.scatter[j]
            if na:
                w = na * nb / n
                if diagonal:
                    scatter[k] += w * delta * delta
                else:
                    # Rank-one update in place (BLAS ger-like), no D*D temporary per class
                    # beyond the outer product itself.
                    scatter[k] += w * np.outer(delta, delta)
            counts[k] = n
    lows = [p.minimum for p in parts if not np.isnan(p.minimum)]
    highs = [p.maximum for p in parts if not np.isnan(p.maximum)]
    return ClassStats(
        classes,
        counts,
        means,
        scatter,
        min(lows) if lows else np.nan,
        max(highs) if highs else np.nan,
    )


def to_diagonal(stats: ClassStats) -> ClassStats:
    """Diagonal statistics from full ones (the diagonal of each scatter)."""
    if stats.diagonal:
        return stats
    diag = np.ascontiguousarray(np.diagonal(stats.scatter, axis1=1, axis2=2))
    return ClassStats(stats.classes, stats.counts, stats.means, diag, stats.minimum, stats.maximum)
