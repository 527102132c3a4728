"""The one way daskgen runs "per block, a statistic; merge; finalize" on Dask.

A :class:`Reduction` names the three steps, as flox's ``Aggregation(chunk, combine,
finalize)`` does:

* ``chunk(X, y, *params) -> partial`` — a plain function of one block's rows ``X``
  (n_i, D) in pixel units and labels ``y`` (n_i,) and of the pass's parameters
  (``chunk(X, y, index, *params)`` when ``indexed``: the block's position, e.g. to
  seed its noise);
* ``combine(list of partials) -> partial`` — a merge of at least one partial;
* ``finalize(partial) -> result`` — optional;
* ``fold(total, X, y, *params) -> total`` — optional: folds one block's rows into a
  running total *in place* (``total`` None for a lane's first block) and returns it,
  the same statistic as ``combine([total, chunk(X, y, *params)])``.

:func:`reduce_blocks` runs one over the blocks of a :class:`~daskgen.io.inputs.Dataset`
(each block read inside its own chunk task, so parsed rows never wait in memory for a
separate task) or over a list of Delayed ``(X, y)`` (blocks persisted by the EM), with
one of two strategies:

``"tree"``
    A fixed tree of ``combine`` tasks, each merging at most ``split_every`` inputs in
    block order. Its grouping depends on the number of blocks only, so a merge whose
    rounding depends on the order (Chan's update of float statistics) is bit-identical
    run to run, whichever worker ran what.
``"as-completed"``
    Only for a Reduction declared ``exact`` (its merge gives the same bits in any
    grouping and order, e.g. integer sums). On a distributed client, whenever two or
    more results are ready, up to ``split_every`` of them go to a ``combine`` task
    (run before blocks not started yet); a worker then holds a handful of partials
    however many blocks there are. Without a distributed client, the fixed tree.

``"fold"``
    Only for a Reduction with ``fold``: the blocks are cut into *lanes* of consecutive
    blocks, each lane a chain of tasks that fold their block into the lane's running
    total in place (a worker holds one total per lane it runs, however many blocks
    there are, and no statistic per block); the lanes' totals then merge by
    ``combine`` — as they complete (exact reductions on a distributed client: one lane
    per worker thread) or by the fixed tree (``ceil(blocks / split_every)`` lanes, at
    least two: the grouping depends on the number of blocks only, so results stay
    bit-identical run to run).

``"auto"`` (the default) picks ``"fold"`` for reductions with ``fold``, else
``"as-completed"`` for exact reductions, else ``"tree"``.

Keys are readable for the dashboard: ``<name>-<token>-<i>`` for the block tasks,
``<combine_name>-<token>-...`` for the merges (``combine-em-estep-...`` by default,
``combine-...`` for the fit), ``<name>-params-<token>`` for the parameters (a parameter
may be a Delayed of the same graph: a model's factors, computed one task per class). The whole
run is one ``distributed.span`` (``stage``) with a progress bar on request.

Parameters are shipped **inside the graph**: the tuple ``params`` is one key that
every block task depends on (never embedded per task, never ``client.scatter``-ed).
The scheduler keeps it in the graph, so a stage survives losing every worker at once:
the key is recomputed from the graph on a new worker, where scattered data would be
lost with the workers that held it. A key pinned to a parameter object is named by
``token``: pass a token that identifies both the data and the parameters (hashing a
few hundred MB of parameters costs ~0.3 s a pass; a counter does as well).

Every block task runs with one BLAS thread (Dask already runs a task per core) and
tells the kernels, through :func:`daskgen._blas.shares_threads`, whether other tasks
share its process's threads (kernels never ask which worker they run on).
"""

from __future__ import annotations

import itertools
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dask.base import tokenize
from dask.delayed import Delayed, delayed

from .._blas import one_blas_thread, shares_threads
from ..io.inputs import Dataset, read_block
from ..options import SPLIT_EVERY

DEFAULT_SPLIT_EVERY = SPLIT_EVERY.default
TREE, AS_COMPLETED, FOLD, AUTO = "tree", "as-completed", "fold", "auto"
STRATEGIES = (TREE, AS_COMPLETED, FOLD, AUTO)


@dataclass(frozen=True)
class Reduction:
    """A statistic computed per block, merged, and finalized (see the module docstring).

    ``name`` is the key prefix of the block tasks (``"chunk-stats"``, ``"em-estep"``,
    ``"evaluate"``); ``combine_name`` that of the merges (default ``"combine-<name>"``).
    ``exact`` declares that ``combine`` gives the same result, to the bit, in any
    grouping and order of its inputs: only then may partials merge as they complete.
    """

    name: str
    chunk: Callable[..., Any]
    combine: Callable[[list[Any]], Any]
    finalize: Callable[[Any], Any] | None = None
    exact: bool = False
    indexed: bool = False
    combine_name: str | None = None
    fold: Callable[..., Any] | None = None
    #: ``gather(client, lanes) -> total``: how the client merges the lanes' totals (futures
    #: on worker processes) piece by piece instead of by ``combine`` tasks (exact only)
    gather: Callable[[Any, list], Any] | None = None

    @property
    def combine_prefix(self) -> str:
        return self.combine_name or f"combine-{self.name}"


#: Where a block's rows come from: a Dataset (each block read in its chunk task), or
#: one Delayed (or persisted) ``(X, y)`` per block.
Source = Dataset | Sequence[Any]


def check_split_every(split_every: int) -> int:
    """``split_every`` as an int, at least 2 (a merge of one input would never end)."""
    if split_every is None or int(split_every) < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    return int(split_every)


def _threads_shared() -> bool:
    """Whether this task runs in a Dask worker that runs other tasks in other threads."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads > 1
    except (ImportError, ValueError, AttributeError):
        return False


@dataclass(frozen=True, eq=False)
class Params:
    """The parameters of one run, as the value of one graph key (an opaque object: a bare
    tuple whose first item is callable would read as a task)."""

    values: tuple


def _run_chunk(reduction: Reduction, xy: Any, index: int, params: Params | None) -> Any:
    X, y = xy
    values = params.values if params is not None else ()
    args = (index, *values) if reduction.indexed else values
    with one_blas_thread(), shares_threads(_threads_shared()):
        return reduction.chunk(X, y, *args)


def _read_and_run_chunk(reduction: Reduction, block, check_pixel_range: bool, storage_options: dict | None, rows,
                        index: int, params: Params | None) -> Any:
    return _run_chunk(reduction, read_block(block, check_pixel_range, storage_options, rows), index, params)


def in_graph(obj: Any, key: str) -> Delayed:
    """``obj`` (read-only, possibly large) as one key ``key`` of the graph, for tasks to
    depend on rather than embed. Not scattered: scattered data lives only on workers, and
    once every worker holding it has died the run fails; a graph key is recomputed on a
    new worker. ``key`` must name this very object (a token of its contents or of a pass)."""
    return delayed(obj, name=key, pure=False, traverse=False)


def _params_node(reduction: Reduction, params: tuple, token: str) -> Delayed | None:
    """The parameters as one key of the graph (None without parameters: no key at all)."""
    if not params:
        return None
    if any(isinstance(p, Delayed) for p in params):  # values other tasks compute (a model's factors, say)
        return delayed(_gather_params, pure=False)(*params, dask_key_name=f"{reduction.name}-params-{token}")
    return in_graph(Params(tuple(params)), f"{reduction.name}-params-{token}")


def _gather_params(*values: Any) -> Params:
    return Params(values)


def _source_token(source: Source) -> Any:
    if isinstance(source, Dataset):
        return (source.blocks, source.files, source.scale, source.integer_pixels)
    return [getattr(b, "key", b) for b in source]


def read_tasks(dataset: Dataset, token: str) -> list[Delayed]:
    """One task per block that reads its rows, ``(X (n_i, D), y (n_i,))`` in pixel units,
    keys ``read-<token>-<i>``: the source to persist when several passes read the blocks."""
    so = dataset.storage_options or None
    return [
        delayed(read_block, pure=True)(block, dataset.integer_pixels, so, dataset.rows(i),
                                       dask_key_name=f"read-{token}-{i}")
        for i, block in enumerate(dataset.blocks)
    ]


def chunk_tasks(reduction: Reduction, source: Source, params: Sequence[Any] = (), token: str | None = None) -> list[Delayed]:
    """The block tasks of ``reduction`` over ``source``: Delayed partials, one per block."""
    params = tuple(params)
    token = token or tokenize(reduction.name, _source_token(source), params)
    shared = _params_node(reduction, params, token)
    if isinstance(source, Dataset):
        so = source.storage_options or None
        return [
            delayed(_read_and_run_chunk, pure=True)(reduction, block, source.integer_pixels, so, source.rows(i), i,
                                                    shared, dask_key_name=f"{reduction.name}-{token}-{i}")
            for i, block in enumerate(source.blocks)
        ]
    return [
        delayed(_run_chunk, pure=True)(reduction, xy, i, shared, dask_key_name=f"{reduction.name}-{token}-{i}")
        for i, xy in enumerate(source)
    ]


def _fold_chunk(reduction: Reduction, total: Any, xy: Any, index: int, params: Params | None) -> Any:
    X, y = xy
    values = params.values if params is not None else ()
    args = (index, *values) if reduction.indexed else values
    with one_blas_thread(), shares_threads(_threads_shared()):
        return reduction.fold(total, X, y, *args)


def _read_and_fold(reduction: Reduction, total: Any, block, check_pixel_range: bool, storage_options: dict | None,
                   rows, index: int, params: Params | None) -> Any:
    return _fold_chunk(reduction, total, read_block(block, check_pixel_range, storage_options, rows), index, params)


def _n_blocks(source: Source) -> int:
    return len(source.blocks) if isinstance(source, Dataset) else len(source)


def lane_bounds(n_blocks: int, n_lanes: int) -> list[tuple[int, int]]:
    """``n_lanes`` (at most ``n_blocks``) runs of consecutive blocks, as even as possible."""
    n_lanes = max(1, min(n_lanes, n_blocks))
    cuts = [n_blocks * i // n_lanes for i in range(n_lanes + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def fixed_lanes(n_blocks: int, split_every: int) -> int:
    """The lanes of a folding reduction merged by the fixed tree: a function of the number
    of blocks only (``split_every`` blocks a lane, at least two lanes to run in parallel)."""
    return max(2, -(-n_blocks // check_split_every(split_every)))


def fold_tasks(reduction: Reduction, source: Source, n_lanes: int, params: Sequence[Any] = (),
               token: str | None = None) -> list[Delayed]:
    """The lanes of a folding reduction over ``source``: one Delayed running total per
    lane, each a chain of tasks ``<name>-<token>-<i>`` (block ``i`` folded in place into
    the total of the blocks before it in its lane)."""
    if reduction.fold is None:
        raise ValueError(f"{reduction.name}: folding needs Reduction(fold=...)")
    params = tuple(params)
    token = token or tokenize(reduction.name, _source_token(source), params)
    shared = _params_node(reduction, params, token)
    n_blocks = _n_blocks(source)
    so = source.storage_options or None if isinstance(source, Dataset) else None
    lanes = []
    for a, b in lane_bounds(n_blocks, n_lanes):
        total = None
        for i in range(a, b):
            key = f"{reduction.name}-{token}-{i}"
            if isinstance(source, Dataset):
                total = delayed(_read_and_fold, pure=True)(reduction, total, source.blocks[i], source.integer_pixels,
                                                           so, source.rows(i), i, shared, dask_key_name=key)
            else:
                total = delayed(_fold_chunk, pure=True)(reduction, total, source[i], i, shared, dask_key_name=key)
        lanes.append(total)
    return lanes


def tree(parts: Sequence[Delayed], combine: Callable[[list[Any]], Any], split_every: int, prefix: str) -> Delayed:
    """Merge ``parts`` by a fixed tree of ``combine`` tasks, each of at most ``split_every``
    consecutive inputs; keys ``<prefix>-<depth>-<j>``. A single part is still combined
    once (so the result is always ``combine``'s)."""
    split_every = check_split_every(split_every)
    level, depth = list(parts), 0
    if not level:
        raise ValueError("nothing to reduce: no blocks")
    if len(level) == 1:
        return delayed(combine, pure=True)(level, dask_key_name=f"{prefix}-0-0")
    while len(level) > 1:
        level = [
            delayed(combine, pure=True)(level[i : i + split_every], dask_key_name=f"{prefix}-{depth}-{j}")
            for j, i in enumerate(range(0, len(level), split_every))
        ]
        depth += 1
    return level[0]


def reduction_graph(reduction: Reduction, source: Source, params: Sequence[Any] = (), *,
                    split_every: int = DEFAULT_SPLIT_EVERY, token: str | None = None, strategy: str = AUTO) -> Delayed:
    """The whole reduction as one Delayed (fixed lanes when the reduction folds and
    ``strategy`` is not ``"tree"``, the fixed tree, then ``finalize``), to compute
    together with others; :func:`reduce_blocks` computes one."""
    params = tuple(params)
    token = token or tokenize(reduction.name, _source_token(source), params)
    if reduction.fold is not None and strategy != TREE:
        n_blocks = _n_blocks(source)
        leaves = fold_tasks(reduction, source, fixed_lanes(n_blocks, split_every), params, token)
    else:
        leaves = chunk_tasks(reduction, source, params, token)
    total = tree(leaves, reduction.combine, split_every, f"{reduction.combine_prefix}-{token}")
    if reduction.finalize is None:
        return total
    return delayed(reduction.finalize, pure=True)(total, dask_key_name=f"finalize-{reduction.name}-{token}")


def reduce_blocks(
    reduction: Reduction,
    source: Source,
    params: Sequence[Any] = (),
    *,
    split_every: int = DEFAULT_SPLIT_EVERY,
    strategy: str = AUTO,
    token: str | None = None,
    stage: str | None = None,
    progress: bool = False,
) -> Any:
    """Run ``reduction`` over every block of ``source`` on the current Dask scheduler.

    ``params`` go to every chunk task (after the rows, and the index when
    ``indexed``), shipped as one key of the graph. ``stage`` names the
    ``distributed.span`` (default: the reduction's name); ``progress`` draws a bar.
    Returns ``finalize(merged)`` (the merged partial without ``finalize``).
    """
    from .cluster import active_client, compute

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == AS_COMPLETED and not reduction.exact:
        raise ValueError(f"{reduction.name}: merging as completed needs an exact merge (Reduction(exact=True))")
    if strategy == FOLD and reduction.fold is None:
        raise ValueError(f"{reduction.name}: folding needs Reduction(fold=...)")
    split_every = check_split_every(split_every)
    params = tuple(params)
    token = token or tokenize(reduction.name, _source_token(source), params)
    stage = stage or reduction.name
    client = active_client()
    with warnings.catch_warnings():
        # the parameters are in the graph once, on purpose (see the module docstring)
        warnings.filterwarnings("ignore", message="Sending large graph")
        if client is None or strategy == TREE or not reduction.exact:
            graph = reduction_graph(reduction, source, params, split_every=split_every, token=token,
                                    strategy=strategy)
            return compute(graph, stage=stage, progress=progress)
        if reduction.fold is not None and strategy in (FOLD, AUTO):
            # exact: any grouping gives the same bits, so one lane per thread of the cluster
            threads = sum(client.nthreads().values()) or 1
            leaves = fold_tasks(reduction, source, threads, params, token)
            if reduction.gather is not None and workers_elsewhere(client):
                total = gather_lanes(client, reduction, leaves, stage, progress)
                return total if reduction.finalize is None else reduction.finalize(total)
        else:
            leaves = chunk_tasks(reduction, source, params, token)
        total = merge_as_completed(client, reduction, leaves, split_every, f"{reduction.combine_prefix}-{token}",
                                   stage, progress)
    return total if reduction.finalize is None else reduction.finalize(total)


def workers_elsewhere(client) -> bool:
    """Whether the cluster's workers are processes of their own (results travel)."""
    import os

    try:
        pids = client.run(os.getpid)
    except Exception:
        return True
    return any(pid != os.getpid() for pid in pids.values())


def gather_lanes(client, reduction: Reduction, leaves: list[Delayed], stage: str, progress: bool = False) -> Any:
    """The lanes' totals (Delayed) computed on worker processes and merged on the client
    by ``reduction.gather`` (piece by piece: no process ever holds a second total); on an
    error or interruption the lanes are cancelled."""
    from distributed import span, wait

    from .cluster import TextBar

    bar = TextBar(len(leaves), reduction.name) if progress else None
    futures: list = []
    try:
        with span(stage):
            futures = client.compute(list(leaves))
            wait(futures)
            for future in futures:
                if future.status != "finished":
                    future.result()  # raises the task's error here
            if bar is not None:
                for _ in leaves:
                    bar.step()
            return reduction.gather(client, futures)
    finally:
        if futures:
            client.cancel(futures)
        futures.clear()
        if bar is not None:
            bar.close()


def merge_as_completed(client, reduction: Reduction, leaves: list[Delayed], split_every: int, prefix: str,
                       stage: str, progress: bool = False) -> Any:
    """The merged partial of ``leaves`` (Delayed), combined on ``client`` as they finish.

    Whenever two or more results are ready, they go to ``combine`` tasks of up to
    ``split_every`` inputs, whose results join the ready ones in turn. Combines run
    before blocks not yet started (higher priority), and references are dropped as
    soon as a result is merged, so the cluster holds only the partials of blocks
    just finished and of combines in flight. On an error or interruption everything
    still pending is cancelled.
    """
    from distributed import as_completed, span

    from .cluster import TextBar

    if not leaves:
        raise ValueError("nothing to reduce: no blocks")
    # A combine's inputs depend on timing: its key names this run, so a later run in
    # the same session can never be handed a result of another grouping.
    run = uuid.uuid4().hex[:8]
    bar = TextBar(len(leaves), reduction.name) if progress else None
    leaf_prefix = f"{reduction.name}-"
    ready: list = []
    pending = None
    try:
        with span(stage):
            futures = client.compute(list(leaves))
            pending = as_completed(futures)
            del futures
            combines = 0
            for finished in pending.batches():
                for future in finished:
                    if future.status != "finished":
                        future.result()  # raises the task's error (or the cancellation) here
                    if bar is not None and future.key.startswith(leaf_prefix):
                        bar.step()
                ready.extend(finished)
                del finished
                while len(ready) >= 2:
                    batch, ready = ready[:split_every], ready[split_every:]
                    pending.add(client.submit(reduction.combine, batch, key=f"{prefix}-{run}-{combines}",
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
