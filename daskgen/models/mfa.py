"""A mixture of low-rank Gaussians per class (mixtures of factor analysers or of
probabilistic PCA): the model, its sampler and scorer, and its store layout.

The class-conditional density of class y is
``p(x | y) = sum_m w[y, m] N(x; mu[y, m], W[y, m] W[y, m]ᵀ + diag psi[y, m])`` with loadings
``W`` (D, q) and noise variances ``psi`` (D,) — one value for every feature with
``ppca`` — and the class prior ``p(y) = n_y / n``. Registered as the model kind ``"mfa"``;
fitted by EM (:mod:`daskgen.models.mfa_em` in memory, :mod:`daskgen.distributed.em` on
Dask). Scoring (Woodbury and the determinant lemma) and sampling (``mu + W z + √psi ε``)
cost O(D·q) per row and component, through :mod:`daskgen.kernels.lowrank`; nothing here
forms a D×D array. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ModelError
from ..kernels.lowrank import LowRankSampler
from ..kernels.mfa import LowRankComponents, LowRankStats, mixture_covariance_factors
from ..kernels.sampling import draw_components
from .base import ClassModel, fingerprint_arrays, meta_fields, read_arrays, stored_data_range
from .lowrank import LOW_RANK
from .memory import DEFAULT_RANK, F8, Copies, StageMemory, Workload, copies_plan, size_text
from .mixture import MIXTURE_COPIES, PerClassMixture, with_em_rows
from .registry import register

if TYPE_CHECKING:
    from .mfa_em import LowRankParams


class LowRankMixtureSampler(LowRankSampler):
    """Draws a class, then one of its components, then ``mu + W z + √psi ε`` (the components
    are the flat Gaussians ``k * M + m`` of :class:`~daskgen.kernels.lowrank.LowRankSampler`)."""

    def __init__(self, model: LowRankMixtureClassModel, dtype: Any = np.float64):
        K, M, D = model.means.shape
        super().__init__((model.priors[:, None] * model.weights).ravel(), model.means.reshape(K * M, D),
                         model.loadings.reshape(K * M, D, model.rank), model.noise.reshape(K * M, D), dtype)
        self.class_priors = np.asarray(model.priors, dtype=np.float64)
        w = np.asarray(model.weights, dtype=np.float64)
        self.component_weights = w / w.sum(axis=1, keepdims=True)

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return super().draw(draw_components(class_index, self.component_weights, rng), rng)


@register
@dataclass(repr=False)
class LowRankMixtureClassModel(PerClassMixture, ClassModel):
    """A prior over classes and a mixture of low-rank Gaussians per class.

    Attributes
    ----------
    weights : ndarray (K, M)
        Component weights (rows sum to 1; 0 for a dropped component).
    means : ndarray (K, M, D)
        Component means, model units.
    loadings : ndarray (K, M, D, q)
        Each component's W.
    noise : ndarray (K, M, D)
        Each component's noise variances psi (>= reg_covar; constant across features for ``ppca``).
    mass : ndarray (K, M)
        Responsibility mass of each component in the last E-step (rows' worth).
    noise_model : "ppca" or "fa"
    """

    kind: ClassVar[str] = "mfa"
    spectrum_scope: ClassVar[str] = " (low-rank part of each class's mixture covariance)"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    loadings: np.ndarray
    noise: np.ndarray
    mass: np.ndarray
    noise_model: str = "fa"
    data_range: tuple[float, float] = (np.nan, np.nan)

    ARRAYS: ClassVar[tuple[str, ...]] = ("counts", "priors", "weights", "mass", "means", "loadings", "noise")

    @classmethod
    def memory_plan(cls, n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory]:
        """The mixtures' plan (:data:`~daskgen.models.mixture.MIXTURE_COPIES`, with the
        persisted rows and the initial sample) in copies of the per-(class, component)
        statistics, O(K·M·D·q): fit — K·M·D·ℓ·8 (the initial pass's sketches of ℓ = q +
        10 columns; the E-steps' projections have q); the client holds the parameters,
        the prepared components, the merged statistics and the M-step's new loadings (4);
        sample/evaluate — the loadings, K·M·D·q·8. Nothing is D×D. The initial sample
        counts twice: with one copy the plan was 1% below the peak measured at D = 784
        (``benchmarks/memory.py --kinds mfa28``), where the sample dominates."""
        K, M, D = int(n_classes), int(options.components), int(n_features)
        q = int(options.rank or DEFAULT_RANK)
        if options.command != "fit":
            unit = K * M * D * q * F8
            name = f"loadings (K·M·D·q·8, q = {q}: {size_text(unit)})"
            return copies_plan(unit, name, K * M, D, options, MIXTURE_COPIES)
        width = min(q + 10, D)
        unit = K * M * D * width * F8
        name = f"statistics (K·M·D·ℓ·8, ℓ = {width}: {size_text(unit)})"
        table = {"fit": {**MIXTURE_COPIES["fit"], "em": Copies(worker=options.split_every + 2, per_task=1, client=4,
                                                              shipped=1)}}
        return with_em_rows(copies_plan(unit, name, K * M, D, options, table), K, D, options, sample_copies=2)

    @classmethod
    def from_params(cls, params: LowRankParams, stats: LowRankStats, summary: dict[str, Any],
                    **meta: Any) -> LowRankMixtureClassModel:
        """The model of EM's last parameters and statistics; ``summary`` goes to ``config["em"]``."""
        fields = cls.em_fields(stats, summary, dict(meta))
        return cls(classes=params.classes, weights=params.weights, means=params.means, loadings=params.loadings,
                   noise=params.noise, noise_model=fields["config"].get("covariance", "fa"), **fields)

    # -- shape -------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.loadings.shape[3])

    @property
    def covariance_type(self) -> str:
        return self.noise_model

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_arrays(self.classes, self.priors, self.weights, self.means, self.loadings, self.noise,
                                  *self.transform.fingerprint_parts())

    # -- derived -----------------------------------------------------------
    @property
    def class_covariances(self) -> np.ndarray:
        raise ValueError("an mfa model keeps no D x D covariance: each component's is loadings @ loadings.T "
                         "+ diag(noise)")

    def spectra(self) -> list[np.ndarray]:
        """Per class, the eigenvalues of the low-rank part ``F Fᵀ`` of its mixture's covariance
        (within and between components, :func:`~daskgen.kernels.mfa.mixture_covariance_factors`),
        descending; the noise variances come on top."""
        out = []
        for k in range(self.n_classes):
            F, _ = mixture_covariance_factors(self.weights[k], self.means[k], self.loadings[k], self.noise[k])
            s = np.linalg.svd(F, compute_uv=False) ** 2
            out.append(s[s > 1e-12 * max(s.max(initial=0.0), 1e-300)])
        return out

    @cached_property
    def components(self) -> LowRankComponents:
        """Log-weights, means and prepared factors of every component (what scoring needs)."""
        try:
            return LowRankComponents.from_params(self.classes, self.weights, self.means, self.loadings, self.noise)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ModelError(str(exc)) from None

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "rank": self.rank}

    # -- sampling and persistence ------------------------------------------
    def sampler(self, dtype: Any = np.float64) -> LowRankMixtureSampler:
        return LowRankMixtureSampler(self, dtype)

    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``counts``, ``priors``, ``weights``, ``mass``, ``means``, ``loadings`` (K, M, D, q),
        ``noise`` (K, M, D) — no D×D array — and the attributes ``components`` and ``rank``."""
        arrays = {name: np.asarray(getattr(self, name), dtype=np.int64 if name == "counts" else np.float64)
                  for name in self.ARRAYS}
        return arrays, {"components": self.n_components, "rank": self.rank}

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> LowRankMixtureClassModel:
        a = read_arrays(group, cls.ARRAYS, url)
        K, M, q = len(classes), meta.get("components"), meta.get("rank")
        D = a["means"].shape[2] if a["means"].ndim == 3 else -1
        noise_model = meta.get("covariance_type")
        if (
            noise_model not in LOW_RANK
            or a["means"].shape != (K, M, D)
            or a["counts"].shape != (K,) or a["priors"].shape != (K,)
            or a["weights"].shape != (K, M) or a["mass"].shape != (K, M)
            or a["loadings"].shape != (K, M, D, q) or a["noise"].shape != (K, M, D)
            or not all(np.isfinite(a[k]).all() for k in cls.ARRAYS)
            or not (a["noise"] > 0).all()
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        return cls(classes=classes, noise_model=noise_model, data_range=stored_data_range(meta), **a,
                   **meta_fields(meta))
