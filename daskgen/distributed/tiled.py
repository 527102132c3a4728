"""A full-covariance fit whose D x D statistics live only as tiles, across workers.

``daskgen fit --tiles T`` (:func:`fit_tiles`) runs three stages on the current Dask
scheduler; no process ever holds a whole class's D x D matrix:

1. **moments** — per-class counts and sums (exact integers for 8-bit pixels) or means
   (Chan-merged, the untiled fit's arithmetic): small (K, D), through the reduction layer.
2. **scatter tiles** — for each upper tile (I, J) of T x T features, one task (key
   ``scatter-<token>-I-J``) reads the row blocks one at a time and adds that tile of
   every class present in each (:func:`~daskgen.kernels.tiles.pixel_gram_tile` or
   :func:`~daskgen.kernels.tiles.centered_tile`), then centres the tile and writes it,
   and its mirror (J, I), straight into the model store's ``scatter`` array, chunked
   (1, T, T): the tile is reduced over the row blocks on the worker that holds it and
   never moves. (With ``blocks_per_task``, groups of blocks make tasks
   ``tile-<token>-I-J-g`` whose parts a fixed tree of ``split_every`` fan-in adds.)
3. **blocked Cholesky** — a left-looking tile algorithm, one task per lower tile
   (k, I, J) (keys ``cholesky-<token>-k-I-J``): it reads the covariance tile from
   ``scatter`` (divided by n - 1, ``reg_covar`` on the diagonal), subtracts
   L[I, m] L[J, m]^T for m < J reading the factor's tiles one pair at a time from
   the store's ``cholesky`` array, factors (diagonal) or solves against L[J, J], and
   writes its tile. A task depends on its left neighbour (k, I, J - 1) and, below
   the diagonal, on (k, J, J): everything it reads has been written. Tiles move
   through the store (a shared disk or object store), never through the scheduler;
   a task returns the SHA-256 digest of its tile, from which the model's fingerprint is made.

Tasks run with one BLAS thread each (Dask runs one per core), as the reduction layer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from .._blas import one_blas_thread
from ..errors import InputError
from ..io.inputs import Dataset, read_block
from ..kernels.tiles import (
    TilePart,
    add_moments,
    add_tile_parts,
    centered_tile,
    cholesky_tile,
    covariance_tile,
    finish_pixel_tile,
    pixel_gram_tile,
    pixel_means,
    pixel_moments,
    tile_digest,
    tile_spans,
    upper_tiles,
)
from ..kernels.transform import NONE, Transform
from .fit import block_features, exact_sums, stats_reduction
from .reduction import DEFAULT_SPLIT_EVERY, Reduction, in_graph, reduce_blocks, tree

__all__ = ["TILE_ARRAYS", "TiledFit", "create_tile_arrays", "fit_tiles", "task_counts"]

#: The store's tiled arrays: the raw centred scatter (symmetric) and the lower Cholesky factor.
TILE_ARRAYS = ("scatter", "cholesky")


@dataclass
class TiledFit:
    """What :func:`fit_tiles` returns: the small statistics and the factor's tile digests."""

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    minimum: float
    maximum: float
    digests: list[str]


@dataclass(frozen=True, eq=False)
class _Plan:
    """The parameters every tile task reads (one key of the graph)."""

    url: str
    storage_options: dict | None
    classes: np.ndarray
    counts: np.ndarray
    sums: np.ndarray  # exact: the class sums (pixel units); else the class means (model units)
    scale: float
    exact: bool
    reg_covar: float
    spans: list
    transform: Transform
    pixels: bool
    seed: int
    input_options: dict | None


def create_tile_arrays(url: str, storage_options: dict | None, n_classes: int, n_features: int, tiles: int,
                       names: tuple[str, ...] = TILE_ARRAYS) -> Any:
    """Create the (K, D, D) float64 arrays ``names`` chunked (1, T, T), uncompressed, fill 0, in
    the group at ``url`` (created if needed); returns the group."""
    from ..io.fs import open_zarr_group

    group = open_zarr_group(url, storage_options, mode="a")
    shape = (n_classes, n_features, n_features)
    for name in names:
        group.create_array(name, shape=shape, dtype=np.float64, chunks=(1, tiles, tiles), compressors=None,
                           fill_value=0.0, overwrite=True)
    return group


def _array(plan: _Plan, name: str):
    from ..io.fs import open_zarr_group

    return open_zarr_group(plan.url, plan.storage_options, mode="r+")[name]


def _features(xy: tuple, plan: _Plan) -> tuple:
    if plan.transform.identity:
        return xy
    return block_features(xy, plan.transform, plan.pixels, plan.scale, plan.seed)


def _tile_part(xy: tuple, plan: _Plan, i: int, j: int):
    X, y = _features(xy, plan)
    si, sj = plan.spans[i], plan.spans[j]
    with one_blas_thread():
        if plan.exact:
            return pixel_gram_tile(np.asarray(X), y, plan.classes, si, sj)
        return centered_tile(np.asarray(X), y, plan.classes, plan.sums, si, sj,
                             plan.transform.feature_scale(plan.scale))


def _tile_total(blocks: list, rows: list, plan: _Plan, i: int, j: int):
    """Tile (i, j) of every class over the blocks, read here one at a time (in block order) and
    added in place into one (K, TI, TJ) total: the task holds the total and one block's part."""
    (a, b), (c, d) = plan.spans[i], plan.spans[j]
    total = np.zeros((len(plan.classes), b - a, d - c))
    seen = np.zeros(len(plan.classes), dtype=bool)
    for block, xy in zip(blocks, rows):
        part = _tile_part(read_block(block, plan.pixels, plan.input_options, xy), plan, i, j)
        total[part.index] += part.tiles
        seen[part.index] = True
        del part
    index = np.flatnonzero(seen)
    return TilePart(index, total if seen.all() else total[index])


def _write_scatter_tile(total, plan: _Plan, i: int, j: int) -> int:
    if isinstance(total, tuple):  # (blocks, rows): read and summed in this task
        total = _tile_total(*total, plan, i, j)
    (a, b), (c, d) = plan.spans[i], plan.spans[j]
    arr = _array(plan, "scatter")
    for pos, tile in zip(total.index.tolist(), total.tiles):
        if plan.exact:
            s = plan.sums[pos]
            tile = finish_pixel_tile(tile, s[a:b], s[c:d], int(plan.counts[pos]), plan.scale)
        arr[pos, a:b, c:d] = tile
        if i != j:
            arr[pos, c:d, a:b] = tile.T
    return len(total.index)


def _cholesky_task(plan: _Plan, k: int, i: int, j: int, *after: Any) -> str:
    """Tile (i, j), i >= j, of class k's lower factor, written to the store; its digest."""
    (a, b), (c, d) = plan.spans[i], plan.spans[j]
    scatter, chol = _array(plan, "scatter"), _array(plan, "cholesky")
    cov = covariance_tile(np.asarray(scatter[k, a:b, c:d]), int(plan.counts[k]), plan.reg_covar, i == j)

    def left():
        for m in range(j):
            e, f = plan.spans[m]
            yield np.asarray(chol[k, a:b, e:f]), np.asarray(chol[k, c:d, e:f])
        if i != j:
            yield np.asarray(chol[k, c:d, c:d]), None

    try:
        with one_blas_thread():
            tile = cholesky_tile(cov, left())
    except np.linalg.LinAlgError:
        raise InputError(
            f"class {plan.classes[k]!r}: the covariance is not positive definite (features {c}..{d - 1}); a tiled "
            "fit needs --reg-covar > 0 (or fit without --tiles)") from None
    if not np.isfinite(tile).all():
        raise InputError(f"class {plan.classes[k]!r}: the covariance's Cholesky factor overflows float64; "
                         "rescale the data (e.g. --scale)")
    chol[k, a:b, c:d] = tile
    return tile_digest(tile)


def _moments(dataset: Dataset, exact: bool, transform: Transform, seed: int, split_every: int, progress: bool):
    """(classes, counts, sums or means, minimum, maximum): the small first pass."""
    if exact:
        sums = reduce_blocks(Reduction("tile-moments", pixel_moments, add_moments, exact=True), dataset,
                             split_every=split_every, stage="fit-moments", progress=progress,
                             token=tokenize("tile-moments", dataset.blocks, dataset.files, dataset.integer_pixels))
        return sums.classes, sums.counts, sums.sums, sums.minimum, sums.maximum
    stats = reduce_blocks(stats_reduction(dataset, True, transform, seed), dataset, split_every=split_every,
                          stage="fit-moments", progress=progress)
    return stats.classes, stats.counts, stats.means, stats.minimum, stats.maximum


def check_counts(classes: np.ndarray, counts: np.ndarray) -> None:
    """Every class needs two rows for a covariance (the message of the untiled fit)."""
    small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2]
    if small:
        raise InputError("class " + ", ".join(f"{c!r} has {n} row{'s' if n != 1 else ''}" for c, n in small)
                         + "; every class needs at least 2 rows for a covariance")


def task_counts(n_features: int, tiles: int, n_classes: int) -> dict[str, int]:
    """The tasks of :func:`fit_tiles`'s tile stages (default ``blocks_per_task``), by kind: a
    scatter task per upper tile, a Cholesky task per lower tile of each class."""
    n = len(tile_spans(n_features, tiles))
    upper = n * (n + 1) // 2
    return {"scatter": upper, "cholesky": n_classes * upper}


def fit_tiles(dataset: Dataset, tiles: int, url: str, storage_options: dict | None = None, *,
              reg_covar: float = 0.0, transform: Transform = NONE, seed: int = 0,
              split_every: int = DEFAULT_SPLIT_EVERY, progress: bool = False,
              blocks_per_task: int | None = None) -> TiledFit:
    """Fit full class covariances as tiles of ``tiles`` features written into the Zarr group at
    ``url`` (arrays ``scatter`` and ``cholesky``, see :func:`create_tile_arrays`); returns the
    small statistics. Runs on the active distributed client if any, else Dask's local scheduler.

    ``blocks_per_task``: blocks one tile task reads and sums (default: all of them, so the
    tile never moves between workers); fewer give more, shorter tasks whose parts a fixed
    tree of ``split_every`` fan-in adds."""
    from .cluster import compute

    if not dataset.blocks:
        raise InputError("no rows in the input")
    exact = exact_sums(dataset, False, transform)
    classes, counts, sums, lo, hi = _moments(dataset, exact, transform, seed, split_every, progress)
    if counts.sum() == 0:
        raise InputError(f"no rows in the input ({', '.join(f['path'] for f in dataset.files[:3])})")
    check_counts(classes, counts)
    D = dataset.n_features
    spans = tile_spans(D, int(tiles))
    means = pixel_means(sums, counts, dataset.scale) if exact else sums
    if not np.isfinite(means).all():
        raise InputError(f"the class means overflow float64 (data range {lo:g}..{hi:g}); rescale the data (--scale)")
    create_tile_arrays(url, storage_options, len(classes), D, int(tiles))
    plan = _Plan(url, storage_options, classes, counts, sums, float(dataset.scale), exact, float(reg_covar), spans,
                 transform, bool(dataset.integer_pixels), int(seed), dataset.storage_options or None)
    token = tokenize("tiles", dataset.blocks, dataset.files, dataset.scale, dataset.integer_pixels, transform, seed,
                     int(tiles), float(reg_covar), url)
    shared = in_graph(plan, f"tile-plan-{token}")
    n_blocks = len(dataset.blocks)
    per = n_blocks if not blocks_per_task else min(int(blocks_per_task), n_blocks)
    groups = [list(range(b, min(b + per, n_blocks))) for b in range(0, n_blocks, per)]
    written = {}
    for i, j in upper_tiles(len(spans)):
        if len(groups) == 1:  # one task reads every block and sums the tile: nothing moves between workers
            total = (list(dataset.blocks), [dataset.rows(b) for b in range(len(dataset.blocks))])
        else:
            parts = [delayed(_tile_total, pure=True)([dataset.blocks[b] for b in g], [dataset.rows(b) for b in g],
                                                     shared, i, j, dask_key_name=f"tile-{token}-{i}-{j}-{n}")
                     for n, g in enumerate(groups)]
            total = tree(parts, add_tile_parts, split_every, f"tile-sum-{token}-{i}-{j}")
        written[i, j] = delayed(_write_scatter_tile, pure=True)(total, shared, i, j,
                                                                dask_key_name=f"scatter-{token}-{i}-{j}")
    factor: dict[tuple[int, int, int], Any] = {}
    for k in range(len(classes)):
        for j in range(len(spans)):
            for i in range(j, len(spans)):
                after = [written[j, i]]
                if j:
                    after.append(factor[k, i, j - 1])
                if i != j:
                    after.append(factor[k, j, j])
                factor[k, i, j] = delayed(_cholesky_task, pure=True)(
                    shared, k, i, j, *after, dask_key_name=f"cholesky-{token}-{k}-{i}-{j}")
    keys = sorted(factor)
    digests = compute([factor[key] for key in keys], stage="fit-tiles", progress=progress)
    return TiledFit(classes, counts, means, lo, hi, list(digests))
