"""Open CSV, Parquet or Zarr inputs (local paths or fsspec URLs) as blocks of rows.

``open_inputs`` looks at the inputs once, on the client: it expands globs and
directories, checks that every file has the same columns and a label column,
sniffs types, and cuts the data into :class:`~daskgen.io.blocks.Block` descriptions
(small and picklable). ``read_block`` runs on a worker: it reads one block and
returns ``(X, y)`` as numpy arrays, raising :class:`~daskgen.errors.InputError`
that names the file and column at fault. Each format lives in its own module
(:mod:`~daskgen.io.csv_input`, :mod:`~daskgen.io.parquet_input`,
:mod:`~daskgen.io.zarr_input`); this one holds what they share and dispatches to
them. Readers know nothing of statistics.

In-memory and lazy arrays (``daskgen.io.arrays``) give the same :class:`Dataset`:
their blocks (formats ``"array"`` and ``"dataframe"``) are row chunks whose rows
come from a Dask task (``Dataset.parts``) instead of a file; ``read_block`` checks
them exactly as it checks rows read from files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import InputError, first_line
from .blocks import Block, checked_rows
from .csv_input import open_csv, read_csv_block
from .fs import unstrip, url_to_fs
from .labels import as_labels
from .parquet_input import open_parquet, read_parquet_block
from .zarr_input import open_zarr, read_zarr_block

#: Blocks whose rows are handed to ``read_block`` (``Dataset.parts``), not read from a file.
ARRAY_FORMATS = ("array", "dataframe")
DEFAULT_BLOCKSIZE = 32 * 2**20
_OPEN = {"csv": open_csv, "parquet": open_parquet, "zarr": open_zarr}
_READ = {"csv": read_csv_block, "parquet": read_parquet_block, "zarr": read_zarr_block}


@dataclass
class Dataset:
    """What ``open_inputs`` found: the blocks to read and how to interpret them."""

    blocks: list[Block]
    feature_names: list[str]
    label_column: str
    image_shape: tuple[int, ...] | None
    scale: float
    #: blocks are read as 8-bit pixels (uint8, every value checked to lie in 0..255)
    integer_pixels: bool
    files: list[dict[str, Any]] = field(default_factory=list)
    storage_options: dict[str, Any] = field(default_factory=dict)
    fmt: str = "csv"
    blocksize: int = DEFAULT_BLOCKSIZE
    #: the stored values are integers (pixel counts: dequantization applies)
    integer_values: bool = False
    #: display names of the classes, by label as text (a Zarr dataset's ``class_names``)
    class_names: dict[str, str] | None = None
    #: Array inputs only: per block, a Delayed ``(X, y)`` (numpy once computed) that
    #: ``read_block`` receives as ``rows``; None for files (each block reads itself).
    parts: list | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def rows(self, i: int):
        """Where block ``i``'s rows come from: its Delayed ``(X, y)``, or None (a file)."""
        return None if self.parts is None else self.parts[i]

    def unseen(self, manifest: list[dict[str, Any]]) -> Dataset:
        """This dataset without the files ``manifest`` lists (already folded into a model).

        A file is recognised by its path; one whose size, modification time or etag
        differ from the manifest's changed after it was folded in, which an update
        cannot undo: that is an InputError.
        """
        seen = {f["path"]: f for f in manifest}
        keep, skip = [], set()
        for f in self.files:
            old = seen.get(f["path"])
            if old is None:
                keep.append(f)
            elif all(old.get(k) == f.get(k) for k in ("size", "mtime", "etag")) or (
                old.get("size") == f.get("size") and old.get("etag") and old.get("etag") == f.get("etag")
            ):  # unchanged; or touched, with the same size and content hash (an object's etag)
                skip.add(f["path"])
            else:
                if old.get("size") != f.get("size"):
                    what = f"size {old.get('size')} -> {f.get('size')}"
                elif old.get("etag") != f.get("etag"):
                    what = "its content hash changed"
                else:  # only the size and the modification time are recorded for local files
                    what = "modified time changed; same size"
                raise InputError(
                    f"{f['path']} changed since it was folded into the model ({what}); "
                    "fit all the data again without --update"
                )
        return replace(self, files=keep, blocks=[b for b in self.blocks if b.url not in skip])


# ---------------------------------------------------------------------------- helpers
def _guess_format(path: str) -> str | None:
    p = path.rstrip("/").lower()
    for suffix in (".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst"):
        if p.endswith(suffix):
            return None  # compressed CSV cannot be split into byte ranges; refused below
    if p.endswith(".csv") or p.endswith(".txt"):
        return "csv"
    if p.endswith(".parquet") or p.endswith(".pq"):
        return "parquet"
    if p.endswith(".zarr"):
        return "zarr"
    return None


def expand_inputs(inputs: list[str] | str, storage_options: dict | None = None, fmt: str | None = None):
    """Expand files, globs and directories into ``[(format, fs, path)]``, sorted per input."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    for raw in map(str, inputs):
        fs, path = url_to_fs(raw, storage_options)
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise InputError(f"{raw}: no file matches this pattern")
        elif not fs.exists(path):
            raise InputError(f"{raw}: no such file or directory")
        elif fs.isdir(path) and not (fs.exists(path.rstrip("/") + "/zarr.json") or fmt == "zarr"):
            matches = sorted(
                p for p in fs.find(path, maxdepth=1, withdirs=True) if _guess_format(p) and p != path
            )
            if not matches:
                raise InputError(f"{raw}: directory holds no .csv, .parquet or .zarr input")
        else:
            matches = [path]
        for p in matches:
            kind = fmt or ("zarr" if fs.isdir(p) else _guess_format(p))
            if kind is None:
                raise InputError(
                    f"{unstrip(fs, p)}: unknown input format (expected .csv, .parquet or .zarr; "
                    "compressed CSV is not supported, or pass --format)"
                )
            found.append((kind, fs, p))
    if not found:
        raise InputError("no input given")
    return found


def parse_image_shape(shape: str | Sequence[int] | None, max_dims: int | None = None) -> tuple[int, ...] | None:
    """An image shape from ``"28x28"`` (or ``28×28``, ``"784"``) or a sequence of sizes;
    None stays None. ``max_dims`` bounds the number of sizes (2 for images written
    as (N, H, W)). Raises InputError for anything else."""
    if shape is None:
        return None
    try:
        if isinstance(shape, (str, int)):
            dims = tuple(int(p) for p in str(shape).lower().replace("×", "x").split("x"))
        else:
            dims = tuple(int(p) for p in shape)
    except (TypeError, ValueError):
        raise InputError(f"image shape must look like 28x28, got {shape!r}") from None
    if max_dims is not None and (not dims or any(d <= 0 for d in dims) or len(dims) > max_dims):
        sizes = "one or two positive sizes" if max_dims == 2 else f"at most {max_dims} positive sizes"
        raise InputError(f"image shape must be {sizes} like 28x28, got {shape!r}")
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"image shape must be positive, got {shape!r}")
    return dims


def resolve_image_shape(
    n_features: int, image_shape: str | tuple | None = None, found: tuple[int, ...] | None = None
) -> tuple[int, ...] | None:
    """The image shape of rows of ``n_features``: as given (checked), else as the input
    stores it (``found``), else square when ``n_features`` is a square, else None."""
    shape = parse_image_shape(image_shape)
    if shape is not None:
        if int(np.prod(shape)) != n_features:
            raise InputError(f"image shape {shape} has {int(np.prod(shape))} pixels, the data {n_features} features")
        return shape
    if found is not None:
        return found
    if math.isqrt(n_features) ** 2 == n_features and n_features > 1:
        return (math.isqrt(n_features), math.isqrt(n_features))
    return None


def resolve_scale(scale: str | float | None, integer: bool, stored: float | None = None) -> tuple[float, bool]:
    """``(scale, integer_pixels)`` of an input: ``scale`` 'auto' takes the input's stored
    scale, else 1/255 for integer values (then read as 8-bit pixels, checked to lie in
    0..255), else 1; a number is used as given and the values as stored."""
    fixed = parse_scale(scale)
    if fixed is None and stored is not None:
        fixed = stored
    return (fixed if fixed is not None else (1 / 255 if integer else 1.0)), bool(integer and fixed is None)


def parse_scale(scale: str | float | None) -> float | None:
    """``'auto'``/None -> None (decide from the data), else a positive float (``"1/255"`` allowed)."""
    from ..options import READ

    value = READ["scale"].check(scale)
    return None if value == "auto" else value


# ---------------------------------------------------------------------------- public
def open_inputs(
    inputs: list[str] | str,
    label_column: str = "label",
    blocksize: int | None = None,
    image_shape: str | tuple | None = None,
    scale: str | float | None = "auto",
    fmt: str | None = None,
    storage_options: dict | None = None,
    pixels_8bit: bool = False,
) -> Dataset:
    """Look at the inputs and plan the blocks to read. Reads only headers and metadata.

    ``pixels_8bit``: integer values must be 8-bit pixels (0..255) whatever the scale
    (e.g. held-out data of a model fitted on 8-bit pixels).
    """
    from ..options import READ, to_bytes

    READ.check(names={"format": "fmt"}, label_column=label_column, format=fmt, blocksize=blocksize,
               image_shape=image_shape, scale=scale)
    blocksize = to_bytes(blocksize) or DEFAULT_BLOCKSIZE
    entries = expand_inputs(inputs, storage_options, fmt)
    kinds = {k for k, _, _ in entries}
    if len(kinds) > 1:
        raise InputError(f"inputs mix formats ({', '.join(sorted(kinds))}); fit one format at a time")
    (kind,) = kinds
    found = _OPEN[kind](entries, label_column, blocksize, storage_options)
    features, integer = found.features, found.integer
    if not features:
        raise InputError(f"{found.files[0]['path']}: no feature columns besides {label_column!r}")
    scale, integer_pixels = resolve_scale(scale, integer, found.stored_scale)
    return Dataset(
        blocks=found.blocks,
        feature_names=list(features),
        label_column=label_column,
        image_shape=resolve_image_shape(len(features), image_shape, found.image_shape),
        scale=scale,
        # The exact 8-bit path depends on what is stored, not on how the scale was
        # given: uint8 images always take it; other integers when the scale is auto
        # (8-bit pixels are then assumed, and every value is checked).
        integer_pixels=integer_pixels or found.eight_bit or (integer and pixels_8bit),
        files=found.files,
        storage_options=dict(storage_options or {}),
        fmt=kind,
        blocksize=blocksize,
        integer_values=bool(integer),
        class_names=found.class_names,
    )


def read_block(
    block: Block,
    check_pixel_range: bool = False,
    storage_options: dict | None = None,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one block: ``X`` (n, D) in pixel units, ``y`` (n,) labels.

    A block of an array input (``Dataset.rows(i)``) is not read: its ``rows``
    ``(X, y)`` are passed in (computed by Dask) and checked like rows of a file.

    With ``check_pixel_range`` (``--scale auto`` on integer images) X is uint8 and
    every value was checked to lie in 0..255; otherwise X holds the stored numbers
    (float64 for CSV and Parquet, the stored dtype for Zarr) and was checked to be
    finite. The conversion to float64 and the scale are applied by ``chunk_stats``,
    which keeps the bytes moved per block small. Errors name the file and column.
    """
    try:
        if block.fmt in ARRAY_FORMATS:
            X, y = _read_array_block(block, rows, check_pixel_range)
        else:
            X, y = _READ[block.fmt](block, storage_options, check_pixel_range)
    except InputError:
        raise
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise InputError(f"{block.url}: cannot read: {first_line(exc)}") from None
    if X.size and X.dtype.kind == "f":
        bad = ~np.isfinite(X)
        if bad.any():
            _, col = np.argwhere(bad)[0]
            raise InputError(
                f"{block.where}: feature {block.feature(col)} has a missing, NaN or infinite value"
            )
    return X, y


def _read_array_block(block: Block, rows, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    X, y = rows
    X, y = np.asarray(X), as_labels(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"{block.where}: X has shape {X.shape} and y {y.shape}; expected (n, D) and (n,)")
    return checked_rows(block, X, y, pixels)


