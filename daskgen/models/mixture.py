"""A Gaussian mixture per class: the model, its sampler and scorer, and its store layout.

The class-conditional density of class y is a mixture of M Gaussians,
``p(x | y) = sum_m w[y, m] N(x; mu[y, m], Sigma[y, m])``, and the class prior is
``p(y) = n_y / n`` as in :class:`~daskgen.models.gaussian.GaussianClassModel`.
Registered as the model kind ``"mixture"``; fitted by EM (:mod:`daskgen.models.mixture_em`
in memory, :mod:`daskgen.distributed.em` on Dask). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..kernels.estep import Components
from ..kernels.linalg import ClassFactor, cholesky_factor, factor_covariance, logsumexp_rows
from ..kernels.sampling import Sampler, draw_components
from ..kernels.weighted import WeightedStats
from .base import ClassModel, check_features, fingerprint_arrays, meta_fields, read_arrays, stored_data_range
from .memory import F8, Copies, StageMemory, Workload, class_memory_plan
from .registry import register

if TYPE_CHECKING:
    from .mixture_em import Params


class MixtureSampler(Sampler):
    """:class:`~daskgen.kernels.sampling.Sampler` of a mixture: a class, then one of its components, then a draw.

    The components are the Sampler's Gaussians (flat index ``k * M + m``, prior
    ``p(y) w[y, m]``, factors from :meth:`GaussianMixtureClassModel.sampling_factors`).
    ``draw_classes`` returns class indices, as for a single Gaussian per class, so
    ``daskgen.generate`` labels rows the same way; ``draw`` picks each row's component
    from its class's weights.
    """

    def __init__(self, model: GaussianMixtureClassModel, dtype: Any = np.float64):
        K, M, D = model.means.shape
        super().__init__((model.priors[:, None] * model.weights).ravel(), model.means.reshape(K * M, D),
                         model.sampling_factors(), dtype)
        self.class_priors = np.asarray(model.priors, dtype=np.float64)
        w = np.asarray(model.weights, dtype=np.float64)
        self.component_weights = w / w.sum(axis=1, keepdims=True)
        self.n_components = int(w.shape[1])

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return super().draw(draw_components(class_index, self.component_weights, rng), rng)


@dataclass(frozen=True, eq=False)
class MixtureScorer:
    """What scoring rows under a per-class mixture needs: small and picklable (no covariances)."""

    priors: np.ndarray  # (K,)
    components: Components
    fingerprint: str

    @property
    def classes(self) -> np.ndarray:
        return self.components.classes

    def component_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log w[k, m] + log N(x; mu[k, m], Sigma[k, m]) for every row, shape (n, K, M)."""
        X = np.ascontiguousarray(check_features(X, self.components.means.shape[2]))
        return np.stack([self.components.component_log_prob(X, k) for k in range(len(self.classes))], axis=1)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K) (log-sum-exp over components)."""
        lp = self.component_log_likelihood(X)
        n, K, M = lp.shape
        return logsumexp_rows(lp.reshape(n * K, M)).reshape(n, K)


#: The memory plan of a mixture per class, in copies of its statistic (K * M * D**2 * 8
#: bytes for full covariances) per stage (see ``daskgen.models.gaussian.GAUSSIAN_COPIES``).
#: fit: em — a pass's fixed tree holds up to ``split_every`` statistics and their total on
#: a worker, plus the precision factors every task reads (shipped), and one statistic per running
#: task; the client holds the parameters, the precision factors and the merged statistic
#: (plus the initial sample, and the persisted blocks on the workers: see
#: :meth:`GaussianMixtureClassModel.memory_plan`); write — covariances and factors.
#: sample: Cholesky factors (and the float32 sampler); evaluate: the precision factors.
MIXTURE_COPIES: dict[str, dict[str, Copies]] = {
    "fit": {"em": Copies(worker=2, per_task=1, client=3, shipped=1), "write": Copies(client=2, classes=10)},
    "sample": {"load": Copies(client=1), "factor": Copies(client=2.5),
               "draw": Copies(worker=0.5, client=2.5, shipped=0.5)},
    "evaluate": {"load": Copies(client=1), "factor": Copies(client=2), "score": Copies(worker=1, client=2, shipped=1)},
}


def with_em_rows(plan: dict[str, StageMemory], n_classes: int, n_features: int,
                 options: Workload, sample_copies: float = 1) -> dict[str, StageMemory]:
    """A mixture fit's plan with what its ``em`` stage holds beside the statistics: the
    input's rows, persisted as read across the workers between passes, and the initial
    sample on the client (``options.extra["init_sample"]`` rows per class, float64;
    ``sample_copies`` of it)."""
    D = int(n_features)
    rows = options.rows or 0
    persisted = rows * D * options.itemsize // max(options.workers, 1)
    init = min(rows or n_classes * 10_000, n_classes * int(options.extra.get("init_sample", 10_000))) * D * F8
    init = int(init * sample_copies)
    em = plan["em"]
    plan["em"] = replace(em, worker=em.worker + persisted, client=em.client + init,
                         dominant=em.dominant + (" + the persisted rows" if persisted > 0.1 * em.worker else ""))
    return plan


class PerClassMixture:
    """What every per-class mixture kind shares, given its ``priors`` (K,), ``weights`` (K, M),
    ``means`` (K, M, D), ``fingerprint`` and ``components`` (what an E-step needs: log-weights,
    means and ``component_log_prob``): shape, class means, component means, and scoring
    through a :class:`MixtureScorer`."""

    @staticmethod
    def em_fields(stats: Any, summary: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """The fields every mixture kind takes from EM's last statistics and ``summary``
        (counts, priors, mass, data range; ``config["em"]`` = ``summary``), with ``meta``."""
        counts = stats.counts.astype(np.int64)
        config = {**meta.pop("config", {}), "em": summary}
        lo, hi = summary.get("data_range", [np.nan, np.nan])
        return {"counts": counts, "priors": counts / counts.sum(), "mass": stats.mass.copy(),
                "data_range": (float(lo), float(hi)), "config": config, **meta}

    priors: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    fingerprint: str
    components: Any

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[2])

    @property
    def class_means(self) -> np.ndarray:
        """Mean of each class's mixture, (K, D)."""
        return np.einsum("km,kmd->kd", self.weights, self.means)

    def component_means(self) -> tuple[np.ndarray, np.ndarray]:
        return self.means, self.weights

    def display_range(self) -> tuple[float, float]:
        """The range of the component means (model units)."""
        return float(self.means.min()), float(self.means.max())

    def scorer(self) -> MixtureScorer:
        """The priors and :attr:`components` (no covariances): small to ship to tasks."""
        return MixtureScorer(self.priors, self.components, self.fingerprint)

    def component_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log w[k, m] + log p_m(x) for every row, class and component, shape (n, K, M)."""
        return self.scorer().component_log_likelihood(X)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K) (log-sum-exp over components)."""
        return self.scorer().class_log_likelihood(X)


@register
@dataclass(repr=False)
class GaussianMixtureClassModel(PerClassMixture, ClassModel):
    """A prior over classes and a mixture of Gaussians per class.

    The interface of :class:`~daskgen.models.base.ClassModel` with, per class k and
    component m:

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

    kind = "mixture"
    spectrum_scope = " (of each class's whole mixture)"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    mass: np.ndarray
    data_range: tuple[float, float] = (np.nan, np.nan)

    @classmethod
    def from_params(cls, params: Params, stats: WeightedStats, summary: dict[str, Any],
                    **meta: Any) -> GaussianMixtureClassModel:
        """The model of EM's last parameters and statistics; ``summary`` goes to ``config["em"]``."""
        return cls(classes=params.classes, weights=params.weights, means=params.means,
                   covariances=params.covariances, **cls.em_fields(stats, summary, dict(meta)))

    @classmethod
    def memory_plan(cls, n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory]:
        """See :data:`MIXTURE_COPIES`. The fit's tree holds ``split_every`` statistics per
        merge; the workers keep the input's rows (persisted, as read) between passes; the
        client holds the initial sample (``extra["init_sample"]`` rows per class, float64)."""
        table = MIXTURE_COPIES
        if options.command != "fit":
            return class_memory_plan(n_classes, n_features, options, table)
        table = {"fit": {**table["fit"], "em": Copies(worker=options.split_every + 2, per_task=1, client=3, shipped=1)}}
        return with_em_rows(class_memory_plan(n_classes, n_features, options, table), n_classes, n_features, options)

    # -- shape -------------------------------------------------------------
    @property
    def covariance_type(self) -> str:
        return "diag" if self.covariances.ndim == 3 else "full"

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_arrays(self.classes, self.priors, self.weights, self.means, self.covariances,
                                  *self.transform.fingerprint_parts())

    # -- derived -----------------------------------------------------------
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

    def sampling_factors(self) -> list:
        """Every component's factor for the sampler, flat index ``k * M + m``: the Cholesky
        factor where its covariance is positive definite (always, with ``reg_covar`` > 0;
        ~30x cheaper than an eigendecomposition and QR), else its PSD root."""
        K, M = self.weights.shape
        out = []
        for k in range(K):
            for m in range(M):
                cov = self.covariances[k, m]
                ready = cholesky_factor(cov) if cov.ndim == 2 else None
                out.append(ready if ready is not None else factor_covariance(cov))
        return out

    @cached_property
    def components(self) -> Components:
        """Log-weights, means and precision factors of every component (what an E-step needs)."""
        try:
            return Components.from_covariances(self.classes, self.weights, self.means, self.covariances)
        except ValueError as exc:
            raise ModelError(str(exc)) from None

    def spectra(self) -> list[np.ndarray]:
        return [f.eigvals for f in self.factors]

    # -- scoring -----------------------------------------------------------
    # -- sampling and persistence ------------------------------------------
    def sampler(self, dtype: Any = np.float64) -> MixtureSampler:
        return MixtureSampler(self, dtype)

    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``counts``, ``priors``, ``weights``, ``mass``, ``means``, ``covariances``
        (no ``scatter``) and the attribute ``components: M``."""
        arrays = {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "weights": np.asarray(self.weights, dtype=np.float64),
            "mass": np.asarray(self.mass, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
            "covariances": np.asarray(self.covariances, dtype=np.float64),
        }
        return arrays, {"components": int(self.n_components)}

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> GaussianMixtureClassModel:
        a = read_arrays(group, ("counts", "priors", "weights", "mass", "means", "covariances"), url)
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
        return cls(classes=classes, counts=a["counts"], priors=a["priors"], weights=a["weights"], means=a["means"],
                   covariances=a["covariances"], mass=a["mass"], data_range=stored_data_range(meta),
                   **meta_fields(meta))
