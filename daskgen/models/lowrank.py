"""Low-rank class models: probabilistic PCA (``ppca``) and factor analysis (``fa``).

Pure numpy. Each class has a mean, loadings ``W`` (D, q) and noise variances ψ (D,):
``p(x | y = k) = N(μ_k, W_k W_kᵀ + diag ψ_k)``. Parameters come from each class's
spectrum as the randomized sketches give it (:mod:`daskgen.kernels.sketch`): the top
Ritz values θ (ℓ,) and vectors U (D, ℓ) of the centered scatter S, with the exact
per-feature variances. Nothing here forms a D×D matrix; scoring and sampling go through
:mod:`daskgen.kernels.lowrank` at O(D·q) per row.

* ``ppca`` (Tipping & Bishop 1999): with λ = θ/(n − 1) the covariance's top eigenvalues,
  ``σ² = (trace(S)/(n − 1) − Σ_{i≤q} λ_i)/(D − q)`` and ``W = U_q (Λ_q − σ² I)^½``; then
  ``reg_covar`` is added to the noise, which is exactly adding it to the covariance's
  diagonal (as the ``gaussian`` kind does): ``ψ = σ² + reg_covar`` on every feature.
* ``fa``: EM for factor analysis (Rubin & Thayer 1982) run in memory against the
  covariance as the sketch sees it, ``Ŝ = U diag(λ) Uᵀ + diag(r)``: the ℓ Ritz pairs
  plus the exact per-feature variance they leave (``r = var − diag(U Λ Uᵀ)`` ≥ 0), so
  ``diag Ŝ`` is the exact variance. Each iteration costs O(D·ℓ·q) and no data pass.
  ψ is floored at ``reg_covar`` (a constrained M-step: ψ_i ← max(ψ_i, reg_covar)),
  so pixels that never vary keep the dequantization noise's variance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelError
from ..kernels import lowrank
from ..kernels.class_stats import ClassStats
from .base import ClassModel, check_features, fingerprint_arrays, meta_fields, read_arrays, stored_data_range
from .memory import DEFAULT_RANK, F8, Copies, StageMemory, Workload, copies_plan, merge_fan_in, size_text
from .registry import register

#: The covariance options of the low-rank kinds (also their kind names).
LOW_RANK = ("ppca", "fa")
#: EM for factor analysis: most iterations, and the change in mean log-likelihood per
#: row (nats) below which it stops — scikit-learn's FactorAnalysis default. On
#: Fashion-MNIST (q = 64) 1e-3 took 2.5x the iterations for 0.0002 bits/dim.
FA_MAX_ITER = 500
FA_TOL = 1e-2
#: Columns of the sketch beyond the rank when the workload does not say (``--oversampling``'s default).
OVERSAMPLING = 10

#: The memory plan of the low-rank kinds, in copies of their unit: for ``fit`` one
#: sketch, K·D·ℓ·8 bytes (ℓ = rank + oversampling: every class's (D, ℓ) S·Ω, S·Q or Q);
#: for ``sample``/``evaluate`` the loadings, K·D·q·8 (:mod:`daskgen.distributed.lowrank`).
#: fit: sketch — the merge's total and one partial per running task (with its Ω,
#: regenerated: one class's share), plus the partials of the fixed tree (see
#: :meth:`LowRankClassModel.memory_plan`); the client receives the merged sketch (its
#: frames and the array) and orthonormalizes it into Q. range — the 1 + power_iterations
#: passes of S·Q: every worker receives Q (frames and array: 2; 1 in the client's
#: process), and holds a total, one partial per task and the tree's partials; the
#: client holds Q, the received S·Q (frames and array), the products and the next Q.
#: factor — Rayleigh–Ritz on the client (Q, S·Q, the Ritz vectors, and the loadings,
#: K·D·q), then each class's W from its spectrum (``fa``: its EM workspace).
#: sample: the loadings and the sampler (its copy in the working dtype), shipped to the
#: workers; evaluate: the loadings and the prepared factors (B = Ψ^-½ W L^-ᵀ per class), shipped.
#: Calibrated by benchmarks/memory.py (``--kinds``): at D = 65,536 the tree's waiting
#: partials are what a worker process's peak is made of.
LOWRANK_COPIES: dict[str, dict[str, Copies]] = {
    "fit": {"sketch": Copies(worker=1, per_task=1, client=3, task_classes=1),
            "range": Copies(worker=3, per_task=1, client=5, shipped=1), "factor": Copies(client=4)},
    "sample": {"load": Copies(client=1), "draw": Copies(worker=1, client=2, shipped=1)},
    "evaluate": {"load": Copies(client=1), "score": Copies(worker=1, client=2, shipped=1)},
}


def ppca_parameters(eigvals: np.ndarray, basis: np.ndarray, total_variance: float, rank: int,
                    reg_covar: float = 0.0) -> tuple[np.ndarray, float]:
    """``(W (D, q), ψ)`` of PPCA from the covariance's top eigenvalues (descending) and
    eigenvectors ``basis`` (D, ≥ q), and its trace (Tipping & Bishop's maximum
    likelihood, with ``reg_covar`` added to the noise)."""
    D = basis.shape[0]
    top = np.asarray(eigvals[:rank], dtype=np.float64)
    sigma2 = max((float(total_variance) - top.sum()) / (D - rank), 0.0) if D > rank else 0.0
    W = basis[:, :rank] * np.sqrt(np.maximum(top - sigma2, 0.0))
    return np.ascontiguousarray(W), sigma2 + float(reg_covar)


def fa_parameters(eigvals: np.ndarray, basis: np.ndarray, variances: np.ndarray, rank: int, reg_covar: float,
                  max_iter: int = FA_MAX_ITER, tol: float = FA_TOL) -> tuple[np.ndarray, np.ndarray, int]:
    """``(W (D, q), ψ (D,), iterations)`` of factor analysis by EM against
    ``Ŝ = basis diag(eigvals) basisᵀ + diag(r)``, ``r`` the variance the Ritz pairs leave.

    ψ ≥ ``reg_covar`` (which must be > 0). O(D·ℓ·q) per iteration; never D×D.
    """
    if not reg_covar > 0:
        raise ValueError("factor analysis needs reg_covar > 0 (the floor of its per-feature noise)")
    lam = np.maximum(np.asarray(eigvals, dtype=np.float64), 0.0)
    U = np.asarray(basis, dtype=np.float64)
    low = np.einsum("ij,ij,j->i", U, U, lam)
    resid = np.maximum(np.asarray(variances, dtype=np.float64) - low, 0.0)
    diag_s = low + resid
    D = U.shape[0]

    def s_times(B: np.ndarray) -> np.ndarray:  # Ŝ B for B (D, q)
        return U @ (lam[:, None] * (U.T @ B)) + resid[:, None] * B

    W, _ = ppca_parameters(lam, U, diag_s.sum(), rank)
    psi = np.maximum(diag_s - np.einsum("ij,ij->i", W, W), reg_covar)
    eye = np.eye(rank)
    previous = -np.inf
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        A = W / psi[:, None]  # Ψ⁻¹ W
        M = eye + W.T @ A
        L = np.linalg.cholesky(M)
        Linv = np.linalg.solve(L, eye)
        Minv = Linv.T @ Linv
        # log-likelihood per row of the current parameters: −½ (D log 2π + log|C| + tr(C⁻¹ Ŝ))
        SA = s_times(A)
        trace = float((diag_s / psi).sum() - np.einsum("ij,ij->", Minv, A.T @ SA))
        ll = -0.5 * (D * lowrank.LOG_2PI + np.log(psi).sum() + 2 * np.log(np.diagonal(L)).sum() + trace)
        if ll - previous < tol:
            break
        previous = ll
        beta_t = A @ Minv  # βᵀ = Ψ⁻¹ W M⁻¹ (D, q)
        SB = SA @ Minv  # Ŝ βᵀ
        E = Minv + beta_t.T @ SB
        W = np.linalg.solve(E, SB.T).T  # Ŝ βᵀ E⁻¹ (E is symmetric)
        psi = np.maximum(diag_s - np.einsum("ij,ij->i", W, SB), reg_covar)
    return np.ascontiguousarray(W), psi, it


@dataclass(frozen=True, eq=False)
class LowRankScorer:
    """What scoring rows needs: means and prepared factors (O(K·D·q)), picklable."""

    classes: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    factors: tuple[lowrank.LowRankFactor, ...]
    fingerprint: str

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k), shape (n, K), by Woodbury: O(D·q) per row and class."""
        X = check_features(X, self.means.shape[1])
        return lowrank.log_density_many(X, self.means, self.factors)


@dataclass(repr=False)
class LowRankClassModel(ClassModel):
    """A prior over classes and, per class, ``N(mean, W Wᵀ + diag ψ)``.

    Attributes
    ----------
    classes, counts, priors : (K,)
    means : (K, D) model units
    loadings : (K, D, q) the W of each class
    noise : (K, D) ψ of each class (constant across features for ``ppca``)
    eigenvalues : (K, ℓ) the Ritz values of each class covariance (S/(n − 1)), descending
    variances : (K, D) each class's exact per-feature variance (diag S/(n − 1))
    minimum, maximum : the training data's range, model units
    """

    kind: ClassVar[str] = "lowrank"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    loadings: np.ndarray
    noise: np.ndarray
    eigenvalues: np.ndarray
    variances: np.ndarray
    minimum: float = np.nan
    maximum: float = np.nan

    ARRAYS: ClassVar[tuple[str, ...]] = ("counts", "priors", "means", "loadings", "noise", "eigenvalues", "variances")

    @classmethod
    def parameters(cls, eigvals: np.ndarray, basis: np.ndarray, variances: np.ndarray, rank: int,
                   reg_covar: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(W, ψ (D,), info)`` of one class from its spectrum (a kind implements it)."""
        raise NotImplementedError

    #: per-class (D, ℓ)-sized arrays the client holds while one class's parameters are made
    #: (beyond the sketch's copies): ppca's W; fa's EM workspace, see :func:`fa_parameters`
    PARAMETER_WORKSPACE: ClassVar[float] = 1

    @classmethod
    def memory_plan(cls, n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory]:
        """See :data:`LOWRANK_COPIES`; nothing is D×D. A worker holds the partials of the
        merge it runs, ``split_every`` (or as many as there are blocks: every block holds
        most classes), and as many again of the next merge (finished meanwhile, or
        arriving from another worker): 2 x fan-in sketches. A task's block stays as read
        (uint8) and one class's rows at a time become float64 (centered in place; twice
        a class's share of the rows, for unbalanced classes). ``options.extra`` may say ``oversampling``."""
        K, D = int(n_classes), int(n_features)
        q = int(options.rank or DEFAULT_RANK)
        width = min(q + int(options.extra.get("oversampling", OVERSAMPLING)), D)
        table = LOWRANK_COPIES
        if options.command == "fit":
            merge = 2 * merge_fan_in(options)
            ship = -1 if options.in_process else 0  # Q arrives by no network: one copy
            fit = table["fit"]
            table = {"fit": {"sketch": replace(fit["sketch"], worker=fit["sketch"].worker + merge),
                             "range": replace(fit["range"], worker=fit["range"].worker + merge + ship),
                             "factor": replace(fit["factor"], classes=cls.PARAMETER_WORKSPACE)}}
            unit = K * D * width * F8
            name = f"sketch (K·D·ℓ·8, ℓ = {width}: {size_text(unit)})"
            # a task converts one class's rows at a time: twice a class's share of a block, say
            return copies_plan(unit, name, K, D, options, table, per_row=min(1.0, 2 / K))
        unit = K * D * q * F8
        name = f"loadings (K·D·q·8, q = {q}: {size_text(unit)})"
        return copies_plan(unit, name, K, D, options, table)

    @classmethod
    def from_spectra(cls, stats: ClassStats, eigvals: np.ndarray, bases: np.ndarray, rank: int,
                     reg_covar: float = 0.0, **meta: Any) -> LowRankClassModel:
        """The model of diagonal statistics ``stats`` (counts, means, diag S) and each class's
        top Ritz pairs of S: ``eigvals`` (K, ℓ) and ``bases`` (K, D, ℓ)."""
        if not reg_covar >= 0:
            raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")
        small = [c for c, n in zip(stats.classes.tolist(), stats.counts.tolist()) if n < 2]
        if small:
            raise ValueError(f"class {small[0]!r} has fewer than 2 rows; every class needs at least 2 for a covariance")
        K, D = stats.means.shape
        if not 1 <= rank <= min(D, bases.shape[2]):
            raise ValueError(f"rank must lie in [1, {min(D, bases.shape[2])}], got {rank}")
        dof = (stats.counts.astype(np.float64) - 1)
        lam = eigvals / dof[:, None]
        variances = stats.scatter / dof[:, None]
        loadings, noise, infos = np.empty((K, D, rank)), np.empty((K, D)), []
        for k in range(K):
            loadings[k], noise[k], info = cls.parameters(lam[k], bases[k], variances[k], rank, reg_covar)
            infos.append(info)
        if not (np.isfinite(loadings).all() and np.isfinite(noise).all() and np.isfinite(stats.means).all()):
            raise ValueError(f"the class parameters overflow float64 (data range {stats.minimum:g}..{stats.maximum:g}); "
                             "rescale the data (e.g. --scale)")
        bad = np.flatnonzero(noise.min(axis=1) <= 0)
        if len(bad):
            raise ValueError(f"class {stats.classes[bad[0]]!r}: the noise variance is 0 (the class lies in a "
                             f"{rank}-dimensional subspace); pass a reg_covar > 0")
        config = dict(meta.pop("config", {}))
        config.update(covariance=cls.kind, rank=int(rank), reg_covar=float(reg_covar))
        if any(infos):
            config["per_class"] = infos
        counts = stats.counts
        return cls(classes=stats.classes, counts=counts, priors=counts / counts.sum(), means=stats.means.copy(),
                   loadings=loadings, noise=noise, eigenvalues=lam, variances=variances,
                   minimum=stats.minimum, maximum=stats.maximum, config=config, **meta)

    # -- shape ---------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def rank(self) -> int:
        return int(self.loadings.shape[2])

    @property
    def covariance_type(self) -> str:
        return self.kind

    @property
    def data_range(self) -> tuple[float, float]:
        return (self.minimum, self.maximum)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_arrays(self.classes, self.priors, self.means, self.loadings, self.noise,
                                  *self.transform.fingerprint_parts())

    @cached_property
    def factors(self) -> tuple[lowrank.LowRankFactor, ...]:
        """Each class's covariance prepared for scoring, once per model."""
        return tuple(lowrank.prepare(W, psi) for W, psi in zip(self.loadings, self.noise))

    # -- the interface -------------------------------------------------------
    @property
    def class_means(self) -> np.ndarray:
        return self.means

    @property
    def class_covariances(self) -> np.ndarray:
        raise ValueError(f"a {self.kind} model keeps no D x D covariance: each class's is loadings @ loadings.T "
                         "+ diag(noise)")

    def spectra(self) -> list[np.ndarray]:
        """Per class, the covariance's top eigenvalues as the fit's sketch found them (ℓ)."""
        return [e[e > 0] for e in self.eigenvalues]

    spectrum_scope: ClassVar[str] = "(top eigenvalues of the sketched covariance)"

    def principal_directions(self) -> tuple[np.ndarray, np.ndarray]:
        """Each class's W = U s Vᵀ (thin SVD, O(D·q²)): the directions Uᵀ (K, q, D) and s² (K, q)."""
        K, D, q = self.loadings.shape
        directions, variances = np.empty((K, q, D)), np.empty((K, q))
        for k, W in enumerate(self.loadings):
            U, s, _ = np.linalg.svd(W, full_matrices=False)
            directions[k], variances[k] = U.T, s * s
        return directions, variances

    def scorer(self) -> LowRankScorer:
        return self._scorer

    @cached_property
    def _scorer(self) -> LowRankScorer:
        return LowRankScorer(self.classes, self.priors, self.means, self.factors, self.fingerprint)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        return self._scorer.class_log_likelihood(X)

    def sampler(self, dtype: Any = np.float64) -> lowrank.LowRankSampler:
        return lowrank.LowRankSampler(self.priors, self.means, self.loadings, self.noise, dtype)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "rank": self.rank}

    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``counts``, ``priors``, ``means``, ``loadings`` (K, D, q), ``noise`` (K, D),
        ``eigenvalues`` (K, ℓ), ``variances`` (K, D); no D×D array."""
        arrays = {name: np.asarray(getattr(self, name), dtype=np.int64 if name == "counts" else np.float64)
                  for name in self.ARRAYS}
        return arrays, {"rank": self.rank}

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> LowRankClassModel:
        a = read_arrays(group, cls.ARRAYS, url)
        K, D = a["means"].shape if a["means"].ndim == 2 else (-1, -1)
        q = a["loadings"].shape[2] if a["loadings"].ndim == 3 else -1
        if (
            K < 1 or classes.shape != (K,) or a["counts"].shape != (K,) or a["priors"].shape != (K,)
            or a["loadings"].shape != (K, D, q) or a["noise"].shape != (K, D) or a["variances"].shape != (K, D)
            or a["eigenvalues"].ndim != 2 or a["eigenvalues"].shape[0] != K
            or not all(np.isfinite(a[k]).all() for k in cls.ARRAYS)
            or not (a["noise"] > 0).all()
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        lo, hi = stored_data_range(meta)
        return cls(classes=classes, minimum=lo, maximum=hi, **a, **meta_fields(meta))


@register
@dataclass(repr=False)
class PPCAClassModel(LowRankClassModel):
    """Probabilistic PCA per class: ``W Wᵀ + σ² I`` (see the module docstring)."""

    kind: ClassVar[str] = "ppca"

    @classmethod
    def parameters(cls, eigvals, basis, variances, rank, reg_covar):
        W, psi = ppca_parameters(eigvals, basis, float(variances.sum()), rank, reg_covar)
        return W, np.full(basis.shape[0], psi), {}

    @property
    def noise_variance(self) -> np.ndarray:
        """σ² (+ reg_covar) of each class, (K,)."""
        return self.noise[:, 0].copy()


@register
@dataclass(repr=False)
class FAClassModel(LowRankClassModel):
    """Factor analysis per class: ``W Wᵀ + diag ψ``, ψ ≥ reg_covar (see the module docstring)."""

    kind: ClassVar[str] = "fa"

    #: fa_parameters' workspace for one class: W, Ψ⁻¹W, ŜA, βᵀ, ŜB, the new W and
    #: Ŝ·B's two temporaries, each (D, q) ≤ (D, ℓ)
    PARAMETER_WORKSPACE: ClassVar[float] = 8

    @classmethod
    def parameters(cls, eigvals, basis, variances, rank, reg_covar):
        W, psi, n_iter = fa_parameters(eigvals, basis, variances, rank, reg_covar)
        return W, psi, {"em_iterations": int(n_iter)}
