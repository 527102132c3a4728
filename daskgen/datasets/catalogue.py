"""The catalogue of named datasets and :func:`convert`, behind ``daskgen data NAME --out PATH``.

``digits`` (bundled), ``mnist`` and ``fashion-mnist`` (IDX files found locally or
downloaded), ``idx`` (a pair of IDX files) and ``csv`` (a tutorial-style CSV, read
whole here: it may be compressed, unlike the inputs of a fit) become a Zarr group
or a CSV file that ``daskgen fit`` reads, with the attributes (source, scale, class
names) the readers pick up. Every error that is the user's to fix raises
:class:`~daskgen.errors.InputError` (or :class:`~daskgen.errors.OutputExistsError`)
with a one-line message naming the file.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fsspec
import numpy as np

from ..errors import InputError, OutputExistsError, first_line
from ..io.fs import url_to_fs
from ..io.inputs import parse_image_shape, resolve_image_shape
from .digits import DIGITS_SCALE, load_digits_dataset
from .downloads import cache_dir, download
from .idx import FASHION_MNIST_DIRS, IDX_FILES, find_local, load_idx_pair
from .resize import resize_images
from .writers import dataset_labels, write_csv_dataset, write_zarr_dataset

#: Names :func:`convert` accepts.
DATASETS = ("digits", "fashion-mnist", "mnist", "idx", "csv")

#: Display names of the classes of the datasets that have them, by label (stored in the
#: Zarr dataset's attributes as ``class_names``; the labels stay as published).
CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}

_SPLITS = ("train", "test", "all")


# ---------------------------------------------------------------------------- CSV input
def _read_csv_images(
    source: str, label_column: str, storage_options: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a tutorial-style CSV (a label column and pixel columns) into ``(N, D)`` pixels and labels."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.types as pat

    try:
        with fsspec.open(source, "rb", compression="infer", **dict(storage_options or {})) as f:
            table = pacsv.read_csv(f)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot parse CSV: {first_line(exc)}") from None
    if label_column not in table.column_names:
        shown = ", ".join(table.column_names[:4])
        raise InputError(
            f"{source}: no label column {label_column!r} (columns: {shown}, ...); pass the label column"
        )
    features = [c for c in table.column_names if c != label_column]
    if not features:
        raise InputError(f"{source}: no pixel columns besides {label_column!r}")
    if table.num_rows == 0:
        raise InputError(f"{source}: no data rows")
    lab = table.column(label_column)
    if lab.null_count:
        raise InputError(f"{source}: column {label_column!r}: {lab.null_count} missing label(s)")
    integer = True
    for c in features:
        col = table.column(c)
        if not (pat.is_integer(col.type) or pat.is_floating(col.type)):
            raise InputError(f"{source}: column {c!r} is not numeric (type {col.type})")
        if col.null_count:
            raise InputError(f"{source}: column {c!r}: {col.null_count} missing value(s)")
        integer = integer and pat.is_integer(col.type)
    X = np.empty((table.num_rows, len(features)), dtype=np.int64 if integer else np.float64)
    for i, c in enumerate(features):
        X[:, i] = table.column(c).to_numpy()
    if integer:
        lo, hi = int(X.min()), int(X.max())
        if lo >= 0 and hi <= 255:
            X = X.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            X = X.astype(np.uint16)
    elif not np.isfinite(X).all():
        raise InputError(f"{source}: pixel columns hold NaN or infinite values")
    return X, lab.to_numpy(zero_copy_only=False)


def _idx_source(source: str | Sequence[str] | None) -> tuple[str, str]:
    if source is None:
        raise InputError("idx needs a source: IMAGES_PATH,LABELS_PATH")
    if isinstance(source, (str, os.PathLike)):
        parts = [p.strip() for p in os.fspath(source).split(",")]
    else:
        parts = [os.fspath(p) for p in source]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"idx source must be IMAGES_PATH,LABELS_PATH, got {source!r}")
    return parts[0], parts[1]


def _load_idx_dataset(
    name: str,
    source: str | os.PathLike[str] | None,
    split: str,
    download_files: bool,
    download_dir: str | os.PathLike[str] | None,
    progress: Callable[[str], None] | None,
) -> tuple[np.ndarray, np.ndarray, str]:
    if download_files:
        folder = os.fspath(download_dir or source or cache_dir(name))
        files: dict[str, tuple[str, str]] | None = download(name, folder, progress=progress)
    else:
        files = find_local(name, source)
        if files is None:
            where = (
                os.fspath(source)
                if source is not None
                else (", ".join(FASHION_MNIST_DIRS) if name == "fashion-mnist" else "")
            )
            looked = f" in {where}" if where else ""
            raise InputError(
                f"no {name} IDX files found{looked}; pass a folder holding {IDX_FILES['train'][0]} etc. "
                "or use --download"
            )
        folder = os.path.dirname(next(iter(files.values()))[0])
    wanted = ["train", "test"] if split == "all" else [split]
    missing = [s for s in wanted if s not in files]
    if missing:
        raise InputError(f"{folder}: no {name} {missing[0]} files ({' and '.join(IDX_FILES[missing[0]])})")
    parts = [load_idx_pair(*files[s]) for s in wanted]
    if len(parts) == 1:
        return parts[0][0], parts[0][1], folder
    first = parts[0][0].shape[1:]
    if any(p[0].shape[1:] != first for p in parts):
        raise InputError(f"{folder}: train and test images differ in shape")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), folder


def convert(
    name: str,
    out: str | os.PathLike[str],
    fmt: str = "zarr",
    source: str | os.PathLike[str] | Sequence[str] | None = None,
    split: str = "train",
    overwrite: bool = False,
    chunk_rows: int | None = None,
    *,
    size: int | Sequence[int] | None = None,
    limit: int | None = None,
    download: bool = False,
    download_dir: str | os.PathLike[str] | None = None,
    label_column: str = "label",
    image_shape: str | Sequence[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Turn a known dataset into a Zarr group or a CSV file that ``daskgen fit`` reads.

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "idx", "csv"}
        ``digits``: the bundled scikit-learn digits (1797 8x8 images, pixels 0..16).
        ``fashion-mnist`` / ``mnist``: IDX files from ``source`` (a folder), else Debian's
        folder for Fashion-MNIST, else downloaded when ``download``.
        ``idx``: ``source`` is ``"IMAGES_PATH,LABELS_PATH"`` or a pair of paths.
        ``csv``: ``source`` is a tutorial-style CSV (``label_column`` plus pixel columns).
    out : str or path-like
        Output path or fsspec URL.
    fmt : {"zarr", "csv"}
        Output layout (:func:`write_zarr_dataset` or :func:`write_csv_dataset`).
    source : str, path-like or pair, optional
        See ``name``.
    split : {"train", "test", "all"}
        Which MNIST/Fashion-MNIST split to convert (``"t10k"`` means ``"test"``; ``"all"``
        concatenates train then test). ``digits``, ``idx`` and ``csv`` have a single set.
    overwrite : bool
        Replace an existing output; otherwise :class:`OutputExistsError`.
    chunk_rows : int, optional
        Samples per Zarr chunk; default 10,000, fewer for wide images (chunks of at most
        64 MiB of uint8 pixels: 1,024 rows at 256x256).
    size : int or pair of int, optional
        Resize every image to ``size`` x ``size`` (or ``(H, W)``) by bilinear interpolation
        (:func:`~daskgen.datasets.resize.resize_images`), recorded in the Zarr dataset's
        attributes as ``resized``. Upsampled images are a stand-in for wide data: they have
        no more degrees of freedom than the originals.
    limit : int, optional
        Keep only the first ``limit`` images of the split (before resizing).
    download : bool
        Download the MNIST/Fashion-MNIST files (checksum-verified, see :func:`download`)
        instead of looking for local copies. Implied by ``download_dir``.
    download_dir : str or path-like, optional
        Where to download to; default ``source`` if given, else
        ``$XDG_CACHE_HOME/daskgen/NAME`` (``~/.cache/daskgen/NAME``). Files already there
        with a good checksum are reused.
    label_column : str
        Label column of an input CSV and of an output CSV.
    image_shape : str or pair of int, optional
        ``"HxW"`` to give flat (N, D) pixels an image shape; CSV input with a square number
        of pixel columns is reshaped to a square by default.
    storage_options : mapping, optional
        fsspec options for ``out`` (and a ``csv`` source).
    progress : callable, optional
        Called with one-line messages while downloading.

    Returns
    -------
    dict
        ``{"name", "path", "format", "n", "image_shape", "dtype", "classes", "counts",
        "scale", "resized"}``: ``image_shape`` is ``(H, W)`` or ``(D,)``; ``classes`` the sorted labels
        (Python scalars); ``counts`` samples per class in that order; ``scale`` the factor to
        fit with (1/16 for digits, 1/255 for other integer pixels, else 1.0).
    """
    resize = parse_image_shape(size, max_dims=2)
    if resize is not None and len(resize) == 1:
        resize = resize * 2  # --size 64: square
    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be at least 1, got {limit!r}")
    key = str(name).strip().lower().replace("_", "-")
    if key in ("fashion", "fashionmnist"):
        key = "fashion-mnist"
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    fmt = str(fmt).lower()
    if fmt not in ("zarr", "csv"):
        raise InputError(f"format must be zarr or csv, not {fmt!r}")
    split = {"t10k": "test"}.get(str(split).lower(), str(split).lower())
    if split not in _SPLITS:
        raise InputError(f"split must be one of {', '.join(_SPLITS)}, not {split!r}")
    shape = parse_image_shape(image_shape, max_dims=2)
    target = os.fspath(out)
    fs, path = url_to_fs(target, storage_options)
    if fs.exists(path) and not overwrite:  # checked again on writing; fail before any work
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")

    origin: str
    if key in ("mnist", "fashion-mnist"):
        if isinstance(source, (tuple, list)):
            raise InputError(f"{key} source must be a folder holding its IDX files, got {source!r}")
        images, labels, origin = _load_idx_dataset(
            key, source, split, download or download_dir is not None, download_dir, progress
        )
    else:
        if split == "test":
            raise InputError(f"{key} has a single set of samples; use split 'train' (or 'all')")
        if key == "digits":
            images, labels = load_digits_dataset()
            origin = "sklearn.datasets.load_digits (UCI ML hand-written digits, CC BY 4.0)"
        elif key == "idx":
            img_path, lab_path = _idx_source(source)
            images, labels = load_idx_pair(img_path, lab_path)
            origin = f"{img_path},{lab_path}"
        else:
            if source is None or isinstance(source, (tuple, list)):
                raise InputError("csv needs a source: the path of a CSV file with a label column")
            origin = os.fspath(source)
            images, labels = _read_csv_images(origin, label_column, storage_options)
            if shape is None and images.ndim == 2:
                shape = resolve_image_shape(images.shape[1])  # square when the pixel count is one
    if shape is not None:
        D = int(np.prod(images.shape[1:]))
        if math.prod(shape) != D:
            raise InputError(f"image shape {shape} has {math.prod(shape)} pixels, the data {D}")
        images = images.reshape((images.shape[0],) + shape)
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    resized = None
    if resize is not None:
        if images.ndim != 3:
            raise InputError(f"{key}: --size needs images with a shape (HxW); pass --image-shape")
        resized = {"method": "bilinear", "from": list(images.shape[1:]), "to": list(resize)}
        images = resize_images(images, resize)
    if chunk_rows is None:
        chunk_rows = max(1, min(10_000, 2**26 // max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)))

    integer = images.dtype.kind in "iub"
    scale = DIGITS_SCALE if key == "digits" else (1 / 255 if integer else 1.0)
    if fmt == "zarr":
        attrs = {"daskgen": {"source": key, "origin": origin, "split": split, "scale": scale}}
        if resized is not None:
            attrs["daskgen"]["resized"] = resized
        if limit is not None:
            attrs["daskgen"]["limit"] = int(limit)
        if key in CLASS_NAMES:
            attrs["daskgen"]["class_names"] = {str(i): n for i, n in enumerate(CLASS_NAMES[key])}
        written = write_zarr_dataset(
            target,
            images,
            labels,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            storage_options=storage_options,
            attrs=attrs,
        )
    else:
        written = write_csv_dataset(
            target,
            images,
            labels,
            label_column=label_column,
            overwrite=overwrite,
            storage_options=storage_options,
        )
    classes, counts = np.unique(dataset_labels(labels), return_counts=True)
    return {
        "name": key,
        "path": written,
        "format": fmt,
        "n": int(images.shape[0]),
        "image_shape": tuple(int(s) for s in images.shape[1:]),
        "dtype": str(images.dtype),
        "classes": classes.tolist(),
        "counts": [int(c) for c in counts],
        "scale": scale,
        "resized": resized,
    }


