"""Tiles of per-class D x D statistics and of their Cholesky factors — pure numpy, no Dask.

A class's scatter (and covariance, and lower Cholesky factor L) is cut into square
tiles of ``T`` features: tile (I, J) holds rows ``spans[I]`` and columns ``spans[J]``.
The fit computes the tiles I <= J (the upper triangle; the store also holds each
tile's mirror), the factorisation the tiles I >= J of L. Nothing here ever holds a
whole D x D matrix: the kernels take one block of rows and two column spans, or a
few tiles, and the scoring and sampling kernels take a ``tile(I, J)`` callable that
reads one tile of L at a time.

* 8-bit pixels: :func:`pixel_gram_tile` sums exact integer Gram tiles (float32 BLAS on
  row blocks small enough that every partial sum is an integer below 2**24, the same
  rule as :func:`~daskgen.kernels.class_stats.pixel_sums`), :func:`add_tile_parts`
  adds them (exact in any order), :func:`finish_pixel_tile` centres a tile with the
  class sums by the arithmetic of :meth:`~daskgen.kernels.class_stats.PixelSums.to_class_stats`
  applied element by element: the tiled scatter is bit-equal to the untiled one.
* Other data: :func:`centered_tile` sums ``(x - M)[I]^T (x - M)[J]`` about each class's
  mean ``M`` (known from a first, small pass), so the tiles of different blocks add
  with no between-block correction; a fixed tree adds them (the same bits run to run).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .class_stats import PixelSums, block_range, class_rows, union_classes, value_range

#: float32 holds every integer below 2**24 exactly.
F32_EXACT = 2**24
LOG_2PI = math.log(2 * math.pi)

Span = tuple[int, int]
TileReader = Callable[[int, int], np.ndarray]


def tile_spans(n_features: int, tiles: int) -> list[Span]:
    """The column spans ``[lo, hi)`` of tiles of ``tiles`` features (the last one may be narrower)."""
    if tiles < 1:
        raise ValueError(f"tiles must be at least 1, got {tiles}")
    return [(lo, min(lo + tiles, n_features)) for lo in range(0, n_features, tiles)]


def upper_tiles(n_tiles: int) -> list[tuple[int, int]]:
    """Tile indices (I, J) with I <= J, row by row."""
    return [(i, j) for i in range(n_tiles) for j in range(i, n_tiles)]


@dataclass
class TilePart:
    """One tile (I, J) of the statistics of some rows: ``index`` (k,) positions among the
    fit's classes of the classes present, ``tiles`` (k, TI, TJ) their tiles."""

    index: np.ndarray
    tiles: np.ndarray


def pixel_moments(X: np.ndarray, y: np.ndarray) -> PixelSums:
    """Per-class counts and exact sums of integer rows (|x| <= 255), without the Gram
    matrix (an empty (K, 0, 0) one): the small first pass of a tiled 8-bit fit."""
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype.kind not in "iub":
        raise ValueError(f"pixel_moments needs integer X (n, D), got {X.dtype} {X.shape}")
    _, rows, classes = class_rows(np.asarray(y), None)
    sums = np.stack([X[r].sum(axis=0, dtype=np.int64) for r in rows]).astype(np.float64) if rows else \
        np.zeros((0, X.shape[1]))
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    return PixelSums(classes, counts, sums, np.zeros((len(classes), 0, 0)), *block_range(X))


def add_moments(parts: list[PixelSums]) -> PixelSums:
    """The counts and sums of :func:`pixel_moments` of disjoint row sets added: exact, in any order."""
    classes = union_classes(parts)
    counts = np.zeros(len(classes), dtype=np.int64)
    sums = np.zeros((len(classes), parts[0].sums.shape[1]))
    for p in parts:
        idx = np.searchsorted(classes, p.classes)
        counts[idx] += p.counts
        sums[idx] += p.sums
    return PixelSums(classes, counts, sums, np.zeros((len(classes), 0, 0)), *value_range(parts))


def pixel_means(sums: np.ndarray, counts: np.ndarray, scale: float) -> np.ndarray:
    """Class means of ``x * scale`` from exact sums (K, D) and counts (K,), as
    :meth:`PixelSums.to_class_stats` forms them."""
    means = np.zeros(sums.shape)
    for k, n in enumerate(counts.tolist()):
        if n:
            means[k] = sums[k] / n
    if scale != 1.0:
        means *= scale
    return means


def _present(y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    pos, rows, _ = class_rows(np.asarray(y), classes)
    return np.asarray(pos, dtype=np.intp), rows


def pixel_gram_tile(X: np.ndarray, y: np.ndarray, classes: np.ndarray, span_i: Span, span_j: Span) -> TilePart:
    """Exact integer Gram tiles ``sum x[I] x[J]^T`` of a block's rows, per class present."""
    index, rows = _present(y, classes)
    (a, b), (c, d) = span_i, span_j
    out = np.zeros((len(index), b - a, d - c))
    m = max(float(np.abs(X).max()) if X.size else 1.0, 1.0)
    if m > 255:
        raise ValueError(f"pixel_gram_tile needs values within -255..255, got {m:g}")
    step = int(F32_EXACT // (m * m))
    for k, r in enumerate(rows):
        Xi = X[r, a:b].astype(np.float32)
        Xj = Xi if (a, b) == (c, d) else X[r, c:d].astype(np.float32)
        for s in range(0, len(r), step):
            out[k] += Xi[s:s + step].T @ Xj[s:s + step]
    return TilePart(index, out)


def centered_tile(F: np.ndarray, y: np.ndarray, classes: np.ndarray, means: np.ndarray, span_i: Span,
                  span_j: Span, scale: float = 1.0) -> TilePart:
    """Tiles ``sum (f - M)[I] (f - M)[J]^T`` of a block's rows ``f = F * scale`` about the
    class means ``means`` (K, D) (model units), per class present (float64)."""
    index, rows = _present(y, classes)
    (a, b), (c, d) = span_i, span_j
    out = np.empty((len(index), b - a, d - c))
    for k, (pos, r) in enumerate(zip(index.tolist(), rows)):
        Ci = np.multiply(F[r, a:b], scale, dtype=np.float64) - means[pos, a:b]
        Cj = Ci if (a, b) == (c, d) else np.multiply(F[r, c:d], scale, dtype=np.float64) - means[pos, c:d]
        out[k] = Ci.T @ Cj
    return TilePart(index, out)


def add_tile_parts(parts: list[TilePart]) -> TilePart:
    """The sum of tile parts (the union of their classes); exact for integer tiles."""
    index = np.unique(np.concatenate([p.index for p in parts]))
    out = np.zeros((len(index),) + parts[0].tiles.shape[1:])
    for p in parts:
        out[np.searchsorted(index, p.index)] += p.tiles
    return TilePart(index, out)


def finish_pixel_tile(gram: np.ndarray, s_i: np.ndarray, s_j: np.ndarray, n: int, scale: float) -> np.ndarray:
    """The centred scatter tile of ``x * scale`` from an exact Gram tile and the class's exact
    sums over its rows ``s_i`` and columns ``s_j``: the element-wise arithmetic of
    :meth:`PixelSums.to_class_stats`, so the tile equals the untiled scatter's to the bit."""
    qi, qj = np.floor_divide(s_i, n), np.floor_divide(s_j, n)
    ri, rj = s_i - n * qi, s_j - n * qj
    S = gram - n * np.outer(qi, qj)
    S -= np.outer(qi, rj)
    S -= np.outer(ri, qj)
    S -= np.outer(ri, rj) / n
    if scale != 1.0:
        S *= scale * scale
    return S


def covariance_tile(scatter: np.ndarray, n: int, reg_covar: float, diagonal: bool) -> np.ndarray:
    """A covariance tile: scatter / (n - 1), plus ``reg_covar`` on the diagonal of a diagonal
    tile (the arithmetic of :func:`daskgen.models.gaussian.finalize`)."""
    cov = scatter / (n - 1)
    if diagonal and reg_covar:
        idx = np.arange(cov.shape[0])
        cov[idx, idx] += reg_covar
    return cov


def cholesky_tile(a: np.ndarray, left: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Tile (I, J), I >= J, of the lower Cholesky factor (left-looking): ``a`` the covariance
    tile, ``left`` the pairs (L[I, m], L[J, m]) for m < J, and for I > J the last pair
    (L[J, J], None) appended. ``numpy.linalg.LinAlgError`` when not positive definite."""
    from scipy.linalg import solve_triangular

    a = np.array(a, dtype=np.float64, copy=True)
    diag_factor = None
    for li, lj in left:
        if lj is None:
            diag_factor = li
            continue
        a -= li @ lj.T
    if diag_factor is None:
        return np.linalg.cholesky(a)
    # L[I, J] L[J, J]^T = a  ->  L[J, J] L[I, J]^T = a^T
    return np.ascontiguousarray(solve_triangular(diag_factor, a.T, lower=True, check_finite=False).T)


def tile_digest(*arrays: np.ndarray) -> str:
    """A short hash of tiles' bytes (the model's fingerprint combines those of its factor)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()[:16]


def tiled_whiten(dev: np.ndarray, spans: list[Span], tile: TileReader) -> tuple[np.ndarray, float]:
    """``(L^{-1} dev^T)^T`` of rows ``dev`` (n, D) by blocked forward substitution, reading
    one tile of L at a time (``tile(I, J)``, I >= J), and log|Sigma| = 2 sum log diag L."""
    from scipy.linalg import solve_triangular

    w = np.empty_like(dev, dtype=np.float64)
    logdet = 0.0
    for i, (a, b) in enumerate(spans):
        r = np.array(dev[:, a:b], dtype=np.float64, copy=True)
        for j in range(i):
            c, d = spans[j]
            r -= w[:, c:d] @ tile(i, j).T
        lii = tile(i, i)
        w[:, a:b] = solve_triangular(lii, r.T, lower=True, check_finite=False).T
        logdet += 2.0 * float(np.log(np.diagonal(lii)).sum())
    return w, logdet


def gaussian_log_likelihood(dev: np.ndarray, spans: list[Span], tile: TileReader) -> np.ndarray:
    """log N(dev; 0, L L^T) of rows ``dev`` (n, D), tile by tile."""
    w, logdet = tiled_whiten(dev, spans, tile)
    return -0.5 * (dev.shape[1] * LOG_2PI + logdet + np.einsum("ij,ij->i", w, w))


def tiled_colour(z: np.ndarray, spans: list[Span], tile: TileReader, out: np.ndarray) -> np.ndarray:
    """``out = z L^T`` (rows of N(0, L L^T) from standard normals ``z`` (n, D)), column block
    I = sum_{J <= I} z[:, J] L[I, J]^T, one tile of L at a time, in ``out``'s dtype."""
    for i, (a, b) in enumerate(spans):
        acc = None
        for j in range(i + 1):
            c, d = spans[j]
            part = z[:, c:d] @ tile(i, j).astype(z.dtype, copy=False).T
            acc = part if acc is None else acc.__iadd__(part)
        out[:, a:b] = acc
    return out
