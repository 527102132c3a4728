"""``daskgen evaluate-samples``: NDB of a generated set against held-out data, computed distributed.

NDB (Richardson & Weiss, 2018; the kernels and conventions are in :mod:`daskgen.kernels.ndb`):

1. **Bins.** k-means on the training rows, on Dask. k-means++ seeding
   (:func:`daskgen.kernels.kmeans.kmeans_plusplus`) runs on the client on a sample of at most
   ``init_sample`` training rows (:data:`INIT_PER_BIN` per bin by default) — those with
   the smallest hash of their values (:func:`daskgen.kernels.init_sample.sample_chunk`), so the
   same rows whatever the chunking — from a stream seeded by ``seed``. Then Lloyd's iterations: per block, a task
   assigns the rows to their nearest centre and returns per-bin counts and sums;
   a fixed tree of combine tasks adds them up (the reductions :data:`SAMPLE`,
   :data:`LLOYD`, :data:`COUNT` of :mod:`daskgen.distributed.reduction`, each pass's
   centres one key of its graph); the client computes the new centres. Empty
   bins move to the rows farthest from their centre. The iterations stop when the
   centres move by at most ``tol`` times the mean per-pixel variance of the sample
   (squared distance summed over centres, as scikit-learn's ``KMeans``; 0: until no
   centre moves) or after ``max_iter``. The training blocks are kept in the
   cluster's memory when they fit (:func:`daskgen.distributed.em.persist_blocks`).
2. **Counts.** One task per block of the training, reference and generated sets
   reads that block, assigns its rows and returns per-bin counts; trees add them.
   A task holds one block (``--blocksize`` bytes, at least one Zarr chunk), so a
   samples store of any size is never loaded whole.
3. **Test.** Per bin, the two-proportion z-test of the generated set's proportion
   against the reference set's; NDB is the number of bins with p < alpha.

Task keys, for the dashboard::

    ndb-sample-<token>-<i>        the k-means++ sample of training block i
    read-<token>-<i>              training block i (persisted for the iterations)
    ndb-lloyd-<token>-<t>-<i>     Lloyd step t on training block i
    ndb-lloyd-params-<token>-<t>  the centres of step t (one key of the graph)
    ndb-count-<token>-<i>         bin counts of block i of one set
    combine-ndb-...               the reductions
"""

from __future__ import annotations

import math
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.base import tokenize

from ..distributed.reduction import DEFAULT_SPLIT_EVERY, Reduction, read_tasks, reduce_blocks, reduction_graph
from ..errors import InputError, OutputExistsError
from ..io.inputs import Dataset, open_inputs
from ..kernels.init_sample import InitSample, merge_samples, sample_chunk
from ..kernels.ndb import (
    BinCounts,
    LloydStats,
    NDBTest,
    bin_counts,
    lloyd_block,
    merge_counts,
    merge_lloyd,
    ndb_test,
    update_centres,
)

FILES = {"json": "ndb.json", "bins": "ndb-bins.png"}
DEFAULT_BINS = 100
DEFAULT_ALPHA = 0.05
#: Training rows per bin k-means++ seeds the bins from, by default (2,500 for k = 100;
#: its cost grows with rows x k; Lloyd's iterations then see every row).
INIT_PER_BIN = 25
#: Bins listed (table, JSON) and drawn (figure) on each side: over- and under-represented.
TOP = 5


@dataclass
class NDBResult:
    """NDB of a generated set against a reference set, on k-means bins of a training set.

    ``test`` holds the per-bin proportions, z statistics and p-values
    (:class:`daskgen.kernels.ndb.NDBTest`); ``centres`` (k, D) are the bins' centres in model
    units; ``train`` (k,) the training rows' proportions; ``sets`` describes the
    three inputs (files, rows, scale, value range) and ``kmeans`` the fit of the bins.
    """

    test: NDBTest
    centres: np.ndarray
    train: np.ndarray
    image_shape: tuple[int, ...] | None
    sets: dict[str, dict[str, Any]]
    kmeans: dict[str, Any] = field(default_factory=dict)

    @property
    def ndb(self) -> int:
        return self.test.ndb

    @property
    def k(self) -> int:
        return self.test.k

    @property
    def ndb_over_k(self) -> float:
        return self.test.ndb_over_k

    def top_bins(self, n: int = TOP) -> tuple[list[int], list[int]]:
        """The ``n`` most over-represented bins in the generated set (largest z > 0) and the
        ``n`` most under-represented (smallest z < 0), most extreme first."""
        z = self.test.z
        order = np.argsort(-z, kind="stable")
        over = [int(j) for j in order[:n] if z[j] > 0]
        under = [int(j) for j in order[::-1][:n] if z[j] < 0]
        return over, under

    def _bin(self, j: int) -> dict[str, Any]:
        t = self.test
        return {"bin": j, "samples": float(t.samples[j]), "reference": float(t.reference[j]),
                "z": float(t.z[j]), "p_value": float(t.p_value[j]), "different": bool(t.different[j])}

    def to_dict(self, top: int = TOP) -> dict[str, Any]:
        """The result as a JSON-able dict (``ndb.json``); the centres are left out (see the figure)."""
        t = self.test
        over, under = self.top_bins(top)
        return {
            "ndb": t.ndb,
            "k": t.k,
            "ndb_over_k": t.ndb_over_k,
            "alpha": t.alpha,
            "expected_false_positives": t.expected_false_positives,
            "test": "two-sided two-proportion z-test per bin, pooled proportion; a bin differs when p < alpha",
            "units": "every set compared in model units: x * scale (8-bit pixels / 255 unless a store records its scale)",
            "sets": self.sets,
            "kmeans": self.kmeans,
            "over_represented": [self._bin(j) for j in over],
            "under_represented": [self._bin(j) for j in under],
            "bins": {
                "samples": t.samples.tolist(),
                "reference": t.reference.tolist(),
                "train": self.train.tolist(),
                "z": t.z.tolist(),
                "p_value": t.p_value.tolist(),
                "different": t.different.tolist(),
            },
        }


# ---------------------------------------------------------------------------- inputs
def open_sets(
    samples: list[str] | str | Dataset,
    reference: list[str] | str | Dataset,
    train: list[str] | str | Dataset,
    *,
    label_column: str = "label",
    blocksize: int | None = None,
    fmt: str | None = None,
    scale: str | float | None = "auto",
    storage_options: dict | None = None,
) -> dict[str, Dataset]:
    """Open the three sets (reading only metadata); they must have the same features.

    ``fmt`` and ``scale`` apply to the reference and training inputs; the generated
    set's format comes from its name and its scale from its store (a samples store
    records it), else ``auto``. An incomplete samples store is refused.
    """
    def one(inputs, f, s):
        if isinstance(inputs, Dataset):
            return inputs
        return open_inputs(inputs, label_column=label_column, blocksize=blocksize, fmt=f, scale=s,
                           storage_options=storage_options)

    sets = {"samples": one(samples, None, "auto"), "reference": one(reference, fmt, scale), "train": one(train, fmt, scale)}
    D = sets["train"].n_features
    for name in ("samples", "reference"):
        if sets[name].n_features != D:
            raise InputError(f"the {name} set has {sets[name].n_features} features, the training set {D}: "
                             f"{_where(sets[name])} and {_where(sets['train'])} are not the same kind of image")
    return sets


def _paths(dataset: Dataset) -> list[str]:
    return [f["path"] for f in dataset.files]


def _where(dataset: Dataset) -> str:
    paths = _paths(dataset)
    return paths[0] if paths else f"the {dataset.fmt} input"


def check_outputs(out: str, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Refuse to replace ``ndb.json`` or the figure in ``out`` unless ``overwrite``."""
    from ..io.fs import url_to_fs

    for name in FILES.values():
        fs, where = url_to_fs(posixpath.join(str(out), name), storage_options)
        if fs.exists(where) and not overwrite:
            raise OutputExistsError(f"{posixpath.join(str(out), name)} already exists; pass --overwrite to replace it")


# ---------------------------------------------------------------------------- the reductions
def _sample_rows(X: np.ndarray, y: np.ndarray, seed: int, size: int, scale: float) -> InitSample:
    """The ``size`` rows of a block with the smallest hash keys, whatever their labels."""
    return sample_chunk(X, np.zeros(len(X), dtype=np.int64), seed, size, scale)


def _lloyd_rows(X: np.ndarray, y: np.ndarray, centres: np.ndarray, scale: float) -> LloydStats:
    return lloyd_block(X, centres, scale)


def _count_rows(X: np.ndarray, y: np.ndarray, centres: np.ndarray, scale: float) -> BinCounts:
    return bin_counts(X, centres, scale)


#: The k-means++ sample and Lloyd's sums merge in a fixed tree (sample ties keep the first row in
#: merge order; float sums round by order); bin counts are exact in any order.
SAMPLE = Reduction("ndb-sample", _sample_rows, merge_samples)
LLOYD = Reduction("ndb-lloyd", _lloyd_rows, merge_lloyd)
COUNT = Reduction("ndb-count", _count_rows, merge_counts, exact=True)


def _token(dataset: Dataset, *more: Any) -> str:
    return tokenize(dataset.blocks, dataset.files, dataset.scale, dataset.integer_pixels, *more)


# ---------------------------------------------------------------------------- the stages
def fit_bins(
    train: Dataset,
    k: int = DEFAULT_BINS,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample: int | None = None,
    centres: np.ndarray | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
) -> tuple[np.ndarray, dict[str, Any]]:
    """k-means bins of ``train``: centres (k, D) in model units, and a report of the fit.

    ``centres`` (k, D) skips the k-means++ seeding (start Lloyd's iterations there).
    """
    from ..distributed.em import persist_blocks
    from ..kernels.kmeans import kmeans_plusplus

    if k < 1:
        raise InputError(f"the number of bins must be at least 1, got {k}")
    scale = float(train.scale)
    init_sample = int(init_sample or INIT_PER_BIN * k)
    token = _token(train, "ndb", seed, init_sample)
    start = time.perf_counter()
    reads = read_tasks(train, token)
    if not reads:
        raise InputError("the training set has no rows")
    blocks, persisted = persist_blocks(reads, train)  # read once for the sample and every iteration
    sample = reduce_blocks(SAMPLE, blocks, (int(seed), int(init_sample), scale), split_every=split_every, token=token)
    n_train = int(sample.counts.sum())
    if k > n_train:
        raise InputError(f"{k} bins for {n_train} training rows: pass --bins {n_train} or fewer")
    S = sample.rows[0]
    if centres is None:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
        C = kmeans_plusplus(S, k, rng)
        if len(C) < k:
            raise InputError(f"the training sample has only {len(C)} distinct rows for {k} bins; pass a smaller --bins")
    else:
        C = np.array(centres, dtype=np.float64)
        if C.shape != (k, train.n_features):
            raise InputError(f"initial centres must have shape {(k, train.n_features)}, got {C.shape}")
    threshold = float(tol) * float(np.mean(np.var(S, axis=0)))
    converged, reseeded, inertia, t = False, [], math.nan, 0
    for t in range(1, int(max_iter) + 1):
        stats = reduce_blocks(LLOYD, blocks, (C, scale), split_every=split_every, token=f"{token}-{t}")
        new, moved = update_centres(stats, C, scale)
        reseeded += [(t, j) for j in moved]
        shift = float(((new - C) ** 2).sum())
        C, inertia = new, stats.inertia
        if shift <= threshold and not moved:
            converged = True
            break
    del blocks
    report = {
        "k": int(k), "seed": int(seed), "init": "given" if centres is not None else "kmeans++",
        "init_sample_rows": len(S), "iterations": t, "converged": converged, "max_iter": int(max_iter),
        "tol": float(tol), "inertia_per_row": inertia / n_train, "reseeded_bins": [list(x) for x in reseeded],
        "train_rows": n_train, "input_persisted": bool(persisted.get("persisted")),
        "seconds": time.perf_counter() - start,
    }
    return C, report


def count_bins(
    sets: dict[str, Dataset], centres: np.ndarray, split_every: int = DEFAULT_SPLIT_EVERY, progress: bool = False
) -> dict[str, BinCounts]:
    """Per-bin counts of every set, as tasks that each read one block, in one compute."""
    from ..distributed.cluster import compute

    graphs = {}
    for name, ds in sets.items():
        if not ds.blocks:
            raise InputError(f"the {name} set has no rows")
        graphs[name] = reduction_graph(COUNT, ds, (centres, float(ds.scale)), split_every=split_every,
                                       token=_token(ds, name, centres))
    return compute(graphs, stage="ndb-count", progress=progress)


def ndb(
    samples: list[str] | str | Dataset,
    reference: list[str] | str | Dataset,
    train: list[str] | str | Dataset,
    *,
    bins: int = DEFAULT_BINS,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample: int | None = None,
    centres: np.ndarray | None = None,
    label_column: str = "label",
    blocksize: int | None = None,
    fmt: str | None = None,
    scale: str | float | None = "auto",
    split_every: int = DEFAULT_SPLIT_EVERY,
    storage_options: dict | None = None,
    progress: bool = False,
) -> NDBResult:
    """NDB of the generated set ``samples`` against ``reference``, on ``bins`` k-means bins of ``train``.

    Each set is a path, URL, glob or list of them (CSV, Parquet, Zarr; a samples store
    of ``daskgen sample`` is a Zarr input) or an opened :class:`~daskgen.io.inputs.Dataset`.
    Runs on the active ``distributed.Client``, else on Dask's local scheduler; seeded
    (``seed``) and deterministic. ``centres`` (bins, D), model units, replaces the
    k-means++ start; ``progress`` shows a bar for the counting stage. See the module
    docstring for the stages.
    """
    from ..options import NDB

    NDB.check(bins=bins, alpha=alpha, seed=seed, max_iter=max_iter, split_every=split_every)
    if (init_sample is not None and init_sample < 1) or max_iter < 1 or tol < 0:
        raise InputError("init_sample and max_iter must be at least 1, tol at least 0")
    sets = open_sets(samples, reference, train, label_column=label_column, blocksize=blocksize, fmt=fmt,
                     scale=scale, storage_options=storage_options)
    C, report = fit_bins(sets["train"], int(bins), seed=seed, max_iter=max_iter, tol=tol, init_sample=init_sample,
                         centres=centres, split_every=int(split_every))
    start = time.perf_counter()
    counts = count_bins(sets, C, int(split_every), progress)
    test = ndb_test(counts["samples"].counts, counts["reference"].counts, alpha)
    described = {
        name: {"files": _paths(ds), "rows": counts[name].rows, "scale": float(ds.scale),
               "range": [_num(counts[name].minimum), _num(counts[name].maximum)]}
        for name, ds in sets.items()
    }
    report["counting_seconds"] = time.perf_counter() - start
    train_counts = counts["train"].counts
    return NDBResult(test, C, train_counts / max(int(train_counts.sum()), 1), sets["train"].image_shape,
                     described, report)


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------- outputs
def range_warning(result: NDBResult) -> str | None:
    """A warning when the generated set's values lie far outside the training set's range:
    most likely they are in other units (e.g. a float store in pixel units)."""
    lo, hi = result.sets["train"]["range"]
    slo, shi = result.sets["samples"]["range"]
    if None in (lo, hi, slo, shi):
        return None
    span = max(hi - lo, 1e-12)
    if slo < lo - span or shi > hi + span:
        return (f"the samples range over [{slo:.4g}, {shi:.4g}], the training data over [{lo:.4g}, {hi:.4g}] "
                "(model units): are they on the same scale?")
    return None


def format_table(result: NDBResult, top: int = TOP) -> str:
    """The result as a text table (what the command prints)."""
    t, s = result.test, result.sets
    km = result.kmeans
    fit = (f"{km['iterations']} Lloyd iterations, {'converged' if km['converged'] else 'not converged'}"
           + (f", {len(km['reseeded_bins'])} empty bins re-seeded" if km["reseeded_bins"] else ""))
    lines = [
        f"bins        k = {t.k} k-means bins of {s['train']['rows']:,} training rows ({fit})",
        f"sets        {s['samples']['rows']:,} generated rows vs {s['reference']['rows']:,} reference rows",
        f"NDB         {t.ndb} of {t.k} bins differ (NDB/k = {t.ndb_over_k:.3f}) at alpha = {t.alpha:g}",
        f"by chance   alpha * k = {t.expected_false_positives:.1f} bins expected to differ between two samples "
        "of one distribution",
    ]
    warning = range_warning(result)
    if warning:
        lines.append(f"warning     {warning}")
    over, under = result.top_bins(top)
    for title, picked in (("over-represented in the generated set", over), ("under-represented in the generated set", under)):
        lines.append("")
        lines.append(title)
        lines.append(f"{'bin':>5} {'generated':>10} {'reference':>10} {'train':>8} {'z':>8} {'p':>10}")
        for j in picked:
            lines.append(f"{j:>5} {t.samples[j]:>10.4f} {t.reference[j]:>10.4f} {result.train[j]:>8.4f} "
                         f"{t.z[j]:>8.2f} {t.p_value[j]:>10.2e}{'  *' if t.different[j] else ''}")
        if not picked:
            lines.append("  (none)")
    lines.append("")
    lines.append(f"* differs at alpha = {t.alpha:g}; proportions of each set's rows in the bin")
    return "\n".join(lines)


def plot_bins(result: NDBResult, path: str, top: int = TOP, storage_options: dict | None = None) -> str:
    """The centres of the most over- (top row) and under-represented (bottom row) bins as images.

    Each panel is titled with its bin and the generated / reference proportions; one
    grey scale (the range of the centres shown) for all panels. Returns ``path``.
    """
    from ..plot import PANEL, TITLE, display_shape, new_figure, save_figure

    over, under = result.top_bins(top)
    cols = max(len(over), len(under), 1)
    D = result.centres.shape[1]
    shape = display_shape(D, result.image_shape)
    shown = result.centres[over + under] if over + under else result.centres[:1]
    vmin, vmax = float(shown.min()), float(shown.max())
    fig = new_figure(cols * PANEL + 1.0, 2 * (PANEL + 2 * TITLE) + 0.4, layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    t = result.test
    for r, (label, picked) in enumerate((("over-represented", over), ("under-represented", under))):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(picked):
                ax.set_axis_off()
                continue
            j = picked[c]
            ax.imshow(result.centres[j].reshape(shape), cmap="gray", interpolation="none", vmin=vmin,
                      vmax=vmax if vmax > vmin else vmin + 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"bin {j}{' *' if t.different[j] else ''}\n{t.samples[j]:.2%} vs {t.reference[j]:.2%}",
                         fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"NDB = {t.ndb} of {t.k} bins (alpha = {t.alpha:g}): centres, generated vs reference share "
                 "(* differs)", fontsize=9)
    return save_figure(fig, path, storage_options)


def write_outputs(result: NDBResult, out_dir: str, top: int = TOP, overwrite: bool = False,
                  storage_options: dict | None = None) -> dict[str, str]:
    """Write ``ndb.json`` and ``ndb-bins.png`` into ``out_dir``; refuse to replace them unless ``overwrite``."""
    from ..io.fs import write_json

    check_outputs(out_dir, overwrite, storage_options)
    paths = {k: posixpath.join(str(out_dir), v) for k, v in FILES.items()}
    write_json(paths["json"], result.to_dict(top), storage_options)
    plot_bins(result, paths["bins"], top, storage_options)
    return paths
