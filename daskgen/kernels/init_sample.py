"""The initial sample of EM: per class, the rows with the smallest hash keys.

Pure numpy. A row's key is a function of its values and the seed only, so the sample
(at most ``size`` rows per class) is the same whatever the chunking and the order of
the merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .class_stats import as_model_units, class_rows, union_classes, value_range

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def splitmix64(h: np.ndarray) -> np.ndarray:
    """The SplitMix64 output function of state ``h + gamma`` (uint64, elementwise)."""
    with np.errstate(over="ignore"):
        h = h + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * _MIX1
        h = (h ^ (h >> np.uint64(27))) * _MIX2
        return h ^ (h >> np.uint64(31))


def row_keys(X: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 key per row, a function of the row's values and ``seed`` only.

    The values are hashed as float64 bits (so uint8 and float64 pixels give the same
    keys), each value's bits mixed by splitmix64 first — the bits of small integers
    are zero below the top ~12 mantissa bits, and a product with them mod 2^64 would
    keep only those — then a random linear form mod 2^64 with odd coefficients and a
    splitmix64 finaliser. Equal rows get equal keys; distinct rows collide with
    probability ~2^-64.
    """
    D = X.shape[1]
    coef = np.random.default_rng([int(seed), 0x5EED]).integers(0, 2**63, size=D, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    h = np.full(X.shape[0], splitmix64(np.array([seed], dtype=np.uint64))[0], dtype=np.uint64)
    bits = np.ascontiguousarray(X, dtype=np.float64).view(np.uint64)
    step = max(1, 2**22 // max(D, 1))
    with np.errstate(over="ignore"):
        for a in range(0, X.shape[0], step):
            h[a : a + step] += (splitmix64(bits[a : a + step]) * coef).sum(axis=1, dtype=np.uint64)
    return splitmix64(h)


@dataclass
class InitSample:
    """Per class: the rows with the smallest keys (model units), and the class's counts and range."""

    classes: np.ndarray
    counts: np.ndarray
    keys: list[np.ndarray]
    rows: list[np.ndarray]
    size: int
    minimum: float = np.nan
    maximum: float = np.nan


def sample_chunk(X: np.ndarray, y: np.ndarray, seed: int, size: int, scale: float = 1.0) -> InitSample:
    """The ``size`` rows of each class with the smallest :func:`row_keys` in this chunk."""
    y = np.asarray(y)
    X = np.asarray(X)
    _, rows, present = class_rows(y, None)
    keys = row_keys(X, seed) if len(y) else np.zeros(0, np.uint64)
    out_k, out_x = [], []
    for idx in rows:
        take = idx[np.argsort(keys[idx], kind="stable")[:size]]
        out_k.append(keys[take])
        out_x.append(as_model_units(X, take, scale))
    lo = float(X.min()) * scale if X.size else np.nan
    hi = float(X.max()) * scale if X.size else np.nan
    counts = np.array([len(i) for i in rows], dtype=np.int64)
    return InitSample(present, counts, out_k, out_x, int(size), lo, hi)


def merge_samples(parts: list[InitSample]) -> InitSample:
    """Union of chunk samples, keeping per class the ``size`` rows with the smallest keys."""
    parts = list(parts)
    classes = union_classes(parts)
    size = parts[0].size
    counts = np.zeros(len(classes), dtype=np.int64)
    keys: list[list] = [[] for _ in classes]
    rows: list[list] = [[] for _ in classes]
    for p in parts:
        for j, k in enumerate(np.searchsorted(classes, p.classes)):
            counts[k] += p.counts[j]
            keys[k].append(p.keys[j])
            rows[k].append(p.rows[j])
    out_k, out_x = [], []
    for k in range(len(classes)):
        kk = np.concatenate(keys[k])
        xx = np.concatenate(rows[k])
        take = np.argsort(kk, kind="stable")[:size]
        out_k.append(kk[take])
        out_x.append(xx[take])
    return InitSample(classes, counts, out_k, out_x, size, *value_range(parts))

