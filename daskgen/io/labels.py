"""Class labels as numpy arrays: the one conversion every reader and writer uses.

Labels are numbers or text. Read back from any source (CSV, Parquet, Zarr, numpy,
Dask), text becomes a plain ``str`` array (Zarr 3 returns numpy's variable-width
StringDType, which sorts and pickles less well, and which numpy 2 cannot cast to
``str`` directly); widened for a store, integers and bools become int64 and other
numbers float64, the dtypes Zarr v3 keeps everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_labels(values: Any, *, widen: bool = False) -> np.ndarray:
    """``values`` as a numpy array of labels: text as ``str`` (bytes decoded as UTF-8),
    numbers as they are, or with ``widen`` as int64 (integers, bools) or float64."""
    values = np.asarray(values)
    if values.dtype.kind in "OUST":
        text = [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel().tolist()]
        return np.array(text, dtype=str).reshape(values.shape)
    if widen and values.dtype.kind in "iub":
        return values.astype(np.int64)
    if widen and values.dtype.kind == "f":
        return values.astype(np.float64)
    return values
