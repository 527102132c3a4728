"""A unit of reading work (:class:`Block`), with the reading options of its format.

A block is small and picklable: it travels to a worker, which reads it. Each
format describes how to read its blocks with a frozen dataclass of its own
(:class:`CsvOptions`, :class:`ParquetOptions`, :class:`ZarrOptions`,
:class:`FrameOptions`), shared by the blocks of one source. Also here: what every
format reports when it opens its inputs (:class:`Opened`) and the checks shared
by the array-like formats (8-bit range, finite labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class CsvOptions:
    """How to parse a CSV block: the file's header, its label column and the label kind."""

    header: tuple[str, ...]
    label_column: str
    label_kind: str = "int"  # 'int', 'float' or 'str', sniffed from the first MiB

    @property
    def features(self) -> list[str]:
        return [c for c in self.header if c != self.label_column]


@dataclass(frozen=True)
class ParquetOptions:
    """The columns to read from a Parquet row group and which one holds the labels."""

    header: tuple[str, ...]
    label_column: str

    @property
    def features(self) -> list[str]:
        return [c for c in self.header if c != self.label_column]


@dataclass(frozen=True)
class ZarrOptions:
    """The name of the labels array beside ``images`` in a Zarr group."""

    label_name: str = "labels"

    @property
    def features(self) -> None:
        return None  # pixels are named by position


@dataclass(frozen=True)
class FrameOptions:
    """The feature columns of a dataframe input, in order."""

    columns: tuple[str, ...]

    @property
    def features(self) -> list[str]:
        return list(self.columns)


BlockOptions = CsvOptions | ParquetOptions | ZarrOptions | FrameOptions

#: What ``start``/``stop`` count, per format, in messages.
_UNITS = {"csv": "bytes", "parquet": "row group", "zarr": "rows", "array": "rows", "dataframe": "partition"}


@dataclass(frozen=True)
class Block:
    """One unit of reading work: a byte range of a CSV, a Parquet row group, Zarr rows,
    or a row chunk of an array (a partition of a dataframe)."""

    fmt: str
    url: str  # fsspec URL (or local path); arrays: the collection's name
    start: int  # byte offset (csv), row group (parquet), first row (zarr, array), partition (dataframe)
    stop: int  # byte end (csv), row group + 1 (parquet), row end (zarr, array), partition + 1 (dataframe)
    first: bool = False  # csv: this block holds the header line
    options: BlockOptions | None = None  # how to read it, shared per source

    @property
    def where(self) -> str:
        """The block in messages: its source and its span (``f.csv (bytes 0-1024)``)."""
        span = f"{self.start}" if self.fmt in ("parquet", "dataframe") else f"{self.start}-{self.stop}"
        return f"{self.url} ({_UNITS[self.fmt]} {span})"

    def feature(self, col: int) -> str:
        """The name of feature column ``col`` in messages (``'pixel3'`` or ``pixel3``)."""
        names = self.options.features if self.options is not None else None
        return repr(names[col]) if names else f"pixel{col}"


@dataclass
class Opened:
    """What a format found in its inputs, before the options that apply to every format."""

    blocks: list[Block]
    files: list[dict[str, Any]]
    features: list[str]
    #: every feature is stored as integers
    integer: bool
    #: the image shape stored with the data (Zarr), if any
    image_shape: tuple[int, ...] | None = None
    #: the scale stored with the data (a Zarr dataset's ``scale``), if any
    stored_scale: float | None = None
    #: every feature is stored as uint8
    eight_bit: bool = False
    class_names: dict[str, str] | None = field(default=None)


class NotEightBitError(InputError):
    """Data read as 8-bit pixels holds a value that is not one (outside 0..255, or not an integer)."""


def outside_pixel_range(where: str, feature: str, value) -> str:
    """The message for a value outside 0..255 in data read as 8-bit pixels."""
    return f"{where}: feature {feature} has value {value} outside 0..255 for 8-bit pixels; pass --scale"


def checked_rows(block: Block, X: np.ndarray, y: np.ndarray, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of an array-like source (Zarr, numpy, Dask): 8-bit pixels checked to lie in
    0..255 and made uint8, labels checked to be finite."""
    if pixels and X.dtype != np.uint8 and X.size:
        lo, hi = X.min(), X.max()
        if lo < 0 or hi > 255:
            col = int(np.argmin(X.min(axis=0)) if lo < 0 else np.argmax(X.max(axis=0)))
            raise NotEightBitError(outside_pixel_range(block.where, block.feature(col), lo if lo < 0 else hi))
        X = X.astype(np.uint8)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InputError(f"{block.where}: 'labels' has NaN or infinite values")
    return X, y
