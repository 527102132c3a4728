"""Per-class sufficient statistics: chunk, merge — pure numpy, no Dask.

Also the row grouping every per-class kernel shares (:func:`class_rows`,
:func:`as_model_units`).

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
a plain function on numpy arrays, and the Dask graph is built elsewhere (``daskgen.distributed``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

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


def centered_scatter(C: np.ndarray) -> np.ndarray:
    """``C.T @ C`` for a C-contiguous (n, D) float64 block.

    NumPy recognises ``A.T @ A`` and calls BLAS syrk (half the flops of gemm), mirrors
    the triangle (exactly symmetric), and releases the GIL — which scipy's f2py BLAS
    wrappers do not, serialising a threaded worker's tasks.
    """
    return C.T @ C


#: float32 holds every integer below 2**24 exactly.
_F32_EXACT = 2**24


def chunk_stats(X: np.ndarray, y: np.ndarray, diagonal: bool = False, scale: float = 1.0) -> ClassStats:
    """Statistics of one block of rows, of ``X * scale``.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Feature values, any real dtype and memory layout (uint8 pixels stay uint8
        until each class slice is converted: 8x less memory traffic). Small integers
        (such as 8-bit pixels) take an exact integer path; other data is centered in
        float64 about each class mean (two passes, exact for large offsets).
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
    exact_sums = X.dtype.kind in "iub"  # integer sums are exact in float64 (below 2**53)
    lo = float(X.min()) if X.size else np.nan
    hi = float(X.max()) if X.size else np.nan
    if exact_sums and not diagonal and X.size and max(abs(lo), abs(hi)) <= 255:
        return pixel_sums(X, y).to_class_stats(scale)  # exact integer sums, rounded once
    classes, counts, blocks = _by_class(X, y)
    K, D = len(classes), X.shape[1]
    means = np.zeros((K, D))
    scatter = np.zeros((K, D) if diagonal else (K, D, D))
    for k, rows in enumerate(blocks):  # one BLAS call per class
        m = rows.mean(axis=0, dtype=np.float64)
        C = np.subtract(rows, m, dtype=np.float64)  # convert and center in one pass
        if not exact_sums:
            # Second pass: remove the rounding error of the first mean (large offsets).
            correction = C.mean(axis=0)
            C -= correction
            m += correction
        means[k] = m
        scatter[k] = np.einsum("ij,ij->j", C, C) if diagonal else centered_scatter(C)
    if scale != 1.0:
        means *= scale
        scatter *= scale * scale
        lo, hi = lo * scale, hi * scale
    return ClassStats(classes, counts, means, scatter, lo, hi)


def _by_class(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The sorted classes of ``y``, their counts (int64), and each class's rows of ``X``:
    rows sorted by class once, in their stored dtype (uint8 stays uint8), then sliced."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    Xs = X[np.argsort(inverse, kind="stable")]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return classes, counts.astype(np.int64), [Xs[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class PixelSums:
    """Exact sums of integer pixels, per class: the fit's statistics for 8-bit images.

    ``counts`` (K,), ``sums`` (K, D) and ``gram`` (K, D, D) (sum of x x^T) hold exact
    integers (float64 is exact below 2**53: up to ~10**11 rows of a class). Merging is
    plain addition, exact in any order and any grouping, so the reduction may combine
    blocks in the order they finish (see ``daskgen.distributed.reduction``) and still give bit-identical
    results. :meth:`to_class_stats` forms the centered statistics once, at the end.
    """

    classes: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    gram: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    def to_class_stats(self, scale: float = 1.0) -> ClassStats:
        """Means and centered scatter of ``x * scale``, from exact integers.

        With ``s = n q + r`` (``q = s // n``, ``0 <= r < n``), ``G - s s^T / n`` is
        ``(G - n q q^T - q r^T - r q^T) - r r^T / n``: the bracket is exact integer
        arithmetic in float64 (every term is below ``n m**2 < 2**53``), so only the last,
        small term and the final subtraction round, for any number of rows.
        """
        K, D = self.sums.shape
        means = np.zeros((K, D))
        scatter = np.zeros((K, D, D))
        for k in range(K):
            n = int(self.counts[k])
            if n == 0:
                continue
            s, G = self.sums[k], self.gram[k]
            means[k] = s / n
            q = np.floor_divide(s, n)
            r = s - n * q
            S = G - n * np.outer(q, q)
            S -= np.outer(q, r)
            S -= np.outer(r, q)
            S -= np.outer(r, r) / n
            scatter[k] = S
        lo, hi = self.minimum, self.maximum
        if scale != 1.0:
            means *= scale
            scatter *= scale * scale
            lo, hi = lo * scale, hi * scale
        return ClassStats(self.classes, self.counts.copy(), means, scatter, lo, hi)


def pixel_sums(X: np.ndarray, y: np.ndarray) -> PixelSums:
    """Exact per-class count, sum and Gram matrix of integer rows with |x| <= 255.

    The Gram matrix is summed from float32 BLAS syrk calls on blocks small enough that
    every partial sum is an integer below 2**24: a block of ``b`` rows whose values are
    at most ``m`` in magnitude has Gram entries, and every partial sum of them, at most
    ``b * m**2``, exact in float32 whatever order BLAS adds them in.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.dtype.kind not in "iub":
        raise ValueError(f"pixel_sums needs integer X (n, D) and y (n,), got {X.dtype} {X.shape} and {y.shape}")
    classes, counts, blocks = _by_class(X, y)
    K, D = len(classes), X.shape[1]
    lo = float(X.min()) if X.size else np.nan
    hi = float(X.max()) if X.size else np.nan
    m = max(abs(lo), abs(hi), 1.0) if X.size else 1.0
    if m > 255:
        raise ValueError(f"pixel_sums needs values within -255..255, got {lo:g}..{hi:g}")
    block = int(_F32_EXACT // (m * m))
    sums = np.zeros((K, D))
    gram = np.zeros((K, D, D))
    for k, rows in enumerate(blocks):
        F = rows.astype(np.float32)
        for i in range(0, len(F), block):
            b = F[i : i + block]
            gram[k] += b.T @ b
        sums[k] = rows.sum(axis=0, dtype=np.int64)
    return PixelSums(classes, counts, sums, gram, lo, hi)


def add_sums(parts: list[PixelSums] | tuple[PixelSums, ...]) -> PixelSums:
    """The sums of the union of disjoint row sets: exact, in any order."""
    parts = list(parts)
    if not parts:
        raise ValueError("add_sums needs at least one PixelSums")
    D = parts[0].sums.shape[1]
    classes = union_classes(parts)
    K = len(classes)
    counts = np.zeros(K, dtype=np.int64)
    sums = np.zeros((K, D))
    gram = np.zeros((K, D, D))
    for p in parts:
        if p.sums.shape[1] != D:
            raise ValueError("cannot add sums of different shapes")
        if not len(p.classes):
            continue
        idx = np.searchsorted(classes, p.classes)
        if len(idx) == K:
            gram += p.gram
            sums += p.sums
        else:
            gram[idx] += p.gram
            sums[idx] += p.sums
        counts[idx] += p.counts
    return PixelSums(classes, counts, sums, gram, *value_range(parts))


def value_range(parts) -> tuple[float, float]:
    """The smallest ``minimum`` and largest ``maximum`` of statistics (NaN for none)."""
    lows = [p.minimum for p in parts if not np.isnan(p.minimum)]
    highs = [p.maximum for p in parts if not np.isnan(p.maximum)]
    return (min(lows) if lows else np.nan, max(highs) if highs else np.nan)


def union_classes(parts: list) -> np.ndarray:
    labelled = [p.classes for p in parts if len(p.classes)]
    if not labelled:
        return parts[0].classes
    kinds = {"num" if c.dtype.kind in "iufb" else "str" for c in labelled}
    if len(kinds) > 1:  # numpy would silently turn the numbers into strings
        raise TypeError("labels of different types (numbers and strings) cannot be merged")
    return np.unique(np.concatenate(labelled))


def merge(parts: list[ClassStats] | tuple[ClassStats, ...]) -> ClassStats:
    """Combine statistics of disjoint row sets into the statistics of their union.

    Exact up to float64 rounding; associative and commutative up to rounding. Per
    class, the union's mean ``M`` comes first, then (law of total variance)::

        scatter = sum_p S_p + sum_p n_p (m_p - M)(m_p - M)^T

    — the pairwise Chan update applied to all parts at once: one addition per part
    and one small matrix product for the between-part term, instead of an outer
    product per part. ``m_p - M`` is a difference of nearby numbers, so large
    offsets cancel exactly as in Chan's form. The inputs are not modified; the
    result is accumulated in one new buffer (a combine step holds its inputs plus
    one statistic).
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge needs at least one ClassStats")
    D = parts[0].n_features
    diagonal = parts[0].diagonal
    for p in parts:
        if p.n_features != D or p.diagonal != diagonal:
            raise ValueError("cannot merge statistics of different shapes")
    classes = union_classes(parts)
    K = len(classes)
    counts = np.zeros(K, dtype=np.int64)
    scatter = np.zeros((K, D) if diagonal else (K, D, D))
    where = []  # (part, its class rows in the union) for parts with rows
    for p in parts:
        if not len(p.classes):
            continue
        idx = np.searchsorted(classes, p.classes)
        keep = p.counts > 0
        if not keep.all():
            p = ClassStats(p.classes[keep], p.counts[keep], p.means[keep], p.scatter[keep])
            idx = idx[keep]
        if len(idx) == K:  # every class (the common case): whole-array adds
            scatter += p.scatter
        else:
            scatter[idx] += p.scatter  # class indices are unique: a plain fancy add
        counts[idx] += p.counts
        where.append((p, idx))
    means = np.zeros((K, D))
    for k in np.flatnonzero(counts):
        # the union's mean, about the first part's mean (no large sums of offsets)
        members = [(p.counts[j], p.means[j]) for p, idx in where for j in np.flatnonzero(idx == k)]
        ref = members[0][1]
        n = np.array([c for c, _ in members], dtype=np.float64)
        dev = np.stack([m for _, m in members]) - ref
        mean = ref + (n @ dev) / counts[k]
        means[k] = mean
        if len(members) > 1:
            dev = np.stack([m for _, m in members]) - mean  # (P, D)
            if diagonal:
                scatter[k] += n @ (dev * dev)
            else:
                w = dev * np.sqrt(n)[:, None]
                scatter[k] += w.T @ w  # syrk: exactly symmetric
    return ClassStats(classes, counts, means, scatter, *value_range(parts))


def to_diagonal(stats: ClassStats) -> ClassStats:
    """Diagonal statistics from full ones (the diagonal of each scatter)."""
    if stats.diagonal:
        return stats
    diag = np.ascontiguousarray(np.diagonal(stats.scatter, axis1=1, axis2=2))
    return ClassStats(stats.classes, stats.counts, stats.means, diag, stats.minimum, stats.maximum)


def as_model_units(X: np.ndarray, rows: np.ndarray, scale: float) -> np.ndarray:
    """Rows ``rows`` of ``X`` as a new float64 C-ordered array, times ``scale``. Indexing
    copies already, so float64 rows are scaled in that copy (no second one)."""
    Xs = np.asarray(X)[rows].astype(np.float64, order="C", copy=False)
    if scale != 1.0:
        Xs *= scale
    return Xs


def class_rows(y: np.ndarray, classes: np.ndarray | None):
    """(positions in ``classes``, row indices per class, the classes present) of labels ``y``.

    Raises ``ValueError`` when ``y`` has a label that is not in ``classes``.
    """
    present, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(present)))
    rows, start = [], 0
    for stop in bounds:
        rows.append(order[start:stop])
        start = stop
    if classes is None:
        return np.arange(len(present)), rows, present
    pos = np.searchsorted(classes, present)
    ok = (pos < len(classes)) & (classes[np.minimum(pos, len(classes) - 1)] == present)
    if not ok.all():
        missing = present[~ok].tolist()
        raise ValueError(f"labels {missing[:5]} are not among the model's classes")
    return pos, rows, present


def plain_label(label: Any) -> Any:
    """A numpy scalar label as the Python value (for logs and JSON); others unchanged."""
    return label.item() if hasattr(label, "item") else label
