"""The interface every model kind implements, and the Bayes classifier they share.

A model kind is a prior over classes p(y) and a class-conditional density p(x | y)
in model units (pixel values times ``scale``). Everything outside ``daskgen.models``
— the model store, generation, evaluation, the figures, the CLI — uses a model only
through :class:`ClassModel`, never by asking which class it is. A kind subclasses
:class:`ClassModel`, sets ``kind`` (the name written in the model store) and
registers itself with :func:`daskgen.models.registry.register`.

Pure numpy; this module imports neither Dask nor the model store.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import ModelError, first_line
from ..kernels.class_stats import plain_label
from ..kernels.linalg import factor_covariance, logsumexp_rows
from ..kernels.transform import NONE, Transform
from .memory import StageMemory, Workload


def fingerprint_arrays(*arrays: np.ndarray | Iterator[np.ndarray]) -> str:
    """A short (16 hex digits) SHA-256 of the arrays' bytes (labels: of their text). An
    iterator of arrays hashes as their concatenation (the parts of a (K, D, D) array made
    one class at a time give the whole array's fingerprint)."""
    h = hashlib.sha256()
    for item in arrays:
        for a in item if isinstance(item, Iterator) else (item,):
            a = np.asarray(a)
            if a.dtype.kind in "OUS":
                h.update("\x1f".join(map(str, a.tolist())).encode())
            else:
                h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # the same bytes, not copied
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ClassArray:
    """A large (K, ...) float64 array of a model store, written one class at a time
    (:meth:`ClassModel.class_arrays`): ``write(arrays, k)`` writes class ``k`` into
    ``arrays[name]`` (the store's open arrays by name, those listed before it already
    written) and returns False when the class has none, in which case the store drops
    the array. ``parallel``: one task per class on the cluster (``write`` is picklable).
    ``chunks``: default one class per chunk, ``(1, *shape[1:])``."""

    shape: tuple[int, ...]
    write: Callable[[dict[str, Any], int], bool]
    parallel: bool = False
    chunks: tuple[int, ...] | None = None


class Scorer(Protocol):
    """What a task needs to score rows: small and picklable (see :meth:`ClassModel.scorer`)."""

    classes: np.ndarray
    priors: np.ndarray
    fingerprint: str

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray: ...


class ModelSampler(Protocol):
    """What draws samples (see :meth:`ClassModel.sampler`); picklable, prepared once per run."""

    def draw_classes(self, n: int, rng: np.random.Generator, class_index: int | None = None) -> np.ndarray:
        """Class indices (n,) of ``n`` samples: from the prior, or all ``class_index``."""

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample per entry of ``class_index``: (n, D) in model units, float32 or float64."""


#: The attributes every kind keeps besides its parameters, as stored under ``daskgen``.
META_FIELDS = ("image_shape", "scale", "label_column", "feature_names", "config", "inputs", "transform")


def meta_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :data:`META_FIELDS` from a model store's ``daskgen`` attributes."""
    shape = meta.get("image_shape")
    return {
        "image_shape": tuple(shape) if shape else None,
        "scale": float(meta.get("scale", 1.0)),
        "label_column": meta.get("label_column", "label"),
        "feature_names": meta.get("feature_names"),
        "config": meta.get("config", {}),
        "inputs": meta.get("inputs", []),
        "transform": stored_transform(meta),
    }


def stored_transform(meta: Mapping[str, Any]) -> Transform:
    """The ``transform`` of a model store's attributes; stores written before it: ``none``."""
    try:
        return Transform.from_attrs(meta.get("transform"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"corrupted model store: transform {meta.get('transform')!r}: {first_line(exc)}") from None


@dataclass(frozen=True, eq=False)
class TransformedScorer:
    """A kind's scorer seen from data space: rows x~ go through the transform, and the
    log-Jacobian is added, so ``class_log_likelihood`` is log p(x~ | y), a density of x~."""

    inner: Scorer
    transform: Transform

    @property
    def classes(self) -> np.ndarray:
        return self.inner.classes

    @property
    def priors(self) -> np.ndarray:
        return self.inner.priors

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x~ | y = k) for rows ``X`` (n, D) in data space: (n, K) float64."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return self.inner.class_log_likelihood(self.transform.forward(X)) + self.transform.log_det(X)[:, None]


def stored_data_range(meta: Mapping[str, Any]) -> tuple[float, float]:
    """``data_range`` of a model store's attributes (NaN where unknown)."""
    lo, hi = meta.get("data_range") or [None, None]
    return (np.nan if lo is None else float(lo), np.nan if hi is None else float(hi))


def read_arrays(group: Any, names: tuple[str, ...], url: str) -> dict[str, np.ndarray]:
    """The named arrays of an open store group; ``ModelError`` when one cannot be read."""
    try:
        return {k: np.asarray(group[k][...]) for k in names}
    except Exception as exc:
        raise ModelError(f"{url}: corrupted model store: {first_line(exc)}") from None


@dataclass(kw_only=True)
class ClassModel(ABC):
    """The interface of a model kind: a prior over classes and a density per class.

    Attributes every kind has: ``classes`` (K,) sorted labels, ``counts`` (K,) int64
    training rows, ``priors`` (K,) float64 (the kind's fields or properties), and the
    keyword-only fields declared here (:data:`META_FIELDS`): ``image_shape`` (H, W) or
    None, ``scale`` (pixel units -> model units), ``label_column``, ``feature_names``,
    ``config`` (the fit's options, JSON-able) and ``inputs`` (the fit's input manifest).
    A kind is a ``@dataclass`` subclass; it implements the abstract members below, and
    the rest have defaults built on them.

    ``transform`` (:class:`~daskgen.kernels.transform.Transform`) says how the kind's
    *features* are made from data: ``none``, the features are the data in model units;
    ``logit``, they are logit(lam + (1 - 2 lam) x~) of the dequantized data x~ in
    [0, 1]. The kind's own members (means, covariances, ``class_log_likelihood``, its
    scorer and sampler, ``data_range``) are in feature space; :meth:`log_prob`,
    :meth:`predict`, :meth:`sample` and :meth:`data_scorer` are in data space (model
    units for ``none``, x~ for ``logit``), the log-Jacobian added.
    """

    #: The name of the kind in the model store (attribute ``model_kind``) and the registry.
    kind: ClassVar[str]

    image_shape: tuple[int, ...] | None = None
    scale: float = 1.0
    label_column: str = "label"
    feature_names: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    transform: Transform = NONE

    # -- what a kind implements -----------------------------------------------
    @property
    @abstractmethod
    def n_features(self) -> int:
        """D, the number of features of a row."""

    @property
    @abstractmethod
    def covariance_type(self) -> str:
        """``"full"`` or ``"diag"`` (as reported and stored)."""

    @property
    @abstractmethod
    def data_range(self) -> tuple[float, float]:
        """Smallest and largest training value, in model units (NaN when unknown)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash of the parameters: equal fingerprints sample and score identically."""

    @property
    @abstractmethod
    def class_means(self) -> np.ndarray:
        """The mean of each class's density, (K, D) float64, model units."""

    @property
    @abstractmethod
    def class_covariances(self) -> np.ndarray:
        """The covariance of each class's density, (K, D, D) or diagonal (K, D), model units squared."""

    @abstractmethod
    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for rows ``X`` (n, D) in model units: (n, K) float64 (``-inf`` allowed)."""

    @abstractmethod
    def sampler(self, dtype: Any = np.float64) -> ModelSampler:
        """What draws samples of this model in ``dtype`` (float32 or float64), prepared once per run."""

    @abstractmethod
    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The kind's arrays of the model store (besides ``classes``) and its extra attributes.

        The store writes ``classes``, the attributes of :data:`META_FIELDS`,
        ``covariance_type``, ``data_range``, ``fingerprint`` and ``model_kind`` itself.
        """

    @classmethod
    @abstractmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> ClassModel:
        """The model from an open store group, its ``daskgen`` attributes and its classes.

        Raises :class:`~daskgen.errors.ModelError` naming ``url`` when arrays are
        missing or inconsistent (:func:`read_arrays` reads them so).
        """

    # -- defaults ----------------------------------------------------------------
    def class_arrays(self) -> dict[str, ClassArray]:
        """The store's arrays written class by class, in order (none by default: every
        array of :meth:`to_store` is written whole)."""
        return {}

    def factoring(self) -> Any:
        """None (the default), or how the distributed layer factors the classes one task
        each (``sources``, ``sampling_factor``, ``scoring_factor``, ``sampler``,
        ``scorer``; see :mod:`daskgen.distributed.factors`)."""
        return None

    def write_large_arrays(self, url: str, storage_options: dict | None = None) -> None:
        """Write, into the store group being written at ``url``, arrays too large for
        :meth:`to_store` (streamed, never whole in memory); none by default."""
        return None

    def published(self, url: str, storage_options: dict | None = None) -> None:
        """Called once the model's store is in place at ``url`` (nothing by default)."""
        return None

    @classmethod
    def diagonal_stats(cls, covariance: str) -> bool | None:
        """Whether the kind is fitted from diagonal (True) or full (False) per-class
        statistics (:class:`~daskgen.kernels.class_stats.ClassStats`) for this
        ``covariance`` option, by :meth:`from_stats` — what :func:`daskgen.fit` computes
        in one pass. None (the default): the kind is not fitted from class statistics.
        """
        return None

    @classmethod
    def from_stats(cls, stats: Any, covariance: str = "full", reg_covar: float = 0.0, shrinkage: str = "none",
                   **meta: Any) -> ClassModel:
        """The model of per-class statistics (kinds whose :meth:`diagonal_stats` is not None).

        ``meta`` are the attributes of :data:`META_FIELDS`.
        """
        raise ValueError(f"a {cls.kind} model is not fitted from per-class statistics")

    @classmethod
    def memory_plan(cls, n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory] | None:
        """The peak memory of each stage of ``options.command`` (``fit``, ``sample`` or
        ``evaluate``) for K = ``n_classes`` classes of D = ``n_features`` features.

        Returns ``{stage name: StageMemory(worker bytes, client bytes, what dominates)}``
        in the order the stages run (:mod:`daskgen.models.memory` has the workload's
        fields and :func:`~daskgen.models.memory.stage`, which counts copies of a unit
        such as one statistic, K * D**2 * 8 bytes). Bytes are beyond each process's
        baseline (interpreter and libraries). :mod:`daskgen.planning` refuses a command
        whose peak does not fit the cluster, and prints the plan for ``--dry-run``.
        None (the default): the kind has no plan, and commands run unchecked.
        """
        return None

    @property
    def n_components(self) -> int:
        """Gaussians per class (1 unless the kind is a mixture)."""
        return 1

    def component_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        """For kinds with several components per class: their means (K, M, D) and weights (K, M).

        None (the default) for one density per class; the figures draw them when given.
        """
        return None

    def principal_directions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """For kinds with a low-rank part per class: its orthonormal directions (K, q, D)
        and the variance of that part along each (K, q), descending; the figures draw them
        as eigen-images. None (the default) for other kinds."""
        return None

    def spectra(self) -> list[np.ndarray]:
        """Per class, the eigenvalues of its covariance (descending, those above the rank
        tolerance), model units squared; for a diagonal covariance the sorted variances."""
        return [factor_covariance(c).eigvals for c in self.class_covariances]

    #: What :meth:`spectra` describe, appended to the spectrum figure's title.
    spectrum_scope: ClassVar[str] = ""

    def display_range(self) -> tuple[float, float]:
        """The range of the mean images (model units): the display scale of float images."""
        means = self.class_means
        return float(means.min()), float(means.max())

    def scorer(self) -> Scorer:
        """What a task needs to score rows (the model itself by default): kinds whose
        parameters are large return a small picklable object with ``classes``,
        ``priors``, ``fingerprint`` and ``class_log_likelihood``."""
        return self

    def summary(self) -> dict[str, Any]:
        """The model as reports describe it (JSON-able): kind, fingerprint, classes,
        components, covariance, reg_covar, scale, features, transform."""
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "classes": [plain_label(c) for c in self.classes.tolist()],
            "class_names": self.class_names,
            "components": int(self.n_components),
            "covariance": self.covariance_type,
            "reg_covar": self.config.get("reg_covar"),
            "scale": float(self.scale),
            "features": int(self.n_features),
            "transform": self.transform.to_attrs(),
        }

    # -- the Bayes classifier and in-memory sampling -----------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """What to show for each class: the dataset's name for it (Fashion-MNIST's
        "Trouser", say, stored by ``daskgen data``), else the label as text. Display
        metadata only: ``classes`` holds the labels as stored."""
        names = self.config.get("class_names") or {}
        return [str(names.get(str(c), c)) for c in self.classes.tolist()]

    def class_index(self, label: Any) -> int:
        """Position of ``label`` in ``classes``; accepts the label or its string form."""
        for i, c in enumerate(self.classes.tolist()):
            if c == label or str(c) == str(label):
                return i
        raise ValueError(
            f"class {label!r} is not in the model (classes: {', '.join(map(str, self.classes.tolist()))})"
        )

    def data_scorer(self) -> Scorer:
        """What a task needs to score rows in data space: :meth:`scorer`, behind the
        transform and its log-Jacobian unless the transform is ``none``."""
        scorer = self.scorer()
        return scorer if self.transform.identity else TransformedScorer(scorer, self.transform)

    def data_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) of rows ``X`` (n, D) in data space (x~ in [0, 1] for a logit
        model; model units otherwise): (n, K) float64, the log-Jacobian included."""
        if self.transform.identity:
            return self.class_log_likelihood(X)
        return TransformedScorer(self, self.transform).class_log_likelihood(X)

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """log p(x) = logsumexp_k [log p(y=k) + log p(x | y=k)] in data space, shape (n,)."""
        return logsumexp_rows(self.data_log_likelihood(X) + np.log(self.priors))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The Bayes classifier: argmax_k p(y = k | x), as class labels, shape (n,); ``X`` in data space."""
        return self.classes[np.argmax(self.data_log_likelihood(X) + np.log(self.priors), axis=1)]

    def sample(
        self, n: int, seed: int | None = None, label: Any = None, dtype: Any = np.float64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` samples in memory: classes from the prior (or only ``label``).

        Returns ``(X, y)``: X of shape (n, D) in data space (model units; x~ in [0, 1]
        for a logit model, drawn in logit space and mapped back), y of shape (n,) labels.
        For large ``n`` use :func:`daskgen.generate`, which writes chunks to Zarr.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer number of samples, got {n!r}")
        rng = np.random.default_rng(seed)
        sampler = self.cached_sampler(dtype)
        idx = sampler.draw_classes(n, rng, None if label is None else self.class_index(label))
        return self.transform.inverse(sampler.draw(idx, rng)).astype(dtype, copy=False), self.classes[idx]

    def cached_sampler(self, dtype: Any = np.float64) -> ModelSampler:
        """:meth:`sampler`, built once per model and working dtype and kept: every
        in-memory draw (a figure's, say) reuses the factors."""
        cache = self.__dict__.setdefault("_samplers", {})
        key = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64).str
        if key not in cache:
            cache[key] = self.sampler(dtype)
        return cache[key]

    def __repr__(self) -> str:
        """One line, as scikit-learn's estimators: the shape and the options, not the arrays."""
        parts = [f"classes={self.n_classes}"]
        if self.n_components > 1:
            parts.append(f"components={self.n_components}")
        parts.append(f"features={self.n_features}")
        if self.image_shape:
            parts.append(f"image_shape={tuple(self.image_shape)}")
        parts.append(f"covariance={self.covariance_type!r}")
        if self.config.get("reg_covar") is not None:
            parts.append(f"reg_covar={self.config['reg_covar']:.3g}")
        parts.append(f"scale={self.scale:.6g}")
        if not self.transform.identity:
            parts.append(f"transform='{self.transform.name}', logit_lambda={self.transform.lam:g}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def save(self, path: str, overwrite: bool = False, storage_options: dict | None = None, run: Any = None) -> None:
        """Write the model store (a Zarr v3 group) atomically: :func:`daskgen.io.store.write_model`
        (``run``: where per-class work such as the Cholesky factors runs)."""
        from ..io.store import write_model  # the store imports only the registry, not this module

        write_model(self, path, overwrite=overwrite, storage_options=storage_options, run=run)


def check_features(X: np.ndarray, n_features: int) -> np.ndarray:
    """``X`` as a 2-D float64 array of ``n_features`` columns (``ValueError`` otherwise)."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model {n_features}")
    return X

