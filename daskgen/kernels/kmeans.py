"""Initial centres of a per-class mixture: k-means++ seeding and Lloyd iterations on a sample.

Pure numpy. Every class's centres come from its own stream,
``SeedSequence(seed, spawn_key=(k,))``, so they do not depend on the other classes.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .class_stats import plain_label
from .init_sample import InitSample

log = logging.getLogger("daskgen")

INITS = ("kmeans++", "random")


def sq_distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, M); rows of C with NaN (unused centres) are +inf."""
    d2 = (X * X).sum(1)[:, None] - 2.0 * X @ np.nan_to_num(C).T + (np.nan_to_num(C) ** 2).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    d2[:, np.isnan(C).any(axis=1)] = np.inf
    return d2


def kmeans_plusplus(X: np.ndarray, M: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (2 + log M candidates per step, as scikit-learn); (M', D), M' <= M.

    Fewer than M centres when X has fewer than M distinct rows.
    """
    n = len(X)
    X = np.asarray(X, dtype=np.float64)
    norms = np.einsum("ij,ij->i", X, X)
    first = int(rng.integers(n))
    centers = [X[first]]
    closest = ((X - X[first]) ** 2).sum(1)
    trials = 2 + int(math.log(M))
    for _ in range(1, M):
        total = closest.sum()
        if not total > 0:
            break  # every row coincides with a centre
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        cand = np.minimum(cand, n - 1)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one (trials, D) x (D, n) product, not an
        # (n, trials, D) difference array; a candidate's distance to itself is exactly 0.
        d = norms[None, :] - 2.0 * (X[cand] @ X.T) + norms[cand][:, None]
        np.maximum(d, 0.0, out=d)
        d[np.arange(len(cand)), cand] = 0.0
        pots = np.minimum(closest[None, :], d).sum(1)
        best = int(np.argmin(pots))
        centers.append(X[cand[best]])
        closest = np.minimum(closest, d[best])
    return np.array(centers)


def lloyd(X: np.ndarray, centers: np.ndarray, n_iter: int) -> np.ndarray:
    """Lloyd's k-means iterations from ``centers``; an emptied centre moves to the farthest row."""
    C = centers.copy()
    last = None
    for _ in range(n_iter):
        d2 = sq_distances(X, C)
        nearest = np.argmin(d2, axis=1)
        if last is not None and np.array_equal(nearest, last):
            break
        last = nearest
        for m in range(len(C)):
            members = nearest == m
            if members.any():
                C[m] = X[members].mean(0)
            else:
                far = int(np.argmax(d2[np.arange(len(X)), nearest]))
                C[m] = X[far]
                nearest[far] = m
    return C


def init_centers(sample: InitSample, M: int, method: str, seed: int, lloyd_iter: int = 30) -> np.ndarray:
    """Initial centres (K, M, D) from the per-class sample; NaN rows where a class has < M distinct rows."""
    if method not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {method!r}")
    D = sample.rows[0].shape[1] if sample.rows else 0
    out = np.full((len(sample.classes), M, D), np.nan)
    for k, Xk in enumerate(sample.rows):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(k,))))
        if method == "kmeans++":
            C = kmeans_plusplus(Xk, M, rng)
            C = lloyd(Xk, C, lloyd_iter)
        else:
            uniq = np.unique(Xk, axis=0)
            C = uniq[rng.choice(len(uniq), size=min(M, len(uniq)), replace=False)]
        if len(C) < M:
            log.warning("class %r: only %d distinct rows in the initial sample for %d components; %d dropped",
                        plain_label(sample.classes[k]), len(C), M, M - len(C))
        out[k, : len(C)] = C
    return out
