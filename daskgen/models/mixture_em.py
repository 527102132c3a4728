"""Fitting a per-class Gaussian mixture by EM — the M-step and the driver, pure numpy, no Dask.

Labels are known, so EM runs independently per class, but one pass over the data
serves every class at once. A pass is given as :class:`Passes` (in memory here,
on Dask in :mod:`daskgen.distributed.em`); the E-step statistics are
:class:`~daskgen.kernels.weighted.WeightedStats`, computed per block by
:mod:`daskgen.kernels.estep`, and they merge exactly for any chunking.

The M-step is scikit-learn's ``GaussianMixture`` M-step: ``w = W / n_y``,
``Sigma = S / W + reg_covar * I`` (maximum-likelihood covariances: with one
component, ``Sigma`` is the single-Gaussian fit's covariance times ``(n - 1) / n``,
plus ``reg_covar``).

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._blas import one_blas_thread
from ..errors import ModelError
from ..kernels.class_stats import plain_label
from ..kernels.estep import Components, estep_stats, hard_stats
from ..kernels.init_sample import InitSample, merge_samples, sample_chunk
from ..kernels.kmeans import INITS, init_centers
from ..kernels.linalg import factor_all, precision_cholesky
from ..kernels.weighted import WeightedStats, merge_weighted
from .mixture import GaussianMixtureClassModel

log = logging.getLogger("daskgen")

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
        """What an E-step under these parameters needs (factored now unless the M-step did)."""
        if self.prec_chol is None:  # given parameters (init_params)
            try:
                return Components.from_covariances(self.classes, self.weights, self.means, self.covariances)
            except ValueError as exc:
                raise ModelError(f"init_params: {exc}") from None
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


def degeneracy_state(previous: Any, K: int, M: int, dropped: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(reseeds, dropped), each (K, M): copies of ``previous``'s (the iteration before),
    ``dropped`` when given, zeros at the start: what an M-step updates in place."""
    reseeds = previous.reseeds.copy() if previous is not None else np.zeros((K, M), dtype=np.int64)
    if dropped is None:
        dropped = previous.dropped.copy() if previous is not None else np.zeros((K, M), dtype=bool)
    return reseeds, dropped


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
    reseeds, dropped = degeneracy_state(previous, K, M, dropped)
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
    factors = factor_all([*class_covs, *candidates.values()])
    class_factors, comp_factors = factors[:K], dict(zip(candidates, factors[K:]))
    for k in range(K):
        class_cov, class_prec = class_covs[k], class_factors[k]
        if class_prec is None:  # only with non-finite statistics
            class_cov = _add_reg(np.ones(D) if diagonal else np.eye(D), reg_covar)
            class_prec = precision_cholesky(class_cov)
        worst = [x for s, x in zip(stats.worst_score[k], stats.worst_x[k]) if np.isfinite(s)]
        bad = {m: problems.get((k, m), "singular (covariance not positive definite)")
               for m in range(M) if not dropped[k, m] and comp_factors.get((k, m)) is None}
        for m in range(M):
            if not dropped[k, m] and m not in bad:
                weights[k, m] = stats.mass[k, m]
                means[k, m], covs[k, m] = stats.means[k, m], candidates[k, m]
                prec[k, m], log_det[k, m] = comp_factors[k, m]
        fresh, fallback = settle_degenerate(stats.classes[k], bad, weights[k], stats.mass[k], dropped[k], reseeds[k],
                                            len(worst), max_reseeds, events)
        for m in range(M):
            if m in fresh or dropped[k, m] or m == fallback:
                means[k, m] = worst[fresh.index(m)] if m in fresh else class_means[k]
                covs[k, m] = class_cov
                prec[k, m], log_det[k, m] = class_prec
    return Params(stats.classes, weights, means, covs, reseeds, prec, log_det), events



def settle_degenerate(label: Any, bad: dict[int, str], weights: np.ndarray, mass: np.ndarray, dropped: np.ndarray,
                      reseeds: np.ndarray, n_worst: int, max_reseeds: int, events: list[dict[str, Any]]
                      ) -> tuple[list[int], int | None]:
    """The rules for one class's degenerate components ``bad`` (component -> problem).

    Each is re-seeded (at the class's next worst-explained row, of which there are
    ``n_worst``) while it has been re-seeded fewer than ``max_reseeds`` times, else
    dropped (``dropped`` set). When no component is left, the heaviest one comes back
    with weight 1 as the class's own Gaussian (the fallback). Then ``weights`` (the
    masses of the healthy components, in place) are normalised, each re-seeded component
    taking an equal share. Events are logged and appended to ``events``. Returns the
    re-seeded components (in the order of the worst rows they take) and the fallback.
    """
    fresh: list[int] = []
    for m in sorted(bad):
        event = {"class": plain_label(label), "component": m, "problem": bad[m]}
        if reseeds[m] < max_reseeds and n_worst > len(fresh):
            reseeds[m] += 1
            fresh.append(m)
            event["action"] = "re-seeded at the worst-explained row"
        else:
            dropped[m] = True
            event["action"] = "dropped"
        log.warning("class %r component %d %s: %s", event["class"], m, bad[m], event["action"])
        events.append(event)
    fallback = None
    if not (weights > 0).any() and not fresh:
        # Nothing left for this class: keep one component on the class's own Gaussian.
        fallback = int(np.argmax(mass)) if mass.any() else 0
        dropped[fallback] = False
        weights[fallback] = 1.0
        log.warning("class %r: every component degenerated; component %d is the class's Gaussian",
                    plain_label(label), fallback)
        events.append({"class": plain_label(label), "component": fallback, "problem": "all components degenerate",
                       "action": "reset to the class's Gaussian"})
    total = weights.sum()
    weights[:] = weights / total if total > 0 else 0.0
    if fresh:
        share = 1.0 / (len(weights) - int(dropped.sum()))
        weights *= 1.0 - share * len(fresh)
        weights[fresh] = share
    return fresh, fallback


@dataclass
class Passes:
    """How one pass over the data is run: in memory (here) or on Dask (``daskgen.distributed.em``).

    Each method returns the merged result of a pass over every chunk.
    """

    sample: Callable[[int, int], InitSample]
    #: ``hard(classes, centers, *options)``: the statistics of hard assignments to the centres
    hard: Callable[..., Any]
    #: ``estep(components)``: the E-step's statistics under the components
    estep: Callable[[Any], Any]


@dataclass(frozen=True)
class EmKernels:
    """The per-block kernels of a kind of EM and their merge: ``hard(X, y, classes, centers,
    *options, scale)``, ``estep(X, y, components, scale)``, ``merge(list of statistics)``."""

    hard: Callable[..., Any]
    estep: Callable[..., Any]
    merge: Callable[[list[Any]], Any]


#: Full or diagonal Gaussian components (:class:`~daskgen.kernels.weighted.WeightedStats`).
GAUSSIAN_KERNELS = EmKernels(hard_stats, estep_stats, merge_weighted)


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
        raise ValueError(f"prior_rows must be >= 0, got {prior_rows}")
    diagonal = covariance == "diag"
    M = int(n_components)
    events: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"init": init if init_params is None else "given", "seed": int(seed)}
    started = time.perf_counter()
    if init_params is not None:
        params = _given_params(init_params, classes, M, diagonal)
        data_range = (np.nan, np.nan)
    else:
        sample, centers = initial_centers(passes, M, init, seed, init_sample, lloyd_iter)
        stats = passes.hard(sample.classes, centers, diagonal)
        unused = np.isnan(centers).any(axis=2)
        with one_blas_thread():  # many small factorizations: threads only contend
            params, ev = m_step(stats, reg_covar, None, min_mass=min_mass, collapse_rtol=collapse_rtol,
                                max_reseeds=max_reseeds, prior_rows=prior_rows, dropped=unused)
        events += [dict(e, iteration=0) for e in ev]
        data_range = (sample.minimum, sample.maximum)
        summary["init_sample_rows"] = [len(r) for r in sample.rows]
    summary["init_seconds"] = time.perf_counter() - started

    def step(stats: WeightedStats, params: Params) -> tuple[Params, list[dict[str, Any]]]:
        return m_step(stats, reg_covar, params, min_mass=min_mass, collapse_rtol=collapse_rtol,
                      max_reseeds=max_reseeds, prior_rows=prior_rows)

    params, stats = iterate(passes.estep, step, params, max_iter, tol, data_range, summary, events, callback)
    return params, stats, summary


def initial_centers(passes: Passes, M: int, init: str, seed: int, init_sample: int, lloyd_iter: int
                    ) -> tuple[InitSample, np.ndarray]:
    """The initial sample of each class (one pass) and M centres per class from it
    (k-means++ then Lloyd, or random rows): (sample, centres (K, M, D), NaN rows unused)."""
    sample = passes.sample(int(seed), int(init_sample))
    _check_counts(sample.classes, sample.counts, M)
    return sample, init_centers(sample, M, init, int(seed), lloyd_iter)


def iterate(estep: Callable[[Any], Any], step: Callable[[Any, Any], tuple[Any, list[dict[str, Any]]]], params: Any,
            max_iter: int, tol: float, data_range: tuple[float, float], summary: dict[str, Any],
            events: list[dict[str, Any]], callback: Callable[[dict[str, Any]], None] | None = None
            ) -> tuple[Any, Any]:
    """EM's iterations: E-step pass ``estep(params.components())``, then ``step(stats, params)``
    (the M-step: new parameters and events), until ``max_iter`` or a change of the mean
    log-likelihood below ``tol`` in an iteration without events. Returns the last
    parameters and statistics; fills ``summary`` (``n_iter``, ``converged``,
    ``log_likelihood``, ``iteration_seconds``, ``events`` after ``events``, ``data_range``)."""
    history: list[float] = []
    seconds: list[float] = []
    converged = False
    stats = None
    n_iter = 0
    for it in range(1, int(max_iter) + 1):
        start = time.perf_counter()
        stats = estep(params.components())
        if not np.isfinite(data_range[0]):
            data_range = (stats.minimum, stats.maximum)
        ll = float(stats.loglik.sum() / max(stats.n_rows, 1))
        with one_blas_thread():
            params, ev = step(stats, params)
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
    return params, stats


def check_options(n_components, covariance, reg_covar, max_iter, tol, init) -> None:
    if int(n_components) < 1:
        raise ValueError(f"components must be at least 1, got {n_components}")
    if covariance not in ("full", "diag"):
        raise ValueError(f"covariance must be 'full' or 'diag', not {covariance!r}")
    if not (reg_covar > 0 and math.isfinite(reg_covar)):
        raise ValueError(f"a mixture needs reg_covar > 0 (its likelihood is unbounded without it), got {reg_covar}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")


def _check_counts(classes: np.ndarray, counts: np.ndarray, M: int) -> None:
    if counts.sum() == 0:
        raise ValueError("the input has no rows")
    small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2]
    if small:
        raise ValueError(
            ", ".join(f"class {c!r} has {n} row{'s' if n != 1 else ''}" for c, n in small)
            + "; every class needs at least 2 rows"
        )


def _given_params(p: dict[str, np.ndarray], classes, M: int, diagonal: bool) -> Params:
    if classes is None:
        raise ValueError("init_params needs the classes")
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
def memory_passes(X: np.ndarray, y: np.ndarray, scale: float = 1.0, block_rows: int | None = None,
                  kernels: EmKernels = GAUSSIAN_KERNELS) -> Passes:
    """Passes over in-memory rows (X in pixel units), cut in blocks of ``block_rows``, with ``kernels``."""
    X, y = np.asarray(X), np.asarray(y)
    step = int(block_rows or max(len(y), 1))
    blocks = [(X[a : a + step], y[a : a + step]) for a in range(0, max(len(y), 1), step)]

    return Passes(
        sample=lambda seed, size: merge_samples([sample_chunk(x, t, seed, size, scale) for x, t in blocks]),
        hard=lambda classes, centers, *opts: kernels.merge([kernels.hard(x, t, classes, centers, *opts, scale)
                                                            for x, t in blocks]),
        estep=lambda comps: kernels.merge([kernels.estep(x, t, comps, scale) for x, t in blocks]),
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
        raise ValueError(f"fit_em needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    classes = np.unique(y)
    params, stats, summary = run_em(memory_passes(X, y, scale, block_rows), n_components,
                                    classes=classes, **options)
    return GaussianMixtureClassModel.from_params(params, stats, summary, image_shape=image_shape, scale=scale,
                                                 config=em_config(n_components, options))


def em_config(n_components: int, options: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: options.get(k, DEFAULTS[k])
           for k in ("covariance", "reg_covar", "max_iter", "tol", "init", "seed", "init_sample", "prior_rows")}
    cfg["reg_covar"] = float(cfg["reg_covar"])
    cfg["components"] = int(n_components)
    cfg["shrinkage"] = "none"
    return cfg

