"""Fitting a per-class mixture of low-rank Gaussians (``--covariance ppca|fa --components M
--rank q``) by EM — the M-step and the driver, pure numpy, no Dask.

The same EM as :mod:`daskgen.models.mixture_em` (one pass over the data per iteration,
every class at once; :func:`~daskgen.models.mixture_em.iterate`), with components
``N(mu, W Wᵀ + diag psi)`` whose statistics are O(D·q) per (class, component)
(:mod:`daskgen.kernels.mfa`): no D×D array anywhere.

Initialisation: the same k-means++ (or random) centres on the same hashed sample of each
class; then one pass of hard assignments to them accumulates, per component, its rows'
sums and a randomized sketch ``S Ω`` of their scatter (Ω a seeded Gaussian of q + 10
columns), from which :func:`~daskgen.kernels.mfa.nystrom_init` sets the mean, ``W`` and
``psi``.

M-step: :func:`~daskgen.kernels.mfa.fa_m_step` — the weighted mean, then factor analysis's
EM update of ``W`` and ``psi`` (``ppca``: one σ² per component); ``psi`` is floored at
``reg_covar`` (by default the dequantization noise's variance, which keeps pixels that are
always 0 from collapsing). ``prior_rows`` = ν > 0 adds ν rows' worth of the class's
covariance (of its mixture under the previous parameters, ``F Fᵀ + diag psi``) to each
component's scatter, as the Gaussian mixtures' inverse-Wishart prior does.

Degenerate components (mass below ``min_mass`` rows, mean variance below
``collapse_rtol`` times the class's, or non-finite parameters) are re-seeded at the
worst-explained rows and dropped after ``max_reseeds``, by the same rules
(:func:`~daskgen.models.mixture_em.settle_degenerate`). A re-seeded component takes the
loadings of its class's heaviest healthy component and the per-pixel variance they leave.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._blas import one_blas_thread
from ..errors import ModelError
from ..kernels.mfa import (
    LowRankComponents,
    LowRankStats,
    estep_lowrank,
    floor_noise,
    hard_lowrank,
    m_step_component,
    merge_lowrank,
    mixture_covariance_factors,
    nystrom_init,
    sketch_columns,
    sketch_matrix,
)
from .memory import DEFAULT_RANK
from .mfa import LOW_RANK, LowRankMixtureClassModel
from .mixture_em import (
    DEFAULTS,
    EmKernels,
    Passes,
    check_options,
    degeneracy_state,
    initial_centers,
    iterate,
    memory_passes,
    settle_degenerate,
)

#: Low-rank components (:class:`~daskgen.kernels.mfa.LowRankStats`).
LOW_RANK_KERNELS = EmKernels(hard_lowrank, estep_lowrank, merge_lowrank)


@dataclass
class LowRankParams:
    """Parameters per (class, component): weights (K, M), means (K, M, D), loadings W
    (K, M, D, q), noise psi (K, M, D); ``reseeds`` (K, M) re-seeds so far."""

    classes: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    loadings: np.ndarray
    noise: np.ndarray
    reseeds: np.ndarray

    @property
    def dropped(self) -> np.ndarray:
        return self.weights == 0

    def components(self) -> LowRankComponents:
        """What an E-step under these parameters needs."""
        return LowRankComponents.from_params(self.classes, self.weights, self.means, self.loadings, self.noise)


def class_moments(stats: LowRankStats, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the mean (K, D) and per-feature variance (K, D) of all its rows, from the
    components' sums about their ``centres`` (K, M, D)."""
    K, _, D = stats.first.shape
    means, var = np.zeros((K, D)), np.zeros((K, D))
    for k in range(K):
        live = stats.mass[k] > 0
        R = stats.mass[k, live]
        if R.sum() <= 0:
            continue
        c = centres[k, live]
        means[k] = (R @ c + stats.first[k, live].sum(axis=0)) / R.sum()
        e = c - means[k]
        var[k] = (stats.second[k, live] + 2 * e * stats.first[k, live] + R[:, None] * e * e).sum(axis=0) / R.sum()
    return means, np.maximum(var, 0.0)


def m_step_lowrank(
    stats: LowRankStats,
    centres: np.ndarray,
    previous: LowRankParams | None,
    reg_covar: float,
    isotropic: bool,
    *,
    rank: int,
    seed: int = 0,
    min_mass: float = DEFAULTS["min_mass"],
    collapse_rtol: float = DEFAULTS["collapse_rtol"],
    max_reseeds: int = DEFAULTS["max_reseeds"],
    prior_rows: float = DEFAULTS["prior_rows"],
    dropped: np.ndarray | None = None,
) -> tuple[LowRankParams, list[dict[str, Any]]]:
    """New parameters from one pass's sums about ``centres`` (K, M, D), with degenerate
    components handled; returns them and the events.

    ``previous`` None: ``stats`` are of the initial hard pass (sketch of ``seed``) and the
    start is Nyström's (:func:`~daskgen.kernels.mfa.nystrom_init`); else the E-step's, under
    ``previous`` (whose means are ``centres``), and the step is :func:`~daskgen.kernels.mfa.fa_m_step`.
    """
    K, M, D = stats.first.shape
    q = int(rank)
    reseeds, dropped = degeneracy_state(previous, K, M, dropped)
    omega = sketch_matrix(seed, D, sketch_columns(q, D)) if previous is None else None
    class_means, class_var = class_moments(stats, centres)
    weights, means = np.zeros((K, M)), np.zeros((K, M, D))
    loadings, noise = np.zeros((K, M, D, q)), np.zeros((K, M, D))
    events: list[dict[str, Any]] = []
    for k in range(K):
        class_level = float(class_var[k].mean()) + reg_covar
        prior = None
        if previous is not None and prior_rows > 0:
            prior = mixture_covariance_factors(previous.weights[k], previous.means[k], previous.loadings[k],
                                               previous.noise[k])
        bad: dict[int, str] = {}
        for m in range(M):
            if dropped[k, m]:
                continue
            R = float(stats.mass[k, m])
            if not R >= min_mass:
                bad[m] = f"empty (responsibility mass {R:.3g} < {min_mass:g} rows)"
                continue
            b = stats.first[k, m] / R
            var = float((stats.second[k, m] / R - b * b).mean())
            if not np.isfinite(var) or var <= collapse_rtol * class_level:
                bad[m] = f"collapsed (variance {var:.3g} vs {class_level:.3g} for the class)"
                continue
            if previous is None:
                b, W, psi = nystrom_init(R, stats.first[k, m], stats.proj[k, m], stats.second[k, m], omega, q,
                                         reg_covar, isotropic)
            else:
                b, W, psi = m_step_component(R, stats.first[k, m], stats.proj[k, m], stats.second[k, m],
                                             previous.loadings[k, m], previous.noise[k, m], reg_covar, isotropic,
                                             prior_rows, prior)
            if not (np.isfinite(W).all() and np.isfinite(psi).all() and np.isfinite(b).all()):
                bad[m] = "singular (parameters not finite)"
                continue
            weights[k, m] = R
            means[k, m], loadings[k, m], noise[k, m] = centres[k, m] + b, W, psi
        worst = [x for s, x in zip(stats.worst_score[k], stats.worst_x[k]) if np.isfinite(s)]
        healthy = np.flatnonzero(weights[k] > 0)
        fresh, fallback = settle_degenerate(stats.classes[k], bad, weights[k], stats.mass[k], dropped[k], reseeds[k],
                                            len(worst), max_reseeds, events)
        for m in range(M):
            if m in fresh or dropped[k, m] or m == fallback:
                # the class's heaviest healthy loadings (else this component's own), and the variance they leave
                if len(healthy):
                    W = loadings[k, healthy[np.argmax(stats.mass[k, healthy])]]
                elif previous is not None:
                    W = previous.loadings[k, m]
                else:
                    W = np.zeros((D, q))
                means[k, m] = worst[fresh.index(m)] if m in fresh else class_means[k]
                loadings[k, m] = W
                noise[k, m] = floor_noise(class_var[k] - np.einsum("ij,ij->i", W, W), reg_covar, isotropic)
    return LowRankParams(stats.classes, weights, means, loadings, noise, reseeds), events


def run_lowrank_em(
    passes: Passes,
    n_components: int,
    *,
    covariance: str = "fa",
    rank: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> tuple[LowRankParams, LowRankStats, dict[str, Any]]:
    """EM of a mixture of ``n_components`` low-rank Gaussians per class; returns (parameters,
    last statistics, summary), as :func:`~daskgen.models.mixture_em.run_em` does, whose
    ``options`` (:data:`~daskgen.models.mixture_em.DEFAULTS`: ``reg_covar``, ``max_iter``,
    ``tol``, ``init``, ``seed``, ``init_sample``, ``min_mass``, ``collapse_rtol``,
    ``max_reseeds``, ``prior_rows``, ``lloyd_iter``) it takes. ``passes`` run
    :data:`LOW_RANK_KERNELS`."""
    if options.pop("init_params", None) is not None:
        raise ValueError("init_params is for full or diagonal components")
    options.pop("classes", None)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"run_lowrank_em got unexpected options {', '.join(unknown)}")
    o = {**DEFAULTS, **options}
    reg_covar, init, seed, prior_rows = o["reg_covar"], o["init"], int(o["seed"]), o["prior_rows"]
    rules = {k: o[k] for k in ("min_mass", "collapse_rtol", "max_reseeds")}
    if covariance not in LOW_RANK:
        raise ValueError(f"covariance must be one of {', '.join(LOW_RANK)}, not {covariance!r}")
    check_options(n_components, "full", reg_covar, o["max_iter"], o["tol"], init)
    if not prior_rows >= 0:
        raise ValueError(f"prior_rows must be >= 0, got {prior_rows}")
    q = DEFAULT_RANK if rank is None else int(rank)
    isotropic = covariance == "ppca"
    M = int(n_components)
    started = time.perf_counter()
    sample, centers = initial_centers(passes, M, init, seed, o["init_sample"], o["lloyd_iter"])
    D = centers.shape[2]
    if not 1 <= q < D:
        raise ValueError(f"rank must lie in [1, {D - 1}] for {D} features, got {q}")
    stats = passes.hard(sample.classes, centers, q, seed)
    events: list[dict[str, Any]] = []
    with one_blas_thread():
        params, ev = m_step_lowrank(stats, centers, None, reg_covar, isotropic, rank=q, seed=seed,
                                    dropped=np.isnan(centers).any(axis=2), **rules)
    events += [dict(e, iteration=0) for e in ev]
    summary: dict[str, Any] = {"init": init, "seed": seed, "init_sample_rows": [len(r) for r in sample.rows],
                               "init_seconds": time.perf_counter() - started}

    def step(stats: LowRankStats, params: LowRankParams) -> tuple[LowRankParams, list[dict[str, Any]]]:
        return m_step_lowrank(stats, params.means, params, reg_covar, isotropic, rank=q, prior_rows=prior_rows,
                              **rules)

    params, stats = iterate(passes.estep, step, params, o["max_iter"], o["tol"], (sample.minimum, sample.maximum),
                            summary, events, callback)
    return params, stats, summary


def lowrank_config(n_components: int, options: dict[str, Any]) -> dict[str, Any]:
    """The fit's options as the model records them (``config``)."""
    cfg = {k: options.get(k, DEFAULTS[k])
           for k in ("covariance", "reg_covar", "max_iter", "tol", "init", "seed", "init_sample", "prior_rows")}
    cfg.update(reg_covar=float(cfg["reg_covar"]), components=int(n_components), shrinkage="none",
               rank=int(options.get("rank") or DEFAULT_RANK))
    return cfg


def fit_em_lowrank(X: np.ndarray, y: np.ndarray, n_components: int, *, scale: float = 1.0,
                   image_shape: tuple[int, ...] | None = None, block_rows: int | None = None,
                   **options: Any) -> LowRankMixtureClassModel:
    """A per-class mixture of low-rank Gaussians of in-memory rows (``X`` (n, D) pixel units,
    ``y`` (n,)): the reference of the distributed fit. ``options`` as :func:`run_lowrank_em`."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"fit_em needs X (n, D) and y (n,), got {X.shape} and {y.shape}")
    passes = memory_passes(X, y, scale, block_rows, LOW_RANK_KERNELS)
    try:
        params, stats, summary = run_lowrank_em(passes, n_components, **options)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - reg_covar > 0 keeps every factor positive definite
        raise ModelError(f"EM failed: {exc}") from None
    return LowRankMixtureClassModel.from_params(params, stats, summary, image_shape=image_shape, scale=scale,
                                                config=lowrank_config(n_components, options))
