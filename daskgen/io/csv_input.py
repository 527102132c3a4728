"""CSV inputs: plan byte-range blocks of each file, and parse one block into rows.

``open_csv`` reads each file's header line and sniffs the label type and whether the
features are integers from the first MiB; it cuts files into ``blocksize`` byte ranges
that a worker widens to whole lines. ``read_csv_block`` parses a range with Arrow
(8-bit pixels straight into uint8) and explains Arrow's errors in one line naming the
file, the byte range and the column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

import numpy as np

from ..errors import InputError, first_line
from .blocks import Block, CsvOptions, NotEightBitError, Opened, outside_pixel_range
from .fs import file_info, is_local, unstrip, url_to_fs
from .tables import first_diff, preview, table_to_xy


def _csv_header(fs, path: str) -> list[str]:
    with fs.open(path, "rb") as f:
        first = f.readline()
    name = unstrip(fs, path)
    if not first.strip():
        raise InputError(f"{name}: the file is empty (no header line)")
    try:
        return next(csv.reader([first.decode("utf-8").rstrip("\r\n")]))
    except UnicodeDecodeError:
        raise InputError(f"{name}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:  # e.g. a carriage return alone inside the header line
        raise InputError(f"{name}: cannot parse the header line: {exc}") from None


def _sniff_label_type(fs, path: str, label_column: str, header: list[str]) -> tuple[str, bool]:
    """Label kind ('int', 'float' or 'str') and whether the pixels look like integers."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with fs.open(path, "rb") as f:
        head = f.read(1 << 20)
    if len(head) == 1 << 20:
        head = head[: head.rfind(b"\n") + 1]
    try:
        table = pacsv.read_csv(io.BytesIO(head), read_options=pacsv.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as exc:
        raise InputError(_explain_csv_error(f"{unstrip(fs, path)} (first MiB)", header, exc)) from None
    import pyarrow.types as pat

    ltype = table.schema.field(label_column).type
    if pat.is_integer(ltype) or pat.is_null(ltype):
        kind = "int"
    elif pat.is_floating(ltype):
        kind = "float"
    else:
        kind = "str"
    integer = all(
        pat.is_integer(table.schema.field(c).type) or pat.is_null(table.schema.field(c).type)
        for c in header
        if c != label_column
    )
    return kind, integer and table.num_rows > 0


def open_csv(entries: list, label_column: str, blocksize: int, storage_options: dict | None) -> Opened:
    """Plan the blocks of CSV ``entries`` (``[(format, fs, path)]``, see ``expand_inputs``)."""
    header = None
    blocks, files = [], []
    label_kind, integer = "int", True
    sniffed = False
    for _, fs, path in entries:
        name = unstrip(fs, path)
        cols = _csv_header(fs, path)
        if label_column not in cols:
            raise InputError(
                f"{name}: no label column {label_column!r} (columns: {preview(cols)}); "
                "pass --label-column"
            )
        if len(set(cols)) != len(cols):
            dup = sorted({c for c in cols if cols.count(c) > 1})
            raise InputError(f"{name}: duplicate column names {dup[:5]}")
        if header is None:
            header = cols
        elif cols != header:
            raise InputError(
                f"{name}: columns differ from {files[0]['path']} "
                f"({len(cols)} vs {len(header)} columns; first difference at "
                f"{first_diff(cols, header)})"
            )
        info = file_info(fs, path)
        files.append(info)
        size = info["size"]
        if not sniffed and size > 0:
            label_kind, integer = _sniff_label_type(fs, path, label_column, header)
            sniffed = True
        url = unstrip(fs, path)
        for off in range(0, max(size, 1), blocksize):
            blocks.append(Block("csv", url, off, min(off + blocksize, size), first=off == 0))
    options = CsvOptions(tuple(header), label_column, label_kind)
    blocks = [Block(b.fmt, b.url, b.start, b.stop, b.first, options) for b in blocks]
    return Opened(blocks, files, options.features, integer)


def csv_block_bytes(block: Block, storage_options: dict | None):
    """``(raw, lo, hi)``: the block's whole lines are ``raw[lo:hi]``, the lines that start
    after ``block.start`` up to the first that ends at or after ``block.stop`` (fsspec's
    ``read_block`` with a newline delimiter). A local file is memory-mapped: no copy,
    and no fresh pages to fault in for a 32 MiB buffer per block."""
    fs, path = url_to_fs(block.url, storage_options)
    if is_local(fs):
        import mmap

        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b"", 0, 0
            raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # closed with its last view

        def after_newline(pos: int) -> int:
            at = raw.find(b"\n", pos) if pos < size else -1
            return at + 1 if at >= 0 else size

        lo = 0 if block.start == 0 else after_newline(block.start)
        return raw, lo, max(lo, after_newline(block.stop) if block.stop < size else size)
    from fsspec.utils import read_block as fs_read_block

    with fs.open(path, "rb") as f:
        data = fs_read_block(f, block.start, block.stop - block.start, delimiter=b"\n")
    return data, 0, len(data)


def read_csv_block(block: Block, storage_options: dict | None, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parse the whole lines of one byte range: ``X`` (n, D) uint8 (``pixels``) or float64, ``y`` (n,)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header, label_column, label_kind = list(block.options.header), block.options.label_column, block.options.label_kind
    raw, lo, hi = csv_block_bytes(block, storage_options)
    if block.first:  # drop the header line of this file
        nl = raw.find(b"\n", lo, hi)
        lo = nl + 1 if nl >= 0 else hi
    buf = pa.py_buffer(memoryview(raw)[lo:hi])  # zero-copy views from here on
    _reject_hex(raw, lo, hi, block, header, label_column, label_kind)
    D = len(header) - 1
    if buf.size == 0 or (buf.size < 4096 and buf.to_pybytes().isspace()):
        return np.empty((0, D), dtype=np.uint8 if pixels else np.float64), np.empty(0, dtype=_label_dtype(label_kind))
    types = {label_column: {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}[label_kind]}
    # No booleans: Arrow would infer a column of "true"/"false" as one (1/0) in a block
    # that holds no numbers, where pandas and the other blocks see text.
    convert: dict[str, Any] = {"strings_can_be_null": label_kind == "str", "true_values": [], "false_values": []}
    if pixels:
        # 8-bit pixels parse straight into uint8: 2.5x faster than inferring each
        # column's type, and the parser itself rejects values outside 0..255.
        types.update((c, pa.uint8()) for c in header if c != label_column)
        if label_kind != "str":
            # No null spellings to test each field against (~20% of the parse): an
            # empty or "NaN" field fails conversion instead, explained as missing.
            convert["null_values"] = []
    try:
        # One task parses one block on one thread (Dask runs blocks in parallel). Other
        # feature types are inferred (integers parse faster than floats) and checked below.
        table = pacsv.read_csv(
            pa.BufferReader(buf),
            # Explicit types allow the parser's fastest block size (~1 MiB, cache sized);
            # inferred ones need one block, or a later block could disagree with the first.
            # A block must hold a whole row: 8 bytes a column is more than any uint8 row needs.
            read_options=pacsv.ReadOptions(
                column_names=header, use_threads=False,
                block_size=max(1 << 20, 8 * len(header)) if pixels else buf.size + 1,
            ),
            convert_options=pacsv.ConvertOptions(column_types=types, **convert),
        )
    except pa.ArrowInvalid as exc:
        raise _pixel_error(_explain_csv_error(block.where, header, exc, label_column)) from None
    return table_to_xy(table, header, label_column, block.where, pixels)


def _reject_hex(raw, lo: int, hi: int, block: Block, header: list[str], label_column: str, label_kind: str) -> None:
    """Refuse hexadecimal numbers ("0x1F") in ``raw[lo:hi]``: Arrow's integer parser
    reads them, pandas and other CSV readers see text, so a fit would silently
    disagree with them. Only the rare "0x"/"0X" byte pairs are looked at."""
    for marker in (b"0x", b"0X"):
        at = raw.find(marker, lo, hi)
        while at >= 0:
            lead = at
            while lead > lo and raw[lead - 1 : lead] in (b"+", b"-", b" ", b"\t", b'"'):
                lead -= 1
            if lead == lo or raw[lead - 1 : lead] in (b",", b"\n"):  # the field starts here
                line_start = raw.rfind(b"\n", lo, at) + 1 or lo
                before = raw[line_start:lead]
                if b'"' in before:  # quoted fields may hold commas: let the csv module split
                    fields = next(csv.reader([before.decode("utf-8", "replace")]), [])
                    index = len(fields) - 1 if before.endswith(b",") else len(fields)  # csv adds an empty last field
                else:
                    index = before.count(b",")
                column = header[min(index, len(header) - 1)]
                if not (column == label_column and label_kind == "str"):
                    end = at + 2
                    while end < hi and raw[end : end + 1] not in (b",", b"\n", b"\r", b'"'):
                        end += 1
                    token = raw[lead:end].strip(b' \t"').decode("ascii", "replace")
                    what = "label" if column == label_column else "feature"
                    raise InputError(f"{block.where}: column {column!r}: non-numeric {what} value {token!r} (hexadecimal)")
            at = raw.find(marker, at + 2, hi)


def _pixel_error(message: str) -> InputError:
    """The error for a CSV conversion message: NotEightBitError when it says the value is no 8-bit pixel."""
    return NotEightBitError(message) if message.endswith("pass --scale") else InputError(message)


def _label_dtype(kind: str):
    return {"int": np.int64, "float": np.float64, "str": object}[kind]


#: Arrow's default spellings of a missing value (read as null unless null_values=[]).
_NULLS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                    "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"})


def _explain_csv_error(where: str, header: list[str], exc: Exception, label_column: str | None = None) -> str:
    """One line naming the file (and byte range) and the column of a pyarrow CSV error."""
    import re

    msg = first_line(exc)
    m = re.search(r"CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+): invalid value '([^']*)'", msg)
    if m and header[int(m.group(1))] == label_column and m.group(3).strip() in _NULLS:
        return f"{where}: column {label_column!r}: missing label ({m.group(3)!r})"
    if m and m.group(2) == "uint8":  # a feature of data sniffed as 8-bit pixels
        col, value = header[int(m.group(1))], m.group(3)
        if value.strip() in _NULLS:
            return f"{where}: feature {col!r} has a missing, NaN or infinite value ({value!r})"
        try:
            number = float(value)
        except ValueError:
            return f"{where}: column {col!r}: non-numeric feature value {value!r}"
        if not math.isfinite(number):
            return f"{where}: feature {col!r} has a missing, NaN or infinite value ({value!r})"
        if number != int(number):
            return f"{where}: feature {col!r} has non-integer values in 8-bit pixel data ({value!r}); pass --scale"
        if not 0 <= number <= 255:
            return outside_pixel_range(where, repr(col), value)
        return f"{where}: feature {col!r} has value {value!r}, not written as an 8-bit pixel (0..255); pass --scale"
    if m:
        col = header[int(m.group(1))]
        what = "label" if m.group(2) != "double" else "feature"
        return f"{where}: column {col!r}: non-numeric {what} value {m.group(3)!r}"
    m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
    if m:
        return f"{where}: a row has {m.group(2)} fields, expected {m.group(1)} (truncated or malformed row)"
    return f"{where}: cannot parse CSV: {msg}"


