"""Dask wiring of the fit: chunk-stats (read a block, its statistics) -> tree combine.

The graph is built from plain functions (``read_block``, ``chunk_stats``, ``merge``)
with explicit keys, so the dashboard's task stream and progress read ``chunk-stats``
and ``combine``. A block is read inside its ``chunk-stats`` task: the parsed rows
never wait in memory for a separate task, and a scheduler that (rightly) finishes
statistics before starting new reads leaves no thread idle at the end of a fit.
``merge`` runs on at most ``split_every`` inputs per task, so no task gathers every
block's statistics at once.
"""

from __future__ import annotations

from collections.abc import Callable

from dask.base import tokenize
from dask.delayed import Delayed, delayed

from ._blas import one_blas_thread
from .io.readers import Dataset, read_block
from .stats import ClassStats, chunk_stats, merge

DEFAULT_SPLIT_EVERY = 8


def _block_stats(block, integer_pixels: bool, storage_options: dict | None, diagonal: bool, scale: float) -> ClassStats:
    X, y = read_block(block, integer_pixels, storage_options)
    with one_blas_thread():  # Dask runs a task per core already
        return chunk_stats(X, y, diagonal=diagonal, scale=scale)


def tree_reduce(parts: list, split_every: int, token: str, combine: Callable = merge) -> Delayed:
    """Combine ``parts`` (Delayed statistics, ClassStats by default) by a tree of ``combine``
    tasks (``merge`` by default), ``split_every`` wide."""
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    level, depth = list(parts), 0
    if len(level) == 1:
        return delayed(combine, pure=True)(level, dask_key_name=f"combine-{token}-0-0")
    while len(level) > 1:
        level = [
            delayed(combine, pure=True)(level[i : i + split_every], dask_key_name=f"combine-{token}-{depth}-{j}")
            for j, i in enumerate(range(0, len(level), split_every))
        ]
        depth += 1
    return level[0]


def stats_graph(
    dataset: Dataset, diagonal: bool = False, split_every: int = DEFAULT_SPLIT_EVERY
) -> Delayed:
    """A Delayed ClassStats over every block of ``dataset``."""
    token = tokenize(dataset.blocks, dataset.scale, dataset.integer_pixels, diagonal)
    parts = [
        delayed(_block_stats, pure=True)(
            block, dataset.integer_pixels, dataset.storage_options or None, diagonal, dataset.scale,
            dask_key_name=f"chunk-stats-{token}-{i}",
        )
        for i, block in enumerate(dataset.blocks)
    ]
    return tree_reduce(parts, split_every, token)


def compute_stats(dataset: Dataset, diagonal: bool = False, split_every: int = DEFAULT_SPLIT_EVERY, progress: bool = False) -> ClassStats:
    """Run the statistics graph on the current Dask scheduler (a distributed Client if one is active)."""
    from .cluster import compute

    return compute(stats_graph(dataset, diagonal, split_every), stage="fit", progress=progress)

