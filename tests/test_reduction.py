"""The reduction layer (daskgen.distributed.reduction): the fixed tree's grouping, the
merge as completed, parameters as one graph key, and kernels free of Dask."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
from dask.core import get_dependencies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskgen.distributed.reduction import (
    Reduction,
    chunk_tasks,
    fixed_lanes,
    fold_tasks,
    lane_bounds,
    reduce_blocks,
    reduction_graph,
    tree,
)


# ---------------------------------------------------------------------------- an exact reduction to test with
def _sums(X, y, delay=0.0):
    """Per block: integer column sums, the blocks seen (1) and the widest merge so far (1)."""
    if delay:
        time.sleep(float(delay))
    return np.asarray(X, dtype=np.int64).sum(axis=0), 1, 1


def _delayed_sums(X, y, index, delays):
    return _sums(X, y, delays[index % len(delays)])


def _add(parts):
    parts = list(parts)
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), max(len(parts), *(p[2] for p in parts)))


SUMS = Reduction("sums", _sums, _add, exact=True)
SLOW_SUMS = Reduction("slow-sums", _delayed_sums, _add, exact=True, indexed=True)


def _blocks(X: np.ndarray, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    bounds = np.cumsum([0, *sizes])
    return [(X[a:b], np.zeros(b - a, dtype=int)) for a, b in itertools.pairwise(bounds)]


chunkings = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.integers(1, 7), min_size=1, max_size=n))


# ---------------------------------------------------------------------------- the fixed tree
def _combines(graph) -> dict[str, list[str]]:
    dsk = dict(graph.__dask_graph__())
    return {k: sorted(get_dependencies(dsk, k)) for k in dsk if str(k).startswith("combine-")}


@pytest.mark.parametrize("n_blocks", [1, 2, 7, 8, 9, 64, 65])
@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_the_fixed_tree_groups_consecutive_blocks_at_most_split_every_at_a_time(n_blocks, split_every):
    X = np.arange(n_blocks * 3).reshape(n_blocks, 3)
    blocks = _blocks(X, [1] * n_blocks)
    first = _combines(reduction_graph(SUMS, blocks, split_every=split_every, token="t"))
    again = _combines(reduction_graph(SUMS, blocks, split_every=split_every, token="t"))
    assert first == again  # the grouping is a function of the number of blocks only
    assert all(1 <= len(deps) <= split_every for deps in first.values())
    leaves = sorted(f"sums-t-{i}" for i in range(n_blocks))
    assert sorted(d for deps in first.values() for d in deps if d.startswith("sums-")) == leaves
    level0 = sorted((k, deps) for k, deps in first.items() if k.startswith("combine-sums-t-0-"))
    for _, deps in level0:  # consecutive blocks, in order
        idx = sorted(int(d.rsplit("-", 1)[1]) for d in deps)
        assert idx == list(range(idx[0], idx[0] + len(idx)))


def test_tree_refuses_a_fan_in_below_two_and_nothing_to_reduce():
    with pytest.raises(ValueError, match="split_every"):
        tree([dask.delayed(1)], _add, 1, "combine-x")
    with pytest.raises(ValueError, match="no blocks"):
        tree([], _add, 2, "combine-x")


def test_merging_as_completed_needs_an_exact_merge(sync_scheduler):
    inexact = Reduction("floats", _sums, _add)
    with pytest.raises(ValueError, match="exact"):
        reduce_blocks(inexact, _blocks(np.ones((4, 2)), [2, 2]), strategy="as-completed")
    with pytest.raises(ValueError, match="strategy"):
        reduce_blocks(SUMS, _blocks(np.ones((4, 2)), [2, 2]), strategy="sideways")


# ---------------------------------------------------------------------------- parameters
def test_parameters_are_one_key_every_block_task_depends_on():
    big = np.zeros((64, 64))
    blocks = _blocks(np.ones((12, 2)), [3, 3, 3, 3])
    tasks = chunk_tasks(SLOW_SUMS, blocks, (big,), token="t")
    dsk = dict(dask.delayed(tasks).__dask_graph__())
    params = [k for k in dsk if str(k).startswith("slow-sums-params-")]
    assert params == ["slow-sums-params-t"]
    for i in range(4):
        assert "slow-sums-params-t" in get_dependencies(dsk, f"slow-sums-t-{i}")
    assert sum(v is big for v in _walk(dsk)) == 1  # in the graph once, not embedded in each task


def _walk(obj):
    """Every value reachable in a graph's tasks, arguments included."""
    from dask._task_spec import DataNode, Task

    stack = list(obj.values())
    while stack:
        v = stack.pop()
        if isinstance(v, Task):
            stack.extend(v.args)
            stack.extend(v.kwargs.values())
        elif isinstance(v, DataNode):
            stack.append(v.value)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif hasattr(v, "values") and isinstance(getattr(v, "values", None), tuple):  # Params
            stack.extend(v.values)
        else:
            yield v


def test_indexed_chunks_get_their_block_position_and_finalize_gets_the_merged_result(sync_scheduler):
    def chunk(X, y, index, base):
        return [base + index]

    r = Reduction("pos", chunk, lambda parts: sorted(x for p in parts for x in p), finalize=tuple, indexed=True)
    out = reduce_blocks(r, _blocks(np.ones((10, 1)), [2] * 5), (100,), split_every=2)
    assert out == (100, 101, 102, 103, 104)


# ---------------------------------------------------------------------------- both strategies
@pytest.fixture(scope="module")
def threaded_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=chunkings, split_every=st.integers(2, 5), delays=st.lists(st.sampled_from([0, 0.001, 0.005, 0.02]),
                                                                        min_size=1, max_size=6))
def test_as_completed_and_tree_give_the_same_exact_result(threaded_client, sizes, split_every, delays):
    """Random chunkings and random completion orders (each block sleeps a drawn time): the
    merge as completed equals the fixed tree and numpy's sum, every block is merged once,
    and no combine takes more than ``split_every`` inputs."""
    rng = np.random.default_rng(len(sizes) * 31 + split_every)
    X = rng.integers(0, 256, size=(sum(sizes), 5))
    blocks = _blocks(X, sizes)
    with dask.config.set(scheduler="synchronous"):
        by_tree = reduce_blocks(SLOW_SUMS, blocks, (tuple(delays),), split_every=split_every)
    with threaded_client.as_current():
        as_completed = reduce_blocks(SLOW_SUMS, blocks, (tuple(delays),), split_every=split_every,
                                     strategy="as-completed")
    np.testing.assert_array_equal(as_completed[0], X.sum(axis=0))
    np.testing.assert_array_equal(by_tree[0], X.sum(axis=0))
    assert as_completed[1] == by_tree[1] == len(sizes)
    assert as_completed[2] <= split_every and by_tree[2] <= split_every


def test_the_fit_statistics_are_chunking_invariant_on_8_bit_pixels(threaded_client):
    """The exact 8-bit fit through the layer: bit-equal over chunkings and completion orders."""
    from daskgen.distributed.fit import compute_stats
    from daskgen.io.arrays import from_arrays

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(300, 16), dtype=np.uint8)
    y = rng.integers(0, 3, size=300)
    results = []
    for rows in (300, 37, 8):
        ds = from_arrays(X, y, blocksize=rows)
        with threaded_client.as_current():
            results.append(compute_stats(ds, split_every=3))
        with dask.config.set(scheduler="synchronous"):
            results.append(compute_stats(ds, split_every=2))
    for r in results[1:]:
        np.testing.assert_array_equal(r.counts, results[0].counts)
        np.testing.assert_array_equal(r.means, results[0].means)
        np.testing.assert_array_equal(r.scatter, results[0].scatter)


# ---------------------------------------------------------------------------- folding lanes
@given(n_blocks=st.integers(1, 60), n_lanes=st.integers(1, 9), split_every=st.integers(2, 9))
def test_lanes_cover_every_block_once_in_order(n_blocks, n_lanes, split_every):
    lanes = lane_bounds(n_blocks, n_lanes)
    assert len(lanes) == min(n_blocks, n_lanes)
    assert [i for a, b in lanes for i in range(a, b)] == list(range(n_blocks))
    sizes = [b - a for a, b in lanes]
    assert max(sizes) - min(sizes) <= 1
    assert fixed_lanes(n_blocks, split_every) == max(2, -(-n_blocks // split_every))


def _fold_sums(total, X, y):
    part = _sums(X, y)
    if total is None:
        return [part[0].copy(), 1, 1]
    total[0] += part[0]  # in place: the lane's running total
    total[1] += 1
    return total


FOLD_SUMS = Reduction("fold-sums", _sums, _add, exact=True, fold=_fold_sums)


def test_a_lane_is_a_chain_of_block_tasks_folding_into_one_total(sync_scheduler):
    X = np.arange(70).reshape(14, 5)
    blocks = _blocks(X, [1] * 14)
    lanes = fold_tasks(FOLD_SUMS, blocks, 3, token="t")
    dsk = {}
    for lane in lanes:
        dsk.update(lane.__dask_graph__())
    assert [lane.key for lane in lanes] == [f"fold-sums-t-{b - 1}" for _, b in lane_bounds(14, 3)]
    for a, b in lane_bounds(14, 3):  # each block task depends on the one before it in its lane only
        for i in range(a, b):
            blocks_before = [d for d in get_dependencies(dsk, f"fold-sums-t-{i}") if str(d).startswith("fold-sums-t-")]
            assert blocks_before == ([] if i == a else [f"fold-sums-t-{i - 1}"])
    total = reduce_blocks(FOLD_SUMS, blocks, split_every=2)
    np.testing.assert_array_equal(total[0], X.sum(axis=0))
    assert total[1] == 14


def test_folded_float_statistics_are_bit_identical_run_to_run_and_match_numpy(threaded_client):
    """Float rows take fixed lanes and a fixed tree: the same bits on a threaded cluster
    (any completion order) and the synchronous scheduler, and numpy's covariances."""
    from daskgen.distributed.fit import compute_stats, stats_reduction
    from daskgen.io.arrays import from_arrays

    rng = np.random.default_rng(2)
    X = 100 + rng.normal(size=(600, 12)) @ rng.normal(size=(12, 12))
    y = np.sort(rng.integers(0, 3, size=600))  # blocks with a subset of the classes
    ds = from_arrays(X, y, blocksize=40)
    runs = []
    for _ in range(2):
        with threaded_client.as_current():
            runs.append(compute_stats(ds, split_every=3))
    with dask.config.set(scheduler="synchronous"):
        runs.append(compute_stats(ds, split_every=3))
        by_tree = reduce_blocks(stats_reduction(ds), ds, split_every=3, strategy="tree")
    for r in runs[1:]:
        np.testing.assert_array_equal(r.scatter, runs[0].scatter)
        np.testing.assert_array_equal(r.means, runs[0].means)
    for k in range(3):
        Xk = X[y == k]
        ref = np.cov(Xk.T) * (len(Xk) - 1)
        assert np.abs(runs[0].scatter[k] - ref).max() <= 1e-12 * np.abs(ref).max()
        assert np.abs(by_tree.scatter[k] - ref).max() <= 1e-12 * np.abs(ref).max()


# ---------------------------------------------------------------------------- kernels stay numpy
def test_kernels_and_models_import_and_run_without_dask():
    """``daskgen.kernels`` and ``daskgen.models`` (every submodule) load without dask or
    distributed, and the E-step kernel never asks for a worker."""
    code = """
import importlib, pkgutil, sys
import numpy as np
import daskgen.kernels, daskgen.models
for pkg in (daskgen.kernels, daskgen.models):
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{m.name}")
from daskgen.kernels.estep import Components, estep_stats
rng = np.random.default_rng(0)
X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
comps = Components.from_covariances(np.array([0, 1]), np.full((2, 2), 0.5), rng.normal(size=(2, 2, 3)),
                                    np.broadcast_to(np.eye(3), (2, 2, 3, 3)).copy())
estep_stats(X, y, comps)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_statistics_cross_the_network_as_numpy_buffers():
    """ClassStats and PixelSums use numpy's serializer (a pickled (K, D, D) array cost the
    sending worker a second copy), every field intact, labels of any kind."""
    from distributed.protocol import deserialize, serialize

    import daskgen.distributed.fit  # noqa: F401  (registers the serializers)
    from daskgen.kernels.class_stats import ClassStats, PixelSums

    labels = np.empty(2, dtype=object)
    labels[:] = ["shirt", 7]
    for stats in (ClassStats(labels, np.array([3, 4]), np.ones((2, 5)), np.arange(50.0).reshape(2, 5, 5), 0.0, 1.5),
                  ClassStats(np.array(["a", "b"]), np.array([3, 4]), np.ones((2, 5)), np.ones((2, 5))),
                  PixelSums(np.array([1, 9]), np.array([3, 4]), np.ones((2, 5)), np.ones((2, 5, 5)), 0.0, 255.0, 128.0)):
        header, frames = serialize(stats, serializers=("dask", "pickle"))
        assert header["serializer"] == "dask"
        back = deserialize(header, frames)
        assert type(back) is type(stats)
        for f in ("classes", "counts", "means", "scatter", "sums", "gram"):
            if hasattr(stats, f):
                np.testing.assert_array_equal(getattr(back, f), getattr(stats, f))
                assert getattr(back, f).dtype == getattr(stats, f).dtype
        assert (back.minimum, back.maximum, getattr(back, "offset", 0)) == (stats.minimum, stats.maximum,
                                                                            getattr(stats, "offset", 0))


def test_8_bit_lanes_on_worker_processes_merge_on_the_client_class_by_class(client):
    """Worker processes: the lanes' sums are gathered class by class on the client
    (a class missing from a lane included), bit-equal to the synchronous fit and to numpy."""
    from daskgen.distributed.fit import compute_stats
    from daskgen.io.arrays import from_arrays

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(240, 12), dtype=np.uint8)
    y = np.repeat([0, 1, 2, 5], 60)  # sorted: class 0 only in the first lane, 5 only in the last
    ds = from_arrays(X, y, blocksize=30)
    with client.as_current():
        on_workers = compute_stats(ds, split_every=3)
    with dask.config.set(scheduler="synchronous"):
        local = compute_stats(ds, split_every=2)
    np.testing.assert_array_equal(on_workers.classes, [0, 1, 2, 5])
    for name in ("counts", "means", "scatter"):
        np.testing.assert_array_equal(getattr(on_workers, name), getattr(local, name))
    for k, c in enumerate([0, 1, 2, 5]):
        rows = X[y == c].astype(np.float64) * ds.scale
        ref = np.cov(rows, rowvar=False) * (len(rows) - 1)
        np.testing.assert_allclose(on_workers.scatter[k], ref, rtol=0, atol=1e-9 * np.abs(ref).max())


def test_a_failed_computation_returns_only_once_its_running_tasks_have_stopped(tmp_path):
    """A task that fails ends the computation at once, but the tasks already running keep
    running after the cancel; compute waits for them before it raises, so that cleanup
    after the error (a scratch store removed) is not undone by a task writing later."""
    import time as _time

    from dask import delayed
    from distributed import Client, LocalCluster

    from daskgen.distributed.cluster import compute

    mark = tmp_path / "written"

    def slow_write():
        _time.sleep(1.5)
        mark.write_text("late")
        return 1

    def fail():
        _time.sleep(0.2)
        raise ValueError("boom")

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        with pytest.raises(ValueError, match="boom"):
            compute([delayed(slow_write, pure=False)(), delayed(fail, pure=False)()], stage="settle-test")
        assert mark.exists()  # the writer had finished before the error reached the caller
