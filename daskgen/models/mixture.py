"""Per-class Gaussian mixtures fitted by EM — pure numpy, no Dask.

The class-conditional density of class y is a mixture of M Gaussians,
``p(x | y) = sum_m w[y, m] N(x; mu[y, m], Sigma[y, m])``, and the class prior is
``p(y) = n_y / n`` as in :class:`~daskgen.models.gaussian.GaussianClassModel`. Labels are
known, so EM runs independently per class, but one pass over the data serves
every class at once.

Responsibility-weighted statistics
----------------------------------
An E-step turns each row ``x`` of class ``y`` into responsibilities ``r[m]`` (a
log-sum-exp, so nothing underflows) and a set of rows into, per (class,
component), the weighted statistic of :class:`WeightedStats`:

* ``mass``     ``W = sum_i r_i`` (the responsibility-weighted count),
* ``means``    ``mu = sum_i r_i x_i / W``,
* ``scatter``  the centered scatter ``S = sum_i r_i (x_i - mu)(x_i - mu)^T``.

They merge exactly like :class:`~daskgen.kernels.class_stats.ClassStats` (the Chan, Golub &
LeVeque update with real-valued weights instead of counts)::

    W = Wa + Wb;  d = mu_b - mu_a
    mu = mu_a + d * Wb / W
    S  = Sa + Sb + (Wa * Wb / W) d d^T

so chunk -> tree merge -> M-step gives the same result for any chunking, up to
float64 rounding. The M-step is scikit-learn's ``GaussianMixture`` M-step:
``w = W / n_y``, ``Sigma = S / W + reg_covar * I`` (maximum-likelihood
covariances: with one component, ``Sigma`` is the single-Gaussian fit's
covariance times ``(n - 1) / n``, plus ``reg_covar``).

Initialisation
--------------
From a uniform sample of at most ``init_sample`` rows per class, chosen by a
hash of each row's values (the rows with the smallest keys; the same sample
whatever the chunking): ``kmeans++`` runs k-means++ seeding then Lloyd's
iterations on the sample; ``random`` takes M distinct sample rows. One pass over
all the data then assigns every row to its nearest centre and the M-step of
those hard assignments gives the initial weights, means and covariances (as
scikit-learn's k-means initialisation does).

Degenerate components
---------------------
A component whose responsibility mass falls below ``min_mass`` rows (empty), whose
spread collapses to a point (its mean variance below ``collapse_rtol`` times its
class's), or whose covariance is not positive definite, is re-seeded at the
worst-explained row of its class (lowest log-likelihood in the last pass) with
the class's covariance, at most ``max_reseeds`` times; after that it is dropped
(weight 0; its parameters stay finite). Every event is logged on the
``daskgen`` logger and recorded in the model's ``config["em"]["events"]``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError
from scipy.linalg.blas import dtrmm
from scipy.linalg.lapack import dpotrf, dtrtri

from .._blas import one_blas_thread
from ..errors import InputError, ModelError, first_line
from ..kernels.class_stats import _centered_scatter, _union_classes, value_range
from .gaussian import BayesClassifier, ClassFactor, Sampler, _fingerprint, factor_covariance, logsumexp_rows

log = logging.getLogger("daskgen")

INITS = ("kmeans++", "random")
#: Responsibilities below this count as 0 in the weighted statistics (their rows would
#: change a component's mass by less than 1e-12 of a row each).
RESP_FLOOR = 1e-12
LOG_2PI = math.log(2 * math.pi)
#: Defaults shared by the in-memory and the distributed EM.
DEFAULTS: dict[str, Any] = {
    "covariance": "full",
    "reg_covar": 1e-6,
    "max_iter": 100,
    "tol": 1e-3,
    "init": "kmeans++",
    "seed": 0,
    "init_sample": 10_000,
    "lloyd_iter": 30,
    "min_mass": 2.0,
    "collapse_rtol": 1e-6,
    "max_reseeds": 3,
    "prior_rows": 0.0,
}


# ============================================================================ statistics
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


def _weighted_moments(Xs: np.ndarray, r: np.ndarray, diagonal: bool) -> tuple[float, np.ndarray, np.ndarray]:
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
    S = np.einsum("ij,ij->j", C, C) if diagonal else _centered_scatter(C)
    return W, mu, S


def _keep_worst(score: np.ndarray, X: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
    """The M lowest scores (ascending, +inf-padded) and their rows."""
    D = X.shape[1]
    out_s, out_x = np.full(M, np.inf), np.zeros((M, D))
    if len(score):
        take = np.argsort(score, kind="stable")[:M]
        out_s[: len(take)] = score[take]
        out_x[: len(take)] = X[take]
    return out_s, out_x


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
    classes = _union_classes(parts)
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
            s = np.concatenate([out.worst_score[k], p.worst_score[j]])
            x = np.concatenate([out.worst_x[k], p.worst_x[j]])
            take = np.argsort(s, kind="stable")[:M]
            out.worst_score[k], out.worst_x[k] = s[take], x[take]
    out.minimum, out.maximum = value_range(parts)
    return out


# ============================================================================ parameters
@dataclass
class Components:
    """What an E-step needs: per (class, component) log-weight, mean and precision factor.

    ``prec_chol[k, m]`` is the upper-triangular ``P`` with ``P P^T = Sigma^-1``
    (scikit-learn's ``precisions_cholesky_``), or ``1 / sqrt(variances)`` for
    diagonal covariances; ``log_det[k, m]`` is ``log det P``. Dropped components
    have ``log_weights = -inf`` and are skipped.
    """

    classes: np.ndarray
    log_weights: np.ndarray  # (K, M)
    means: np.ndarray  # (K, M, D)
    prec_chol: np.ndarray  # (K, M, D, D) or (K, M, D)
    log_det: np.ndarray  # (K, M)

    @property
    def diagonal(self) -> bool:
        return self.prec_chol.ndim == 3

    @classmethod
    def from_covariances(cls, classes, weights, means, covariances) -> Components:
        K, M = means.shape[:2]
        prec = np.empty_like(covariances, dtype=np.float64)
        log_det = np.empty((K, M))
        with one_blas_thread():
            factors = _factor_all([covariances[k, m] for k in range(K) for m in range(M)])
        for i, f in enumerate(factors):
            if f is None:
                raise ModelError(f"the covariance of class {classes[i // M]!r} component {i % M} is not positive definite")
            prec[i // M, i % M], log_det[i // M, i % M] = f
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        return cls(np.asarray(classes), log_w, np.asarray(means, dtype=np.float64), prec, log_det)

    def component_log_prob(self, Xs: np.ndarray, k: int) -> np.ndarray:
        """``log w[k, m] + log N(x; mu[k, m], Sigma[k, m])`` for rows ``Xs`` (float64), shape (n, M)."""
        n, D = Xs.shape
        M = self.means.shape[1]
        out = np.full((n, M), -np.inf)
        trmm = not _threaded_worker()
        for m in range(M):
            if not np.isfinite(self.log_weights[k, m]):
                continue
            C = Xs - self.means[k, m]  # C-contiguous (n, D)
            if self.diagonal:
                C *= self.prec_chol[k, m]
            elif n and trmm:
                # C := C @ P with P upper triangular, in place (trmm: half the flops of gemm);
                # C.T is the Fortran-ordered (D, n) view, so P^T C^T overwrites C.
                dtrmm(1.0, self.prec_chol[k, m], C.T, side=0, lower=0, trans_a=1, overwrite_b=1)
            elif n:
                C = C @ self.prec_chol[k, m]
            maha = np.einsum("ij,ij->i", C, C)
            out[:, m] = self.log_weights[k, m] + self.log_det[k, m] - 0.5 * (D * LOG_2PI + maha)
        return out


def _threaded_worker() -> bool:
    """Whether this runs in a Dask worker with several threads.

    scipy's BLAS wrappers (trmm) hold the GIL, which would serialise the worker's
    tasks; numpy's matmul releases it. Elsewhere (a worker process per core, or in
    memory) trmm's half flops win.
    """
    try:
        from distributed import get_worker

        return get_worker().state.nthreads > 1
    except (ImportError, ValueError, AttributeError):
        return False


def precision_cholesky(cov: np.ndarray) -> tuple[np.ndarray, float]:
    """(P, log det P) with P upper triangular, P P^T = inv(cov); raises LinAlgError if not PD."""
    if cov.ndim == 1:
        if not (np.all(np.isfinite(cov)) and np.all(cov > 0)):
            raise LinAlgError("variance not positive")
        p = 1.0 / np.sqrt(cov)
        return p, float(np.log(p).sum())
    if not np.all(np.isfinite(cov)):
        raise LinAlgError("covariance not finite")
    # LAPACK directly on a Fortran view of the symmetric matrix: its upper triangle
    # factor U (cov = U^T U) is the transposed lower factor L, and inv(U) is P.
    U, info = dpotrf(cov.T, lower=0, clean=1, overwrite_a=0)
    if info != 0:
        raise LinAlgError("covariance not positive definite")
    P, info = dtrtri(U, lower=0, overwrite_c=1)
    if info != 0:
        raise LinAlgError("covariance not positive definite")
    return np.ascontiguousarray(P), float(np.log(np.diagonal(P)).sum())


def _factor_all(covs: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
    """:func:`precision_cholesky` of each covariance (None where it is not positive definite)."""

    def one(cov):
        try:
            return precision_cholesky(cov)
        except (LinAlgError, ValueError):
            return None

    # One after the other: scipy's LAPACK wrappers hold the GIL, so threads would not help.
    return [one(c) for c in covs]


# ============================================================================ one pass, per chunk
def _as_model_units(X: np.ndarray, rows: np.ndarray, scale: float) -> np.ndarray:
    """Rows ``rows`` of ``X`` as a new float64 C-ordered array, times ``scale``. Indexing
    copies already, so float64 rows are scaled in that copy (no second one)."""
    Xs = np.asarray(X)[rows].astype(np.float64, order="C", copy=False)
    if scale != 1.0:
        Xs *= scale
    return Xs


def _class_slices(y: np.ndarray, classes: np.ndarray | None):
    """(positions in ``classes``, row indices per class, the classes present) of labels ``y``."""
    present, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(present)))
    rows, start = [], 0
    for stop in bounds:
        rows.append(order[start:stop])
        start = stop
    if classes is None:
        return np.arange(len(present)), rows, present
    pos = np.searchsorted(classes, present)
    ok = (pos < len(classes)) & (classes[np.minimum(pos, len(classes) - 1)] == present)
    if not ok.all():
        missing = present[~ok].tolist()
        raise InputError(f"labels {missing[:5]} are not among the model's classes")
    return pos, rows, present


def estep_stats(X: np.ndarray, y: np.ndarray, comps: Components, scale: float = 1.0) -> WeightedStats:
    """E-step of one chunk: responsibilities under ``comps`` and their weighted statistics.

    ``X`` (n, D) in pixel units (any real dtype), ``y`` (n,) labels; rows are scaled to
    model units per class. ``loglik`` sums ``log p(x | y)``.
    """
    y = np.asarray(y)
    _, M, D = comps.means.shape
    pos, rows, present = _class_slices(y, comps.classes)
    out = WeightedStats.empty(len(present), M, D, comps.diagonal, present)
    lo = hi = np.nan
    for j, (k, idx) in enumerate(zip(pos, rows)):
        Xs = _as_model_units(X, idx, scale)
        lo, hi = np.fmin(lo, Xs.min()), np.fmax(hi, Xs.max())
        lp = comps.component_log_prob(Xs, k)
        ll = logsumexp_rows(lp)
        with np.errstate(invalid="ignore"):
            resp = np.exp(lp - ll[:, None])
        resp[~np.isfinite(ll)] = 0.0
        out.counts[j] = len(idx)
        out.loglik[j] = ll.sum()
        for m in range(M):
            out.mass[j, m], out.means[j, m], out.scatter[j, m] = _weighted_moments(Xs, resp[:, m], comps.diagonal)
        out.worst_score[j], out.worst_x[j] = _keep_worst(ll, Xs, M)
    out.minimum, out.maximum = float(lo), float(hi)
    return out


def hard_stats(X: np.ndarray, y: np.ndarray, classes: np.ndarray, centers: np.ndarray, diagonal: bool,
               scale: float = 1.0) -> WeightedStats:
    """Statistics of hard assignments to the nearest of ``centers`` (K, M, D) (NaN rows: unused).

    The score of a row is ``-min_m |x - c_m|^2``: the farthest rows are the worst.
    """
    y = np.asarray(y)
    _, M, D = centers.shape
    pos, rows, present = _class_slices(y, classes)
    out = WeightedStats.empty(len(present), M, D, diagonal, present)
    lo = hi = np.nan
    for j, (k, idx) in enumerate(zip(pos, rows)):
        Xs = _as_model_units(X, idx, scale)
        lo, hi = np.fmin(lo, Xs.min()), np.fmax(hi, Xs.max())
        d2 = _sq_distances(Xs, centers[k])
        nearest = np.argmin(d2, axis=1)
        score = -d2[np.arange(len(Xs)), nearest]
        out.counts[j] = len(idx)
        out.loglik[j] = score.sum()
        for m in range(M):
            r = (nearest == m).astype(np.float64)
            out.mass[j, m], out.means[j, m], out.scatter[j, m] = _weighted_moments(Xs, r, diagonal)
        out.worst_score[j], out.worst_x[j] = _keep_worst(score, Xs, M)
    out.minimum, out.maximum = float(lo), float(hi)
    return out


def _sq_distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, M); rows of C with NaN (unused centres) are +inf."""
    d2 = (X * X).sum(1)[:, None] - 2.0 * X @ np.nan_to_num(C).T + (np.nan_to_num(C) ** 2).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    d2[:, np.isnan(C).any(axis=1)] = np.inf
    return d2


# ============================================================================ the initial sample
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * _MIX1
        h = (h ^ (h >> np.uint64(27))) * _MIX2
        return h ^ (h >> np.uint64(31))


def row_keys(X: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 key per row, a function of the row's values and ``seed`` only.

    The values are hashed as float64 bits (so uint8 and float64 pixels give the same
    keys): a random linear form mod 2^64 with odd coefficients, then a splitmix64
    finaliser. Equal rows get equal keys; distinct rows collide with probability ~2^-64.
    """
    D = X.shape[1]
    coef = np.random.default_rng([int(seed), 0x5EED]).integers(0, 2**63, size=D, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    h = np.full(X.shape[0], _splitmix(np.array([seed], dtype=np.uint64))[0], dtype=np.uint64)
    bits = np.ascontiguousarray(X, dtype=np.float64).view(np.uint64)
    step = max(1, 2**22 // max(D, 1))
    with np.errstate(over="ignore"):
        for a in range(0, X.shape[0], step):
            h[a : a + step] += (bits[a : a + step] * coef).sum(axis=1, dtype=np.uint64)
    return _splitmix(h)


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
    _, rows, present = _class_slices(y, None)
    keys = row_keys(X, seed) if len(y) else np.zeros(0, np.uint64)
    out_k, out_x = [], []
    for idx in rows:
        take = idx[np.argsort(keys[idx], kind="stable")[:size]]
        out_k.append(keys[take])
        out_x.append(_as_model_units(X, take, scale))
    lo = float(X.min()) * scale if X.size else np.nan
    hi = float(X.max()) * scale if X.size else np.nan
    counts = np.array([len(i) for i in rows], dtype=np.int64)
    return InitSample(present, counts, out_k, out_x, int(size), lo, hi)


def merge_samples(parts: list[InitSample]) -> InitSample:
    """Union of chunk samples, keeping per class the ``size`` rows with the smallest keys."""
    parts = list(parts)
    classes = _union_classes(parts)
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


# ============================================================================ k-means on a sample
def kmeans_plusplus(X: np.ndarray, M: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (2 + log M candidates per step, as scikit-learn); (M', D), M' <= M.

    Fewer than M centres when X has fewer than M distinct rows.
    """
    n = len(X)
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
        d = ((X[None, :, :] - X[cand][:, None, :]) ** 2).sum(2) if n * trials * X.shape[1] < 2**24 else np.stack(
            [((X - X[c]) ** 2).sum(1) for c in cand]
        )
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
        d2 = _sq_distances(X, C)
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
        raise InputError(f"init must be one of {', '.join(INITS)}, not {method!r}")
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
                        _show(sample.classes[k]), len(C), M, M - len(C))
        out[k, : len(C)] = C
    return out


def _show(label: Any) -> Any:
    return label.item() if hasattr(label, "item") else label


# ============================================================================ M-step
@dataclass
class Params:
    """Mixture parameters per (class, component), plus bookkeeping of degenerate components."""

    classes: np.ndarray
    weights: np.ndarray  # (K, M), rows sum to 1, 0 for dropped components
    means: np.ndarray  # (K, M, D)
    covariances: np.ndarray  # (K, M, D, D) or (K, M, D)
    reseeds: np.ndarray  # (K, M) int: re-seeds so far
    prec_chol: np.ndarray | None = None  # computed by m_step along with the covariances
    log_det: np.ndarray | None = None

    @property
    def dropped(self) -> np.ndarray:
        return self.weights == 0

    def components(self) -> Components:
        if self.prec_chol is None:
            return Components.from_covariances(self.classes, self.weights, self.means, self.covariances)
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights)
        return Components(np.asarray(self.classes), log_w, self.means, self.prec_chol, self.log_det)


def _add_reg(cov: np.ndarray, reg: float) -> np.ndarray:
    cov = cov.copy()
    if cov.ndim == 1:
        cov += reg
    else:
        cov.flat[:: cov.shape[0] + 1] += reg
    return cov


def m_step(
    stats: WeightedStats,
    reg_covar: float,
    previous: Params | None = None,
    *,
    min_mass: float = DEFAULTS["min_mass"],
    collapse_rtol: float = DEFAULTS["collapse_rtol"],
    max_reseeds: int = DEFAULTS["max_reseeds"],
    prior_rows: float = DEFAULTS["prior_rows"],
    dropped: np.ndarray | None = None,
) -> tuple[Params, list[dict[str, Any]]]:
    """Weights, means and covariances from weighted statistics, with degenerate components handled.

    Returns the parameters and the list of events (re-seeded or dropped components).
    ``dropped`` (K, M) marks components that are out already (weight 0 stays 0).

    ``prior_rows`` = nu > 0 puts an inverse-Wishart prior centred on the class's
    covariance on every component (the MAP M-step): ``Sigma = (S + nu * C_y) / (W + nu)
    + reg_covar * I`` with ``C_y`` the class's maximum-likelihood covariance, i.e. each
    component borrows nu rows' worth of its class's covariance (a component estimated
    from few rows in many dimensions otherwise underestimates its small variances).
    """
    K, M, D = stats.means.shape
    diagonal = stats.diagonal
    reseeds = previous.reseeds.copy() if previous is not None else np.zeros((K, M), dtype=np.int64)
    if dropped is None:
        dropped = previous.dropped.copy() if previous is not None else np.zeros((K, M), dtype=bool)
    class_means, class_scatter = stats.class_totals()
    weights = np.zeros((K, M))
    means = np.zeros((K, M, D))
    covs = np.zeros((K, M, D) if diagonal else (K, M, D, D))
    prec = np.zeros_like(covs)
    log_det = np.zeros((K, M))
    events: list[dict[str, Any]] = []
    # Covariances first, then every factorization.
    class_ml = [class_scatter[k] / max(float(stats.mass[k].sum()), 1e-300) for k in range(K)]
    class_covs = [_add_reg(c, reg_covar) for c in class_ml]
    class_vars = [float(np.trace(c) if not diagonal else c.sum()) / D for c in class_covs]
    problems: dict[tuple[int, int], str] = {}
    candidates: dict[tuple[int, int], np.ndarray] = {}
    for k in range(K):
        for m in range(M):
            if dropped[k, m]:
                continue
            W = float(stats.mass[k, m])
            if not W >= min_mass:
                problems[k, m] = f"empty (responsibility mass {W:.3g} < {min_mass:g} rows)"
                continue
            S = stats.scatter[k, m] / W
            var = float(np.trace(S) if not diagonal else S.sum()) / D
            if not np.isfinite(var) or var <= collapse_rtol * class_vars[k]:
                problems[k, m] = f"collapsed (variance {var:.3g} vs {class_vars[k]:.3g} for the class)"
                continue
            if prior_rows > 0:
                S = (stats.scatter[k, m] + prior_rows * class_ml[k]) / (W + prior_rows)
            candidates[k, m] = _add_reg(S, reg_covar)
    factors = _factor_all([*class_covs, *candidates.values()])
    class_factors, comp_factors = factors[:K], dict(zip(candidates, factors[K:]))
    for k in range(K):
        class_cov, class_prec = class_covs[k], class_factors[k]
        if class_prec is None:  # only with non-finite statistics
            class_cov = _add_reg(np.ones(D) if diagonal else np.eye(D), reg_covar)
            class_prec = precision_cholesky(class_cov)
        worst = [x for s, x in zip(stats.worst_score[k], stats.worst_x[k]) if np.isfinite(s)]
        fresh: list[int] = []
        for m in range(M):
            if dropped[k, m]:
                means[k, m], covs[k, m] = class_means[k], class_cov
                prec[k, m], log_det[k, m] = class_prec
                continue
            problem = problems.get((k, m))
            factor = comp_factors.get((k, m))
            if problem is None and factor is None:
                problem = "singular (covariance not positive definite)"
            if problem is None:
                weights[k, m] = stats.mass[k, m]
                means[k, m], covs[k, m] = stats.means[k, m], candidates[k, m]
                prec[k, m], log_det[k, m] = factor
                continue
            event = {"class": _show(stats.classes[k]), "component": m, "problem": problem}
            if reseeds[k, m] < max_reseeds and len(worst) > len(fresh):
                reseeds[k, m] += 1
                means[k, m], covs[k, m] = worst[len(fresh)], class_cov
                prec[k, m], log_det[k, m] = class_prec
                fresh.append(m)
                event["action"] = "re-seeded at the worst-explained row"
            else:
                dropped[k, m] = True
                means[k, m], covs[k, m] = class_means[k], class_cov
                prec[k, m], log_det[k, m] = class_prec
                event["action"] = "dropped"
            log.warning("class %r component %d %s: %s", event["class"], m, problem, event["action"])
            events.append(event)
        if not (weights[k] > 0).any() and not fresh:
            # Nothing left for this class: keep one component on the class's own Gaussian.
            m = int(np.argmax(stats.mass[k])) if stats.mass[k].any() else 0
            dropped[k, m] = False
            means[k, m], covs[k, m] = class_means[k], class_cov
            prec[k, m], log_det[k, m] = class_prec
            weights[k, m] = 1.0
            log.warning("class %r: every component degenerated; component %d is the class's Gaussian", _show(stats.classes[k]), m)
            events.append({"class": _show(stats.classes[k]), "component": m, "problem": "all components degenerate",
                           "action": "reset to the class's Gaussian"})
        total = weights[k].sum()
        weights[k] = weights[k] / total if total > 0 else 0.0
        if fresh:
            share = 1.0 / (M - int(dropped[k].sum()))
            weights[k] *= 1.0 - share * len(fresh)
            weights[k, fresh] = share
    return Params(stats.classes, weights, means, covs, reseeds, prec, log_det), events


# ============================================================================ the driver
@dataclass
class Passes:
    """How one pass over the data is run: in memory (here) or on Dask (``daskgen.em``).

    Each method returns the merged result of a pass over every chunk.
    """

    sample: Callable[[int, int], InitSample]
    hard: Callable[[np.ndarray, np.ndarray, bool], WeightedStats]
    estep: Callable[[Components], WeightedStats]


def run_em(
    passes: Passes,
    n_components: int,
    *,
    covariance: str = DEFAULTS["covariance"],
    reg_covar: float = DEFAULTS["reg_covar"],
    max_iter: int = DEFAULTS["max_iter"],
    tol: float = DEFAULTS["tol"],
    init: str = DEFAULTS["init"],
    seed: int = DEFAULTS["seed"],
    init_sample: int = DEFAULTS["init_sample"],
    init_params: dict[str, np.ndarray] | None = None,
    classes: np.ndarray | None = None,
    min_mass: float = DEFAULTS["min_mass"],
    collapse_rtol: float = DEFAULTS["collapse_rtol"],
    max_reseeds: int = DEFAULTS["max_reseeds"],
    prior_rows: float = DEFAULTS["prior_rows"],
    lloyd_iter: int = DEFAULTS["lloyd_iter"],
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Params, WeightedStats, dict[str, Any]]:
    """EM from an initialisation to convergence; returns (parameters, last statistics, summary).

    Iteration t runs one E-step pass under the parameters of iteration t - 1 (its
    mean log-likelihood is ``summary["log_likelihood"][t - 1]``, scikit-learn's
    ``lower_bounds_``) and then the M-step; it stops after ``max_iter`` iterations or
    when the mean log-likelihood changed by less than ``tol`` (not counting
    iterations that re-seeded a component).
    """
    check_options(n_components, covariance, reg_covar, max_iter, tol, init)
    if not prior_rows >= 0:
        raise InputError(f"prior_rows must be >= 0, got {prior_rows}")
    diagonal = covariance == "diag"
    M = int(n_components)
    events: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"init": init if init_params is None else "given", "seed": int(seed)}
    started = time.perf_counter()
    if init_params is not None:
        params = _given_params(init_params, classes, M, diagonal)
        data_range = (np.nan, np.nan)
    else:
        sample = passes.sample(int(seed), int(init_sample))
        _check_counts(sample.classes, sample.counts, M)
        centers = init_centers(sample, M, init, int(seed), lloyd_iter)
        stats = passes.hard(sample.classes, centers, diagonal)
        unused = np.isnan(centers).any(axis=2)
        with one_blas_thread():  # many small factorizations: threads only contend
            params, ev = m_step(stats, reg_covar, None, min_mass=min_mass, collapse_rtol=collapse_rtol,
                                max_reseeds=max_reseeds, prior_rows=prior_rows, dropped=unused)
        events += [dict(e, iteration=0) for e in ev]
        data_range = (sample.minimum, sample.maximum)
        summary["init_sample_rows"] = [len(r) for r in sample.rows]
    summary["init_seconds"] = time.perf_counter() - started
    history: list[float] = []
    seconds: list[float] = []
    converged = False
    stats = None
    n_iter = 0
    for it in range(1, int(max_iter) + 1):
        start = time.perf_counter()
        stats = passes.estep(params.components())
        if not np.isfinite(data_range[0]):
            data_range = (stats.minimum, stats.maximum)
        ll = float(stats.loglik.sum() / max(stats.n_rows, 1))
        with one_blas_thread():
            params, ev = m_step(stats, reg_covar, params, min_mass=min_mass, collapse_rtol=collapse_rtol,
                                max_reseeds=max_reseeds, prior_rows=prior_rows)
        events += [dict(e, iteration=it) for e in ev]
        change = ll - history[-1] if history else np.inf
        history.append(ll)
        seconds.append(time.perf_counter() - start)
        n_iter = it
        if callback is not None:
            callback({"iteration": it, "log_likelihood": ll, "change": change, "events": ev, "seconds": seconds[-1]})
        if abs(change) < tol and not ev:
            converged = True
            break
    summary.update(n_iter=n_iter, converged=converged, log_likelihood=history, iteration_seconds=seconds, events=events,
                   data_range=[float(data_range[0]), float(data_range[1])])
    return params, stats, summary


def check_options(n_components, covariance, reg_covar, max_iter, tol, init) -> None:
    if int(n_components) < 1:
        raise InputError(f"components must be at least 1, got {n_components}")
    if covariance not in ("full", "diag"):
        raise InputError(f"covariance must be 'full' or 'diag', not {covariance!r}")
    if not (reg_covar > 0 and math.isfinite(reg_covar)):
        raise InputError(f"a mixture needs reg_covar > 0 (its likelihood is unbounded without it), got {reg_covar}")
    if int(max_iter) < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
    if not tol >= 0:
        raise InputError(f"tol must be >= 0, got {tol}")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, not {init!r}")


def _check_counts(classes: np.ndarray, counts: np.ndarray, M: int) -> None:
    if counts.sum() == 0:
        raise InputError("the input has no rows")
    small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2]
    if small:
        raise InputError(
            ", ".join(f"class {c!r} has {n} row{'s' if n != 1 else ''}" for c, n in small)
            + "; every class needs at least 2 rows"
        )


def _given_params(p: dict[str, np.ndarray], classes, M: int, diagonal: bool) -> Params:
    if classes is None:
        raise InputError("init_params needs the classes")
    weights = np.asarray(p["weights"], dtype=np.float64).reshape(len(classes), M)
    means = np.asarray(p["means"], dtype=np.float64).reshape(len(classes), M, -1)
    D = means.shape[2]
    if "covariances" in p:
        covs = np.asarray(p["covariances"], dtype=np.float64)
    else:  # precisions (inverse covariances), as scikit-learn's precisions_init
        prec = np.asarray(p["precisions"], dtype=np.float64)
        covs = 1.0 / prec if diagonal else np.linalg.inv(prec)
    covs = covs.reshape((len(classes), M, D) if diagonal else (len(classes), M, D, D))
    return Params(np.asarray(classes), weights / weights.sum(1, keepdims=True), means, covs,
                  np.zeros((len(classes), M), dtype=np.int64))


# ============================================================================ in memory
def memory_passes(X: np.ndarray, y: np.ndarray, scale: float = 1.0, block_rows: int | None = None) -> Passes:
    """Passes over in-memory rows (X in pixel units), cut in blocks of ``block_rows``."""
    X, y = np.asarray(X), np.asarray(y)
    step = int(block_rows or max(len(y), 1))
    blocks = [(X[a : a + step], y[a : a + step]) for a in range(0, max(len(y), 1), step)]

    return Passes(
        sample=lambda seed, size: merge_samples([sample_chunk(x, t, seed, size, scale) for x, t in blocks]),
        hard=lambda classes, centers, diag: merge_weighted([hard_stats(x, t, classes, centers, diag, scale) for x, t in blocks]),
        estep=lambda comps: merge_weighted([estep_stats(x, t, comps, scale) for x, t in blocks]),
    )


def fit_em(
    X: np.ndarray,
    y: np.ndarray,
    n_components: int,
    *,
    scale: float = 1.0,
    image_shape: tuple[int, ...] | None = None,
    block_rows: int | None = None,
    **options: Any,
) -> GaussianMixtureClassModel:
    """Fit a per-class mixture to in-memory rows: the reference of the distributed EM.

    ``X`` (n, D) in pixel units (uint8 or float), ``y`` (n,) labels; the model is of
    ``X * scale``. ``options`` are those of :func:`run_em` (``covariance``,
    ``reg_covar``, ``max_iter``, ``tol``, ``init``, ``seed``, ``init_sample``,
    ``init_params``, ...).
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"fit_em needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    classes = np.unique(y)
    params, stats, summary = run_em(memory_passes(X, y, scale, block_rows), n_components,
                                    classes=classes, **options)
    return GaussianMixtureClassModel.from_params(params, stats, summary, image_shape=image_shape, scale=scale,
                                                 config=_config(n_components, options))


def _config(n_components: int, options: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: options.get(k, DEFAULTS[k])
           for k in ("covariance", "reg_covar", "max_iter", "tol", "init", "seed", "init_sample", "prior_rows")}
    cfg["reg_covar"] = float(cfg["reg_covar"])
    cfg["components"] = int(n_components)
    cfg["shrinkage"] = "none"
    return cfg


# ============================================================================ sampling
class _FlatView:
    """Every (class, component) as one Gaussian, with prior p(y) w[y, m]: what Sampler reads."""

    def __init__(self, model: GaussianMixtureClassModel):
        K, M, D = model.means.shape
        self.priors = (model.priors[:, None] * model.weights).ravel()
        self.means = model.means.reshape(K * M, D)
        self.factors = model.component_factors
        self.n_features = D


class MixtureSampler(Sampler):
    """:class:`~daskgen.models.gaussian.Sampler` of a mixture: a class, then one of its components, then a draw.

    The components are the Sampler's sub-Gaussians (flat index ``k * M + m``, PSD roots
    from :func:`~daskgen.models.gaussian.factor_covariance`). ``draw_classes`` returns class
    indices, as for a single Gaussian per class, so ``daskgen.generate`` labels rows
    the same way; ``draw`` picks each row's component from its class's weights.
    """

    def __init__(self, model: GaussianMixtureClassModel, dtype: Any = np.float64):
        super().__init__(_FlatView(model), dtype)
        self.class_priors = np.asarray(model.priors, dtype=np.float64)
        w = np.asarray(model.weights, dtype=np.float64)
        self.component_weights = w / w.sum(axis=1, keepdims=True)
        self.n_components = int(w.shape[1])

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flat = np.empty(len(class_index), dtype=np.intp)
        M = self.n_components
        for k in np.unique(class_index):
            rows = np.flatnonzero(class_index == k)
            flat[rows] = k * M + rng.choice(M, size=len(rows), p=self.component_weights[k])
        return super().draw(flat, rng)


# ============================================================================ the model
@dataclass
class GaussianMixtureClassModel(BayesClassifier):
    """A prior over classes and a mixture of Gaussians per class.

    The interface of :class:`~daskgen.models.gaussian.GaussianClassModel` (``classes``,
    ``priors``, ``class_log_likelihood``, ``log_prob``, ``predict``, ``sample``,
    ``fingerprint``, ``image_shape``, ``scale``, ``save``, and what
    ``daskgen.generate`` uses) with, per class k and component m:

    Attributes
    ----------
    weights : ndarray (K, M)
        Component weights w[k, m] (rows sum to 1; 0 for a dropped component).
    means : ndarray (K, M, D)
        Component means, model units.
    covariances : ndarray (K, M, D, D) or (K, M, D)
        Component covariances (maximum likelihood plus ``reg_covar``).
    mass : ndarray (K, M)
        Responsibility mass of each component in the last E-step (rows' worth).
    """

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    mass: np.ndarray
    data_range: tuple[float, float] = (np.nan, np.nan)
    image_shape: tuple[int, ...] | None = None
    scale: float = 1.0
    label_column: str = "label"
    feature_names: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: Params, stats: WeightedStats, summary: dict[str, Any], **meta: Any):
        counts = stats.counts.astype(np.int64)
        config = dict(meta.pop("config", {}))
        config["em"] = summary
        lo, hi = summary.get("data_range", [np.nan, np.nan])
        return cls(
            classes=params.classes,
            counts=counts,
            priors=counts / counts.sum(),
            weights=params.weights,
            means=params.means,
            covariances=params.covariances,
            mass=stats.mass.copy(),
            data_range=(float(lo), float(hi)),
            config=config,
            **meta,
        )

    # -- shape -------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[2])

    @property
    def covariance_type(self) -> str:
        return "diag" if self.covariances.ndim == 3 else "full"

    @property
    def active_components(self) -> np.ndarray:
        """Components with a positive weight, per class (K,)."""
        return (self.weights > 0).sum(axis=1)

    @cached_property
    def fingerprint(self) -> str:
        return _fingerprint(self.classes, self.priors, self.weights, self.means, self.covariances)

    # -- derived -----------------------------------------------------------
    @property
    def class_means(self) -> np.ndarray:
        """Mean of each class's mixture, (K, D)."""
        return np.einsum("km,kmd->kd", self.weights, self.means)

    @property
    def class_covariances(self) -> np.ndarray:
        """Covariance of each class's mixture (K, D, D) or (K, D): within plus between components."""
        mu = self.class_means
        dev = self.means - mu[:, None, :]
        if self.covariance_type == "diag":
            return np.einsum("km,kmd->kd", self.weights, self.covariances + dev * dev)
        within = np.einsum("km,kmde->kde", self.weights, self.covariances)
        return within + np.einsum("km,kmd,kme->kde", self.weights, dev, dev)

    @cached_property
    def factors(self) -> list[ClassFactor]:
        """PSD roots of the class covariances (:attr:`class_covariances`), e.g. for spectra."""
        return [factor_covariance(c) for c in self.class_covariances]

    @cached_property
    def component_factors(self) -> list[ClassFactor]:
        """PSD roots of every component's covariance, flat index ``k * M + m`` (for sampling)."""
        K, M = self.weights.shape
        return [factor_covariance(self.covariances[k, m]) for k in range(K) for m in range(M)]

    @cached_property
    def components(self) -> Components:
        return Components.from_covariances(self.classes, self.weights, self.means, self.covariances)

    # -- scoring -----------------------------------------------------------
    def component_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log w[k, m] + log N(x; mu[k, m], Sigma[k, m]) for every row, shape (n, K, M)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.n_features:
            raise InputError(f"X has {X.shape[1]} features, the model {self.n_features}")
        X = np.ascontiguousarray(X)
        comps = self.components
        return np.stack([comps.component_log_prob(X, k) for k in range(self.n_classes)], axis=1)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K) (log-sum-exp over components)."""
        lp = self.component_log_likelihood(X)
        n, K, M = lp.shape
        return logsumexp_rows(lp.reshape(n * K, M)).reshape(n, K)

    def scoring_copy(self) -> GaussianMixtureClassModel:
        """A copy holding only what scoring needs (no covariances): small to ship to workers."""
        comps = self.components
        K, M = self.weights.shape
        copy = GaussianMixtureClassModel(
            classes=self.classes, counts=self.counts, priors=self.priors, weights=self.weights,
            means=self.means, covariances=np.zeros((K, M, 0)), mass=self.mass, data_range=self.data_range,
            image_shape=self.image_shape, scale=self.scale,
        )
        copy.__dict__["components"] = comps
        copy.__dict__["fingerprint"] = self.fingerprint
        return copy

    # -- sampling ----------------------------------------------------------
    def sampler(self, dtype: Any = np.float64) -> MixtureSampler:
        return MixtureSampler(self, dtype)

    # -- persistence (BayesClassifier.save: arrays ``weights`` and ``mass``, attribute ``components``)
    def store_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the model store, besides ``classes``."""
        return {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "weights": np.asarray(self.weights, dtype=np.float64),
            "mass": np.asarray(self.mass, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
            "covariances": np.asarray(self.covariances, dtype=np.float64),
        }

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> GaussianMixtureClassModel:
        """The model from an open store group (called by ``daskgen.io.store.read_model``)."""
        try:
            a = {k: np.asarray(group[k][...]) for k in ("counts", "priors", "weights", "mass", "means", "covariances")}
        except Exception as exc:
            raise ModelError(f"{url}: corrupted model store: {first_line(exc)}") from None
        M = meta.get("components")
        K = len(classes)
        shape_ok = a["means"].ndim == 3 and a["means"].shape[:2] == (K, M)
        D = a["means"].shape[2] if shape_ok else -1
        if (
            not shape_ok
            or a["counts"].shape != (K,)
            or a["priors"].shape != (K,)
            or a["weights"].shape != (K, M)
            or a["mass"].shape != (K, M)
            or a["covariances"].shape not in ((K, M, D, D), (K, M, D))
            or not all(np.isfinite(a[k]).all() for k in ("priors", "weights", "means", "covariances"))
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        lo, hi = meta.get("data_range") or [None, None]
        shape = meta.get("image_shape")
        return cls(
            classes=classes, counts=a["counts"], priors=a["priors"], weights=a["weights"], means=a["means"],
            covariances=a["covariances"], mass=a["mass"],
            data_range=(np.nan if lo is None else float(lo), np.nan if hi is None else float(hi)),
            image_shape=tuple(shape) if shape else None, scale=float(meta.get("scale", 1.0)),
            label_column=meta.get("label_column", "label"), feature_names=meta.get("feature_names"),
            config=meta.get("config", {}), inputs=meta.get("inputs", []),
        )


__all__ = [
    "Components",
    "GaussianMixtureClassModel",
    "InitSample",
    "MixtureSampler",
    "Params",
    "Passes",
    "WeightedStats",
    "estep_stats",
    "fit_em",
    "hard_stats",
    "init_centers",
    "kmeans_plusplus",
    "m_step",
    "memory_passes",
    "merge_samples",
    "merge_weighted",
    "row_keys",
    "run_em",
    "sample_chunk",
]
