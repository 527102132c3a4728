"""Parquet inputs: one block per row group of each file, read as one Arrow table.

``open_parquet`` reads each file's footer (schema and row groups) and refuses
non-numeric features; ``read_parquet_block`` reads one row group's columns.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, first_line
from .blocks import Block, Opened, ParquetOptions
from .fs import file_info, unstrip, url_to_fs
from .tables import first_diff, preview, table_to_xy


def open_parquet(entries: list, label_column: str, blocksize: int, storage_options: dict | None) -> Opened:
    """Plan the blocks of Parquet ``entries`` (``[(format, fs, path)]``): one per row group."""
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    header = None
    blocks, files = [], []
    integer = True
    for _, fs, path in entries:
        name = unstrip(fs, path)
        try:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as exc:
            raise InputError(f"{name}: not a readable Parquet file: {first_line(exc)}") from None
        cols = [c for c in schema.names if not c.startswith("__index_level_")]
        if label_column not in cols:
            raise InputError(
                f"{name}: no label column {label_column!r} (columns: {preview(cols)}); pass --label-column"
            )
        for c in cols:
            t = schema.field(c).type
            if c != label_column and not (pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t)):
                raise InputError(f"{name}: column {c!r} is not numeric (type {t})")
            if c != label_column and not pat.is_integer(t):
                integer = False
        if header is None:
            header = cols
        elif cols != header:
            raise InputError(
                f"{name}: columns differ from {files[0]['path']} (first difference at {first_diff(cols, header)})"
            )
        files.append(file_info(fs, path))
        url = unstrip(fs, path)
        options = ParquetOptions(tuple(header), label_column)
        blocks.extend(Block("parquet", url, rg, rg + 1, options=options) for rg in range(meta.num_row_groups))
    return Opened(blocks, files, [c for c in header if c != label_column], integer)


def read_parquet_block(block: Block, storage_options: dict | None, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read one row group: ``X`` (n, D) uint8 (``pixels``) or float64, ``y`` (n,)."""
    import pyarrow.parquet as pq

    header, label_column = block.options.header, block.options.label_column
    fs, path = url_to_fs(block.url, storage_options)
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f).read_row_group(block.start, columns=list(header))
    return table_to_xy(table, list(header), label_column, block.where, pixels)

