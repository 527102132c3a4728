"""The fit: inputs -> statistics (tree reduction on Dask) -> model."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from ._blas import one_blas_thread
from .distributed.fit import DEFAULT_SPLIT_EVERY, compute_stats
from .errors import InputError, user_input
from .io.blocks import NotEightBitError
from .io.inputs import Dataset, open_inputs
from .kernels.class_stats import ClassStats, merge
from .kernels.transform import LOGIT_REG_COVAR, NONE, Transform, make_transform
from .models import registry
from .models.base import ClassModel
from .models.gaussian import GaussianClassModel
from .models.lowrank import LOW_RANK
from .models.memory import DEFAULT_RANK
from .options import GAUSSIAN_FIT


def fit(
    inputs: list[str] | str,
    *,
    label_column: str = "label",
    blocksize: int | None = None,
    image_shape: str | tuple | None = None,
    scale: str | float | None = "auto",
    fmt: str | None = None,
    covariance: str = "full",
    reg_covar: float | str | None = "auto",
    shrinkage: str = "none",
    split_every: int = DEFAULT_SPLIT_EVERY,
    update: GaussianClassModel | None = None,
    storage_options: dict | None = None,
    progress: bool = False,
    kind: str = "gaussian",
    transform: str | Transform = "none",
    logit_lambda: float | None = None,
    seed: int = 0,
    rank: int | None = None,
    oversampling: int = 10,
    power_iterations: int = 2,
    tiles: int | None = None,
    tile_store: str | None = None,
) -> ClassModel:
    """Fit one Gaussian per class (or another kind fitted from per-class statistics,
    ``kind``) to labelled rows read from ``inputs``.

    Parameters
    ----------
    inputs : path, URL, glob or directory, a list of them, or a Dataset from :func:`prepare`
        CSV or Parquet files with a label column, or Zarr groups with ``images``
        (N, H, W) or (N, D) and ``labels`` (N,).
    covariance : {"full", "diag", "ppca", "fa"}
        ``ppca``/``fa``: a low-rank model per class (``W Wᵀ + σ² I`` or ``W Wᵀ + diag ψ``,
        :mod:`daskgen.models.lowrank`), fitted from randomized sketches in
        ``2 + power_iterations`` passes (:mod:`daskgen.distributed.lowrank`); ``kind`` is ignored.
    rank, oversampling, power_iterations : int
        ``ppca``/``fa`` only: q (default 16), the sketch's extra columns, the extra passes.
    reg_covar : float or "auto"
        Added to every covariance's diagonal (model units squared; logit units squared
        for a logit model). "auto" (or None): :func:`default_reg_covar` — the
        dequantization noise's variance ``scale**2 / 12`` for integer pixels, 0 for
        other data, :data:`~daskgen.kernels.transform.LOGIT_REG_COVAR` in logit space.
    shrinkage : {"none", "oas"}
        Oracle Approximating Shrinkage of each class covariance.
    split_every : int
        Fan-in of the tree reduction.
    update : GaussianClassModel, optional
        A fitted model whose statistics the new data is folded into; the result
        equals a fit on both data sets at once. Its scale, image shape and
        features are kept and must match the new inputs. Inputs the model's
        manifest (``model.inputs``) lists unchanged are skipped, so a growing
        folder can be updated every night and only new files are read.
    transform : {"none", "logit"}
        ``logit``: the statistics are of logit(lam + (1 - 2 lam) x~), x~ = (x + u) / 256
        the dequantized 8-bit pixels (u from ``seed`` and each row's values: the same
        fit whatever the chunking), or x~ = x * scale for other data in [0, 1]; they
        take the float (Chan) path, not the exact integer one.
    logit_lambda : float, optional
        lam of the logit transform (default 1e-6).
    seed : int
        Seed of the logit transform's dequantization noise.
    kind : str
        The registered model kind (:mod:`daskgen.models.registry`); it must be fitted
        from per-class statistics (:meth:`~daskgen.models.base.ClassModel.diagonal_stats`).
    tiles : int, optional
        Keep each class's D x D statistic and Cholesky factor as tiles of ``tiles``
        features, computed and written by the workers, never whole on one process
        (:mod:`daskgen.distributed.tiled`); returns a
        :class:`~daskgen.models.tiled.TiledGaussianClassModel`. Full covariances of one
        Gaussian per class, without shrinkage or ``update``.
    tile_store : str, optional
        Folder or URL (a Zarr group, created; ``storage_options`` apply) where a tiled fit's
        workers write its tiles: every worker must reach it (a shared disk or an object
        store). Saving the model moves them into a local model store, or copies them tile
        by tile. Default: a new temporary folder on this machine (a local cluster only).

    Options are checked as :data:`daskgen.options.GAUSSIAN_FIT` and :data:`~daskgen.options.READ`
    define them (:class:`~daskgen.options.OptionError`, a ``ValueError``). Runs on the active
    ``distributed.Client`` if there is one, else on Dask's local scheduler.
    """
    checked = GAUSSIAN_FIT.check(covariance=covariance, reg_covar=reg_covar, shrinkage=shrinkage,
                                 split_every=split_every, logit_lambda=logit_lambda, tiles=tiles,
                                 **({"transform": transform} if isinstance(transform, str) else {}))
    reg_covar, split_every = checked["reg_covar"], checked["split_every"]
    low_rank = GAUSSIAN_FIT.check(rank=rank, oversampling=oversampling, power_iterations=power_iterations)
    if covariance in LOW_RANK:
        kind = covariance
        if update is not None:
            raise InputError(f"--update folds data into full or diagonal statistics; a {covariance} model keeps only "
                             "sketches: fit it again on all the data")
        if shrinkage != "none":
            raise InputError(f"--shrinkage applies to --covariance full or diag, not {covariance}")
    elif rank is not None:
        raise InputError("--rank applies to --covariance ppca or fa")
    if update is not None and update.kind != kind:
        raise InputError(f"--update folds data into a model of its own kind ({update.kind}), not {kind}")
    transform = fit_transform(transform, logit_lambda, update)
    model_class = registry.get(kind)
    diagonal_stats = model_class.diagonal_stats(covariance)
    if tiles:
        check_tiled(kind, covariance, shrinkage, update)
    if diagonal_stats is None and covariance not in LOW_RANK:
        raise InputError(f"a {kind} model is not fitted from per-class statistics")
    dataset = (
        inputs
        if isinstance(inputs, Dataset)
        else prepare(inputs, label_column=label_column, blocksize=blocksize, image_shape=image_shape,
                     scale=scale, fmt=fmt, update=update, storage_options=storage_options)
    )
    label_column = dataset.label_column
    if reg_covar == "auto":
        reg_covar = default_reg_covar(dataset, transform=transform)

    def common(dataset: Dataset) -> dict[str, Any]:  # the model's attributes, once the read path is known
        return {
            "image_shape": dataset.image_shape, "scale": dataset.scale, "label_column": label_column,
            "feature_names": dataset.feature_names, "transform": transform,
            "config": {"split_every": int(split_every), "blocksize": dataset.blocksize, "format": dataset.fmt,
                       "integer_pixels": bool(dataset.integer_pixels),
                       **({"class_names": dataset.class_names} if dataset.class_names else {}),
                       **({} if transform.identity and covariance not in LOW_RANK else {"seed": int(seed)})},
        }

    if covariance in LOW_RANK:
        return fit_low_rank(model_class, dataset, reg_covar=reg_covar, split_every=int(split_every), seed=int(seed),
                            progress=progress, common=common(dataset), **low_rank)
    if tiles:
        return fit_tiled(dataset, int(tiles), tile_store, reg_covar=reg_covar, split_every=int(split_every),
                         progress=progress, seed=int(seed), common=common(dataset))
    diagonal = diagonal_stats and (update is None or update.stats.diagonal)
    noise = {"transform": transform, "seed": int(seed)}
    if not dataset.blocks:
        stats = ClassStats.empty(update.n_features if update is not None else dataset.n_features, diagonal)
    elif dataset.integer_values and not dataset.integer_pixels and not diagonal:
        # Integer CSV/Parquet columns with an explicit scale: 8-bit pixels take the exact
        # integer path (the same bits as a fit with --scale auto, or of a uint8 Zarr
        # copy; in logit space, they are dequantized as pixels); wider integers, found
        # by a read, the general one.
        try:
            stats = compute_stats(replace(dataset, integer_pixels=True), diagonal=False,
                                  split_every=int(split_every), progress=progress, **noise)
            dataset = replace(dataset, integer_pixels=True)
        except NotEightBitError:
            stats = compute_stats(dataset, diagonal=False, split_every=int(split_every), progress=progress, **noise)
    else:
        stats = compute_stats(dataset, diagonal=diagonal, split_every=int(split_every), progress=progress, **noise)
    previous: list[dict[str, Any]] = []
    if update is not None:
        try:
            stats = merge([update.stats, stats]) if stats.n_rows else update.stats
        except TypeError:
            raise InputError("the new data's labels are of another type than the model's classes") from None
        previous = list(update.inputs)
    if stats.n_rows == 0:
        raise InputError(f"no rows in the input ({', '.join(f['path'] for f in dataset.files[:3])})")
    with user_input():  # the model checks the statistics (a class of one row, overflow)
        return model_class.from_stats(
            stats,
            covariance=covariance,
            reg_covar=reg_covar,
            shrinkage=shrinkage,
            inputs=previous + dataset.files,
            **common(dataset),
        )


def fit_low_rank(model_class, dataset: Dataset, *, rank: int | None, oversampling: int, power_iterations: int,
                 reg_covar: float, split_every: int, seed: int, progress: bool, common: dict[str, Any]) -> ClassModel:
    """A ``ppca``/``fa`` model of ``dataset`` from randomized sketches (never a D×D array)."""
    from .distributed.lowrank import sketch_spectra

    rank = DEFAULT_RANK if rank is None else int(rank)
    width = rank + int(oversampling)
    if width > dataset.n_features:
        raise InputError(f"--rank {rank} + --oversampling {oversampling} exceeds the {dataset.n_features} features "
                         "of the input")
    if not dataset.blocks:
        raise InputError(f"no rows in the input ({', '.join(f['path'] for f in dataset.files[:3])})")
    with user_input():  # bad values in the data (the transform refuses them)
        stats, theta, bases, report = sketch_spectra(dataset, width, power_iterations, split_every=split_every,
                                                     transform=common["transform"], seed=seed, progress=progress)
    if stats.n_rows == 0:
        raise InputError(f"no rows in the input ({', '.join(f['path'] for f in dataset.files[:3])})")
    common["config"].update(oversampling=int(oversampling), power_iterations=int(power_iterations),
                            sketch=report)
    with user_input(), one_blas_thread():  # errors: a class of one row, overflow, a zero noise variance
        return model_class.from_spectra(stats, theta, bases, rank, reg_covar=reg_covar, inputs=dataset.files,
                                        **common)
def check_tiled(kind: str, covariance: str, shrinkage: str, update: Any) -> None:
    """Refuse options a tiled fit does not combine with (before any work)."""
    if kind != "gaussian" or covariance != "full":
        raise InputError("--tiles applies to full covariances of one Gaussian per class (--covariance full)")
    if shrinkage != "none":
        raise InputError("--tiles does not combine with --shrinkage (it needs the whole covariance at once)")
    if update is not None:
        raise InputError("--tiles does not combine with --update; fit the tiled model on all the data")


def fit_tiled(dataset: Dataset, tiles: int, tile_store: str | None, *, reg_covar: float, split_every: int,
              progress: bool, seed: int, common: dict[str, Any]) -> ClassModel:
    """The tiled fit of ``dataset`` (see :func:`fit`'s ``tiles``): tiles written by the workers
    into the Zarr group ``tile_store`` (a new temporary folder by default)."""
    import tempfile

    from .distributed.tiled import fit_tiles
    from .io.fs import is_local, open_zarr_group, remove_tree, url_to_fs
    from .models.tiled import TiledGaussianClassModel

    if not dataset.blocks:
        raise InputError("no rows in the input")
    so = dataset.storage_options or None
    if not tile_store:
        scratch = tempfile.mkdtemp(prefix="daskgen-tiles-")
    else:
        scratch = os.path.abspath(tile_store) if is_local(url_to_fs(tile_store, so)[0]) else tile_store
    try:
        result = fit_tiles(dataset, tiles, scratch, so, reg_covar=reg_covar, transform=common["transform"], seed=seed,
                           split_every=split_every, progress=progress)
    except BaseException:
        remove_tree(scratch, so)
        raise
    counts = result.counts.astype(np.float64)
    common["config"].update(covariance="full", reg_covar=float(reg_covar), shrinkage="none", tiles=int(tiles))
    return TiledGaussianClassModel(
        classes=result.classes, counts=result.counts, priors=counts / counts.sum(), means=result.means,
        tiles=int(tiles), group=open_zarr_group(scratch, so), digests=result.digests, minimum=result.minimum,
        maximum=result.maximum, scratch_url=scratch, inputs=dataset.files, **common)


def fit_transform(name: str | Transform | None, logit_lambda: float | None, update: ClassModel | None = None
                  ) -> Transform:
    """The transform of a fit's options (``InputError`` when bad); an update keeps its model's."""
    try:
        transform = make_transform(name, logit_lambda)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if update is not None and update.transform != transform:
        raise InputError(f"--update folds data into a model of its own transform ({update.transform}), "
                         f"not {transform}")
    return transform


#: reg_covar of a mixture on non-integer data (its components need a positive one).
MIXTURE_REG_COVAR = 1e-6


def default_reg_covar(dataset: Dataset, components: int = 1, transform: Transform = NONE) -> float:
    """The default ``reg_covar`` of a fit of ``dataset`` (model units squared).

    In logit space: :data:`~daskgen.kernels.transform.LOGIT_REG_COVAR` (logit units
    squared, chosen on validation data), for one Gaussian and mixtures alike.

    Integer pixels stand for bins one pixel unit wide: their dequantization noise,
    uniform on a bin, has variance ``scale**2 / 12``. Adding it to every covariance
    makes them positive definite (pixels that are constant in training, such as an
    always-black border, no longer give held-out rows log p = -inf) and was the best
    value on validation data. Other data: 0 for one Gaussian per class,
    ``MIXTURE_REG_COVAR`` for mixtures; a mixture on integer pixels takes the larger
    of the two.
    """
    if not transform.identity:
        return LOGIT_REG_COVAR
    base = MIXTURE_REG_COVAR if components > 1 else 0.0
    if dataset.integer_values:
        return max(base, float(dataset.scale) ** 2 / 12)
    return base


def pixels_8bit(model: Any) -> bool:
    """Whether ``model`` was fitted on 8-bit pixels (held-out data must be 8-bit too)."""
    flag = model.config.get("integer_pixels")
    if flag is None:  # stores written before the flag: 8-bit pixels had scale 1/255
        return abs(float(model.scale) * 255 - 1) < 1e-12
    return bool(flag)


def prepare(inputs: list[str] | str, *, update: GaussianClassModel | None = None, **read_options: Any) -> Dataset:
    """Open and validate the inputs (headers and metadata only, no cluster needed).

    ``read_options`` are :func:`~daskgen.io.inputs.open_inputs`'s keywords (label
    column, blocksize, image shape, scale, format, storage options). Returns the
    :class:`~daskgen.io.inputs.Dataset` that :func:`fit` accepts in place of
    ``inputs``; with ``update``, the new data must match the model's features and
    takes its scale and image shape unless they are given.
    """
    if update is not None:
        if read_options.get("scale") in (None, "auto"):
            read_options["scale"] = update.scale
        if read_options.get("image_shape") is None:
            read_options["image_shape"] = update.image_shape
    dataset = open_inputs(inputs, **read_options)
    if update is not None:
        check_compatible(update, dataset)
        dataset = dataset.unseen(update.inputs)  # fold each input in once
    return dataset


def check_compatible(model: GaussianClassModel, dataset) -> None:
    """Refuse data whose features or scale differ from ``model``'s."""
    if dataset.n_features != model.n_features:
        raise InputError(
            f"the new data has {dataset.n_features} features, the model {model.n_features}"
        )
    if model.feature_names and dataset.feature_names != list(model.feature_names):
        names = [(a, b) for a, b in zip(dataset.feature_names, model.feature_names) if a != b]
        raise InputError(f"the new data's feature columns differ from the model's (first: {names[0][0]!r} vs {names[0][1]!r})")
    if abs(dataset.scale - model.scale) > 1e-15 * model.scale:
        raise InputError(f"the new data's scale {dataset.scale:g} differs from the model's {model.scale:g}")
