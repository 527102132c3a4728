"""EM for mixtures of low-rank Gaussians (factor analysers, probabilistic PCA): one block's
statistics, their merge, and the M-step of one component. Pure numpy; O(D·q) per row and
per component, never a D×D array.

Every component (k, m) has ``x ~ N(mu, W Wᵀ + diag(psi))``, ``W`` (D, q). Under its current
parameters, prepared once by :func:`daskgen.kernels.lowrank.prepare` (``B = Ψ^{-1/2} W L^{-T}``
with ``L Lᵀ = M = I + Wᵀ Ψ⁻¹ W``), a block of rows gives, with responsibilities ``r`` and
``d = x − mu`` (rows centred on the component's *current* mean, the same point in every
block)::

    mass   R  = Σ r                 (scalar)
    first  s1 = Σ r d               (D,)
    proj   T  = Σ r d (dᵀ A')       (D, q)   A' = Ψ^{-1/2} B, so d A' = (d / √ψ) B is the
                                             projection the Woodbury log-density computes anyway
    second s2 = Σ r d²              (D,)

(Ghahramani & Hinton 1996; the shape torch-mfa accumulates). They are plain sums, so blocks
merge by addition in any grouping. The posterior of the latent factor is
``E[z | x] = β d`` with ``β = M⁻¹ Wᵀ Ψ⁻¹ = Aᵀ`` and ``A = A' L^{-1}``, so ``T L^{-1} = S A``
for the responsibility-weighted scatter ``S`` about the current mean: the M-step needs
nothing else (:func:`fa_m_step`).

The initial pass is the same sum with hard assignments to k-means centres and a seeded
Gaussian test matrix ``Ω`` (D, ℓ) in place of ``A'``: ``T = S Ω`` is a randomized sketch of
each component's scatter, turned into a rank-q starting point by a Nyström approximation
(:func:`nystrom_init`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .class_stats import union_classes, value_range
from .estep import ClassScan, assign_nearest, responsibilities
from .linalg import LOG_2PI
from .lowrank import LowRankFactor, prepare
from .weighted import RESP_FLOOR, keep_worst, merge_worst

#: Columns of the sketch beyond the rank in the initial pass (Halko et al.'s oversampling).
OVERSAMPLE = 10


@dataclass
class LowRankComponents:
    """What an E-step needs: per (class, component) log-weight, mean and prepared factor.

    ``factors[k][m]`` is the :class:`~daskgen.kernels.lowrank.LowRankFactor` of
    ``W Wᵀ + diag(psi)``; a dropped component has ``log_weights = -inf`` and is skipped.
    """

    classes: np.ndarray
    log_weights: np.ndarray  # (K, M)
    means: np.ndarray  # (K, M, D)
    factors: list[list[LowRankFactor]]

    @classmethod
    def from_params(cls, classes, weights, means, loadings, noise) -> LowRankComponents:
        """From weights (K, M), means (K, M, D), loadings W (K, M, D, q), noise psi (K, M, D)."""
        K, M = np.shape(weights)
        factors = [[prepare(loadings[k, m], noise[k, m]) for m in range(M)] for k in range(K)]
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        return cls(np.asarray(classes), log_w, np.asarray(means, dtype=np.float64), factors)

    def project(self, Xs: np.ndarray, k: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``log w + log N(x; mu, W Wᵀ + Ψ)`` (n,) of rows ``Xs`` (float64) under component
        (k, m), and their projections ``P = ((x − mu) / √ψ) B`` (n, q), by Woodbury."""
        f = self.factors[k][m]
        U = Xs - self.means[k, m]
        U *= f.inv_sqrt_psi
        P = U @ f.proj
        quad = np.einsum("ij,ij->i", U, U) - np.einsum("ij,ij->i", P, P)
        return self.log_weights[k, m] - 0.5 * (f.n_features * LOG_2PI + f.logdet + quad), P

    def component_log_prob(self, Xs: np.ndarray, k: int) -> np.ndarray:
        """``log w[k, m] + log N(x; mu[k, m], C[k, m])`` for rows ``Xs`` (float64), shape (n, M)."""
        M = self.means.shape[1]
        out = np.full((Xs.shape[0], M), -np.inf)
        for m in range(M):
            if np.isfinite(self.log_weights[k, m]):
                out[:, m] = self.project(Xs, k, m)[0]
        return out


@dataclass
class LowRankStats:
    """Sums of one pass per (class, component) about fixed centres (see the module docstring).

    Attributes
    ----------
    classes : (K,) sorted labels; counts : (K,) int64 rows per class
    mass : (K, M) Σ r;  first : (K, M, D) Σ r d;  proj : (K, M, D, l) Σ r d (dᵀ A');
    second : (K, M, D) Σ r d², with d = x − the pass's centre of the component
    loglik : (K,) sum of the pass's row scores (log p(x | y) in an E-step)
    worst_score, worst_x : (K, M), (K, M, D) the M lowest-scoring rows of each class
    minimum, maximum : smallest and largest value seen (model units)
    """

    classes: np.ndarray
    counts: np.ndarray
    mass: np.ndarray
    first: np.ndarray
    proj: np.ndarray
    second: np.ndarray
    loglik: np.ndarray
    worst_score: np.ndarray
    worst_x: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def empty(cls, K: int, M: int, D: int, q: int, classes: np.ndarray) -> LowRankStats:
        return cls(classes=classes, counts=np.zeros(K, dtype=np.int64), mass=np.zeros((K, M)),
                   first=np.zeros((K, M, D)), proj=np.zeros((K, M, D, q)), second=np.zeros((K, M, D)),
                   loglik=np.zeros(K), worst_score=np.full((K, M), np.inf), worst_x=np.zeros((K, M, D)))


def merge_lowrank(parts: list[LowRankStats] | tuple[LowRankStats, ...]) -> LowRankStats:
    """Combine the statistics of disjoint row sets (sums about the same centres): addition."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_lowrank needs at least one LowRankStats")
    _, M, D, q = parts[0].proj.shape
    if any(p.proj.shape[1:] != (M, D, q) for p in parts):
        raise ValueError("cannot merge low-rank statistics of different shapes")
    classes = union_classes(parts)
    out = LowRankStats.empty(len(classes), M, D, q, classes)
    for p in parts:
        for j, k in enumerate(np.searchsorted(classes, p.classes)):
            out.counts[k] += p.counts[j]
            out.loglik[k] += p.loglik[j]
            out.mass[k] += p.mass[j]
            out.first[k] += p.first[j]
            out.proj[k] += p.proj[j]
            out.second[k] += p.second[j]
            out.worst_score[k], out.worst_x[k] = merge_worst(out.worst_score[k], out.worst_x[k],
                                                             p.worst_score[j], p.worst_x[j])
    out.minimum, out.maximum = value_range(parts)
    return out


def _add_rows(out: LowRankStats, j: int, m: int, Xs: np.ndarray, r: np.ndarray, centre: np.ndarray,
              P: np.ndarray) -> None:
    """Add rows ``Xs`` with weights ``r`` and projections ``P`` to component m of class row j."""
    nz = np.flatnonzero(r >= RESP_FLOOR)
    if len(nz) == 0:
        return
    if len(nz) < len(r):
        Xs, r, P = Xs[nz], r[nz], P[nz]
    d = Xs - centre
    out.mass[j, m] += r.sum()
    out.first[j, m] += r @ d
    rd = d * r[:, None]
    out.second[j, m] += np.einsum("ij,ij->j", rd, d)
    out.proj[j, m] += rd.T @ P


def estep_lowrank(X: np.ndarray, y: np.ndarray, comps: LowRankComponents, scale: float = 1.0) -> LowRankStats:
    """E-step of one block: responsibilities under ``comps`` and their sums about the current means.

    ``X`` (n, D) in pixel units (any real dtype), ``y`` (n,) labels; rows are scaled to
    model units per class. ``loglik`` sums ``log p(x | y)``.
    """
    _, M, D = comps.means.shape
    q = max((f.rank for row in comps.factors for f in row), default=0)
    scan = ClassScan(X, y, comps.classes, scale)
    out = LowRankStats.empty(len(scan.present), M, D, q, scan.present)
    for j, k, Xs in scan:
        lp = np.full((len(Xs), M), -np.inf)
        projections: dict[int, np.ndarray] = {}
        for m in range(M):
            if np.isfinite(comps.log_weights[k, m]):
                lp[:, m], projections[m] = comps.project(Xs, k, m)
        ll, resp = responsibilities(lp)
        out.counts[j] = len(Xs)
        out.loglik[j] = ll.sum()
        for m, P in projections.items():
            _add_rows(out, j, m, Xs, resp[:, m], comps.means[k, m], P)
        out.worst_score[j], out.worst_x[j] = keep_worst(ll, Xs, M)
    out.minimum, out.maximum = scan.range
    return out


def sketch_matrix(seed: int, n_features: int, columns: int) -> np.ndarray:
    """The seeded Gaussian test matrix Ω (D, l) of the initial pass, the same in every task."""
    return np.random.default_rng([int(seed), 0x4D4641]).standard_normal((n_features, columns))


def sketch_columns(rank: int, n_features: int) -> int:
    """l = rank + :data:`OVERSAMPLE`, at most D."""
    return int(min(rank + OVERSAMPLE, n_features))


def hard_lowrank(X: np.ndarray, y: np.ndarray, classes: np.ndarray, centers: np.ndarray, rank: int, seed: int,
                 scale: float = 1.0) -> LowRankStats:
    """Statistics of hard assignments to the nearest of ``centers`` (K, M, D) (NaN rows: unused),
    about those centres, with the sketch ``Ω`` = :func:`sketch_matrix` (``seed``, D,
    :func:`sketch_columns`) as the projection. The score of a row is ``-min_m |x - c_m|²``."""
    _, M, D = centers.shape
    omega = sketch_matrix(seed, D, sketch_columns(rank, D))
    scan = ClassScan(X, y, classes, scale)
    out = LowRankStats.empty(len(scan.present), M, D, omega.shape[1], scan.present)
    for j, k, Xs in scan:
        nearest, score = assign_nearest(Xs, centers[k])
        out.counts[j] = len(Xs)
        out.loglik[j] = score.sum()
        for m in range(M):
            mine = np.flatnonzero(nearest == m)
            if len(mine):
                _add_rows(out, j, m, Xs[mine], np.ones(len(mine)), centers[k, m], (Xs[mine] - centers[k, m]) @ omega)
        out.worst_score[j], out.worst_x[j] = keep_worst(score, Xs, M)
    out.minimum, out.maximum = scan.range
    return out


# ---------------------------------------------------------------------------- the M-step
def centred_moments(mass: float, first: np.ndarray, TA: np.ndarray, second: np.ndarray, A: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From sums about a centre c (``TA = Σ r d dᵀ A``, d = x − c): the shift ``b`` of the
    weighted mean from c (D,), and about that mean the scatter times A, ``S A = TA − R b (bᵀA)``
    (D, l), and the scatter's diagonal ``s2 − R b²`` (D,)."""
    b = first / mass
    return b, TA - mass * np.outer(b, b @ A), second - mass * b * b


def fa_m_step(mass: float, first: np.ndarray, TA: np.ndarray, second: np.ndarray, A: np.ndarray,
              m_inv: np.ndarray, reg_covar: float, isotropic: bool, prior_rows: float = 0.0,
              prior_CA: np.ndarray | None = None, prior_diag: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One component's M-step: the mean shift ``b`` (D,), loadings ``W`` (D, q) and noise ``psi`` (D,).

    ``mass``, ``first``, ``second`` are the sums about the current mean, ``TA = Σ r d dᵀ A``
    (D, q) with ``A = Ψ⁻¹ W M⁻¹`` (so that ``E[z | x] = Aᵀ d``), ``m_inv = M⁻¹ = Cov[z | x]``.
    The mean moves to the weighted mean (``b = s1 / R``); about it, with the scatter ``S``
    divided by R (or, with ``prior_rows`` = ν > 0, ``(S + ν C) / (R + ν)`` for the class's
    covariance C given as ``prior_CA = C A`` and ``prior_diag = diag C``)::

        W   = S A (M⁻¹ + Aᵀ S A)⁻¹
        psi = diag(S) − rowsum(W ∘ S A)        floored at reg_covar

    (the EM update of factor analysis; ``isotropic``: one σ² = the mean of that diagonal,
    Tipping & Bishop's PPCA update). Each EM step does not decrease the likelihood.
    """
    b, SA, diag = centred_moments(mass, first, TA, second, A)
    denom = mass
    if prior_rows > 0:
        SA = SA + prior_rows * prior_CA
        diag = diag + prior_rows * prior_diag
        denom = mass + prior_rows
    SA /= denom
    diag /= denom
    G = m_inv + A.T @ SA
    G = 0.5 * (G + G.T)
    W = np.linalg.solve(G, SA.T).T
    psi = diag - np.einsum("ij,ij->i", W, SA)
    return b, W, floor_noise(psi, reg_covar, isotropic)


def floor_noise(psi: np.ndarray, reg_covar: float, isotropic: bool) -> np.ndarray:
    """``psi`` floored at ``reg_covar``; ``isotropic``: its mean, floored, in every feature."""
    if isotropic:
        return np.full(psi.shape, max(float(np.mean(psi)), reg_covar))
    return np.maximum(psi, reg_covar)


def m_step_component(mass: float, first: np.ndarray, proj: np.ndarray, second: np.ndarray, W: np.ndarray,
                     psi: np.ndarray, reg_covar: float, isotropic: bool, prior_rows: float = 0.0,
                     prior: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fa_m_step` of E-step sums (``proj = Σ r d dᵀ A'``, see the module docstring) under
    the current ``W`` (D, q) and ``psi`` (D,): ``A = A' L^{-1}`` and ``M⁻¹ = L^{-T} L^{-1}``.
    ``prior``: the class covariance C as ``(W_c, psi_c)`` factors of
    :func:`mixture_covariance_factors`, weighed as ``prior_rows`` rows."""
    f = prepare(W, psi)
    q = f.rank
    L_inv = np.linalg.solve(f.chol_m, np.eye(q)) if q else np.zeros((0, 0))
    m_inv = L_inv.T @ L_inv
    A = (W / f.psi[:, None]) @ m_inv
    CA = diag_c = None
    if prior_rows > 0 and prior is not None:
        Wc, psi_c = prior
        CA = Wc @ (Wc.T @ A) + psi_c[:, None] * A
        diag_c = np.einsum("ij,ij->i", Wc, Wc) + psi_c
    return fa_m_step(mass, first, proj @ L_inv, second, A, m_inv, reg_covar, isotropic,
                     prior_rows if CA is not None else 0.0, CA, diag_c)


def mixture_covariance_factors(weights: np.ndarray, means: np.ndarray, loadings: np.ndarray, noise: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The covariance of a mixture of low-rank Gaussians (weights (M,), means (M, D), loadings
    (M, D, q), noise (M, D)) as ``F Fᵀ + diag(psi)``: F (D, M (q + 1)) stacks ``√w_m W_m`` and
    ``√w_m (mu_m − mu)``, psi = Σ w_m psi_m. Within plus between components, never D×D."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu = w @ means
    cols = [np.sqrt(w[m]) * loadings[m] for m in range(len(w))]
    cols += [np.sqrt(w[m]) * (means[m] - mu)[:, None] for m in range(len(w))]
    return np.concatenate(cols, axis=1), w @ noise


def nystrom_init(mass: float, first: np.ndarray, TO: np.ndarray, second: np.ndarray, omega: np.ndarray, rank: int,
                 reg_covar: float, isotropic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A starting point (mean shift ``b``, ``W`` (D, q), ``psi``) from hard-assignment sums with the sketch
    ``TO = Σ d dᵀ Ω``: the Nyström approximation ``Y (ΩᵀY)⁻¹ Yᵀ`` of the covariance from
    ``Y = S Ω`` (S about the weighted mean, divided by R), its top-q eigenpairs (λ, U), and
    ``W = U (λ − σ²)^½`` with ``σ²`` the mean of the rest of the trace (Tipping & Bishop);
    ``psi`` = σ² (``isotropic``) or ``diag(S) − rowsum(W²)``, floored at ``reg_covar``."""
    b, Y, diag = centred_moments(mass, first, TO, second, omega)
    Y /= mass
    diag = np.maximum(diag / mass, 0.0)
    D = len(first)
    G = omega.T @ Y
    G = 0.5 * (G + G.T)
    shift = np.finfo(np.float64).eps * max(float(np.trace(G)), 1e-300) * G.shape[0]
    lam, V = np.linalg.eigh(G)
    keep = lam > shift  # the pseudo-inverse square root of Ωᵀ Y on its numerical range
    F = Y @ (V[:, keep] / np.sqrt(lam[keep]))
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    q = int(rank)
    eig = np.zeros(q)
    basis = np.zeros((D, q))
    n = min(q, len(s))
    eig[:n], basis[:, :n] = s[:n] ** 2, U[:, :n]
    sigma2 = max((float(diag.sum()) - float(eig.sum())) / max(D - q, 1), reg_covar)
    W = basis * np.sqrt(np.maximum(eig - sigma2, 0.0))
    psi = np.full(D, sigma2) if isotropic else diag - np.einsum("ij,ij->i", W, W)
    return b, W, floor_noise(psi, reg_covar, isotropic)
