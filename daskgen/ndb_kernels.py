"""NDB, the number of statistically different bins (Richardson & Weiss, 2018) — pure numpy, no Dask.

A sample-quality measure that needs no model density: the training data is cut into
``k`` bins by k-means; a generated set and a held-out (reference) set each fall into
the bins in some proportions; per bin, a two-proportion z-test asks whether the two
proportions differ. NDB is the number of bins where they differ at level ``alpha``,
and NDB/k its share. Two samples of the same distribution differ in about
``alpha * k`` bins by chance (the z-test's false positives).

Units
-----
Every set is compared in *model units*: ``x * scale``, where ``scale`` is that set's
pixel-to-model factor (1/255 for 8-bit images read with ``--scale auto``, the
``scale`` a Zarr store records — a uint8 samples store records its model's — and 1
for float data, e.g. a float samples store, which is in model units already).
Blocks arrive in their stored dtype (uint8 pixels or floats) and are converted to
float64 here, :data:`BATCH` rows at a time; the scale enters the distances (the rows
themselves are never multiplied) and the centres are in model units.

Kernels
-------
* :func:`nearest_centre` — the bin of each row (squared Euclidean distance).
* :func:`lloyd_block` / :func:`merge_lloyd` — one Lloyd step's statistic of a block
  (per-bin counts and sums, the rows farthest from their centre for re-seeding empty
  bins) and its merge; :func:`update_centres` is the step on the merged statistic.
  Sums of integer pixels are exact int64 (their merge is exact in any order); sums
  of float data are float64 sums of the stored values.
* :func:`bin_counts` / :func:`merge_counts` — per-bin counts of a block of a set.
* :func:`two_proportion_z` and :func:`ndb_test` — the z-test and the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from .kernels.class_stats import value_range
from .kernels.init_sample import row_keys

#: Rows converted to float64 and compared with the centres at once (bounds a task's memory:
#: about BATCH x (D + k) float64 values besides the block).
BATCH = 4096
#: Seed of the row keys that break ties between equally far rows (re-seeding empty bins).
_KEY_SEED = 0x4E4442


def nearest_centre(X: np.ndarray, centres: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centre of each row and the squared distance to it, in model units.

    ``X`` (n, D) float64 in stored units (model units times 1/``scale``), ``centres``
    (k, D) float64 in model units. Returns ``labels`` (n,) intp (the lowest index on a
    tie) and ``d2`` (n,) float64, computed as ``scale^2 |x|^2 - 2 scale x.c + |c|^2``
    (one matrix product; the rows are never scaled) and clipped at 0.
    """
    c2 = np.einsum("ij,ij->i", centres, centres)
    d = X @ centres.T
    d *= -2.0 * scale
    d += c2[None, :]
    labels = np.argmin(d, axis=1)
    d2 = d[np.arange(len(X)), labels] + (scale * scale) * np.einsum("ij,ij->i", X, X)
    np.maximum(d2, 0.0, out=d2)
    return labels, d2


def _labels_batched(X: np.ndarray, centres: np.ndarray, scale: float):
    """Yield ``(start, Xb, labels, d2)`` per :data:`BATCH` rows, Xb float64 in stored units."""
    for a in range(0, len(X), BATCH):
        Xb = np.asarray(X[a : a + BATCH], dtype=np.float64)
        labels, d2 = nearest_centre(Xb, centres, scale)
        yield a, Xb, labels, d2


# ---------------------------------------------------------------------------- k-means (Lloyd)
@dataclass
class LloydStats:
    """One Lloyd step's statistic of a set of rows, mergeable (:func:`merge_lloyd`).

    ``counts`` (k,) int64 rows per bin; ``sums`` (k, D) their sums in stored units
    (int64 pixel sums for integer rows, float64 otherwise): the new centre of bin j is
    ``sums[j] / counts[j] * scale``. ``inertia`` is the sum of squared distances of
    the rows to their centres (model units²). ``far_d2`` (r,), ``far_keys`` (r,) and
    ``far_x`` (r, D) (model units) are the ``r <= k`` rows farthest from their centre,
    farthest first (ties by key), candidates to re-seed empty bins.
    """

    counts: np.ndarray
    sums: np.ndarray
    inertia: float
    far_d2: np.ndarray
    far_keys: np.ndarray
    far_x: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan


def lloyd_block(X: np.ndarray, centres: np.ndarray, scale: float = 1.0) -> LloydStats:
    """Assign the rows ``X`` (n, D, stored units) to ``centres`` (k, D, model units); their statistic."""
    k, D = centres.shape
    exact = X.dtype.kind in "iub"
    counts = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, D), dtype=np.int64 if exact else np.float64)
    inertia = 0.0
    far = [np.zeros(0), np.zeros(0, np.uint64), np.zeros((0, D))]
    for a, Xb, labels, d2 in _labels_batched(X, centres, scale):
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        raw = X[a : a + len(Xb)] if exact else Xb
        sums[present] += np.add.reduceat(raw[order], starts, axis=0, dtype=sums.dtype)
        counts += np.bincount(labels, minlength=k)
        inertia += float(d2.sum())
        top = np.argsort(-d2, kind="stable")[:k]
        far_x = Xb[top] * scale
        far = _keep_far(far[0], far[1], far[2], d2[top], row_keys(far_x, _KEY_SEED), far_x, k)
    lo, hi = (float(X.min()) * scale, float(X.max()) * scale) if X.size else (np.nan, np.nan)
    return LloydStats(counts, sums, inertia, *far, minimum=lo, maximum=hi)


def _keep_far(d2a, ka, xa, d2b, kb, xb, r: int) -> list[np.ndarray]:
    """The ``r`` rows with the largest ``d2`` of two candidate lists (ties: smaller key first)."""
    d2, keys, x = np.concatenate([d2a, d2b]), np.concatenate([ka, kb]), np.concatenate([xa, xb])
    take = np.lexsort((keys, -d2))[:r]
    return [d2[take], keys[take], x[take]]


def merge_lloyd(parts: list[LloydStats]) -> LloydStats:
    """The statistic of the union of disjoint row sets."""
    parts = list(parts)
    first = parts[0]
    k = len(first.counts)
    counts = sum((p.counts for p in parts), np.zeros(k, dtype=np.int64))
    sums = first.sums.copy()
    for p in parts[1:]:
        if sums.dtype != p.sums.dtype:  # integer and float blocks of one set: float64
            sums = sums.astype(np.float64)
        sums += p.sums
    far = [first.far_d2, first.far_keys, first.far_x]
    for p in parts[1:]:
        far = _keep_far(*far, p.far_d2, p.far_keys, p.far_x, k)
    return LloydStats(counts, sums, float(sum(p.inertia for p in parts)), *far, *value_range(parts))


def update_centres(stats: LloydStats, centres: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, list[int]]:
    """Lloyd's update: each bin's mean (model units); an empty bin moves to a far row.

    Empty bins, in index order, take the rows farthest from their centre in the last
    assignment (``stats.far_x``), each row once; a bin left without a candidate keeps
    its centre. Returns the new centres (k, D) and the indices of re-seeded bins.
    """
    new = centres.copy()
    full = stats.counts > 0
    new[full] = stats.sums[full] / stats.counts[full, None] * scale
    empty = np.flatnonzero(~full).tolist()
    for j, x in zip(empty, stats.far_x):
        new[j] = x
    return new, empty[: len(stats.far_x)]


# ---------------------------------------------------------------------------- counting
@dataclass
class BinCounts:
    """Rows of a set per bin: ``counts`` (k,) int64, and the set's value range in model units."""

    counts: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    @property
    def rows(self) -> int:
        return int(self.counts.sum())


def bin_counts(X: np.ndarray, centres: np.ndarray, scale: float = 1.0) -> BinCounts:
    """Per-bin counts of the rows ``X`` (n, D, stored units) for ``centres`` (k, D, model units)."""
    counts = np.zeros(len(centres), dtype=np.int64)
    for _, _, labels, _ in _labels_batched(X, centres, scale):
        counts += np.bincount(labels, minlength=len(centres))
    lo, hi = (float(X.min()) * scale, float(X.max()) * scale) if X.size else (np.nan, np.nan)
    return BinCounts(counts, lo, hi)


def merge_counts(parts: list[BinCounts]) -> BinCounts:
    """The counts of the union of disjoint row sets."""
    parts = list(parts)
    return BinCounts(np.sum([p.counts for p in parts], axis=0), *value_range(parts))


# ---------------------------------------------------------------------------- the test
def two_proportion_z(c1: np.ndarray, n1: int, c2: np.ndarray, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided two-proportion z-test per bin, with the pooled proportion.

    ``c1`` (k,) of ``n1`` rows against ``c2`` (k,) of ``n2``::

        p1 = c1 / n1,  p2 = c2 / n2,  p = (c1 + c2) / (n1 + n2)
        z = (p1 - p2) / sqrt(p (1 - p) (1 / n1 + 1 / n2))
        p-value = P(|Z| > |z|) = erfc(|z| / sqrt 2)

    Returns ``(z, p_value)``, each (k,) float64; a bin empty in both sets has z = 0
    and p-value 1.
    """
    c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
    p1, p2 = c1 / n1, c2 / n2
    pooled = (c1 + c2) / (n1 + n2)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p1 - p2) / np.where(se > 0, se, 1.0), 0.0)
    return z, erfc(np.abs(z) / np.sqrt(2.0))


@dataclass
class NDBTest:
    """The per-bin test of a generated set (1) against a reference set (2)."""

    k: int
    alpha: float
    n_samples: int
    n_reference: int
    samples: np.ndarray  # (k,) proportions of the generated set
    reference: np.ndarray  # (k,) proportions of the reference set
    z: np.ndarray  # (k,) positive: over-represented in the generated set
    p_value: np.ndarray  # (k,)
    different: np.ndarray  # (k,) bool, p_value < alpha

    @property
    def ndb(self) -> int:
        return int(self.different.sum())

    @property
    def ndb_over_k(self) -> float:
        return self.ndb / self.k

    @property
    def expected_false_positives(self) -> float:
        """Bins expected to differ by chance when both sets come from one distribution: alpha * k."""
        return self.alpha * self.k


def ndb_test(samples: np.ndarray, reference: np.ndarray, alpha: float = 0.05) -> NDBTest:
    """NDB of per-bin counts ``samples`` (k,) against ``reference`` (k,) at level ``alpha``."""
    samples, reference = np.asarray(samples, dtype=np.int64), np.asarray(reference, dtype=np.int64)
    n1, n2 = int(samples.sum()), int(reference.sum())
    if n1 == 0 or n2 == 0:
        raise ValueError("both sets need rows")
    z, p = two_proportion_z(samples, n1, reference, n2)
    return NDBTest(len(samples), float(alpha), n1, n2, samples / n1, reference / n2, z, p, p < alpha)
