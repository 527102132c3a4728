"""One Gaussian per class: finalize statistics, regularize, factor, score, sample, store.

Pure numpy. ``GaussianClassModel`` is the in-memory twin of scikit-learn's
``QuadraticDiscriminantAnalysis`` fitted generatively: a prior p(y) and one Gaussian
p(x | y) per class, registered as the model kind ``"gaussian"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np

from ..errors import ModelError, first_line
from ..kernels.class_stats import ClassStats, to_diagonal
from ..kernels.linalg import (
    CholeskyScore,
    ClassFactor,
    cholesky_factor,
    cholesky_lower,
    covariance_spectrum,
    factor_covariance,
    triangular_factor,
)
from ..kernels.sampling import Sampler
from ..kernels.tiles import tile_spans, upper_tiles
from .base import (
    ClassArray,
    ClassModel,
    check_features,
    fingerprint_arrays,
    meta_fields,
    read_arrays,
    stored_data_range,
)
from .memory import Copies, StageMemory, Workload, class_memory_plan
from .registry import register
from .tiled import tiled_memory_plan


def finalize(
    stats: ClassStats,
    covariance: str = "full",
    reg_covar: float = 0.0,
    shrinkage: str = "none",
) -> dict[str, Any]:
    """Priors, means and covariances from statistics.

    Returns a dict with ``priors`` (K,), ``means`` (K, D) and ``covariances``: (K, D)
    for ``covariance="diag"``; for ``"full"`` a :class:`ClassCovariances`, which derives
    each (D, D) covariance from the statistics' scatter when asked (one class at a time,
    :func:`class_covariance`: no second (K, D, D) array; ``np.asarray`` gives them all).
    Covariances are unbiased (divided by n - 1); with ``shrinkage="oas"`` each class
    covariance is the Oracle Approximating Shrinkage estimate (as scikit-learn's ``OAS``:
    the maximum-likelihood covariance shrunk toward a scaled identity); ``reg_covar`` is
    then added to the diagonal.
    """
    if covariance not in ("full", "diag"):
        raise ValueError(f"covariance must be 'full' or 'diag', not {covariance!r}")
    if shrinkage not in ("none", "oas"):
        raise ValueError(f"shrinkage must be 'none' or 'oas', not {shrinkage!r}")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")
    if stats.n_rows == 0 or len(stats.classes) == 0:
        raise ValueError("the input has no rows")
    small = [c for c, n in zip(stats.classes.tolist(), stats.counts.tolist()) if n < 2]
    if small:
        n = dict(zip(stats.classes.tolist(), stats.counts.tolist()))
        raise ValueError(
            "class "
            + ", ".join(f"{c!r} has {n[c]} row{'s' if n[c] != 1 else ''}" for c in small)
            + "; every class needs at least 2 rows for a covariance"
        )
    if covariance == "full" and stats.diagonal:
        raise ValueError("these statistics are diagonal; a full covariance needs full statistics")
    if covariance == "diag":
        stats = to_diagonal(stats)
    counts = stats.counts.astype(np.float64)
    priors = counts / counts.sum()
    covs = ClassCovariances(stats.scatter, stats.counts, float(reg_covar), shrinkage)
    if stats.diagonal:
        covs = np.asarray(covs)  # (K, D): small
        finite_covs = np.isfinite(covs).all(axis=1)
    else:
        finite_covs = covs.finite()
    finite = np.isfinite(stats.means).all(axis=1) & finite_covs
    if not finite.all():
        bad = stats.classes[~finite].tolist()
        raise ValueError(
            f"class {bad[0]!r}: the mean or covariance overflows float64 (data range "
            f"{stats.minimum:g}..{stats.maximum:g}); rescale the data (e.g. --scale)"
        )
    return {"priors": priors, "means": stats.means.copy(), "covariances": covs}


class ClassCovariances(np.lib.mixins.NDArrayOperatorsMixin):
    """Class covariances (K, D, D) (or (K, D)), derived one class at a time from the
    centered scatter by :func:`class_covariance` (the same bits as all at once).

    Indexing by an integer and iterating give one class (a new array each time);
    ``np.asarray`` (and arithmetic, other indexing) gives all K at once.
    """

    def __init__(self, scatter: np.ndarray, counts: np.ndarray, reg_covar: float = 0.0, shrinkage: str = "none"):
        self.scatter = scatter
        self.counts = np.asarray(counts)
        self.reg_covar = float(reg_covar)
        self.shrinkage = shrinkage

    shape = property(lambda self: self.scatter.shape)
    ndim = property(lambda self: self.scatter.ndim)
    dtype = np.dtype(np.float64)

    def __len__(self) -> int:
        return len(self.scatter)

    def _class(self, k: int) -> np.ndarray:
        return class_covariance(self.scatter[k], self.counts[k], self.reg_covar, self.shrinkage)

    def finite(self) -> np.ndarray:
        """(K,) whether each class's covariance is finite: one read of each scatter (its sum
        is finite only if every entry is; dividing by n - 1 and adding ``reg_covar`` cannot
        overflow), the covariance itself when the sum overflows or with shrinkage."""
        ok = np.zeros(len(self), dtype=bool)
        for k in range(len(self)):
            quick = self.shrinkage == "none" and np.isfinite(self.scatter[k].sum())
            ok[k] = quick or np.isfinite(self._class(k)).all()
        return ok

    def __iter__(self):
        return (self._class(k) for k in range(len(self)))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._class(int(key) % len(self))
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape)
        for k in range(len(self)):
            out[k] = self._class(k)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(x) if isinstance(x, ClassCovariances) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def copy(self) -> np.ndarray:
        return np.asarray(self)


def _oas(emp_cov: np.ndarray, n_samples: int, n_features: int) -> np.ndarray:
    """OAS shrinkage of a maximum-likelihood covariance (full (D, D) or diagonal (D,))."""
    diag = emp_cov if emp_cov.ndim == 1 else np.diagonal(emp_cov)
    if n_features == 1:
        return emp_cov.copy()
    mu = diag.sum() / n_features
    alpha = (emp_cov**2).sum() / n_features**2
    num = alpha + mu**2
    den = (n_samples + 1) * (alpha - mu**2 / n_features)
    s = 1.0 if den == 0 else min(num / den, 1.0)
    shrunk = (1.0 - s) * emp_cov
    if shrunk.ndim == 1:
        shrunk += s * mu
    else:
        shrunk.flat[:: n_features + 1] += s * mu
    return shrunk



def class_covariance(scatter: np.ndarray, count: float, reg_covar: float = 0.0, shrinkage: str = "none") -> np.ndarray:
    """One class's covariance from its raw centred scatter (full (D, D) or diagonal (D,)):
    :func:`finalize`'s arithmetic for one class, to the bit (a new array; ``scatter`` is
    not changed). Models derive their covariances with it, class by class."""
    count = float(count)
    D = scatter.shape[-1]
    cov = _oas(scatter / count, int(count), D) if shrinkage == "oas" else scatter / (count - 1)
    if reg_covar:
        if cov.ndim == 1:
            cov = cov + reg_covar
        else:
            idx = np.arange(D)
            cov[idx, idx] += reg_covar
    return cov


@dataclass(frozen=True)
class StoredClass:
    """Class ``index`` of the (K, D, D) array ``name`` of the model store at ``url``, read
    when needed (picklable: a task reads it from the store instead of receiving it in the
    graph). A read that fails or finds values that are not finite raises ``ModelError``
    naming the store: the arrays are checked where they are read, once."""

    array: Any  # a zarr Array
    index: int
    url: str = ""
    name: str = ""

    def read(self) -> np.ndarray:
        return read_checked(self.array, self.url, self.name, self.index)


def read_checked(array: Any, url: str, name: str, index: Any = ...) -> np.ndarray:
    """``array[index]`` as float64; ``ModelError`` naming ``url`` when it cannot be read or is not finite.
    A ``scatter`` stored as upper tiles (:func:`write_upper`) comes back whole."""
    try:
        out = read_class_matrix(array, index) if name == "scatter" else np.asarray(array[index], dtype=np.float64)
    except Exception as exc:
        raise ModelError(f"{url}: corrupted model store: {name}: {first_line(exc)}") from None
    if not np.isfinite(out).all():
        raise ModelError(f"{url}: corrupted model store ({name} holds values that are not finite)")
    return out


def _read(x: Any) -> np.ndarray:
    return x.read() if isinstance(x, StoredClass) else x


@dataclass(frozen=True, eq=False)
class ClassSource:
    """What factoring one class needs, small enough to be one task's input.

    ``cholesky`` is the class's stored factor ``L`` (a :class:`StoredClass`) or None;
    ``covariance`` its covariance ((D, D) or (D,)) or a :class:`StoredClass` of it (an
    older store), else it is derived from ``scatter`` (array or :class:`StoredClass`),
    ``count``, ``reg_covar`` and ``shrinkage`` (:func:`class_covariance`).
    """

    count: float
    reg_covar: float
    shrinkage: str
    scatter: Any = None
    cholesky: Any = None
    covariance: Any = None

    def covariance_matrix(self) -> np.ndarray:
        if self.covariance is not None:
            return _read(self.covariance)
        return class_covariance(_read(self.scatter), self.count, self.reg_covar, self.shrinkage)

    def lower(self, cov: np.ndarray | None = None) -> np.ndarray | None:
        """The Cholesky factor ``L`` of a full covariance: read when stored, else factored
        (None for a diagonal or not positive definite covariance)."""
        if self.cholesky is not None:
            return _read(self.cholesky)
        cov = self.covariance_matrix() if cov is None else cov
        return cholesky_lower(cov) if cov.ndim == 2 else None


def sampling_factor(source: ClassSource, dtype: Any = np.float64) -> tuple[np.ndarray, list]:
    """``(T, spans)`` of one class for :class:`~daskgen.kernels.sampling.Sampler`, ``T`` in
    the working ``dtype``: ``L^T`` of the Cholesky factor (stored, or factored now), or,
    for a singular covariance, the triangular form of its eigendecomposition."""
    cov = None if source.cholesky is not None else source.covariance_matrix()
    L = source.lower(cov)
    if L is not None:
        T, spans = cholesky_factor(None, lower=L)
    else:
        T, spans = triangular_factor(factor_covariance(cov), cov.shape[0])
    return np.ascontiguousarray(T, dtype=dtype), spans


def scoring_factor(source: ClassSource) -> CholeskyScore | ClassFactor:
    """What :class:`GaussianScorer` needs of one class: from the Cholesky factor (stored,
    or factored now) for a positive definite covariance, else its eigendecomposition."""
    cov = None if source.cholesky is not None else source.covariance_matrix()
    L = source.lower(cov)
    return CholeskyScore.from_lower(L) if L is not None else factor_covariance(cov)


@dataclass(frozen=True, eq=False)
class GaussianScorer:
    """What scoring rows under one Gaussian per class needs: small and picklable.

    ``factors`` are, per class, a :class:`~daskgen.kernels.linalg.CholeskyScore` (a
    positive definite covariance) or the PSD root of a singular one (the covariances
    themselves are not kept); ``fingerprint`` is the model's.
    """

    classes: np.ndarray  # (K,)
    priors: np.ndarray  # (K,)
    means: np.ndarray  # (K, D), model units
    factors: tuple[CholeskyScore | ClassFactor, ...]
    fingerprint: str

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K).

        Singular covariances are treated as degenerate Gaussians on their support (as
        ``scipy.stats.multivariate_normal(allow_singular=True)``): points off the
        support get ``-inf``.
        """
        X = check_features(X, self.means.shape[1])
        out = np.empty((X.shape[0], len(self.classes)))
        for k, f in enumerate(self.factors):
            dev = X - self.means[k]
            if isinstance(f, CholeskyScore):
                out[:, k] = f.log_likelihood(dev)
                continue
            inactive = dev[:, ~f.active]
            dev = dev[:, f.active]
            proj = dev @ f.basis
            maha = ((proj / np.sqrt(f.eigvals)) ** 2).sum(axis=1)
            ll = -0.5 * (f.rank * np.log(2 * np.pi) + np.log(f.eigvals).sum() + maha)
            resid = dev - proj @ f.basis.T
            scale = np.sqrt(f.eigvals[0]) if f.rank else 1.0
            off = (np.abs(resid).max(axis=1, initial=0.0) > 1e-6 * scale) | (
                np.abs(inactive).max(axis=1, initial=0.0) > 0
            )
            out[:, k] = np.where(off, -np.inf, ll)
        return out


#: The memory plan of one Gaussian per class, in copies of one statistic (K * D**2 * 8
#: bytes for full covariances, K * D * 8 for diagonal ones) per stage of each command
#: (:class:`~daskgen.models.memory.Copies`: in a worker, per running task, on the
#: client, class-sized temporaries); the 8-bit path of the fit (exact sums merged as
#: blocks finish). What each stage holds today (measured at D = 1,024 and 4,096:
#: benchmarks/memory.py, README "The memory plan"):
#:
#: fit: statistics — each running task folds its blocks into its lane's total in place
#:   (one statistic per task); on worker processes the client then fills the total (one
#:   statistic) class by class from the lanes (two D x D received at a time), so no
#:   worker receives a total; to_class_stats — the 8-bit sums become the scatter class
#:   by class in place (the client's own total), with a D x D buffer (and three more of
#:   slack);
#:   finalize — covariances are derived per class (two D x D); write — the scatter, the
#:   Cholesky factor of one class per running task (two D x D each), and zarr's buffers
#:   of up to ten (1, D, D) chunks being written at once.
#: sample: load — nothing (a stored model's arrays are read class by class when needed);
#:   draw — a worker reads each class's stored Cholesky factor in a task of its own and
#:   keeps its triangular factor (float32: half a copy in all), assembles the sampler
#:   (another half copy when the factors come from other workers), and a factoring task
#:   holds three D x D (the stored factor, its transpose, the float32 copy); its chunks.
#: evaluate: load — nothing; score — a worker holds every class's Cholesky factor
#:   (float64: one copy), another when they come from other workers, three D x D per
#:   factoring task, and its blocks.
GAUSSIAN_COPIES: dict[str, dict[str, Copies]] = {
    "fit": {"statistics": Copies(per_task=1, client=1, classes=2), "to_class_stats": Copies(client=1, classes=4),
            "finalize": Copies(client=1, classes=2), "write": Copies(client=1, classes=10, task_classes=2)},
    "sample": {"load": Copies(), "draw": Copies(worker=1, task_classes=3)},
    "evaluate": {"load": Copies(), "score": Copies(worker=2, task_classes=3)},
}

@dataclass(frozen=True, eq=False)
class GaussianFactoring:
    """How the distributed layer factors a model's classes: one task per class runs
    ``sampling_factor``/``scoring_factor`` on ``sources[k]`` (reading a stored factor, or
    factoring the class's covariance), and the sampler or scorer is assembled from their
    results. Small: no covariance travels with it (the sources do, one per task)."""

    classes: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    fingerprint: str
    sources: tuple[ClassSource, ...]

    sampling_factor = staticmethod(sampling_factor)
    scoring_factor = staticmethod(scoring_factor)

    def sampler(self, factors: list, dtype: Any = np.float64) -> Sampler:
        return Sampler(self.priors, self.means, factors, dtype)

    def scorer(self, factors: list) -> GaussianScorer:
        return GaussianScorer(self.classes, self.priors, self.means, tuple(factors), self.fingerprint)


@dataclass(frozen=True)
class StoredArrays:
    """The large arrays of a model store, read class by class when needed, and what the
    store recorded of the model (its fingerprint, for the transform it was computed with)."""

    scatter: Any
    cholesky: Any
    covariances: Any
    data_range: tuple[float, float]
    fingerprint: str | None
    transform: Any
    url: str = ""


class _Derived:
    """A dataclass field that, left None, is computed on first use by the owner's method
    ``method`` and kept (a model read from a store derives its covariances, or reads its
    statistics, only when asked)."""

    def __init__(self, method: str):
        self.method = method

    def __set_name__(self, owner, name):
        self.slot = f"_{name}_value"

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the field's default
        value = obj.__dict__.get(self.slot)
        if value is None:
            value = obj.__dict__[self.slot] = getattr(obj, self.method)()
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@register
@dataclass(repr=False)
class GaussianClassModel(ClassModel):
    """A prior over classes and one Gaussian per class.

    Attributes
    ----------
    classes : ndarray of shape (K,)
        Class labels as found in the data, sorted.
    counts : ndarray of shape (K,), int64
        Training rows per class.
    priors : ndarray of shape (K,)
        p(y = classes[k]) = counts[k] / counts.sum().
    means : ndarray of shape (K, D)
        Class means, in model units (pixel values times ``scale``).
    covariances : ndarray of shape (K, D, D) or (K, D)
        Class covariances (full or diagonal), in model units squared. Derived on first
        use from the statistics (:func:`class_covariance`) when not given: a full model
        read from a store keeps only ``scatter`` and the Cholesky factors on disk.
    image_shape : tuple of int or None
        (H, W) when rows are images.
    scale : float
        Factor from pixel units to model units (1/255 for 8-bit images by default).
    stats : ClassStats
        The raw sufficient statistics, so new data can be folded in later (read from
        the store on first use).
    """

    kind = "gaussian"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    covariances: np.ndarray | None = _Derived("_derive_covariances")
    stats: ClassStats | None = _Derived("_load_stats")
    stored: StoredArrays | None = None

    @classmethod
    def diagonal_stats(cls, covariance: str) -> bool:
        return covariance == "diag"

    @classmethod
    def from_stats(
        cls,
        stats: ClassStats,
        covariance: str = "full",
        reg_covar: float = 0.0,
        shrinkage: str = "none",
        **meta: Any,
    ) -> GaussianClassModel:
        params = finalize(stats, covariance=covariance, reg_covar=reg_covar, shrinkage=shrinkage)
        if covariance == "full":  # derived from the statistics when asked (class_covariance)
            params.pop("covariances", None)
        config = dict(meta.pop("config", {}))
        config.update(covariance=covariance, reg_covar=float(reg_covar), shrinkage=shrinkage)
        return cls(
            classes=stats.classes,
            counts=stats.counts,
            stats=stats,
            config=config,
            **params,
            **meta,
        )

    @classmethod
    def memory_plan(cls, n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory] | None:
        """See :data:`GAUSSIAN_COPIES`; float data (and diagonal statistics) merge by a
        fixed tree, whose merges hold up to ``split_every`` statistics on a worker. Tiled
        models (``--tiles``): :data:`daskgen.models.tiled.TILED_COPIES`."""
        if options.tiles:
            return tiled_memory_plan(n_classes, n_features, options)
        table = GAUSSIAN_COPIES
        if options.in_process:  # nothing is received from another worker: no second copy
            table = {**table, "fit": {**table["fit"], "statistics": Copies(per_task=1)},
                     "sample": {**table["sample"], "draw": Copies(worker=0.5, task_classes=3)},
                     "evaluate": {**table["evaluate"], "score": Copies(worker=1, task_classes=3)}}
        if options.command == "fit" and not (options.exact and options.covariance != "diag"):
            fit = {k: v for k, v in table["fit"].items() if k != "to_class_stats"}
            table = {**table, "fit": {**fit, "statistics": Copies(worker=options.split_every + 1, per_task=1)}}
        return class_memory_plan(n_classes, n_features, options, table)

    # -- derived on demand -------------------------------------------------
    def _given(self, name: str) -> Any:
        """The value of a derived field (``covariances``, ``stats``) if set or derived yet, else None."""
        return self.__dict__.get(f"_{name}_value")

    def _load_stats(self) -> ClassStats:
        s = self.stored
        if s is None:
            raise ValueError("this model has no statistics")
        scatter = read_checked(s.scatter, s.url, "scatter")
        return ClassStats(self.classes, self.counts, self.means, scatter, *s.data_range)

    def _class_covariances(self) -> Iterator[np.ndarray]:
        """Each class's covariance in turn, one at a time in memory."""
        if self._given("covariances") is not None:
            yield from self.covariances
            return
        for source in self.class_sources():
            yield source.covariance_matrix()

    def _derive_covariances(self) -> np.ndarray:
        out = None
        for k, cov in enumerate(self._class_covariances()):
            if out is None:
                out = np.empty((self.n_classes, *cov.shape))
            out[k] = cov
        return out

    def _full(self) -> bool:
        covs = self._given("covariances")
        if covs is not None:
            return covs.ndim == 3
        if self.stored is not None:
            return np.ndim(self.stored.scatter) == 3
        return not self.stats.diagonal and self.config.get("covariance", "full") == "full"

    def class_sources(self) -> list[ClassSource]:
        """Per class, what factoring it needs (:class:`ClassSource`): the stored factor when
        the store has one; the covariance when it is in memory (or an older store keeps
        it); else the statistics it derives from."""
        reg = float(self.config.get("reg_covar") or 0.0)
        shrinkage = self.config.get("shrinkage") or "none"
        covs = self._given("covariances")
        s = self.stored
        out = []
        for k in range(self.n_classes):
            if covs is not None:
                out.append(ClassSource(self.counts[k], reg, shrinkage, covariance=covs[k]))
            elif s is not None:
                out.append(ClassSource(
                    self.counts[k], reg, shrinkage, scatter=StoredClass(s.scatter, k, s.url, "scatter"),
                    cholesky=None if s.cholesky is None else StoredClass(s.cholesky, k, s.url, "cholesky"),
                    covariance=None if s.covariances is None else StoredClass(s.covariances, k, s.url, "covariances")))
            else:
                out.append(ClassSource(self.counts[k], reg, shrinkage, scatter=self.stats.scatter[k]))
        return out

    # -- shape -------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def covariance_type(self) -> str:
        return "full" if self._full() else "diag"

    @property
    def data_range(self) -> tuple[float, float]:
        """Smallest and largest training value, in model units."""
        if self._given("stats") is None:
            return self.stored.data_range
        return (self.stats.minimum, self.stats.maximum)

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the parameters: equal fingerprints sample identically. The
        covariances are hashed class by class (never all in memory); a model read from a
        store has the fingerprint the store recorded."""
        s = self.stored
        if s is not None and s.fingerprint and s.transform == self.transform:
            return s.fingerprint
        return fingerprint_arrays(self.classes, self.priors, self.means, self._class_covariances(),
                                  *self.transform.fingerprint_parts())

    @cached_property
    def factors(self) -> list[ClassFactor]:
        """One PSD root per class (eigendecomposition), computed once per model when asked:
        sampling and scoring use Cholesky factors instead where covariances are positive definite."""
        return [factor_covariance(c) for c in self._class_covariances()]

    # -- the interface ----------------------------------------------------
    @property
    def class_means(self) -> np.ndarray:
        return self.means

    @property
    def class_covariances(self) -> np.ndarray:
        return self.covariances

    def spectra(self) -> list[np.ndarray]:
        return [covariance_spectrum(c) for c in self._class_covariances()]

    def factoring(self) -> GaussianFactoring:
        """What the distributed layer needs to factor the classes one task each (see
        :class:`GaussianFactoring`)."""
        return GaussianFactoring(self.classes, self.priors, self.means, self.fingerprint, tuple(self.class_sources()))

    def scorer(self) -> GaussianScorer:
        """The means and the factors (computed once per model), no covariances, no statistics."""
        return self._scorer

    @cached_property
    def _scorer(self) -> GaussianScorer:
        return self.factoring().scorer([scoring_factor(s) for s in self.class_sources()])

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K); see :class:`GaussianScorer`."""
        return self._scorer.class_log_likelihood(X)

    def sampler(self, dtype: Any = np.float64) -> Sampler:
        work = np.float32 if np.dtype(dtype) == np.float32 else np.float64
        return Sampler(self.priors, self.means, [sampling_factor(s, work) for s in self.class_sources()], dtype)

    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``counts``, ``priors``, ``means`` and ``scatter`` (the raw statistics);
        a diagonal model also ``covariances`` (K, D). A full model's (K, D, D) arrays are
        given by :meth:`class_arrays`, written class by class."""
        arrays = {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
        }
        if not self._full():
            arrays["covariances"] = np.asarray(self.covariances, dtype=np.float64)
            arrays["scatter"] = np.asarray(self.stats.scatter, dtype=np.float64)
        return arrays, {}

    def class_arrays(self) -> dict[str, ClassArray]:
        """A full model's (K, D, D) arrays, written class by class: ``scatter`` (from the
        statistics in memory, or the store the model was read from) and ``cholesky``,
        one task per class reading the store's ``scatter``, started once that class is
        written (:func:`store_cholesky`;
        dropped when a covariance is not positive definite). No ``covariances``: they
        are derived on demand."""
        if not self._full():
            return {}
        K, D = self.n_classes, self.n_features
        sources = tuple(self.class_sources())
        scatter = self.stored.scatter if self._given("stats") is None else self.stats.scatter
        reg = float(self.config.get("reg_covar") or 0.0)
        shrinkage = self.config.get("shrinkage") or "none"
        fresh = tuple(ClassSource(s.count, reg, shrinkage) for s in sources)
        return {
            "scatter": ClassArray((K, D, D), partial(_write_scatter, scatter), chunks=class_matrix_chunks(D)),
            "cholesky": ClassArray((K, D, D), partial(store_cholesky, fresh), parallel=True,
                                   chunks=class_matrix_chunks(D)),
        }

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> ClassModel:
        """Small arrays are read (and checked) now; ``scatter``, ``cholesky`` and an older
        store's ``covariances`` (K, D, D) class by class where needed, and checked there
        (:class:`StoredClass`): a corrupted factor fails the task that reads it, with one
        line naming the store, before a command writes anything."""
        if meta.get("tiles"):  # fitted with --tiles: the covariances stay on disk, as tiles
            from .tiled import TiledGaussianClassModel

            return TiledGaussianClassModel.from_store(group, meta, classes, url)
        names = set(group.array_keys())
        a = read_arrays(group, ("counts", "priors", "means"), url)
        K, D = a["means"].shape if a["means"].ndim == 2 else (-1, -1)
        full = (K, D, D)
        big = {k: group[k] for k in ("covariances", "scatter", "cholesky") if k in names}
        shapes = {k: tuple(v.shape) for k, v in big.items()}
        if (
            K < 1
            or classes.shape != (K,)
            or a["counts"].shape != (K,)
            or a["priors"].shape != (K,)
            or "scatter" not in big
            or shapes["scatter"] not in (full, (K, D))
            or shapes.get("covariances", shapes["scatter"]) != shapes["scatter"]
            or shapes.get("cholesky", full) != full
            or ("covariances" not in big and shapes["scatter"] != full)
            or not all(np.isfinite(a[k]).all() for k in ("priors", "means"))
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        fields = meta_fields(meta)
        if shapes["scatter"] == (K, D):  # diagonal: small, read now
            d = read_arrays(group, ("covariances", "scatter"), url)
            if not all(np.isfinite(d[k]).all() for k in d):
                raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
            stats = ClassStats(classes, a["counts"], a["means"], d["scatter"], *stored_data_range(meta))
            return cls(classes=classes, counts=a["counts"], priors=a["priors"], means=a["means"],
                       covariances=d["covariances"], stats=stats, **fields)
        # read (and checked) where used: the factors by the tasks that sample or score
        stored = StoredArrays(big["scatter"], big.get("cholesky"), big.get("covariances"), stored_data_range(meta),
                              meta.get("fingerprint"), fields["transform"], url)
        return cls(classes=classes, counts=a["counts"], priors=a["priors"], means=a["means"], stored=stored, **fields)


def _write_scatter(scatter: Any, arrays: dict[str, Any], index: int) -> bool:
    write_upper(arrays["scatter"], index, np.asarray(scatter[index], dtype=np.float64))
    return True


def store_cholesky(sources: tuple[ClassSource, ...], arrays: dict[str, Any], index: int) -> bool:
    """Factor class ``index`` from the store's ``scatter`` and write its Cholesky factor into
    the store's ``cholesky`` (:func:`write_lower`); False (nothing written) when its
    covariance is not positive definite. One task per class, at fit time."""
    source = sources[index]
    cov = class_covariance(read_class_matrix(arrays["scatter"], index), source.count, source.reg_covar,
                           source.shrinkage)
    L = cholesky_lower(cov)
    del cov
    if L is None:
        return False
    write_lower(arrays["cholesky"], index, L)
    return True


#: Side of the square chunks of a wide model's stored (D, D) arrays: a Cholesky factor
#: writes only the chunks on or below the diagonal, a (symmetric) scatter only those on or
#: above it; the others are never written (they read as the fill value 0, and the
#: scatter's are mirrored back on reading). Each costs ~(1 + 1/n)/2 of D²·8 bytes on disk
#: (n = D / MATRIX_TILE): 56% at D = 4,096.
MATRIX_TILE = 512


def class_matrix_chunks(D: int) -> tuple[int, int, int]:
    """The chunks of a stored (K, D, D) scatter or Cholesky factor: one class per chunk up
    to 2 x :data:`MATRIX_TILE` features (one write and one read per class, as before),
    square tiles beyond."""
    return (1, D, D) if D <= 2 * MATRIX_TILE else (1, MATRIX_TILE, MATRIX_TILE)


def _chunk_spans(array: Any, n_features: int) -> list[tuple[int, int]] | None:
    """The spans of a square-chunked (K, D, D) array's tiles; None for one chunk per class."""
    tile = array.chunks[1]
    return None if tile >= n_features else tile_spans(n_features, tile)


def write_upper(array: Any, index: int, S: np.ndarray) -> None:
    """Write a symmetric (D, D) ``S`` as class ``index`` of a (K, D, D) zarr array: with
    square chunks, only those on or above the diagonal (:func:`read_class_matrix` mirrors
    the rest back); with one chunk per class, all of it."""
    spans = _chunk_spans(array, S.shape[0])
    if spans is None:
        array[index] = S
        return
    for i, j in upper_tiles(len(spans)):
        (a, b), (c, d) = spans[i], spans[j]
        array[index, a:b, c:d] = S[a:b, c:d]


def read_class_matrix(array: Any, index: Any = ...) -> np.ndarray:
    """``array[index]`` (one class (D, D), or all (K, D, D)) as float64, the chunks below
    the diagonal of a square-chunked symmetric array (:func:`write_upper`) filled from the
    mirror of those above it; the same bits for a symmetric array stored whole."""
    out = np.asarray(array[index], dtype=np.float64)
    D = out.shape[-1]
    spans = _chunk_spans(array, D)
    if spans is None:
        return out
    for S in out.reshape(-1, D, D):
        for i, j in upper_tiles(len(spans)):
            if i != j:  # tile (j, i), below the diagonal, was never written
                (a, b), (c, d) = spans[i], spans[j]
                S[c:d, a:b] = S[a:b, c:d].T
    return out


def write_lower(array: Any, index: int, L: np.ndarray) -> None:
    """Write a lower triangular (D, D) ``L`` as class ``index`` of a (K, D, D) zarr array,
    only the chunks on or below the diagonal (the others keep the fill value 0)."""
    _, ci, cj = array.chunks
    D = L.shape[0]
    for i0 in range(0, D, ci):
        i1 = min(D, i0 + ci)
        if cj >= D:
            array[index, i0:i1, :] = L[i0:i1]
            continue
        for j0 in range(0, min(i1, D), cj):  # chunk column j0 has entries on/below the diagonal if j0 < i1
            j1 = min(D, j0 + cj)
            array[index, i0:i1, j0:j1] = L[i0:i1, j0:j1]
