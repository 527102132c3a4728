"""Small helpers shared by the tests."""

from __future__ import annotations


def write_csv(path, X, y, label_column="label", label_position=0, names=None):
    """A CSV with the label column at ``label_position`` (full float precision)."""
    import pandas as pd

    names = names or [f"pixel{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=names)
    df.insert(label_position, label_column, y)
    df.to_csv(path, index=False)
    return str(path)
