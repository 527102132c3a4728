"""Randomized sketches of per-class centered scatter: chunk, merge, Rayleigh–Ritz — pure numpy.

The low-rank kinds (``ppca``, ``fa``) never form a class's D×D scatter
``S = Σ (x − μ)(x − μ)ᵀ``; they see it only through products with thin matrices
(Halko, Martinsson & Tropp 2011):

* pass 1 (:func:`chunk_sketch`, :func:`merge_sketches`): per class the count, mean and
  per-feature centered sum of squares (``diag S``, so ``trace S`` exactly), and the
  sketch ``S Ω`` (D, ℓ) for a Gaussian test matrix Ω (D, ℓ) that every task regenerates
  from its seed (:func:`test_matrix`), never shipped. ``S Ω`` is linear in S, so
  sketches of centered statistics merge by Chan's update exactly as the scatter does::

      (S_a + S_b + n_a n_b / n · d dᵀ) Ω = S_a Ω + S_b Ω + n_a n_b / n · d (dᵀ Ω)

  with ``d = m_b − m_a``; ``dᵀΩ`` is the difference of the parts' ``m Ω`` (kept as
  ``mean_proj``), so a merge needs no Ω either.
* further passes (:func:`chunk_range`, :func:`add_ranges`): ``S Q`` for thin
  orthonormal ``Q`` (D, ℓ) per class, about the final class means (plain sums).
* :func:`rayleigh_ritz`: the eigenpairs of ``Qᵀ S Q`` (ℓ, ℓ) lifted to D.

Memory: a partial holds, per class present in its block, (D, ℓ) floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .class_stats import ClassStats, as_model_units, class_rows, merge


def test_matrix(seed: int, n_features: int, width: int) -> np.ndarray:
    """The Gaussian test matrix Ω (D, ℓ), float64, a function of (seed, D, ℓ) only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_features), int(width), 0x5EE7C4]))
    return rng.standard_normal((n_features, width))


@dataclass
class SketchStats:
    """Pass 1's statistic: diagonal ClassStats (counts, means, ``diag S``) plus, per class,
    ``sketch`` (K, D, ℓ) = ``S Ω`` and ``mean_proj`` (K, ℓ) = ``mean Ω``."""

    stats: ClassStats
    sketch: np.ndarray
    mean_proj: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        return self.stats.classes


def chunk_sketch(X: np.ndarray, y: np.ndarray, seed: int, width: int, scale: float = 1.0) -> SketchStats:
    """Pass 1 over one block of rows ``X`` (n, D) with labels ``y``, of ``X * scale``."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"chunk_sketch needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    D = X.shape[1]
    omega = test_matrix(seed, D, width)
    _, rows, present = class_rows(y, None)
    K = len(present)
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    means, sq = np.zeros((K, D)), np.zeros((K, D))
    sketch, mean_proj = np.zeros((K, D, width)), np.zeros((K, width))
    for k, r in enumerate(rows):
        C = as_model_units(X, r, scale)
        m = C.mean(axis=0)
        C -= m
        if X.dtype.kind == "f":  # second pass: the first mean's rounding (large offsets)
            correction = C.mean(axis=0)
            C -= correction
            m += correction
        means[k] = m
        sq[k] = np.einsum("ij,ij->j", C, C)
        sketch[k] = C.T @ (C @ omega)
        mean_proj[k] = m @ omega
    lo = float(X.min()) * scale if X.size else np.nan
    hi = float(X.max()) * scale if X.size else np.nan
    return SketchStats(ClassStats(present, counts, means, sq, lo, hi), sketch, mean_proj)


def merge_sketches(parts: list[SketchStats] | tuple[SketchStats, ...]) -> SketchStats:
    """The pass-1 statistic of the union of disjoint row sets (Chan's update, all parts at
    once as :func:`~daskgen.kernels.class_stats.merge` does for the scatter)."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_sketches needs at least one SketchStats")
    stats = merge([p.stats for p in parts])
    classes = stats.classes
    K, D = stats.means.shape
    width = parts[0].sketch.shape[2]
    sketch = np.zeros((K, D, width))
    members: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(K)]
    for p in parts:
        idx = np.searchsorted(classes, p.classes)
        for j, k in enumerate(idx):
            if p.stats.counts[j] > 0:
                sketch[k] += p.sketch[j]
                members[k].append((int(p.stats.counts[j]), p.stats.means[j], p.mean_proj[j]))
    mean_proj = np.zeros((K, width))
    for k in range(K):
        if not members[k]:
            continue
        n = np.array([c for c, _, _ in members[k]], dtype=np.float64)
        proj = np.stack([mp for _, _, mp in members[k]])
        ref = proj[0]
        mean_proj[k] = ref + (n @ (proj - ref)) / n.sum()
        if len(members[k]) > 1:
            dev = np.stack([m for _, m, _ in members[k]]) - stats.means[k]  # (P, D)
            dev_proj = proj - mean_proj[k]  # (P, ℓ): (m_p − M)ᵀ Ω
            sketch[k] += (dev * n[:, None]).T @ dev_proj
    return SketchStats(stats, sketch, mean_proj)


@dataclass
class RangeSums:
    """A further pass's statistic: ``products[j] = Σ (x − μ_k)(x − μ_k)ᵀ Q_k`` over a
    block's rows of class ``index[j]`` (positions in the model's classes)."""

    index: np.ndarray  # (k,) int
    products: np.ndarray  # (k, D, ℓ)


def chunk_range(X: np.ndarray, y: np.ndarray, classes: np.ndarray, means: np.ndarray, Q: np.ndarray,
                scale: float = 1.0) -> RangeSums:
    """``S Q`` over one block: rows of ``X * scale`` centered at the class ``means`` (K, D),
    ``Q`` (K, D, ℓ)."""
    pos, rows, _ = class_rows(np.asarray(y), classes)
    out = np.empty((len(pos), Q.shape[1], Q.shape[2]))
    for j, (k, r) in enumerate(zip(pos, rows)):
        C = as_model_units(X, r, scale)
        C -= means[k]
        np.matmul(C.T, C @ Q[k], out=out[j])
    return RangeSums(np.asarray(pos, dtype=np.intp), out)


def add_ranges(parts: list[RangeSums] | tuple[RangeSums, ...]) -> RangeSums:
    """The sum of :class:`RangeSums` (in the given order: a fixed tree gives fixed bits)."""
    parts = list(parts)
    index = np.unique(np.concatenate([p.index for p in parts]))
    out = np.zeros((len(index),) + parts[0].products.shape[1:])
    for p in parts:
        out[np.searchsorted(index, p.index)] += p.products
    return RangeSums(index, out)


def orthonormal(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis (D, ℓ) of the columns of ``Y`` (reduced QR)."""
    return np.linalg.qr(Y, mode="reduced")[0]


def rayleigh_ritz(Q: np.ndarray, SQ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (ℓ,), descending, and vectors (D, ℓ) of S on the span of ``Q``, given
    ``SQ = S Q``: the eigenpairs of the ℓ×ℓ ``Qᵀ S Q``."""
    B = Q.T @ SQ
    B = 0.5 * (B + B.T)
    theta, V = np.linalg.eigh(B)
    theta, V = theta[::-1], V[:, ::-1]
    return theta, Q @ V

