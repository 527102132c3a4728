"""Writing image datasets in the layouts daskgen reads: a Zarr v3 group or a CSV file.

Locally an output is published by :func:`daskgen.io.publish.publish_local` (written
under a hidden name, then renamed); on object storage it is written in place.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError, OutputExistsError
from ..io.fs import is_local, url_to_fs
from ..io.labels import as_labels
from ..io.publish import publish_local


def dataset_labels(labels: Any, where: str = "labels") -> np.ndarray:
    """Labels as a dataset stores them: int64 (integers, bools, integral floats), float64
    (other floats) or str; missing or non-finite labels are refused."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"{where}: expected labels of shape (N,), got {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InputError(f"{where}: labels hold NaN or infinite values")
        if np.array_equal(y, np.round(y)) and (y.size == 0 or np.abs(y).max() < 2**53):
            y = y.astype(np.int64)
    elif y.dtype.kind in "OT" and any(v is None for v in y.tolist()):
        raise InputError(f"{where}: labels hold missing values")
    return as_labels(y, widen=True)


def _check_arrays(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (N, H, W) or (N, D), numeric (bools as uint8), and their N labels; N > 0."""
    X = np.asarray(images)
    if X.ndim not in (2, 3):
        raise InputError(f"images must have shape (N, H, W) or (N, D), got {X.shape}")
    if X.dtype.kind not in "biuf":
        raise InputError(f"images must be numeric, got dtype {X.dtype}")
    if X.dtype.kind == "b":
        X = X.astype(np.uint8)
    y = dataset_labels(labels)
    if X.shape[0] != y.shape[0]:
        raise InputError(f"images has {X.shape[0]} rows but labels has {y.shape[0]}")
    if X.shape[0] == 0:
        raise InputError("no samples to write (N = 0)")
    return X, y


def _output(url: str | os.PathLike[str], overwrite: bool, storage_options: Mapping[str, Any] | None):
    """``(target, fs, path, exists)`` of an output; an existing one is refused unless ``overwrite``."""
    target = os.fspath(url)
    fs, path = url_to_fs(target, storage_options)
    exists = fs.exists(path)
    if exists and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    return target, fs, path, exists


def write_zarr_dataset(
    url: str | os.PathLike[str],
    images: Any,
    labels: Any,
    chunk_rows: int = 10000,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write a Zarr v3 group with arrays ``images`` and ``labels`` (daskgen's Zarr input layout).

    Parameters
    ----------
    url : str or path-like
        Local path or fsspec URL of the group to create.
    images : array-like
        (N, H, W) or (N, D), numeric (bools are stored as uint8). Stored with its dtype,
        chunked ``(chunk_rows, H, W)`` / ``(chunk_rows, D)``, dimension names
        ``("sample", "y", "x")`` / ``("sample", "feature")``.
    labels : array-like
        (N,). Integers (and integral floats) are stored as int64, other floats as float64,
        anything else as strings; chunked ``(chunk_rows,)``, dimension names ``("sample",)``.
    chunk_rows : int
        Samples per chunk (capped at N).
    overwrite : bool
        Replace an existing ``url``; otherwise :class:`OutputExistsError` is raised.
    storage_options : mapping, optional
        fsspec options for remote URLs.
    attrs : mapping, optional
        Extra group attributes (JSON-serialisable). Keys under ``"daskgen"`` are merged into
        daskgen's own entry ``{"kind": "dataset", "n": N, "image_shape": [H, W] | None, ...}``.

    Returns
    -------
    str
        The path (absolute, for local outputs) or URL written.

    Notes
    -----
    Locally the group is written under a hidden temporary name in the same folder and
    renamed into place, so readers never see a half-written group. On object storage the
    group is written in place.
    """
    import zarr

    X, y = _check_arrays(images, labels)
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    rows = min(chunk_rows, X.shape[0])
    meta: dict[str, Any] = {
        "kind": "dataset",
        "n": int(X.shape[0]),
        "image_shape": list(X.shape[1:]) if X.ndim == 3 else None,
    }
    extra = dict(attrs or {})
    meta.update(dict(extra.pop("daskgen", None) or {}))
    extra["daskgen"] = meta

    def fill(group) -> None:
        from ..io.store import consolidate

        dims = ("sample", "y", "x") if X.ndim == 3 else ("sample", "feature")
        arr = group.create_array(
            "images", shape=X.shape, dtype=X.dtype, chunks=(rows,) + X.shape[1:], dimension_names=dims
        )
        arr[...] = X
        lab = group.create_array(
            "labels",
            shape=y.shape,
            dtype=str if y.dtype.kind == "U" else y.dtype,
            chunks=(rows,),
            dimension_names=("sample",),
        )
        lab[...] = y
        group.attrs.update(extra)
        consolidate(group)

    target, fs, path, exists = _output(url, overwrite, storage_options)
    if not is_local(fs):
        if exists:
            fs.rm(path, recursive=True)
        fill(zarr.open_group(target, mode="w", storage_options=dict(storage_options or {})))
        return target
    return publish_local(path, exists, lambda tmp: fill(zarr.open_group(tmp, mode="w")))


def write_csv_dataset(
    path: str | os.PathLike[str],
    images: Any,
    labels: Any,
    label_column: str = "label",
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a CSV in the Kaggle digit-recognizer layout: ``label,pixel0,...,pixel{D-1}``.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL of the CSV file to create.
    images : array-like
        (N, H, W) or (N, D), numeric; flattened row-major to D = H*W columns. Integer
        pixels are written as integers.
    labels : array-like
        (N,) labels, written first (integers as integers, see :func:`write_zarr_dataset`).
    label_column : str
        Name of the label column.
    overwrite : bool
        Replace an existing file; otherwise :class:`OutputExistsError` is raised.
    storage_options : mapping, optional
        fsspec options for remote URLs.

    Returns
    -------
    str
        The path (absolute, for local outputs) or URL written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    X, y = _check_arrays(images, labels)
    X = X.reshape(X.shape[0], -1)
    names = [f"pixel{i}" for i in range(X.shape[1])]
    if label_column in names:
        raise InputError(f"label column {label_column!r} collides with a pixel column name")
    XF = np.asfortranarray(X)  # contiguous columns: each becomes an Arrow array without a copy
    columns = [pa.array(y)] + [pa.array(XF[:, i]) for i in range(XF.shape[1])]
    table = pa.Table.from_arrays(columns, names=[label_column] + names)
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow([label_column] + names)
    header = line.getvalue().encode()
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")

    def write(sink) -> None:
        sink.write(header)
        pacsv.write_csv(table, sink, write_options=options)

    target, fs, fpath, exists = _output(path, overwrite, storage_options)
    if fs.isdir(fpath):
        raise OutputExistsError(f"{target} is a directory; refusing to replace it with a CSV file")
    if not is_local(fs):
        with fs.open(fpath, "wb") as f:
            write(f)
        return target

    def write_local(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink:
            write(sink)

    return publish_local(fpath, exists, write_local)

