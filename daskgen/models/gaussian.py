"""One Gaussian per class: finalize statistics, regularize, factor, score, sample, store.

Pure numpy. ``GaussianClassModel`` is the in-memory twin of scikit-learn's
``QuadraticDiscriminantAnalysis`` fitted generatively: a prior p(y) and one Gaussian
p(x | y) per class, registered as the model kind ``"gaussian"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import ModelError
from ..kernels.class_stats import ClassStats, to_diagonal
from ..kernels.linalg import ClassFactor, factor_covariance
from ..kernels.sampling import Sampler
from .base import ClassModel, check_features, fingerprint_arrays, meta_fields, read_arrays, stored_data_range
from .registry import register


def finalize(
    stats: ClassStats,
    covariance: str = "full",
    reg_covar: float = 0.0,
    shrinkage: str = "none",
) -> dict[str, Any]:
    """Priors, means and covariances from statistics.

    Returns a dict with ``priors`` (K,), ``means`` (K, D) and ``covariances``: (K, D)
    for ``covariance="diag"``; for ``"full"`` a :class:`ClassCovariances`, which derives
    each (D, D) covariance from the statistics' scatter when asked (one class at a time:
    no second (K, D, D) array; ``np.asarray`` gives them all). Covariances are unbiased
    (divided by n - 1); with ``shrinkage="oas"`` each class covariance is the Oracle
    Approximating Shrinkage estimate (as scikit-learn's ``OAS``: the maximum-likelihood
    covariance shrunk toward a scaled identity); ``reg_covar`` is then added to the
    diagonal.
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
    D = stats.n_features
    if not stats.diagonal:
        covs = ClassCovariances(stats.scatter, stats.counts, float(reg_covar), shrinkage)
        finite = np.isfinite(stats.means).all(axis=1) & covs.finite()
    else:
        if shrinkage == "oas":
            covs = np.empty_like(stats.scatter)
            for k in range(len(counts)):
                covs[k] = _oas(stats.scatter[k] / counts[k], int(counts[k]), D)
        else:
            covs = stats.scatter / (counts - 1)[:, None]
        if reg_covar:
            covs = covs + reg_covar
        finite = np.isfinite(stats.means).all(axis=1) & np.isfinite(covs).all(axis=1)
    if not finite.all():
        bad = stats.classes[~finite].tolist()
        raise ValueError(
            f"class {bad[0]!r}: the mean or covariance overflows float64 (data range "
            f"{stats.minimum:g}..{stats.maximum:g}); rescale the data (e.g. --scale)"
        )
    return {"priors": priors, "means": stats.means.copy(), "covariances": covs}


class ClassCovariances(np.lib.mixins.NDArrayOperatorsMixin):
    """Full class covariances (K, D, D), derived one class at a time from the centered
    scatter: ``scatter[k] / (n_k - 1)`` (or its OAS shrinkage) plus ``reg_covar`` on the
    diagonal — the very arithmetic of an eager computation, so the same bits.

    Indexing by an integer and iterating give one class (a new (D, D) array each time);
    ``np.asarray`` (and arithmetic, other indexing) gives all K at once.
    """

    def __init__(self, scatter: np.ndarray, counts: np.ndarray, reg_covar: float = 0.0, shrinkage: str = "none"):
        self.scatter = scatter
        self.counts = np.asarray(counts)
        self.reg_covar = float(reg_covar)
        self.shrinkage = shrinkage

    shape = property(lambda self: self.scatter.shape)
    ndim = 3
    dtype = np.dtype(np.float64)

    def __len__(self) -> int:
        return len(self.scatter)

    def _class(self, k: int) -> np.ndarray:
        n = int(self.counts[k])
        D = self.scatter.shape[1]
        if self.shrinkage == "oas":
            cov = _oas(self.scatter[k] / n, n, D)
        else:
            cov = self.scatter[k] / (n - 1)
        if self.reg_covar:
            cov.flat[:: D + 1] += self.reg_covar
        return cov

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
            return self._class(int(key) % len(self) if key < 0 else int(key))
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


@dataclass(frozen=True, eq=False)
class GaussianScorer:
    """What scoring rows under one Gaussian per class needs: small and picklable.

    ``factors`` are the PSD roots of the class covariances (the covariances themselves
    are not kept); ``fingerprint`` is the model's.
    """

    classes: np.ndarray  # (K,)
    priors: np.ndarray  # (K,)
    means: np.ndarray  # (K, D), model units
    factors: tuple[ClassFactor, ...]
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
    covariances : ndarray of shape (K, D, D) or (K, D), or ClassCovariances
        Class covariances (full or diagonal), in model units squared. A fit's full
        covariances are a :class:`ClassCovariances`: derived from ``stats.scatter`` one
        class at a time (``covariances[k]``), all at once by ``np.asarray``.
    image_shape : tuple of int or None
        (H, W) when rows are images.
    scale : float
        Factor from pixel units to model units (1/255 for 8-bit images by default).
    stats : ClassStats
        The raw sufficient statistics, so new data can be folded in later.
    """

    kind = "gaussian"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    covariances: np.ndarray | ClassCovariances
    stats: ClassStats

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

    # -- shape -------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def covariance_type(self) -> str:
        return "diag" if self.covariances.ndim == 2 else "full"

    @property
    def data_range(self) -> tuple[float, float]:
        """Smallest and largest training value, in model units."""
        return (self.stats.minimum, self.stats.maximum)

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the parameters: equal fingerprints sample identically."""
        # class by class: the digest of the whole array, without materialising it
        return fingerprint_arrays(self.classes, self.priors, self.means, *self.covariances,
                                  *self.transform.fingerprint_parts())

    @cached_property
    def factors(self) -> list[ClassFactor]:
        """One PSD root per class, computed once per model (not per sample)."""
        return [factor_covariance(c) for c in self.covariances]

    # -- the interface ----------------------------------------------------
    @property
    def class_means(self) -> np.ndarray:
        return self.means

    @property
    def class_covariances(self) -> np.ndarray:
        return self.covariances

    def spectra(self) -> list[np.ndarray]:
        return [f.eigvals for f in self.factors]

    def scorer(self) -> GaussianScorer:
        """The means and the factors (computed once per model), no covariances, no statistics."""
        return self._scorer

    @cached_property
    def _scorer(self) -> GaussianScorer:
        return GaussianScorer(self.classes, self.priors, self.means, tuple(self.factors), self.fingerprint)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K); see :class:`GaussianScorer`."""
        return self._scorer.class_log_likelihood(X)

    def sampler(self, dtype: Any = np.float64) -> Sampler:
        return Sampler(self.priors, self.means, self.factors, dtype)

    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``counts``, ``priors``, ``means``, ``covariances`` and ``scatter`` (the raw
        statistics, same shape as the covariances); no extra attributes."""
        arrays = {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
            "covariances": np.asarray(self.covariances, dtype=np.float64),
            "scatter": np.asarray(self.stats.scatter, dtype=np.float64),
        }
        return arrays, {}

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> GaussianClassModel:
        a = read_arrays(group, ("counts", "priors", "means", "covariances", "scatter"), url)
        K, D = a["means"].shape if a["means"].ndim == 2 else (-1, -1)
        full = (K, D, D)
        if (
            K < 1
            or classes.shape != (K,)
            or a["counts"].shape != (K,)
            or a["priors"].shape != (K,)
            or a["covariances"].shape not in (full, (K, D))
            or a["scatter"].shape not in (full, (K, D))
            or not all(np.isfinite(a[k]).all() for k in ("priors", "means", "covariances", "scatter"))
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        stats = ClassStats(classes, a["counts"], a["means"], a["scatter"], *stored_data_range(meta))
        return cls(classes=classes, counts=a["counts"], priors=a["priors"], means=a["means"],
                   covariances=a["covariances"], stats=stats, **meta_fields(meta))
