"""Dask wiring of the fit: chunk-stats (read a block, its statistics) -> combine.

The graph is built from plain functions (``read_block``, the statistics kernels,
their merges) with explicit keys, so the dashboard's task stream and progress read
``chunk-stats`` and ``combine``. A block is read inside its ``chunk-stats`` task: the
parsed rows never wait in memory for a separate task, and no thread idles at the end
of a fit while one last read runs. A combine merges at most ``split_every`` inputs.

Two reductions:

* 8-bit pixels (full covariances) carry exact integer sums (:class:`PixelSums`), whose
  merge is exact in any order. On a distributed cluster they are combined *as blocks
  finish*: whenever two or more results are ready, up to ``split_every`` of them are
  merged. A worker then holds a handful of statistics however many blocks there are
  (with a fixed tree it held those of every block waiting for its group, plus every
  group result waiting for the next level: peak memory grew with N), and the model
  is bit-identical whatever the order.
* Other data (floats, diagonal statistics) carries centered statistics merged by
  Chan's update, whose rounding depends on the order: a fixed tree of ``split_every``
  fan-in, so results are bit-identical run to run.

Array inputs (``daskgen.io.arrays``) take the same reductions: a block's rows are
then the result of a Dask task (``Dataset.rows(i)``), passed to ``read_block``
instead of being read from a file, and the leaves of the as-completed merge are
submitted with those tasks as dependencies.
"""

from __future__ import annotations

from collections.abc import Callable

from dask.base import tokenize
from dask.delayed import Delayed, delayed

from ._blas import one_blas_thread
from .errors import InputError
from .io.readers import Block, Dataset, read_block
from .kernels.class_stats import ClassStats, PixelSums, add_sums, chunk_stats, merge, pixel_sums
from .kernels.transform import NONE, Transform

DEFAULT_SPLIT_EVERY = 8


def read_features(block: Block, integer_pixels: bool, storage_options: dict | None, scale: float,
                  transform: Transform = NONE, seed: int = 0, rows=None) -> tuple:
    """``(X, y)`` of a block, ``X`` in the model's feature space as far as a kernel needs it
    (:meth:`~daskgen.kernels.transform.Transform.block`; the kernel then applies
    ``transform.feature_scale(scale)``). Values a transform refuses are an InputError."""
    X, y = read_block(block, integer_pixels, storage_options, rows)
    try:
        return transform.block(X, integer_pixels, scale, seed), y
    except ValueError as exc:
        raise InputError(f"{block.url}: {exc}") from None


def _block_stats(block, integer_pixels: bool, storage_options: dict | None, diagonal: bool, scale: float,
                 rows=None, transform: Transform = NONE, seed: int = 0) -> ClassStats:
    X, y = read_features(block, integer_pixels, storage_options, scale, transform, seed, rows)
    with one_blas_thread():  # Dask runs a task per core already
        return chunk_stats(X, y, diagonal=diagonal, scale=transform.feature_scale(scale))


def _block_sums(block, storage_options: dict | None, rows=None) -> PixelSums:
    X, y = read_block(block, True, storage_options, rows)
    with one_blas_thread():
        return pixel_sums(X, y)


def _sums_task(dataset: Dataset, token: str, i: int) -> Delayed:
    return delayed(_block_sums, pure=True)(
        dataset.blocks[i], dataset.storage_options or None, dataset.rows(i), dask_key_name=f"chunk-stats-{token}-{i}"
    )


def exact_sums(dataset: Dataset, diagonal: bool, transform: Transform = NONE) -> bool:
    """Whether the fit of ``dataset`` runs on exact integer sums (not in logit space)."""
    return bool(dataset.integer_pixels) and not diagonal and transform.identity


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
    dataset: Dataset, diagonal: bool = False, split_every: int = DEFAULT_SPLIT_EVERY,
    transform: Transform = NONE, seed: int = 0,
) -> Delayed:
    """A Delayed ClassStats over every block of ``dataset`` (of its features under ``transform``)."""
    token = tokenize(dataset.blocks, dataset.files, dataset.scale, dataset.integer_pixels, diagonal, transform, seed)
    if exact_sums(dataset, diagonal, transform):
        sums = [_sums_task(dataset, token, i) for i in range(len(dataset.blocks))]
        total = tree_reduce(sums, split_every, token, combine=add_sums)
        return delayed(PixelSums.to_class_stats, pure=True)(total, dataset.scale, dask_key_name=f"finalize-{token}")
    parts = [
        delayed(_block_stats, pure=True)(
            block, dataset.integer_pixels, dataset.storage_options or None, diagonal, dataset.scale, dataset.rows(i),
            transform, seed, dask_key_name=f"chunk-stats-{token}-{i}",
        )
        for i, block in enumerate(dataset.blocks)
    ]
    return tree_reduce(parts, split_every, token)


def compute_stats(dataset: Dataset, diagonal: bool = False, split_every: int = DEFAULT_SPLIT_EVERY, progress: bool = False,
                  transform: Transform = NONE, seed: int = 0) -> ClassStats:
    """Run the statistics on the current Dask scheduler (a distributed Client if one is active).

    With a ``logit`` transform the statistics are of the block's logit features (the
    dequantization noise from ``seed`` and each row's values), by the float path.
    """
    from .cluster import active_client, compute

    client = active_client()
    if client is None or not exact_sums(dataset, diagonal, transform):
        return compute(stats_graph(dataset, diagonal, split_every, transform, seed), stage="fit", progress=progress)
    return reduce_as_completed(client, dataset, split_every, progress).to_class_stats(dataset.scale)


def reduce_as_completed(client, dataset: Dataset, split_every: int = DEFAULT_SPLIT_EVERY, progress: bool = False) -> PixelSums:
    """Exact sums of every block of ``dataset``, merged on ``client`` as blocks finish.

    Whenever two or more results are ready, they go to ``combine`` tasks of up to
    ``split_every`` inputs, whose results join the ready ones in turn. Combines run
    before blocks not yet started (higher priority), and references are dropped as
    soon as a result is merged, so the cluster holds only the statistics of blocks
    just finished and of combines in flight. On an error or interruption everything
    still pending is cancelled.
    """
    import uuid

    from distributed import as_completed, span

    from .cluster import TextBar

    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    token = tokenize(dataset.blocks, dataset.files, dataset.integer_pixels, "sums")
    # A combine's inputs depend on timing: its key names this run, so a later run in
    # the same session can never be handed a result of another grouping.
    run = uuid.uuid4().hex[:8]
    bar = TextBar(len(dataset.blocks), "chunk-stats") if progress else None
    ready: list = []
    pending = None
    try:
        with span("fit"):
            if dataset.parts is None:
                leaves = [
                    client.submit(_block_sums, block, dataset.storage_options or None, key=f"chunk-stats-{token}-{i}", pure=True)
                    for i, block in enumerate(dataset.blocks)
                ]
            else:  # each leaf depends on the task that yields its rows
                leaves = client.compute([_sums_task(dataset, token, i) for i in range(len(dataset.blocks))])
            pending = as_completed(leaves)
            del leaves
            combines = 0
            for finished in pending.batches():
                for future in finished:
                    if future.status != "finished":
                        future.result()  # raises the task's error (or the cancellation) here
                    if bar is not None and future.key.startswith("chunk-stats-"):
                        bar.step()
                ready.extend(finished)
                del finished
                while len(ready) >= 2:
                    batch, ready = ready[:split_every], ready[split_every:]
                    pending.add(client.submit(add_sums, batch, key=f"combine-{token}-{run}-{combines}",
                                              pure=False, priority=1))
                    combines += 1
                    del batch
        return ready[0].result()
    except BaseException:
        if pending is not None:  # nothing pending keeps running, or holds memory
            left = [*pending.futures, *ready]
            pending.clear()
            if left:
                client.cancel(left)
        raise
    finally:
        if bar is not None:
            bar.close()
        ready.clear()
