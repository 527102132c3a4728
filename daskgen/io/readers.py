"""Open CSV, Parquet or Zarr inputs (local paths or fsspec URLs) as blocks of rows.

``open_inputs`` looks at the inputs once, on the client: it expands globs and
directories, checks that every file has the same columns and a label column,
sniffs types, and cuts the data into :class:`Block` descriptions (small and
picklable). ``read_block`` runs on a worker: it reads one block and returns
``(X, y)`` as numpy arrays, raising :class:`~daskgen.errors.InputError` that names
the file and column at fault. Readers know nothing of statistics.

In-memory and lazy arrays (``daskgen.io.arrays``) give the same :class:`Dataset`:
their blocks (formats ``"array"`` and ``"dataframe"``) are row chunks whose rows
come from a Dask task (``Dataset.parts``) instead of a file; ``read_block`` checks
them exactly as it checks rows read from files.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np

from ..errors import InputError, first_line

#: Blocks whose rows are handed to ``read_block`` (``Dataset.parts``), not read from a file.
ARRAY_FORMATS = ("array", "dataframe")
DEFAULT_BLOCKSIZE = 32 * 2**20


@dataclass(frozen=True)
class Block:
    """One unit of reading work: a byte range of a CSV, a Parquet row group, Zarr rows,
    or a row chunk of an array (a partition of a dataframe)."""

    fmt: str
    url: str  # fsspec URL (or local path); arrays: the collection's name
    start: int  # byte offset (csv), row group (parquet), first row (zarr, array), partition (dataframe)
    stop: int  # byte end (csv), row group + 1 (parquet), row end (zarr, array), partition + 1 (dataframe)
    first: bool = False  # csv: this block holds the header line
    options: tuple = ()  # hashable reading options, shared per source


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
def as_labels(values) -> np.ndarray:
    """Labels as a plain numpy array: numbers stay numbers, text becomes a ``str`` array
    (Zarr 3 returns numpy's variable-width StringDType, which sorts and pickles less well)."""
    values = np.asarray(values)
    if values.dtype.kind in "OUST":
        return np.array(values.tolist(), dtype=str)
    return values



def _fs(url: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _unstrip(fs, path: str) -> str:
    return fs.unstrip_protocol(path) if not _is_local(fs) else path


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


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


def _file_info(fs, path: str) -> dict[str, Any]:
    info = fs.info(path)
    return {
        "path": _unstrip(fs, path),
        "size": int(info.get("size") or 0),
        "mtime": str(info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""),
        "etag": str(info.get("ETag") or info.get("etag") or "").strip('"'),
    }


def expand_inputs(inputs: list[str] | str, storage_options: dict | None = None, fmt: str | None = None):
    """Expand files, globs and directories into ``[(format, fs, path)]``, sorted per input."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    for raw in map(str, inputs):
        fs, path = _fs(raw, storage_options)
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
                    f"{_unstrip(fs, p)}: unknown input format (expected .csv, .parquet or .zarr; "
                    "compressed CSV is not supported, or pass --format)"
                )
            found.append((kind, fs, p))
    if not found:
        raise InputError("no input given")
    return found


def parse_image_shape(text: str | tuple | None) -> tuple[int, ...] | None:
    if text is None or isinstance(text, tuple):
        return text
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"image shape must look like 28x28, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"image shape must be positive, got {text!r}")
    return shape


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


# ---------------------------------------------------------------------------- CSV
def _csv_header(fs, path: str) -> list[str]:
    with fs.open(path, "rb") as f:
        first = f.readline()
    name = _unstrip(fs, path)
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
        raise InputError(_explain_csv_error(f"{_unstrip(fs, path)} (first MiB)", header, exc)) from None
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


def _open_csv(entries, label_column, blocksize, storage_options):
    header = None
    blocks, files = [], []
    label_kind, integer = "int", True
    sniffed = False
    for _, fs, path in entries:
        name = _unstrip(fs, path)
        cols = _csv_header(fs, path)
        if label_column not in cols:
            raise InputError(
                f"{name}: no label column {label_column!r} (columns: {_preview(cols)}); "
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
                f"{_first_diff(cols, header)})"
            )
        info = _file_info(fs, path)
        files.append(info)
        size = info["size"]
        if not sniffed and size > 0:
            label_kind, integer = _sniff_label_type(fs, path, label_column, header)
            sniffed = True
        url = _unstrip(fs, path)
        for off in range(0, max(size, 1), blocksize):
            blocks.append(Block("csv", url, off, min(off + blocksize, size), first=off == 0))
    features = [c for c in header if c != label_column]
    options = (tuple(header), label_column, label_kind)
    blocks = [Block(b.fmt, b.url, b.start, b.stop, b.first, options) for b in blocks]
    return blocks, files, features, integer


def _first_diff(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"column {i}: {x!r} vs {y!r}"
    return f"column {min(len(a), len(b))}"


def _preview(cols: list[str], n: int = 4) -> str:
    shown = ", ".join(cols[:n])
    return shown + (f", … ({len(cols)} in all)" if len(cols) > n else "")


def _csv_block_bytes(block: Block, storage_options: dict | None):
    """``(raw, lo, hi)``: the block's whole lines are ``raw[lo:hi]``, the lines that start
    after ``block.start`` up to the first that ends at or after ``block.stop`` (fsspec's
    ``read_block`` with a newline delimiter). A local file is memory-mapped: no copy,
    and no fresh pages to fault in for a 32 MiB buffer per block."""
    fs, path = _fs(block.url, storage_options)
    if _is_local(fs):
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


def _read_csv_block(block: Block, storage_options: dict | None, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header, label_column, label_kind = block.options
    raw, lo, hi = _csv_block_bytes(block, storage_options)
    if block.first:  # drop the header line of this file
        nl = raw.find(b"\n", lo, hi)
        lo = nl + 1 if nl >= 0 else hi
    buf = pa.py_buffer(memoryview(raw)[lo:hi])  # zero-copy views from here on
    _reject_hex(raw, lo, hi, block, header, label_column, label_kind)
    D = len(header) - 1
    if buf.size == 0 or (buf.size < 4096 and buf.to_pybytes().isspace()):
        return np.empty((0, D), dtype=np.uint8 if pixels else np.float64), np.empty(0, dtype=_label_dtype(label_kind))
    types = {label_column: {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}[label_kind]}
    convert: dict[str, Any] = {"strings_can_be_null": label_kind == "str"}
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
        raise _pixel_error(_explain_csv_error(_where(block), header, exc, label_column)) from None
    return _table_to_xy(table, header, label_column, _where(block), pixels)


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
                    raise InputError(f"{_where(block)}: column {column!r}: non-numeric {what} value {token!r} (hexadecimal)")
            at = raw.find(marker, at + 2, hi)


class NotEightBitError(InputError):
    """Data read as 8-bit pixels holds a value that is not one (outside 0..255, or not an integer)."""


def _pixel_error(message: str) -> InputError:
    """The error for a CSV conversion message: NotEightBitError when it says the value is no 8-bit pixel."""
    return NotEightBitError(message) if message.endswith("pass --scale") else InputError(message)


def _outside_pixel_range(where: str, feature: str, value) -> str:
    return f"{where}: feature {feature} has value {value} outside 0..255 for 8-bit pixels; pass --scale"


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
            return _outside_pixel_range(where, repr(col), value)
        return f"{where}: feature {col!r} has value {value!r}, not written as an 8-bit pixel (0..255); pass --scale"
    if m:
        col = header[int(m.group(1))]
        what = "label" if m.group(2) != "double" else "feature"
        return f"{where}: column {col!r}: non-numeric {what} value {m.group(3)!r}"
    m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
    if m:
        return f"{where}: a row has {m.group(2)} fields, expected {m.group(1)} (truncated or malformed row)"
    return f"{where}: cannot parse CSV: {msg}"


def _table_to_xy(table, header: list[str], label_column: str, where: str, pixels: bool = False):
    """(X, y) from an Arrow table: X (n, D), y (n,) labels.

    X is a Fortran-ordered view (filled column by column, contiguous writes) of
    ``uint8`` when ``pixels`` (8-bit images: every value checked to lie in 0..255)
    or of float64 otherwise; ``chunk_stats`` converts rows to float64 per class.
    """
    import pyarrow.types as pat

    labels = table.column(label_column)
    if labels.null_count:
        raise InputError(f"{where}: column {label_column!r}: {labels.null_count} missing label(s)")
    y = _column_values(labels)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InputError(f"{where}: column {label_column!r}: NaN or infinite label")
    if y.dtype.kind == "O":
        y = y.astype(str)
    features = [c for c in header if c != label_column]
    Xt = np.empty((len(features), table.num_rows), dtype=np.uint8 if pixels else np.float64)
    for j, c in enumerate(features):
        col = table.column(c)
        if not (pat.is_integer(col.type) or pat.is_floating(col.type) or pat.is_null(col.type) or pat.is_boolean(col.type)):
            raise InputError(f"{where}: column {c!r}: non-numeric feature value {_first_bad(col)!r}")
        if col.null_count:
            raise InputError(f"{where}: feature {c!r} has a missing, NaN or infinite value")
        if pixels:
            if not pat.is_integer(col.type):
                raise NotEightBitError(f"{where}: feature {c!r} has non-integer values in 8-bit pixel data; pass --scale")
            if pat.is_uint8(col.type):
                Xt[j] = _column_values(col)
                continue
            import pyarrow.compute as pc  # here: importing it costs ~0.2 s

            lo, hi = (v.as_py() for v in pc.min_max(col).values())
            if lo is not None and (lo < 0 or hi > 255):
                raise NotEightBitError(_outside_pixel_range(where, repr(c), lo if lo < 0 else hi))
        Xt[j] = _column_values(col)
    return Xt.T, y


def _chunk_to_numpy(chunk) -> np.ndarray:
    """One Arrow array as numpy: a zero-copy view for numbers without nulls.

    pyarrow's own ``to_numpy`` imports pandas on first use (~0.25 s that every worker
    would pay at its first block); plain numeric buffers do not need it.
    """
    import pyarrow.types as pat

    t = chunk.type
    if chunk.null_count == 0 and (pat.is_integer(t) or pat.is_float32(t) or pat.is_float64(t)):
        dtype = np.dtype({"float": "float32", "double": "float64"}.get(str(t), str(t)))
        return np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize)
    return chunk.to_numpy(zero_copy_only=False)


def _column_values(col) -> np.ndarray:
    """A chunked Arrow column as one numpy array (its chunks concatenated in C++)."""
    return _chunk_to_numpy(col.combine_chunks())


def _first_bad(col) -> str:
    for value in col.to_pylist():
        try:
            float(value)
        except (TypeError, ValueError):
            return str(value)
    return str(col[0])


# ---------------------------------------------------------------------------- Parquet
def _open_parquet(entries, label_column, blocksize, storage_options):
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    header = None
    blocks, files = [], []
    integer = True
    for _, fs, path in entries:
        name = _unstrip(fs, path)
        try:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as exc:
            raise InputError(f"{name}: not a readable Parquet file: {first_line(exc)}") from None
        cols = [c for c in schema.names if not c.startswith("__index_level_")]
        if label_column not in cols:
            raise InputError(
                f"{name}: no label column {label_column!r} (columns: {_preview(cols)}); pass --label-column"
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
                f"{name}: columns differ from {files[0]['path']} (first difference at {_first_diff(cols, header)})"
            )
        files.append(_file_info(fs, path))
        url = _unstrip(fs, path)
        for rg in range(meta.num_row_groups):
            blocks.append(Block("parquet", url, rg, rg + 1, options=(tuple(header), label_column)))
    features = [c for c in header if c != label_column]
    return blocks, files, features, integer


def _read_parquet_block(block: Block, storage_options: dict | None, pixels: bool):
    import pyarrow.parquet as pq

    header, label_column = block.options
    fs, path = _fs(block.url, storage_options)
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f).read_row_group(block.start, columns=list(header))
    where = f"{block.url} (row group {block.start})"
    return _table_to_xy(table, list(header), label_column, where, pixels)


# ---------------------------------------------------------------------------- Zarr
def open_zarr_group(url: str, storage_options: dict | None = None, mode: str = "r"):
    """Open a Zarr v3 group from a local path or an fsspec URL.

    Always from the group's own metadata, never the consolidated copy (written for
    other readers when a store is complete): that copy would hide an array removed
    or rewritten since.
    """
    import zarr

    fs, path = _fs(url, storage_options)
    if _is_local(fs):
        return zarr.open_group(path, mode=mode, use_consolidated=False)
    return zarr.open_group(url, mode=mode, storage_options=storage_options or {}, use_consolidated=False)


def _open_zarr(entries, label_column, blocksize, storage_options):
    blocks, files = [], []
    features, image_shape, integer, stored_scale = None, None, True, None
    eight_bit, class_names = True, None
    for _, fs, path in entries:
        url = _unstrip(fs, path)
        try:
            group = open_zarr_group(url, storage_options)
        except Exception as exc:
            raise InputError(f"{url}: not a Zarr group: {first_line(exc)}") from None
        attrs = dict(group.attrs)
        meta = attrs.get("daskgen", {})
        if meta.get("kind") == "samples" and not meta.get("complete", False):
            raise InputError(f"{url}: this samples store is incomplete; rerun `daskgen sample` to finish it")
        names = set(group.array_keys())
        for need in ("images", label_column if label_column in names else "labels"):
            if need not in names:
                raise InputError(f"{url}: no array {need!r} in the group (arrays: {sorted(names)})")
        images = group["images"]
        labels = group[label_column if label_column in names else "labels"]
        if images.ndim not in (2, 3):
            raise InputError(f"{url}: 'images' must have shape (N, H, W) or (N, D), got {images.shape}")
        if labels.ndim != 1:
            raise InputError(f"{url}: 'labels' must have shape (N,), got {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise InputError(
                f"{url}: 'images' has {images.shape[0]} rows but 'labels' has {labels.shape[0]}"
            )
        shape = tuple(images.shape[1:])
        D = int(np.prod(shape))
        if features is None:
            features, image_shape = [f"pixel{i}" for i in range(D)], (shape if len(shape) == 2 else None)
        elif D != len(features):
            raise InputError(f"{url}: images have {D} features, earlier inputs {len(features)}")
        if images.dtype.kind not in "iub":
            integer = False
        if images.dtype != np.uint8:
            eight_bit = False
        if meta.get("class_names") and class_names is None:
            class_names = {str(k): str(v) for k, v in dict(meta["class_names"]).items()}
        if meta.get("scale") and stored_scale is None:
            stored_scale = float(meta["scale"])  # e.g. 1/16 for the digits' 0..16 pixels
        if images.dtype.kind not in "iufb":
            raise InputError(f"{url}: 'images' has non-numeric dtype {images.dtype}")
        N = images.shape[0]
        rows_per_chunk = images.chunks[0]
        row_bytes = max(D * 8, 1)
        step = max(rows_per_chunk, (max(blocksize // row_bytes, 1) // rows_per_chunk) * rows_per_chunk)
        label_name = label_column if label_column in names else "labels"
        for a in range(0, N, step):
            blocks.append(Block("zarr", url, a, min(a + step, N), options=(label_name,)))
        files.append({"path": url, "size": int(N), "mtime": "", "etag": _zarr_token(group)})
    return blocks, files, features, integer, image_shape, stored_scale, integer and eight_bit, class_names


def _zarr_token(group) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in ("images", "labels"):
        if key in group:
            arr = group[key]
            h.update(repr((arr.shape, str(arr.dtype), arr.chunks)).encode())
    h.update(repr(sorted(dict(group.attrs).get("daskgen", {}).items())).encode())
    return h.hexdigest()[:16]


def _read_zarr_block(block: Block, storage_options: dict | None, pixels: bool):
    (label_name,) = block.options
    group = open_zarr_group(block.url, storage_options)
    images = group["images"][block.start : block.stop]
    y = as_labels(group[label_name][block.start : block.stop])
    return _checked_rows(block, np.asarray(images).reshape(len(y), -1), y, pixels)


def _checked_rows(block: Block, X: np.ndarray, y: np.ndarray, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of an array-like source (Zarr, numpy, Dask): 8-bit pixels checked to lie in
    0..255 and made uint8, labels checked to be finite."""
    if pixels and X.dtype != np.uint8 and X.size:
        lo, hi = X.min(), X.max()
        if lo < 0 or hi > 255:
            col = int(np.argmin(X.min(axis=0)) if lo < 0 else np.argmax(X.max(axis=0)))
            raise NotEightBitError(_outside_pixel_range(_where(block), _feature(block, col), lo if lo < 0 else hi))
        X = X.astype(np.uint8)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InputError(f"{_where(block)}: 'labels' has NaN or infinite values")
    return X, y


def _read_array_block(block: Block, rows, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    X, y = rows
    X, y = np.asarray(X), as_labels(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"{_where(block)}: X has shape {X.shape} and y {y.shape}; expected (n, D) and (n,)")
    return _checked_rows(block, X, y, pixels)


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
    inferred_shape, stored_scale, eight_bit, class_names = None, None, False, None
    if kind == "csv":
        blocks, files, features, integer = _open_csv(entries, label_column, blocksize, storage_options)
    elif kind == "parquet":
        blocks, files, features, integer = _open_parquet(entries, label_column, blocksize, storage_options)
    else:
        blocks, files, features, integer, inferred_shape, stored_scale, eight_bit, class_names = _open_zarr(
            entries, label_column, blocksize, storage_options
        )
    if not features:
        raise InputError(f"{files[0]['path']}: no feature columns besides {label_column!r}")
    scale, integer_pixels = resolve_scale(scale, integer, stored_scale)
    return Dataset(
        blocks=blocks,
        feature_names=list(features),
        label_column=label_column,
        image_shape=resolve_image_shape(len(features), image_shape, inferred_shape),
        scale=scale,
        # The exact 8-bit path depends on what is stored, not on how the scale was
        # given: uint8 images always take it; other integers when the scale is auto
        # (8-bit pixels are then assumed, and every value is checked).
        integer_pixels=integer_pixels or eight_bit or (integer and pixels_8bit),
        files=files,
        storage_options=dict(storage_options or {}),
        fmt=kind,
        blocksize=blocksize,
        integer_values=bool(integer),
        class_names=class_names,
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
            reader = {"csv": _read_csv_block, "parquet": _read_parquet_block, "zarr": _read_zarr_block}[block.fmt]
            X, y = reader(block, storage_options, check_pixel_range)
    except InputError:
        raise
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise InputError(f"{block.url}: cannot read: {first_line(exc)}") from None
    if X.size and X.dtype.kind == "f":
        bad = ~np.isfinite(X)
        if bad.any():
            _, col = np.argwhere(bad)[0]
            raise InputError(
                f"{_where(block)}: feature {_feature(block, col)} has a missing, NaN or infinite value"
            )
    return X, y


def _where(block: Block) -> str:
    unit = {"csv": "bytes", "parquet": "row group", "zarr": "rows", "array": "rows", "dataframe": "partition"}[block.fmt]
    span = f"{block.start}" if block.fmt in ("parquet", "dataframe") else f"{block.start}-{block.stop}"
    return f"{block.url} ({unit} {span})"


def _feature(block: Block, col: int) -> str:
    if block.fmt in ("csv", "parquet"):
        header, label_column = block.options[0], block.options[1]
        return repr([c for c in header if c != label_column][col])
    if block.fmt == "dataframe":
        return repr(block.options[0][col])  # the feature columns
    return f"pixel{col}"
