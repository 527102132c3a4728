"""Factoring a model's classes on the cluster: one task per class, once per command.

A model kind whose classes are factored independently (one Gaussian per class) has a
``factoring()`` (:class:`~daskgen.models.gaussian.GaussianFactoring`): per class a small
source (a stored Cholesky factor to read, or a covariance to factor) and how to
assemble a sampler or a scorer from the per-class factors. Here each class becomes one
task (``factor-<purpose>-<token>-<k>``) and the sampler or scorer one more key that
depends on them, so the tasks that draw or score depend on that key: the factors are
computed in parallel on the workers, once, never per block, and stay in the graph (a
lost worker's keys are recomputed from it). Other kinds get their sampler or scorer
built on the client, as one key of the graph (:func:`~.reduction.in_graph`).

:func:`run_calls` runs a model store's per-class writes (the Cholesky factors written at
fit time, :meth:`daskgen.models.base.ClassModel.class_arrays`) one task per class.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from dask.delayed import Delayed, delayed

from .._blas import one_blas_thread
from ..models.base import ClassModel, TransformedScorer
from .reduction import in_graph


def _class_tasks(factoring: Any, fn: Callable, args: tuple, purpose: str, token: str) -> list[Delayed]:
    return [
        delayed(fn, pure=True)(source, *args, dask_key_name=f"factor-{purpose}-{token}-{k}")
        for k, source in enumerate(factoring.sources)
    ]


def sampler_node(model: ClassModel, dtype: Any, token: str) -> Delayed:
    """The model's sampler in ``dtype`` as one key of the graph, its classes factored one
    task each when the kind allows."""
    factoring = model.factoring()
    if factoring is None:
        return in_graph(model.sampler(dtype), f"sampler-{token}")
    work = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    factors = _class_tasks(factoring, factoring.sampling_factor, (work,), "sample", token)
    return delayed(factoring.sampler, pure=True)(factors, dtype, dask_key_name=f"sampler-{token}")


def scorer_node(model: ClassModel, token: str) -> Any:
    """What scoring tasks need (:meth:`ClassModel.data_scorer`) as one key of the graph,
    the classes factored one task each when the kind allows; else the scorer itself."""
    factoring = model.factoring()
    if factoring is None:
        return model.data_scorer()
    factors = _class_tasks(factoring, factoring.scoring_factor, (), "score", token)
    inner = delayed(factoring.scorer, pure=True)(factors, dask_key_name=f"scorer-{token}")
    if model.transform.identity:
        return inner
    return delayed(TransformedScorer, pure=True)(inner, model.transform, dask_key_name=f"data-scorer-{token}")


def ready(node: Delayed, stage: str = "factor") -> Delayed:
    """``node`` computed now, before the command writes anything (a corrupted stored factor
    fails here), and kept for the tasks that depend on it: persisted on the cluster (its
    tasks stay in the scheduler's graph, so a lost worker's copy is recomputed), or, on
    Dask's local schedulers, its value as one key of the graph."""
    from distributed import futures_of, span, wait

    from .cluster import active_client

    client = active_client()
    if client is None:
        import dask

        return in_graph(dask.compute(node)[0], str(node.key))
    with span(stage):
        persisted = client.persist(node)
        futures = futures_of(persisted)
        wait(futures)
        for future in futures:
            if future.status != "finished":
                future.result()  # raises the task's error here
    return persisted


def _one_thread_call(call: Callable[[], Any]) -> Any:
    with one_blas_thread():  # a task per core already
        return call()


def run_calls(calls: Iterable[Callable[[], Any]], stage: str = "factor", progress: bool = False) -> list:
    """Run each call as one task on the current scheduler (the active client, or Dask's
    local one), with one BLAS thread each; their results in order. On a distributed
    client each call is submitted as soon as ``calls`` yields it, so the work that
    produces the next one (a class of a store written on the client) overlaps the tasks
    already running."""
    from distributed import span

    from .cluster import active_client, compute, show_futures

    run = uuid.uuid4().hex[:8]
    client = active_client()
    if client is None:
        tasks = [delayed(_one_thread_call, pure=False)(call, dask_key_name=f"{stage}-{run}-{i}")
                 for i, call in enumerate(calls)]
        return list(compute(tasks, stage=stage, progress=progress))
    with span(stage):
        futures = [client.submit(_one_thread_call, call, key=f"{stage}-{run}-{i}", pure=False)
                   for i, call in enumerate(calls)]
        if progress:
            show_futures(futures, stage)
        return client.gather(futures)
