"""The fit's statistics on Dask: one :class:`~daskgen.distributed.reduction.Reduction` per
kind of statistic, run over every block of the input.

Every block is *folded* into a running total in place (the ``"fold"`` strategy of
:func:`~daskgen.distributed.reduction.reduce_blocks`): a lane of consecutive blocks is a
chain of tasks sharing one total, so a worker holds one statistic per lane it runs and a
(D, D) temporary, never a statistic per block; merges accumulate into their first input.

* 8-bit pixels (full covariances) carry exact integer sums (:class:`PixelSums`), whose
  merge is exact in any order: one lane per worker thread, the lanes' totals merged
  *as they finish* on a distributed cluster, and the model is bit-identical whatever
  the order. ``finalize`` turns the sums into ClassStats in place, class by class.
* Other data (floats, logit features, diagonal statistics) carries centered statistics
  merged by Chan's update, whose rounding depends on the order: fixed lanes (a function
  of the number of blocks) and a fixed tree of ``split_every`` fan-in over them, so
  results are bit-identical run to run.

Keys read ``chunk-stats`` (a block read and its statistics, in one task) and
``combine`` on the dashboard; the stage's span is ``fit``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
from dask.base import tokenize
from distributed.protocol import dask_deserialize, dask_serialize, deserialize, serialize

from ..errors import InputError
from ..io.inputs import Dataset
from ..kernels.class_stats import (
    ClassStats,
    PixelSums,
    add_sums,
    chunk_stats,
    fold_stats,
    merge,
    pixel_sums,
    union_classes,
    value_range,
)
from ..kernels.transform import NONE, Transform
from .reduction import DEFAULT_SPLIT_EVERY, Reduction, reduce_blocks

__all__ = ["DEFAULT_SPLIT_EVERY", "block_features", "compute_stats", "exact_sums", "stats_reduction"]


# ---------------------------------------------------------------------------- statistics on the wire
# Statistics cross the network as numpy buffers, not pickles: pickled, a (K, D, D) array
# cost its sender a second copy of the statistic while sending (measured: +1 statistic
# at the peak on the worker that returns the total); numpy's own serializer sends the
# array's memory as it is.
def _serialize_stats(obj) -> tuple[dict, list]:
    header: dict = {"type": type(obj).__name__, "values": {}, "arrays": [], "objects": {}}
    frames: list = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "O":  # labels as Python objects
            header["objects"][f.name] = value.tolist()
        elif isinstance(value, np.ndarray):
            sub_header, sub_frames = serialize(value, serializers=("dask",))
            header["arrays"].append((f.name, sub_header, len(sub_frames)))
            frames.extend(sub_frames)
        else:
            header["values"][f.name] = value.item() if isinstance(value, np.generic) else value
    return header, frames


def _deserialize_stats(header: dict, frames: list):
    cls = {"ClassStats": ClassStats, "PixelSums": PixelSums}[header["type"]]
    values = dict(header["values"])
    for name, items in header["objects"].items():
        values[name] = np.empty(len(items), dtype=object)
        values[name][:] = items
    i = 0
    for name, sub_header, n in header["arrays"]:
        values[name] = deserialize(sub_header, frames[i : i + n])
        i += n
    return cls(**values)


for _cls in (ClassStats, PixelSums):
    dask_serialize.register(_cls)(_serialize_stats)
    dask_deserialize.register(_cls)(_deserialize_stats)


def exact_sums(dataset: Dataset, diagonal: bool, transform: Transform = NONE) -> bool:
    """Whether the fit of ``dataset`` runs on exact integer sums (pixel space only)."""
    return bool(dataset.integer_pixels) and not diagonal and transform.identity


def block_features(xy: tuple, transform: Transform, pixels: bool, scale: float, seed: int) -> tuple:
    """``(F, y)``: a block's rows ``(X, y)`` (pixel units) in the model's feature space
    (:meth:`~daskgen.kernels.transform.Transform.block`); values the transform refuses
    are an InputError. The kernels then apply ``transform.feature_scale(scale)``."""
    X, y = xy
    try:
        return transform.block(X, pixels, scale, seed), y
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _feature_stats(X, y, transform: Transform, pixels: bool, scale: float, seed: int, diagonal: bool) -> ClassStats:
    F, y = block_features((X, y), transform, pixels, scale, seed)
    return chunk_stats(F, y, diagonal=diagonal, scale=transform.feature_scale(scale))


def _fold_features(total, X, y, transform: Transform, pixels: bool, scale: float, seed: int, diagonal: bool) -> ClassStats:
    F, y = block_features((X, y), transform, pixels, scale, seed)
    return fold_stats(total, F, y, diagonal=diagonal, scale=transform.feature_scale(scale))


def _fold_pixels(total: PixelSums | None, X, y) -> PixelSums:
    return pixel_sums(X, y, into=total)


def _finalize_sums(sums: PixelSums, scale: float) -> ClassStats:
    return sums.to_class_stats(scale, in_place=True)  # the reduction's own total: spent here


def _sums_header(sums: PixelSums) -> PixelSums:
    """A lane's sums without their Gram matrices (small: what the client merges first)."""
    return dataclasses.replace(sums, gram=sums.gram[:0])


def _class_gram(sums: PixelSums, j: int) -> np.ndarray:
    return sums.gram[j]


def gather_sums(client, lanes: list) -> PixelSums:
    """The sum of the lanes' PixelSums (futures on worker processes), on the client, class
    by class: one (K, D, D) total here, filled from one class of each lane at a time, and
    nothing but its own lane on a worker. Merged by the worker that ran the other lane, a
    received total costs that worker two more statistics in buffers; gathered whole, it
    arrives read-only and ``to_class_stats`` would copy it. Exact: the bits of any merge."""
    heads = client.gather([client.submit(_sums_header, lane, pure=False) for lane in lanes])
    classes = union_classes(heads)
    K, D = len(classes), heads[0].sums.shape[1]
    total = PixelSums.zeros(classes, D, heads[0].offset)
    where: list[list] = [[] for _ in range(K)]  # per class: (lane, its index there)
    for lane, head in zip(lanes, heads):
        if head.offset != total.offset or head.sums.shape[1] != D:
            raise ValueError("cannot add sums of different shapes or offsets")
        idx = np.searchsorted(classes, head.classes)
        total.counts[idx] += head.counts
        total.sums[idx] += head.sums
        for j, k in enumerate(idx):
            where[k].append((lane, j))
    total.minimum, total.maximum = value_range(heads)
    for k in range(K):  # the lanes' shares of class k, fetched together
        parts = [client.submit(_class_gram, lane, j, pure=False) for lane, j in where[k]]
        for part in parts:
            total.gram[k] += part.result()
            part.release()
        del parts
    return total


def stats_reduction(dataset: Dataset, diagonal: bool = False, transform: Transform = NONE, seed: int = 0) -> Reduction:
    """The fit's statistic over ``dataset``: exact 8-bit sums, or Chan-merged ClassStats
    (in logit space: of the blocks' logit features, dequantization noise from ``seed``)."""
    combine = partial(merge, in_place=True)
    if not transform.identity:
        features = dict(transform=transform, pixels=bool(dataset.integer_pixels), scale=dataset.scale, seed=int(seed),
                        diagonal=diagonal)
        return Reduction("chunk-stats", partial(_feature_stats, **features), combine, combine_name="combine",
                         fold=partial(_fold_features, **features))
    if exact_sums(dataset, diagonal):
        return Reduction("chunk-stats", pixel_sums, add_sums, finalize=partial(_finalize_sums, scale=dataset.scale),
                         exact=True, combine_name="combine", fold=_fold_pixels, gather=gather_sums)
    return Reduction("chunk-stats", partial(chunk_stats, diagonal=diagonal, scale=dataset.scale), combine,
                     combine_name="combine", fold=partial(fold_stats, diagonal=diagonal, scale=dataset.scale))


def compute_stats(dataset: Dataset, diagonal: bool = False, split_every: int = DEFAULT_SPLIT_EVERY,
                  progress: bool = False, transform: Transform = NONE, seed: int = 0) -> ClassStats:
    """ClassStats of every block of ``dataset`` on the current Dask scheduler (a distributed
    Client if one is active): D features, counts per class, model units (logit features
    with a logit ``transform``, the float path)."""
    token = tokenize(dataset.blocks, dataset.files, dataset.scale, dataset.integer_pixels, diagonal, transform, seed)
    return reduce_blocks(stats_reduction(dataset, diagonal, transform, seed), dataset, split_every=split_every,
                         token=token, stage="fit", progress=progress)
