"""Arrow tables (CSV and Parquet reads) as checked numpy rows, and the column messages both formats give.

``table_to_xy`` turns a table into ``(X (n, D), y (n,))``, refusing missing,
non-numeric and (for 8-bit pixels) out-of-range values with a message naming the
column; ``first_diff`` and ``preview`` describe headers that disagree.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .blocks import NotEightBitError, outside_pixel_range


def first_diff(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"column {i}: {x!r} vs {y!r}"
    return f"column {min(len(a), len(b))}"


def preview(cols: list[str], n: int = 4) -> str:
    shown = ", ".join(cols[:n])
    return shown + (f", … ({len(cols)} in all)" if len(cols) > n else "")


def table_to_xy(table, header: list[str], label_column: str, where: str, pixels: bool = False):
    """(X, y) from an Arrow table: X (n, D), y (n,) labels.

    X is a Fortran-ordered view (filled column by column, contiguous writes) of
    ``uint8`` when ``pixels`` (8-bit images: every value checked to lie in 0..255)
    or of float64 otherwise; ``chunk_stats`` converts rows to float64 per class.
    """
    import pyarrow.types as pat

    labels = table.column(label_column)
    if labels.null_count:
        raise InputError(f"{where}: column {label_column!r}: {labels.null_count} missing label(s)")
    y = column_values(labels)
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
                Xt[j] = column_values(col)
                continue
            import pyarrow.compute as pc  # here: importing it costs ~0.2 s

            lo, hi = (v.as_py() for v in pc.min_max(col).values())
            if lo is not None and (lo < 0 or hi > 255):
                raise NotEightBitError(outside_pixel_range(where, repr(c), lo if lo < 0 else hi))
        Xt[j] = column_values(col)
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


def column_values(col) -> np.ndarray:
    """A chunked Arrow column as one numpy array (its chunks concatenated in C++)."""
    return _chunk_to_numpy(col.combine_chunks())


def _first_bad(col) -> str:
    for value in col.to_pylist():
        try:
            float(value)
        except (TypeError, ValueError):
            return str(value)
    return str(col[0])

