"""daskgen's on-disk layouts (Zarr v3) and how they are published safely.

Model store — a group with an array ``classes`` (K,), the arrays of the model's kind
and attributes under ``daskgen``: ``kind: "model"``, ``format``, ``model_kind`` (the
registered name of the model kind, :mod:`daskgen.models.registry`), ``image_shape``,
``scale``, ``label_column``, ``feature_names``, ``covariance_type``, ``config``,
``inputs``, ``data_range``, ``fingerprint``, the kind's own attributes and
``complete``. The store reads a model back through the registry by ``model_kind``
and imports no model class.

* ``gaussian`` (one Gaussian per class): arrays ``counts`` (K,), ``priors`` (K,),
  ``means`` (K, D), ``scatter`` (the raw centered statistics). Full covariances: no
  ``covariances`` array (the model derives them from ``scatter``, ``reg_covar`` and
  ``shrinkage``), and ``cholesky`` (K, D, D), each class's lower Cholesky factor of its
  covariance, computed at fit time one task per class (chunks above the diagonal never
  written: fill value 0); absent when a covariance is not positive definite. Both are
  chunked one class per chunk, written one class at a time, uncompressed. Diagonal
  covariances: ``covariances`` and ``scatter`` (K, D). Stores written before the
  factors were stored (``covariances`` (K, D, D) beside ``scatter``) still load.
* ``mixture`` (``daskgen.models.mixture.GaussianMixtureClassModel``, M components):
  the attribute ``components: M`` and arrays ``counts`` (K,), ``priors`` (K,),
  ``weights`` (K, M), ``mass`` (K, M) (responsibility mass per component),
  ``means`` (K, M, D) and ``covariances`` (K, M, D, D) or (K, M, D); no ``scatter``.

Stores written before ``model_kind`` was recorded are read as a mixture when they
have a ``components`` attribute and as one Gaussian per class otherwise. On a local
disk the group is written under a temporary name beside the target and renamed
into place; on object storage (no rename) ``complete: true`` is written last and a
store without it is refused by :func:`read_model`.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ModelError, OutputExistsError, first_line
from ..models import registry
from .fs import is_local, open_zarr_group, url_to_fs
from .labels import as_labels
from .publish import publish_local

MODEL_FORMAT = 1


def output_exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return fs.exists(path)


def check_writable(url: str, storage_options: dict | None = None) -> None:
    """Refuse, before any work, a local output whose folder cannot be created or written.

    Probes the nearest existing folder on the way to ``url`` by creating (and removing)
    a temporary file there: permission bits, read-only mounts and a path component
    that is a file all fail here, with one line, instead of after the work is done.
    Object-store URLs are not probed (their credentials are checked by the write).
    """
    import tempfile

    from ..errors import OutputError

    fs, path = url_to_fs(url, storage_options)
    if not is_local(fs):
        return
    path = os.path.abspath(path)
    where = os.path.dirname(path)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise OutputError(f"cannot write {url}: {where} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".daskgen-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {url}: {where}: {exc.strerror or first_line(exc)}") from None


def scratch_beside(url: str, storage_options: dict | None = None) -> str:
    """A scratch location beside the output ``url`` (where whoever writes ``url`` can write,
    e.g. a tiled fit's workers): on a local disk a hidden folder named as the publishing
    temporaries (so one that a killed writer left is removed by the next publish), on object
    storage ``URL.tiles-tmp-XXXXXXXX``."""
    import socket

    fs, path = url_to_fs(url, storage_options)
    if not is_local(fs):
        return f"{url.rstrip('/')}.tiles-tmp-{uuid.uuid4().hex[:8]}"
    parent, name = os.path.split(os.path.abspath(path).rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def consolidate(group: Any) -> None:
    """Consolidate the metadata of a finished Zarr group (its last write): xarray and
    zarr then open it with one read, and without warning that it is not consolidated."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(group.store, path=group.path or None)


def run_in_order(calls: list[Callable[[], Any]]) -> list:
    """The default way :func:`write_model` runs a per-class write: here, one after the other."""
    return [call() for call in calls]


def _write_model_group(model, url: str, storage_options: dict | None,
                       run: Callable[[list[Callable[[], Any]]], list] | None = None) -> None:
    from zarr.codecs import ZstdCodec

    group = open_zarr_group(url, storage_options, mode="w")
    kind_arrays, kind_attrs = model.to_store()
    arrays = {"classes": as_labels(model.classes, widen=True), **kind_arrays}
    for name, data in arrays.items():
        chunks = data.shape if data.ndim < 3 else (1,) + data.shape[1:]
        dtype = str if data.dtype.kind == "U" else data.dtype  # variable-length UTF-8
        # The (K, D, D) float64 statistics (and a mixture's (K, M, D[, D]) ones) are noise in
        # their low bits: zstd saves ~10% of their bytes for 3x the write time of the whole
        # store, so they are stored raw.
        big = data.ndim >= 3
        arr = group.create_array(name, shape=data.shape, dtype=dtype, chunks=chunks or None,
                                 compressors=None if big else ZstdCodec(level=1))
        arr[...] = data
    # The (K, D, D) arrays of a full model, one class at a time (never a K x D x D
    # temporary): class k's statistics from the model, then its Cholesky factor as one task
    # where `run` sends it (the cluster), reading class k back from the store while the
    # next class is written here.
    specs = model.class_arrays()
    opened = {name: group.create_array(name, shape=spec.shape, dtype="float64", compressors=None, fill_value=0.0,
                                       chunks=spec.chunks or (1, *spec.shape[1:]))
              for name, spec in specs.items()}
    for name in _write_class_arrays(specs, opened, run or run_in_order):
        del group[name]  # e.g. a covariance that is not positive definite: no factors stored
    model.write_large_arrays(url, storage_options)
    meta = {
        "kind": "model",
        "format": MODEL_FORMAT,
        "version": __version__,
        "model_kind": model.kind,
        "image_shape": list(model.image_shape) if model.image_shape else None,
        "scale": float(model.scale),
        "label_column": model.label_column,
        "feature_names": list(model.feature_names) if model.feature_names else None,
        "covariance_type": model.covariance_type,
        "config": model.config,
        "inputs": model.inputs,
        "transform": model.transform.to_attrs(),
        "data_range": [_jsonable(model.data_range[0]), _jsonable(model.data_range[1])],
        "fingerprint": model.fingerprint,
        **kind_attrs,
        "complete": False,
    }
    group.attrs["daskgen"] = meta
    meta["complete"] = True  # written last: a store without it is refused
    group.attrs["daskgen"] = meta
    consolidate(group)


def _write_class_arrays(specs: dict, opened: dict, run: Callable[[Any], list]) -> list[str]:
    """Write a kind's per-class arrays class by class: for each class, the serial writes
    here, then that class's parallel writes handed to ``run`` at once (the cluster factors
    class k while class k + 1 is written here). The names of the arrays some class had
    nothing for (to drop)."""
    serial = [name for name, spec in specs.items() if not spec.parallel]
    parallel = [name for name, spec in specs.items() if spec.parallel]
    K = max((spec.shape[0] for spec in specs.values()), default=0)
    ok = {name: True for name in specs}

    def parallel_calls():
        for k in range(K):
            for name in serial:
                ok[name] = specs[name].write(opened, k) and ok[name]
            for name in parallel:
                yield functools.partial(specs[name].write, opened, k)

    results = run(parallel_calls()) if parallel else list(parallel_calls())
    for i, name in enumerate(parallel):
        ok[name] = all(results[i :: len(parallel)])
    return [name for name in specs if not ok[name]]


def _jsonable(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def write_model(model, url: str, overwrite: bool = False, storage_options: dict | None = None,
                run: Callable[[list[Callable[[], Any]]], list] | None = None) -> None:
    """Publish ``model`` at ``url``; refuse an existing path unless ``overwrite``.

    ``run(calls)`` runs the per-class writes a kind asks to run in parallel (a full
    model's Cholesky factors): :func:`daskgen.distributed.factors.run_calls` sends them
    to the cluster, one task per class; by default they run here in turn. Once the store is
    in place, ``model.published(url, storage_options)`` is told where."""
    _publish_model(model, url, overwrite, storage_options, run)
    model.published(url, storage_options)


def _publish_model(model, url: str, overwrite: bool, storage_options: dict | None, run) -> None:
    fs, path = url_to_fs(url, storage_options)
    exists = fs.exists(path)
    if exists and not overwrite:
        raise OutputExistsError(f"{url} already exists; pass --overwrite to replace it")
    if not is_local(fs):
        if not exists:
            _write_model_group(model, url, storage_options, run)
            return
        # Object storage has no rename: the new model is first written whole beside the
        # old one, so an interruption never loses both; then it is copied into place with
        # the group's zarr.json (which carries `complete`) last.
        tmp = f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        _write_model_group(model, fs.unstrip_protocol(tmp), storage_options, run)
        fs.rm(path, recursive=True)
        files = sorted(fs.find(tmp), key=lambda f: f.rstrip("/") == f"{tmp}/zarr.json")
        for f in files:
            fs.copy(f, path.rstrip("/") + f[len(tmp):])
        fs.rm(tmp, recursive=True)
        return
    publish_local(path, exists, lambda tmp: _write_model_group(model, tmp, None, run))


@dataclass(frozen=True)
class ModelHeader:
    """What a model store's metadata says, its arrays unread: the kind, K classes, D
    features, components per class, the tile size (``--tiles``) and the attributes
    held-out data is checked against (``label_column``, ``image_shape``, ``scale``,
    ``feature_names``, ``config``)."""

    kind: str
    covariance_type: str
    n_classes: int
    n_features: int
    n_components: int
    label_column: str
    image_shape: tuple[int, ...] | None
    scale: float
    feature_names: list[str] | None
    config: dict[str, Any]
    tiles: int | None = None


def read_model_header(url: str, storage_options: dict | None = None) -> ModelHeader:
    """The metadata of a model store (refused as :func:`read_model` refuses it), reading
    no array's data: K from ``classes``' shape, D from ``means``' last axis."""
    group, meta = _open_model(url, storage_options)
    try:
        K = int(group["classes"].shape[0])
        D = int(group["means"].shape[-1])
    except Exception as exc:
        raise ModelError(f"{url}: corrupted model store: {first_line(exc)}") from None
    shape = meta.get("image_shape")
    return ModelHeader(registry.stored_kind(meta), str(meta.get("covariance_type", "full")), K, D,
                       int(meta.get("components") or 1), meta.get("label_column", "label"),
                       tuple(shape) if shape else None, float(meta.get("scale", 1.0)), meta.get("feature_names"),
                       dict(meta.get("config") or {}), int(meta["tiles"]) if meta.get("tiles") else None)


def _open_model(url: str, storage_options: dict | None) -> tuple[Any, dict]:
    """The group and ``daskgen`` attributes of a complete model store of a supported format."""
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise ModelError(f"{url}: no such model store")
    try:
        group = open_zarr_group(url, storage_options)
        meta = dict(group.attrs).get("daskgen")
    except Exception as exc:
        raise ModelError(f"{url}: not a daskgen model store ({first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("kind") != "model":
        raise ModelError(f"{url}: not a daskgen model store")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{url}: model store format {meta.get('format')!r} (daskgen {meta.get('version')}) "
            f"is not supported by daskgen {__version__} (format {MODEL_FORMAT}); refit the model"
        )
    if not meta.get("complete"):
        raise ModelError(f"{url}: incomplete model store (a fit was interrupted); refit the model")
    return group, meta


def read_model(url: str, storage_options: dict | None = None):
    """Load a model store written by :func:`write_model`, as the class registered for its kind."""
    group, meta = _open_model(url, storage_options)
    try:
        kind = registry.get(registry.stored_kind(meta))
    except ModelError as exc:
        raise ModelError(f"{url}: {exc}") from None
    try:
        classes = as_labels(group["classes"][...])
    except Exception as exc:
        raise ModelError(f"{url}: corrupted model store: {first_line(exc)}") from None
    return kind.from_store(group, meta, classes, url)
