"""In-memory and lazy arrays as a :class:`~daskgen.io.readers.Dataset`: numpy, dask.array,
pandas or dask dataframes with a label column, xarray DataArrays with a sample dimension.

The result is the Dataset the file readers give, so the fit and the EM passes run
the same reductions on it: one block per row chunk (a dask array's chunks along
rows, ``blocksize`` rows of a numpy array, a dataframe's partitions), whose rows
``(X (n_i, D), y (n_i,))`` are a Dask task (``Dataset.rows(i)``) instead of a file
read. ``read_block`` checks them as it checks rows of files, inside the task: NaN
or infinite values, and 8-bit pixels outside 0..255, raise
:class:`~daskgen.errors.InputError` (a ``ValueError``) when the fit computes.

Nothing here computes data: shapes, dtypes and chunks are metadata.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..errors import InputError
from .readers import DEFAULT_BLOCKSIZE, Block, Dataset, resolve_image_shape, resolve_scale


def default_block_rows(n_features: int) -> int:
    """Rows per block of a numpy (or pandas) input by default: ~DEFAULT_BLOCKSIZE bytes of float64."""
    return max(DEFAULT_BLOCKSIZE // max(8 * n_features, 1), 1)


def _kind(dtype: Any) -> str:
    """numpy's dtype kind, "O" for what numpy cannot represent (e.g. pandas' string dtype)."""
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "O"


def _check_numeric_columns(frame) -> list[str]:
    bad = [c for c, t in frame.dtypes.items() if _kind(t) not in "iufb"]
    if bad:
        raise InputError(f"column {bad[0]!r} is not numeric (dtype {frame.dtypes[bad[0]]})")
    if not len(frame.columns):
        raise InputError("the dataframe has no feature columns")
    return [str(c) for c in frame.columns]


def _is_dask(obj: Any) -> bool:
    return type(obj).__module__.startswith("dask.") and hasattr(obj, "__dask_graph__")


def is_dataframe(obj: Any) -> bool:
    """Whether ``obj`` is a pandas or dask dataframe (it names its columns)."""
    return hasattr(obj, "columns") and hasattr(obj, "dtypes") and not hasattr(obj, "dims")


def _is_xarray(obj: Any) -> bool:
    return hasattr(obj, "dims") and hasattr(obj, "coords") and hasattr(obj, "transpose")


def as_rows(X: Any, sample_dim: str = "sample"):
    """``X`` as a 2-D array (n, D) of numbers, numpy or dask (lazy stays lazy), and
    the image shape its trailing dimensions give ((H, W) for 3-D input, else None).

    Accepts numpy arrays and array-likes, dask arrays (chunked along rows; the
    feature dimensions are rechunked to one chunk), pandas or dask dataframes (every
    column a feature) and xarray DataArrays (``sample_dim`` first, the others
    flattened in order). Raises ``InputError`` (a ValueError) for other shapes or
    dtypes.
    """
    if _is_xarray(X):
        if sample_dim not in X.dims:
            raise InputError(f"the DataArray has no dimension {sample_dim!r} (dims: {X.dims}); pass sample_dim")
        X = X.transpose(sample_dim, ...).data
    elif is_dataframe(X):
        _check_numeric_columns(X)
        X = X.to_dask_array() if _is_dask(X) else X.to_numpy()
    if not _is_dask(X):
        X = np.asarray(X)
    if X.ndim not in (2, 3):
        raise InputError(f"X must have shape (n, D) or (n, H, W), got {X.shape}")
    if X.dtype.kind not in "iufb":
        raise InputError(f"X must hold numbers, got dtype {X.dtype}")
    shape = tuple(int(s) for s in X.shape[1:]) if X.ndim == 3 else None
    if _is_dask(X):
        if any(np.isnan(c) for chunks in X.chunks[1:] for c in chunks):
            raise InputError("X has unknown chunk sizes along its features; call X.compute_chunk_sizes() first")
        if any(len(chunks) > 1 for chunks in X.chunks[1:]):
            X = X.rechunk({i: -1 for i in range(1, X.ndim)})  # a block holds whole rows
        if X.ndim == 3:
            X = X.reshape((X.shape[0], -1))  # feature dims are one chunk: row chunks are kept
    elif X.ndim == 3:
        X = X.reshape(len(X), -1)
    return X, shape


def _labels(y: Any, X: Any, sample_dim: str):
    """Labels (n,) from an array-like, or the name of a column / coordinate of ``X``."""
    if isinstance(y, str):
        if is_dataframe(X):
            if y not in X.columns:
                raise InputError(f"no label column {y!r} (columns: {', '.join(map(str, list(X.columns)[:5]))}, …)")
            return X.drop(columns=[y]), X[y]
        if _is_xarray(X):
            if y not in X.coords:
                raise InputError(f"the DataArray has no coordinate {y!r} (coordinates: {list(X.coords)})")
            if X.coords[y].dims != (sample_dim,):
                raise InputError(f"coordinate {y!r} must lie along {sample_dim!r}, not {X.coords[y].dims}")
            return X, X.coords[y].data
        raise InputError(f"y={y!r} names a column or coordinate: X must be a dataframe or an xarray DataArray")
    if y is None:
        raise InputError("y is required: labels (n,), or the name of X's label column or coordinate")
    if _is_xarray(y) or (hasattr(y, "to_numpy") and not _is_dask(y)):
        y = y.data if _is_xarray(y) else y.to_numpy()
    elif hasattr(y, "to_dask_array"):  # a dask Series
        y = y.to_dask_array()
    return X, y


def from_arrays(
    X: Any,
    y: Any,
    *,
    scale: str | float | None = "auto",
    blocksize: int | None = None,
    sample_dim: str = "sample",
    image_shape: str | tuple | None = None,
) -> Dataset:
    """The :class:`Dataset` of labelled rows held in arrays (nothing is computed).

    Parameters
    ----------
    X : array-like (n, D) or (n, H, W), dask array, (dask) dataframe or xarray DataArray
        Feature values in data units (e.g. 8-bit pixels), any real dtype. A dask array
        or DataArray keeps its row chunks as blocks (the feature dimensions are
        rechunked to one chunk); a dask dataframe its partitions.
    y : array-like (n,), or str
        The labels, or the name of ``X``'s label column (dataframes) or of a coordinate
        along ``sample_dim`` (DataArrays). Dask labels are rechunked to X's row chunks.
    scale : "auto" or float
        As the command line's ``--scale``: "auto" is 1/255 for integer values (which
        must then lie in 0..255 and take the exact 8-bit path) and 1 for floats.
    blocksize : int, optional
        Rows per block for numpy and pandas input (default: ~32 MiB of float64 rows);
        dask inputs keep their own chunks.
    """
    if is_dataframe(X) and _is_dask(X):
        return _from_dask_dataframe(X, y, scale, image_shape)
    X, y = _labels(y, X, sample_dim)
    names = _check_numeric_columns(X) if is_dataframe(X) else None
    X, found_shape = as_rows(X, sample_dim)
    n, D = X.shape
    if D == 0:
        raise InputError("X has no features")
    if _is_dask(X) and any(np.isnan(c) for c in X.chunks[0]):
        raise InputError("X has unknown row chunk sizes; call X.compute_chunk_sizes() first")
    if n == 0:
        raise InputError("X has no rows")
    if blocksize is not None and int(blocksize) < 1:
        raise InputError(f"blocksize must be a positive number of rows, got {blocksize}")
    if not _is_dask(X):
        import dask.array as da

        X = da.from_array(X, chunks=(int(blocksize or default_block_rows(D)), D))
    if not _is_dask(y):
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise InputError(f"y must have shape ({n},) like X's rows, got {y.shape}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InputError("y has NaN or infinite labels")
        import dask.array as da

        y = da.from_array(y, chunks=(X.chunks[0],))
    else:
        if y.ndim != 1 or any(np.isnan(c) for c in y.chunks[0]):
            raise InputError(f"y must have shape ({n},) with known chunk sizes, got {y.shape}")
        if y.shape[0] != n:
            raise InputError(f"y must have shape ({n},) like X's rows, got {y.shape}")
        if y.chunks[0] != X.chunks[0]:
            y = y.rechunk((X.chunks[0],))
    xs, ys = X.to_delayed().ravel(), y.to_delayed().ravel()
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])])
    blocks = [Block("array", f"dask.array {X.name}", int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    return _dataset(blocks, [(a, b) for a, b in zip(xs, ys)], names or [f"pixel{i}" for i in range(D)],
                    X.dtype, scale, image_shape, found_shape, "array", "label")


def _frame_rows(frame, label: str):
    return frame.drop(columns=[label]).to_numpy(), frame[label].to_numpy()


def _from_dask_dataframe(frame, label, scale, image_shape) -> Dataset:
    """One block per partition; the label is a column of ``frame`` (no partition lengths
    are computed, so nothing has to line up with another collection)."""
    from dask.delayed import delayed

    if not isinstance(label, str):
        raise InputError("a dask dataframe's labels must be one of its columns: pass y='<column name>'")
    if label not in frame.columns:
        raise InputError(f"no label column {label!r} (columns: {', '.join(map(str, list(frame.columns)[:5]))}, …)")
    features = frame.drop(columns=[label])
    names = _check_numeric_columns(features)
    parts = [delayed(_frame_rows, pure=True)(p, label) for p in frame.to_delayed()]
    blocks = [Block("dataframe", f"dask.dataframe {frame._name}", i, i + 1, options=(tuple(names),))
              for i in range(len(parts))]
    dtype = np.result_type(*[np.dtype(t) for t in features.dtypes])
    return _dataset(blocks, parts, names, dtype, scale, image_shape, None, "dataframe", label)


def _dataset(blocks, parts, names, dtype, scale, image_shape, found_shape, fmt, label) -> Dataset:
    integer = np.dtype(dtype).kind in "iub"
    scale, integer_pixels = resolve_scale(scale, integer)
    return Dataset(
        blocks=blocks,
        feature_names=list(names),
        label_column=label,
        image_shape=resolve_image_shape(len(names), image_shape, found_shape),
        scale=scale,
        integer_pixels=integer_pixels,
        fmt=fmt,
        parts=parts,
        integer_values=integer,
    )
