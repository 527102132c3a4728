"""Responsibility-weighted statistics per (class, component), and their exact merge.

Pure numpy. For a set of rows with weights ``r`` (responsibilities, or 0/1 for hard
assignments), per (class, component): the mass ``W = sum_i r_i``, the weighted mean
and the weighted centered scatter. They merge like :class:`~daskgen.kernels.class_stats.ClassStats`
(the Chan, Golub & LeVeque update with real-valued weights instead of counts)::

    W = Wa + Wb;  d = mu_b - mu_a
    mu = mu_a + d * Wb / W
    S  = Sa + Sb + (Wa * Wb / W) d d^T

so chunk -> tree merge gives the same result for any chunking, up to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .class_stats import centered_scatter, union_classes, value_range

#: Responsibilities below this count as 0 in the weighted statistics (their rows would
#: change a component's mass by less than 1e-12 of a row each).
RESP_FLOOR = 1e-12


@dataclass
class WeightedStats:
    """Responsibility-weighted statistics of rows, per (class, component).

    Attributes
    ----------
    classes : ndarray (K,)
        Sorted class labels.
    counts : ndarray (K,), int64
        Rows per class.
    mass : ndarray (K, M), float64
        Sum of the responsibilities of each component.
    means : ndarray (K, M, D)
        Responsibility-weighted means (0 where the mass is 0).
    scatter : ndarray (K, M, D, D) or (K, M, D)
        Responsibility-weighted scatter about those means (full or diagonal).
    loglik : ndarray (K,)
        Sum over the rows of the score of the pass: ``log p(x | y)`` under the
        parameters of an E-step, ``-min_m |x - c_m|^2`` for a hard-assignment pass.
    worst_score, worst_x : ndarray (K, M) and (K, M, D)
        The M lowest-scoring rows of each class (ascending, ``+inf``-padded), in
        model units: where degenerate components are re-seeded.
    minimum, maximum : float
        Smallest and largest value seen (model units; NaN when empty).
    """

    classes: np.ndarray
    counts: np.ndarray
    mass: np.ndarray
    means: np.ndarray
    scatter: np.ndarray
    loglik: np.ndarray
    worst_score: np.ndarray
    worst_x: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    @property
    def n_components(self) -> int:
        return int(self.mass.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[2])

    @property
    def diagonal(self) -> bool:
        return self.scatter.ndim == 3

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def empty(cls, K: int, M: int, D: int, diagonal: bool, classes: np.ndarray) -> WeightedStats:
        return cls(
            classes=classes,
            counts=np.zeros(K, dtype=np.int64),
            mass=np.zeros((K, M)),
            means=np.zeros((K, M, D)),
            scatter=np.zeros((K, M, D) if diagonal else (K, M, D, D)),
            loglik=np.zeros(K),
            worst_score=np.full((K, M), np.inf),
            worst_x=np.zeros((K, M, D)),
        )

    def class_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class: the mean (K, D) and the scatter of all its rows, merged over components."""
        K, _, D = self.means.shape
        means = np.zeros((K, D))
        scatter = np.zeros((K, D) if self.diagonal else (K, D, D))
        for k in range(K):
            W = self.mass[k]
            tot = W.sum()
            if tot <= 0:
                continue
            means[k] = W @ self.means[k] / tot
            dev = self.means[k] - means[k]
            scatter[k] = self.scatter[k].sum(axis=0)
            if self.diagonal:
                scatter[k] += (W[:, None] * dev * dev).sum(axis=0)
            else:
                scatter[k] += (W[:, None] * dev).T @ dev
        return means, scatter


def weighted_moments(Xs: np.ndarray, r: np.ndarray, diagonal: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """Mass, weighted mean and weighted centered scatter of rows ``Xs`` with weights ``r``.

    Responsibilities below :data:`RESP_FLOOR` count as 0: in high dimension most rows
    belong to one component up to 1e-100 or less, and skipping the others makes the
    scatter cost about one syrk over the rows instead of one per component.
    """
    nz = np.flatnonzero(r >= RESP_FLOOR)
    D = Xs.shape[1]
    if len(nz) == 0:
        return 0.0, np.zeros(D), np.zeros(D if diagonal else (D, D))
    if len(nz) < len(r):
        Xs, r = Xs[nz], r[nz]
    W = float(r.sum())
    mu = (r @ Xs) / W
    C = Xs - mu
    # Second pass: remove the rounding error of the first mean (as chunk_stats does).
    correction = (r @ C) / W
    C -= correction
    mu += correction
    C *= np.sqrt(r)[:, None]
    S = np.einsum("ij,ij->j", C, C) if diagonal else centered_scatter(C)
    return W, mu, S


def keep_worst(score: np.ndarray, X: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
    """The M lowest scores (ascending, +inf-padded) and their rows."""
    D = X.shape[1]
    out_s, out_x = np.full(M, np.inf), np.zeros((M, D))
    if len(score):
        take = np.argsort(score, kind="stable")[:M]
        out_s[: len(take)] = score[take]
        out_x[: len(take)] = X[take]
    return out_s, out_x


def merge_worst(score_a: np.ndarray, x_a: np.ndarray, score_b: np.ndarray, x_b: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The M lowest of two sets of M worst rows (:func:`keep_worst`), ties to ``a``'s."""
    s = np.concatenate([score_a, score_b])
    x = np.concatenate([x_a, x_b])
    take = np.argsort(s, kind="stable")[: len(score_a)]
    return s[take], x[take]


def merge_weighted(parts: list[WeightedStats] | tuple[WeightedStats, ...]) -> WeightedStats:
    """Combine weighted statistics of disjoint row sets (the weighted Chan update).

    Exact up to float64 rounding, associative and commutative up to rounding; the
    inputs are not modified.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge_weighted needs at least one WeightedStats")
    M, D, diagonal = parts[0].n_components, parts[0].n_features, parts[0].diagonal
    for p in parts:
        if p.n_components != M or p.n_features != D or p.diagonal != diagonal:
            raise ValueError("cannot merge weighted statistics of different shapes")
    classes = union_classes(parts)
    out = WeightedStats.empty(len(classes), M, D, diagonal, classes)
    outer = None
    for p in parts:
        if not len(p.classes):
            continue
        idx = np.searchsorted(classes, p.classes)
        for j, k in enumerate(idx):
            out.counts[k] += p.counts[j]
            out.loglik[k] += p.loglik[j]
            for m in range(M):
                wb = p.mass[j, m]
                if wb <= 0:
                    continue
                wa = out.mass[k, m]
                w = wa + wb
                delta = p.means[j, m] - out.means[k, m]
                out.means[k, m] += delta * (wb / w)
                if wa > 0:
                    out.scatter[k, m] += p.scatter[j, m]
                    c = wa * wb / w
                    if diagonal:
                        out.scatter[k, m] += c * delta * delta
                    else:  # rank-one update through one reused buffer (numpy releases the GIL)
                        if outer is None:
                            outer = np.empty((D, D))
                        np.multiply.outer(c * delta, delta, out=outer)
                        out.scatter[k, m] += outer
                else:
                    out.scatter[k, m] = p.scatter[j, m]
                out.mass[k, m] = w
            out.worst_score[k], out.worst_x[k] = merge_worst(out.worst_score[k], out.worst_x[k],
                                                             p.worst_score[j], p.worst_x[j])
    out.minimum, out.maximum = value_range(parts)
    return out

