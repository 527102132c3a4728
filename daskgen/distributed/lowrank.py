"""The low-rank kinds' fit on Dask: randomized sketches of each class's scatter, merged by
the reduction layer, then Rayleigh–Ritz on the client. No D×D array anywhere.

Passes over the data (each one :class:`~daskgen.distributed.reduction.Reduction`, a fixed
tree of merges so results are bit-identical run to run):

    sketch-<token>-<i>       pass 1: counts, means, diag S and S·Ω per class (Chan-merged);
                             Ω (D, ℓ) regenerated from the seed in every task
    range-<token>-<i>        passes 2 ... 2 + power_iterations: S·Q per class, Q = orth(previous)
    range-params-<token>     the pass's (classes, means, Q): one key of the graph

A worker holds Q (K·D·ℓ floats) and the partials of its blocks and merges (each at most
K·D·ℓ); the client holds Q and the merged S·Q. Rayleigh–Ritz on Qᵀ S Q (ℓ×ℓ per class)
gives the top eigenpairs (:func:`~daskgen.kernels.sketch.rayleigh_ritz`).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from dask.base import tokenize

from .._blas import one_blas_thread
from ..io.inputs import Dataset
from ..kernels.class_stats import ClassStats
from ..kernels.sketch import add_ranges, chunk_range, chunk_sketch, merge_sketches, orthonormal, rayleigh_ritz
from ..kernels.transform import NONE, Transform
from .fit import block_features
from .reduction import DEFAULT_SPLIT_EVERY, Reduction, reduce_blocks


def _sketch_chunk(X, y, transform: Transform, pixels: bool, scale: float, seed: int, width: int):
    F, y = block_features((X, y), transform, pixels, scale, seed)
    return chunk_sketch(F, y, seed, width, transform.feature_scale(scale))


def _range_chunk(X, y, classes, means, Q, transform: Transform, pixels: bool, scale: float, seed: int):
    F, y = block_features((X, y), transform, pixels, scale, seed)
    return chunk_range(F, y, classes, means, Q, transform.feature_scale(scale))


def sketch_spectra(dataset: Dataset, width: int, power_iterations: int = 2, *,
                   split_every: int = DEFAULT_SPLIT_EVERY, transform: Transform = NONE, seed: int = 0,
                   progress: bool = False) -> tuple[ClassStats, np.ndarray, np.ndarray, dict]:
    """Per class of ``dataset``: diagonal ClassStats (counts, means, diag S), the top ``width``
    Ritz values (K, ℓ) of the centered scatter S (descending) and their vectors (K, D, ℓ),
    after ``2 + power_iterations`` passes; and a report (passes, seconds per pass)."""
    pixels = bool(dataset.integer_pixels)
    common = {"transform": transform, "pixels": pixels, "scale": dataset.scale, "seed": int(seed)}
    base = tokenize(dataset.blocks, dataset.files, dataset.scale, pixels, transform, seed, width)
    seconds = []
    t = time.perf_counter()
    first = reduce_blocks(Reduction("sketch", partial(_sketch_chunk, width=int(width), **common), merge_sketches,
                                    combine_name="combine-sketch"),
                          dataset, split_every=split_every, token=f"{base}-0", stage="fit-sketch", progress=progress)
    seconds.append(time.perf_counter() - t)
    stats = first.stats
    D = stats.n_features
    if width > D:
        raise ValueError(f"rank + oversampling ({width}) exceeds the number of features ({D})")
    with one_blas_thread():  # small factorizations; and the same bits whatever the machine's threads
        Q = np.stack([orthonormal(Y) for Y in first.sketch])
    del first
    reduction = Reduction("range", partial(_range_chunk, **common), add_ranges, combine_name="combine-range")
    for p in range(int(power_iterations) + 1):
        t = time.perf_counter()
        SQ = reduce_blocks(reduction, dataset, (stats.classes, stats.means, Q), split_every=split_every,
                           token=f"{base}-{p + 1}", stage="fit-range", progress=progress)
        products = np.zeros_like(Q)
        products[SQ.index] = SQ.products
        del SQ
        seconds.append(time.perf_counter() - t)
        if p < power_iterations:
            with one_blas_thread():
                Q = np.stack([orthonormal(Y) for Y in products])
    theta = np.empty((len(Q), Q.shape[2]))
    bases = np.empty_like(Q)
    with one_blas_thread():
        for k in range(len(Q)):
            theta[k], bases[k] = rayleigh_ritz(Q[k], products[k])
    return stats, theta, bases, {"passes": len(seconds), "seconds": [round(s, 3) for s in seconds]}
