"""Dask wiring of the mixture EM: persisted blocks, one tree-reduced pass per iteration.

The input blocks are read once and kept in the cluster's memory (``persist``)
when they fit in half of it, so iterations do not re-read CSV; otherwise every
pass re-reads them, and the model's ``config["em"]["persist"]`` says why. Each
pass is a :class:`~daskgen.distributed.reduction.Reduction` over the persisted blocks
(a task per block, then a fixed tree of combine tasks), named for the dashboard::

    read-<token>-<i>                  the persisted blocks
    em-sample-<token>-<i>             the initial per-class sample (bottom keys)
    em-assign-<token>-<i>             hard assignment to the initial centres
    em-estep-<token>-<t>-<i>          E-step of iteration t: responsibilities and weighted statistics
    em-estep-params-<token>-<t>       the parameters of that pass: one key in the graph
    combine-em-...                    the tree reduction of each pass

The parameters of a pass (a few hundred MB for 10 classes x 5 full 784-dimensional
components) travel inside its graph as one key every block task depends on, so a
pass survives losing every worker (scattered data would die with them). The M-step
runs on the client (:func:`daskgen.models.mixture_em.m_step`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from ..errors import user_input
from ..io.fs import open_zarr_group, url_to_fs
from ..io.inputs import Dataset
from ..kernels.estep import estep_stats, hard_stats
from ..kernels.init_sample import InitSample, merge_samples, sample_chunk
from ..kernels.mfa import estep_lowrank, hard_lowrank, merge_lowrank
from ..kernels.transform import NONE, Transform
from ..kernels.weighted import merge_weighted
from ..models.base import ClassModel
from ..models.lowrank import LOW_RANK
from ..models.mfa import LowRankMixtureClassModel
from ..models.mfa_em import lowrank_config, run_lowrank_em
from ..models.mixture import GaussianMixtureClassModel
from ..models.mixture_em import DEFAULTS, Passes, em_config, run_em
from ..options import GAUSSIAN_FIT, MIXTURE_FIT, OptionError
from .cluster import active_client
from .fit import block_features
from .reduction import DEFAULT_SPLIT_EVERY, Reduction, read_tasks, reduce_blocks

log = logging.getLogger("daskgen")
#: Persist the blocks when their estimated size is at most this fraction of the cluster's memory.
PERSIST_FRACTION = 0.5


# ---------------------------------------------------------------------------- the passes
#: The initial per-class sample (the rows with the smallest hash keys). Not declared exact:
#: distinct 8-bit rows can share a key, and ties keep the first row in merge order, so the
#: sample is only reproducible with a fixed merge order (the tree).
SAMPLE = Reduction("em-sample", sample_chunk, merge_samples)
#: Hard assignment to the initial centres, and the E-step: Chan-merged weighted statistics.
ASSIGN = Reduction("em-assign", hard_stats, merge_weighted)
ESTEP = Reduction("em-estep", estep_stats, merge_weighted)
#: The same for low-rank components: sums of size O(D·q) per (class, component), added.
ASSIGN_LOW_RANK = Reduction("em-assign", hard_lowrank, merge_lowrank)
ESTEP_LOW_RANK = Reduction("em-estep", estep_lowrank, merge_lowrank)


# ---------------------------------------------------------------------------- persistence
def estimate_bytes(dataset: Dataset, transform: Transform = NONE) -> tuple[int, str]:
    """Bytes the blocks take in memory once read (and transformed), and how that was estimated.

    Zarr and arrays: exact (rows x features x item size). Parquet: row counts from the
    file metadata. CSV: an upper bound, each value taking at least two characters.
    Dataframes: unknown (0), so they are persisted. Logit features are float64.
    """
    D = dataset.n_features
    item = 1 if dataset.integer_pixels and transform.identity else 8
    if dataset.fmt == "array":
        return sum(b.stop - b.start for b in dataset.blocks) * D * item, "exact (array shape)"
    if dataset.fmt == "dataframe":
        return 0, "unknown (a dataframe's partition lengths are not computed)"
    if dataset.fmt == "zarr":
        total = 0
        for url in {b.url for b in dataset.blocks}:
            images = open_zarr_group(url, dataset.storage_options or None)["images"]
            per_value = item if dataset.integer_pixels or not transform.identity else images.dtype.itemsize
            total += int(np.prod(images.shape)) * per_value
        return total, "exact (Zarr shapes)"
    if dataset.fmt == "parquet":
        import pyarrow.parquet as pq

        rows = 0
        for url in {b.url for b in dataset.blocks}:
            fs, path = url_to_fs(url, dataset.storage_options or None)
            with fs.open(path, "rb") as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        return rows * D * item, "Parquet row counts"
    size = sum(int(f.get("size") or 0) for f in dataset.files)
    return (size // (2 * D) + 1) * D * item, "upper bound from the CSV size"


def _cluster_memory(client) -> int:
    """Sum of the workers' memory limits (0: no limit)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed
        info = client.scheduler_info()
    limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
    return 0 if not limits or 0 in limits else int(sum(limits))


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def persist_blocks(reads: list, dataset: Dataset, persist: bool | str = "auto",
                   transform: Transform = NONE) -> tuple[list, dict[str, Any]]:
    """Persist the read tasks in the cluster's memory when they fit; returns (blocks, report)."""
    need, how = estimate_bytes(dataset, transform)
    client = active_client()
    memory = _cluster_memory(client) if client is not None else _host_memory()
    where = "the cluster's workers" if client is not None else "this process"
    report: dict[str, Any] = {"estimated_bytes": int(need), "estimate": how, "memory_bytes": int(memory), "where": where}
    if persist is False or persist == "never":
        report.update(persisted=False, reason="persist was turned off; every iteration re-reads the input")
        log.warning("daskgen: input not persisted (turned off): every EM iteration re-reads it")
        return reads, report
    fits = memory == 0 or need <= PERSIST_FRACTION * memory
    if not fits and persist != "always" and persist is not True:
        report.update(persisted=False, reason=(
            f"the input (~{need / 2**30:.2f} GiB, {how}) exceeds {PERSIST_FRACTION:.0%} of the memory of "
            f"{where} ({memory / 2**30:.2f} GiB); every EM iteration re-reads it"))
        log.warning("daskgen: input not persisted: %s", report["reason"])
        return reads, report
    if client is not None:
        from distributed import futures_of, wait

        persisted = client.persist(reads)
        wait(futures_of(persisted))
        bad = [f for f in futures_of(persisted) if f.status == "error"]
        if bad:
            bad[0].result()  # raises the reader's InputError
    else:
        import dask

        persisted = list(dask.persist(*reads))
    report.update(persisted=True, reason=f"kept in the memory of {where}")
    return persisted, report


def dask_passes(blocks: list, dataset: Dataset, token: str, split_every: int, progress: bool = False,
                scale: float | None = None, reductions: tuple[Reduction, Reduction] = (ASSIGN, ESTEP)) -> Passes:
    """The three kinds of pass over ``blocks`` (Delayed ``(X, y)``), each a reduction whose
    parameters travel inside its graph (one key per pass); ``scale`` (default the
    dataset's) is what the kernels multiply the blocks' rows by; ``reductions`` the hard
    assignment and the E-step (Gaussian components by default)."""
    assign, e_step = reductions
    scale = float(dataset.scale if scale is None else scale)
    counter = iter(range(1, 10**9))

    def run(reduction: Reduction, params: tuple, tag: str):
        return reduce_blocks(reduction, blocks, params, split_every=split_every, token=tag, progress=progress)

    def sample(seed: int, size: int) -> InitSample:
        return run(SAMPLE, (seed, size, scale), token)

    def hard(classes, centers, *options):
        return run(assign, (classes, centers, *options, scale), token)

    def estep(comps):
        return run(e_step, (comps, scale), f"{token}-{next(counter)}")

    return Passes(sample=sample, hard=hard, estep=estep)


# ---------------------------------------------------------------------------- the fit
def fit_mixture(
    inputs: list[str] | str | Dataset,
    n_components: int,
    *,
    label_column: str = "label",
    blocksize: int | None = None,
    image_shape: str | tuple | None = None,
    scale: str | float | None = "auto",
    fmt: str | None = None,
    covariance: str = DEFAULTS["covariance"],
    reg_covar: float | str | None = "auto",
    max_iter: int = DEFAULTS["max_iter"],
    tol: float = DEFAULTS["tol"],
    init: str = DEFAULTS["init"],
    seed: int = DEFAULTS["seed"],
    init_sample: int = DEFAULTS["init_sample"],
    split_every: int = DEFAULT_SPLIT_EVERY,
    persist: bool | str = "auto",
    storage_options: dict | None = None,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    transform: str | Transform = "none",
    logit_lambda: float | None = None,
    rank: int | None = None,
    **options: Any,
) -> ClassModel:
    """Fit, per class, a mixture of ``n_components`` Gaussians by EM on the current Dask scheduler.

    ``inputs`` as for :func:`daskgen.fit` (or a Dataset from :func:`daskgen.fitting.prepare`).
    Options as :func:`daskgen.models.mixture_em.run_em`: ``covariance`` full|diag, ``reg_covar``
    (> 0, added to every component covariance; "auto" (or None):
    :func:`daskgen.fitting.default_reg_covar`, max(1e-6, scale**2 / 12) for integer pixels), ``max_iter``, ``tol`` (on the change of
    the mean log-likelihood per row), ``init`` kmeans++|random, ``seed``,
    ``init_sample`` (rows per class for the initialisation). ``persist``: "auto"
    (when the blocks fit in half of the cluster's memory), "always" or "never".
    ``callback`` is called after every iteration with its number, mean
    log-likelihood, change, events and seconds. ``transform``/``logit_lambda`` as for
    :func:`daskgen.fit` (the dequantization noise is seeded by ``seed``); ``reg_covar``
    then defaults to :data:`~daskgen.kernels.transform.LOGIT_REG_COVAR`.

    ``covariance`` ppca|fa: components ``N(mu, W Wᵀ + diag psi)`` with ``W`` of ``rank``
    columns (default 16) and ``psi`` floored at ``reg_covar`` (one value per component
    for ppca), fitted by :func:`daskgen.models.mfa_em.run_lowrank_em` from statistics of
    O(D·q) per component: a :class:`~daskgen.models.mfa.LowRankMixtureClassModel`.
    """
    from ..fitting import default_reg_covar, fit_transform, prepare

    checked = {**GAUSSIAN_FIT.check(covariance=covariance, reg_covar=reg_covar, split_every=split_every,
                                    **({"transform": transform} if isinstance(transform, str) else {}),
                                    logit_lambda=logit_lambda),
               **MIXTURE_FIT.check(names={"components": "n_components"}, components=n_components, max_iter=max_iter,
                                   tol=tol, init=init, seed=seed, init_sample=init_sample,
                                   **{k: v for k, v in options.items() if k in MIXTURE_FIT})}
    reg_covar, split_every, tol = checked["reg_covar"], checked["split_every"], checked["tol"]
    low_rank = covariance in LOW_RANK
    if rank is not None and not low_rank:
        raise OptionError("rank", "applies to covariance ppca or fa")
    rank = GAUSSIAN_FIT.check(rank=rank)["rank"]
    options.update({k: checked[k] for k in options if k in checked})
    transform = fit_transform(transform, logit_lambda)
    dataset = inputs if isinstance(inputs, Dataset) else prepare(
        inputs, label_column=label_column, blocksize=blocksize, image_shape=image_shape, scale=scale, fmt=fmt,
        storage_options=storage_options)
    if reg_covar == "auto":
        reg_covar = default_reg_covar(dataset, n_components, transform)
    elif not reg_covar > 0:
        raise OptionError("reg_covar", f"a mixture needs reg_covar > 0 (its likelihood is unbounded without it), "
                          f"got {reg_covar:g}")
    em_options = dict(covariance=covariance, reg_covar=reg_covar, max_iter=max_iter, tol=tol, init=init, seed=seed,
                      init_sample=init_sample, **options)
    token = tokenize(dataset.blocks, dataset.scale, dataset.integer_pixels, transform, seed)
    reads = read_tasks(dataset, token)
    if not transform.identity:  # the blocks in logit space, once: every pass reuses them
        reads = [delayed(block_features, pure=True)(xy, transform, dataset.integer_pixels, dataset.scale, seed,
                                                    dask_key_name=f"features-{token}-{i}")
                 for i, xy in enumerate(reads)]
    blocks, persisted = persist_blocks(reads, dataset, persist, transform)
    if low_rank:
        em_options["rank"] = rank
    em_token = tokenize(token, n_components, em_options)
    passes = dask_passes(blocks, dataset, em_token, int(split_every), progress, transform.feature_scale(dataset.scale),
                         (ASSIGN_LOW_RANK, ESTEP_LOW_RANK) if low_rank else (ASSIGN, ESTEP))
    with user_input():  # the driver checks the data (a class of one row) and given parameters
        params, stats, summary = (run_lowrank_em if low_rank else run_em)(passes, n_components, callback=callback,
                                                                          **em_options)
    summary["persist"] = persisted
    summary["rows"] = int(stats.n_rows)
    config = (lowrank_config if low_rank else em_config)(n_components, em_options)
    config.update(split_every=int(split_every), blocksize=dataset.blocksize, format=dataset.fmt,
                  integer_pixels=bool(dataset.integer_pixels))
    if dataset.class_names:
        config["class_names"] = dataset.class_names
    return (LowRankMixtureClassModel if low_rank else GaussianMixtureClassModel).from_params(
        params, stats, summary, image_shape=dataset.image_shape, scale=dataset.scale,
        label_column=dataset.label_column, feature_names=dataset.feature_names, config=config, inputs=dataset.files,
        transform=transform,
    )
