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
from dataclasses import dataclass, replace
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


#: Features from which :func:`add_gram` computes the Gram matrix by panels of gemm.
GRAM_PANEL_FROM = 1024
#: Rows of one such panel of the Gram matrix.
GRAM_PANEL = 256


def centered_scatter(C: np.ndarray) -> np.ndarray:
    """``C.T @ C`` for a C-contiguous (n, D) float block: see :func:`add_gram`."""
    if C.shape[1] < GRAM_PANEL_FROM:
        return C.T @ C
    return add_gram(np.zeros((C.shape[1], C.shape[1]), dtype=C.dtype), C)


def add_gram(G: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``G += C.T @ C`` for a (n, D) float block: exactly symmetric, in place; ``G`` returned.

    Narrow blocks: NumPy recognises ``A.T @ A`` and calls BLAS syrk, mirrors the triangle
    and releases the GIL (which SciPy's f2py BLAS wrappers do not, serialising a threaded
    worker's tasks). Wide ones (D >= :data:`GRAM_PANEL_FROM`): the upper triangle by panels
    of gemm, ``C[:, i:i+P].T @ C[:, i:]``, which OpenBLAS runs faster than its syrk (at
    D = 4,096 on 1,000 float32 rows, 0.198 s against 0.218 on one thread and 0.130 against
    0.160 on two: ``benchmarks/gram_panels.py``), added to ``G`` and mirrored from the same
    numbers, so ``G`` stays exactly symmetric. Every entry is one BLAS dot product either
    way: sums of small integers stay exact (see :func:`pixel_sums`).
    """
    D = C.shape[1]
    if D < GRAM_PANEL_FROM:
        G += C.T @ C
        return G
    Ct = np.ascontiguousarray(C.T)
    buf = np.empty((min(GRAM_PANEL, D), D), dtype=C.dtype)
    for i in range(0, D, GRAM_PANEL):
        j = min(i + GRAM_PANEL, D)
        panel = np.matmul(Ct[i:j], C[:, i:], out=buf[: j - i, : D - i])  # rows i:j, columns i:
        square = panel[:, : j - i]  # gemm need not round (a, b) and (b, a) alike: mirror it
        lower = np.tril_indices(j - i, -1)
        square[lower] = square.T[lower]
        G[i:j, i:] += panel
        G[j:, i:j] += panel[:, j - i :].T
    return G


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
    X, y = _checked_block(X, y, "chunk_stats")
    exact_sums = X.dtype.kind in "iub"  # integer sums are exact in float64 (below 2**53)
    lo, hi = block_range(X)
    if exact_sums and not diagonal and X.size and max(abs(lo), abs(hi)) <= 255:
        return pixel_sums(X, y).to_class_stats(scale)  # exact integer sums, rounded once
    classes, counts, blocks = _by_class(X, y)
    K, D = len(classes), X.shape[1]
    means = np.zeros((K, D))
    scatter = np.zeros((K, D) if diagonal else (K, D, D))
    for k, rows in enumerate(blocks):  # one BLAS call per class
        means[k] = _class_moments(rows, exact_sums, diagonal, out=scatter[k])
    if scale != 1.0:
        means *= scale
        scatter *= scale * scale
        lo, hi = lo * scale, hi * scale
    return ClassStats(classes, counts, means, scatter, lo, hi)


def block_range(X: np.ndarray) -> tuple[float, float]:
    """The smallest and largest value of a block (NaN, NaN when it is empty)."""
    return (float(X.min()), float(X.max())) if X.size else (np.nan, np.nan)


def _checked_block(X: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.dtype.kind not in "iufb":
        raise ValueError(f"{what} needs numbers, got dtype {X.dtype}")
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"{what} needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    return X, y


def _class_moments(rows: np.ndarray, exact_sums: bool, diagonal: bool, out: np.ndarray) -> np.ndarray:
    """The mean of ``rows`` (float64), its centered scatter (or sums of squares) written to ``out``."""
    m = rows.mean(axis=0, dtype=np.float64)
    C = np.subtract(rows, m, dtype=np.float64)  # convert and center in one pass
    if not exact_sums:
        # Second pass: remove the rounding error of the first mean (large offsets).
        correction = C.mean(axis=0)
        C -= correction
        m += correction
    if diagonal:
        np.einsum("ij,ij->j", C, C, out=out)
    else:
        if C.shape[1] < GRAM_PANEL_FROM:
            np.matmul(C.T, C, out=out)  # syrk straight into the buffer: no (D, D) temporary
        else:
            out[...] = 0.0
            add_gram(out, C)
    return m


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

    ``counts`` (K,), ``sums`` (K, D) (sum of x) and ``gram`` (K, D, D) (sum of
    (x - offset)(x - offset)^T: the rows shifted by ``offset``, 128 for pixels, so that
    their products are small and the float32 BLAS blocks long) hold exact integers
    (float64 is exact below 2**53: up to ~10**11 rows of a class). Merging is plain
    addition, exact in any order and any grouping, so the reduction may combine blocks
    in the order they finish (see ``daskgen.distributed.reduction``) and still give
    bit-identical results. :meth:`to_class_stats` forms the centered statistics once,
    at the end (the centered scatter does not depend on the shift).
    """

    classes: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    gram: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan
    offset: float = 0.0

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def zeros(cls, classes: np.ndarray, n_features: int, offset: float, minimum: float = np.nan,
              maximum: float = np.nan) -> PixelSums:
        """Sums of no rows for ``classes``: the start of a running total."""
        K, D = len(classes), n_features
        return cls(classes, np.zeros(K, dtype=np.int64), np.zeros((K, D)), np.zeros((K, D, D)), minimum, maximum,
                   offset)

    def to_class_stats(self, scale: float = 1.0, in_place: bool = False) -> ClassStats:
        """Means and centered scatter of ``x * scale``, from exact integers.

        With ``s = n q + r`` (``q = s // n``, ``0 <= r < n``; ``s`` the sum of the shifted
        rows), ``G - s s^T / n`` is ``(G - s q^T - q r^T) - r r^T / n``: the bracket is
        exact integer arithmetic in float64 (every term is below ``n m**2 < 2**53``, so
        the rank-2 product ``[s q] [q r]^T`` is exact in any BLAS order), so only the
        last, small term and the final subtraction round, for any number of rows and any
        shift. Class by class, with one (D, D) buffer; ``in_place`` turns ``gram`` itself
        into the scatter (these sums are then spent): no second (K, D, D) array.
        """
        K, D = self.sums.shape
        means = np.zeros((K, D))
        scatter = self.gram if in_place else np.empty_like(self.gram)
        if in_place and not scatter.flags.writeable:
            scatter = scatter.copy()
        buf = np.empty((D, D)) if K else None
        for k in range(K):
            n = int(self.counts[k])
            S = scatter[k]
            if n == 0:
                S[...] = 0.0
                continue
            means[k] = self.sums[k] / n
            s = self.sums[k] - n * self.offset  # exact: integers below 2**53
            q = np.floor_divide(s, n)
            r = s - n * q
            if not in_place:
                S[...] = self.gram[k]
            np.matmul(np.stack([s, q], axis=1), np.stack([q, r]), out=buf)  # s q^T + q r^T, exact
            S -= buf
            np.multiply(r[:, None], r[None, :], out=buf)  # r r^T / n: rounded as the tiled fit's
            buf /= n
            S -= buf
        lo, hi = self.minimum, self.maximum
        if scale != 1.0:
            means *= scale
            scatter *= scale * scale
            lo, hi = lo * scale, hi * scale
        return ClassStats(self.classes, self.counts.copy(), means, scatter, lo, hi)


#: The shift of 8-bit pixels in :class:`PixelSums` (|x - 128| <= 128: float32 blocks of 1,024 rows).
PIXEL_OFFSET = 128.0


def pixel_sums(X: np.ndarray, y: np.ndarray, into: PixelSums | None = None) -> PixelSums:
    """Exact per-class count, sum and Gram matrix of integer rows with |x| <= 255.

    The Gram matrix is of the rows shifted by :data:`PIXEL_OFFSET`, summed from float32
    BLAS syrk calls on blocks small enough that every partial sum is an integer below
    2**24: a block of ``b`` rows whose shifted values are at most ``m`` in magnitude has
    Gram entries, and every partial sum of them, at most ``b * m**2``, exact in float32
    whatever order BLAS adds them in.

    ``into``: a running total to fold this block into, in place (its arrays grow only
    when the block has a class it lacks); returned. Without it, a new PixelSums of the
    classes present in the block only.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.dtype.kind not in "iub":
        raise ValueError(f"pixel_sums needs integer X (n, D) and y (n,), got {X.dtype} {X.shape} and {y.shape}")
    lo, hi = block_range(X)
    if X.size and max(abs(lo), abs(hi)) > 255:
        raise ValueError(f"pixel_sums needs values within -255..255, got {lo:g}..{hi:g}")
    classes, counts, blocks = _by_class(X, y)
    D = X.shape[1]
    offset = PIXEL_OFFSET
    m = max(abs(lo - offset), abs(hi - offset), 1.0) if X.size else 1.0
    block = int(_F32_EXACT // (m * m))
    if into is None:
        into = PixelSums.zeros(classes, D, offset)
    else:
        into = _with_classes(into, classes)
        if into.offset != offset or into.sums.shape[1] != D:
            raise ValueError("cannot add sums of different shapes or offsets")
    idx = np.searchsorted(into.classes, classes)
    for k, rows in zip(idx, blocks):
        G = into.gram[k]
        for i in range(0, len(rows), block):
            add_gram(G, np.subtract(rows[i : i + block], np.float32(offset), dtype=np.float32))
        into.sums[k] += rows.sum(axis=0, dtype=np.int64)
    into.counts[idx] += counts
    into.minimum, into.maximum = value_range([into, _Range(lo, hi)])
    return into


def _with_classes(total: PixelSums, classes: np.ndarray) -> PixelSums:
    """``total`` itself when it has every one of ``classes``; else a copy grown to the union."""
    union = union_classes([total, PixelSums(classes, classes[:0], total.sums[:0], total.gram[:0])])
    if len(union) == len(total.classes):
        return total
    grown = PixelSums.zeros(union, total.sums.shape[1], total.offset, total.minimum, total.maximum)
    idx = np.searchsorted(union, total.classes)
    grown.counts[idx] = total.counts
    grown.sums[idx] = total.sums
    for j, k in enumerate(idx):  # class by class: no second temporary of the old total
        grown.gram[k] = total.gram[j]
    return grown


def add_sums(parts: list[PixelSums] | tuple[PixelSums, ...]) -> PixelSums:
    """The sums of the union of disjoint row sets: exact, in any order.

    Accumulates **in place** into the part with the most classes (spent: use the
    result), which is grown only when the others have classes it lacks: a merge
    allocates no new (K, D, D) Gram matrix.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("add_sums needs at least one PixelSums")
    D = parts[0].sums.shape[1]
    for p in parts:
        if p.sums.shape[1] != D or p.offset != parts[0].offset:
            raise ValueError("cannot add sums of different shapes or offsets")
    first = max(range(len(parts)), key=lambda i: len(parts[i].classes))
    total = _with_classes(parts[first], union_classes(parts))
    if not all(a.flags.writeable for a in (total.counts, total.sums, total.gram)):  # e.g. received read-only
        total = replace(total, counts=total.counts.copy(), sums=total.sums.copy(), gram=total.gram.copy())
    for i, p in enumerate(parts):
        if i == first or not len(p.classes):
            continue
        idx = np.searchsorted(total.classes, p.classes)
        for j, k in enumerate(idx):  # class by class: fancy-indexed adds copy
            total.gram[k] += p.gram[j]
        total.sums[idx] += p.sums
        total.counts[idx] += p.counts
    total.minimum, total.maximum = value_range(parts)
    return total


@dataclass
class _Range:
    minimum: float
    maximum: float


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


def merge(parts: list[ClassStats] | tuple[ClassStats, ...], in_place: bool = False) -> ClassStats:
    """Combine statistics of disjoint row sets into the statistics of their union.

    Exact up to float64 rounding; associative and commutative up to rounding. Per
    class, the union's mean ``M`` comes first, then (law of total variance)::

        scatter = sum_p S_p + sum_p n_p (m_p - M)(m_p - M)^T

    — the pairwise Chan update applied to all parts at once: one addition per part
    and one small matrix product for the between-part term, instead of an outer
    product per part. ``m_p - M`` is a difference of nearby numbers, so large
    offsets cancel exactly as in Chan's form.

    By default the inputs are not modified and the result is a new buffer. With
    ``in_place``, the result is accumulated into the first part's arrays when it has
    every class of the union (it is then spent: use the result) — a merge then
    allocates no new (K, D, D) statistic. Both give the same bits: the sum starts
    from the first part either way, and classes are added one at a time.
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
    first = parts[0]
    if (in_place and len(first.classes) == K and (first.counts > 0).all()
            and all(a.flags.writeable for a in (first.counts, first.means, first.scatter))):
        counts, scatter, start = first.counts, first.scatter, 1
    else:
        counts = np.zeros(K, dtype=np.int64)
        scatter = np.zeros((K, D) if diagonal else (K, D, D))
        start = 0
    members: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(K)]  # (n_p, m_p) per class
    for i, p in enumerate(parts):
        if not len(p.classes):
            continue
        idx = np.searchsorted(classes, p.classes)
        for j, k in enumerate(idx):
            if p.counts[j] <= 0:
                continue
            members[k].append((int(p.counts[j]), p.means[j]))
            if i >= start:
                scatter[k] += p.scatter[j]  # class by class: a fancy-indexed add would copy
                counts[k] += p.counts[j]
    means = first.means if start else np.zeros((K, D))
    for k in np.flatnonzero(counts):
        means[k] = _between(scatter[k], members[k], int(counts[k]), diagonal)
    return ClassStats(classes, counts, means, scatter, *value_range(parts))


def _between(S: np.ndarray, members: list[tuple[int, np.ndarray]], total: int, diagonal: bool) -> np.ndarray:
    """The union's mean of parts ``(n_p, m_p)`` of one class; adds their between-part
    scatter to ``S`` (in place)."""
    # the union's mean, about the first part's mean (no large sums of offsets)
    ref = members[0][1]
    n = np.array([c for c, _ in members], dtype=np.float64)
    dev = np.stack([m for _, m in members]) - ref
    mean = ref + (n @ dev) / total
    if len(members) > 1:
        dev = np.stack([m for _, m in members]) - mean  # (P, D)
        if diagonal:
            S += n @ (dev * dev)
        else:
            w = dev * np.sqrt(n)[:, None]
            S += w.T @ w  # syrk: exactly symmetric
    return mean


def fold_stats(total: ClassStats | None, X: np.ndarray, y: np.ndarray, diagonal: bool = False,
               scale: float = 1.0) -> ClassStats:
    """Fold one block of rows into a running total, in place: the same bits as
    ``merge([total, chunk_stats(X, y, diagonal, scale)])``, class by class, so that
    a block costs one (D, D) temporary rather than a statistic of its own.

    ``total`` None: the block's own statistics (the first block of a run). The total
    grows (a new buffer) only when the block has a class it lacks.
    """
    X, y = _checked_block(X, y, "fold_stats")
    exact_sums = X.dtype.kind in "iub"
    lo, hi = block_range(X)
    pixels = exact_sums and not diagonal and X.size and max(abs(lo), abs(hi)) <= 255
    if total is None or pixels or not X.size:
        block = chunk_stats(X, y, diagonal=diagonal, scale=scale)
        return block if total is None else merge([total, block], in_place=True)
    classes, counts, blocks = _by_class(X, y)
    if total.diagonal != diagonal or total.n_features != X.shape[1]:
        raise ValueError("cannot merge statistics of different shapes")
    union = union_classes([total, ClassStats(classes, counts, total.means[:0], total.scatter[:0])])
    if len(union) != len(total.classes) or not (total.counts > 0).all():
        # a class the total lacks: this block merges as a statistic of its own
        return merge([total, chunk_stats(X, y, diagonal=diagonal, scale=scale)], in_place=True)
    S = np.empty(total.scatter.shape[1:])
    for k, n, rows in zip(np.searchsorted(total.classes, classes), counts, blocks):
        m = _class_moments(rows, exact_sums, diagonal, out=S)
        if scale != 1.0:
            m *= scale
            S *= scale * scale
        total.scatter[k] += S
        total.means[k] = _between(total.scatter[k], [(int(total.counts[k]), total.means[k]), (int(n), m)],
                                  int(total.counts[k] + n), diagonal)
        total.counts[k] += n
    if scale != 1.0:
        lo, hi = lo * scale, hi * scale
    total.minimum, total.maximum = value_range([total, _Range(lo, hi)])
    return total


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
