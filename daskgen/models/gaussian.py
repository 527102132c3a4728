"""The per-class Gaussian model: finalize statistics, regularize, factor, score, sample.

Pure numpy. ``GaussianClassModel`` is the in-memory twin of scikit-learn's
``QuadraticDiscriminantAnalysis`` fitted generatively: a prior p(y) and one Gaussian
p(x | y) per class.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import InputError
from ..kernels.class_stats import ClassStats, to_diagonal

#: Eigenvalues below ``EIG_RTOL * max(eigenvalue)`` count as zero (scipy's _PSD default).
EIG_RTOL = 1e6 * np.finfo(np.float64).eps


def finalize(
    stats: ClassStats,
    covariance: str = "full",
    reg_covar: float = 0.0,
    shrinkage: str = "none",
) -> dict[str, np.ndarray]:
    """Priors, means and covariances from statistics.

    Returns a dict with ``priors`` (K,), ``means`` (K, D) and ``covariances``
    (K, D, D) for ``covariance="full"`` or (K, D) for ``"diag"``. Covariances are
    unbiased (divided by n - 1); with ``shrinkage="oas"`` each class covariance is
    the Oracle Approximating Shrinkage estimate (as scikit-learn's ``OAS``: the
    maximum-likelihood covariance shrunk toward a scaled identity); ``reg_covar`` is
    then added to the diagonal.
    """
    if covariance not in ("full", "diag"):
        raise InputError(f"covariance must be 'full' or 'diag', not {covariance!r}")
    if shrinkage not in ("none", "oas"):
        raise InputError(f"shrinkage must be 'none' or 'oas', not {shrinkage!r}")
    if not reg_covar >= 0:
        raise InputError(f"reg_covar must be >= 0, got {reg_covar}")
    if stats.n_rows == 0 or len(stats.classes) == 0:
        raise InputError("the input has no rows")
    small = [c for c, n in zip(stats.classes.tolist(), stats.counts.tolist()) if n < 2]
    if small:
        n = dict(zip(stats.classes.tolist(), stats.counts.tolist()))
        raise InputError(
            "class "
            + ", ".join(f"{c!r} has {n[c]} row{'s' if n[c] != 1 else ''}" for c in small)
            + "; every class needs at least 2 rows for a covariance"
        )
    if covariance == "full" and stats.diagonal:
        raise InputError("these statistics are diagonal; a full covariance needs full statistics")
    if covariance == "diag":
        stats = to_diagonal(stats)
    counts = stats.counts.astype(np.float64)
    priors = counts / counts.sum()
    D = stats.n_features
    if shrinkage == "oas":
        covs = np.empty_like(stats.scatter)
        for k in range(len(counts)):
            covs[k] = _oas(stats.scatter[k] / counts[k], int(counts[k]), D)
    else:
        shape = (-1, 1) if stats.diagonal else (-1, 1, 1)
        covs = stats.scatter / (counts - 1).reshape(shape)
    if reg_covar:
        if stats.diagonal:
            covs = covs + reg_covar
        else:
            covs = covs.copy()
            idx = np.arange(D)
            covs[:, idx, idx] += reg_covar
    axes = tuple(range(1, covs.ndim))
    finite = np.isfinite(stats.means).all(axis=1) & np.isfinite(covs).all(axis=axes)
    if not finite.all():
        bad = stats.classes[~finite].tolist()
        raise InputError(
            f"class {bad[0]!r}: the mean or covariance overflows float64 (data range "
            f"{stats.minimum:g}..{stats.maximum:g}); rescale the data (e.g. --scale)"
        )
    return {"priors": priors, "means": stats.means.copy(), "covariances": covs}


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


@dataclass(frozen=True)
class ClassFactor:
    """A PSD square root of one class covariance, restricted to its non-constant features.

    ``x = mean`` on features whose variance is exactly 0; on the others (``active``),
    ``x[active] = mean[active] + root @ z`` with ``root`` of shape (n_active, rank),
    ``root @ root.T == covariance[active][:, active]`` up to the dropped eigenvalues.
    """

    active: np.ndarray  # (D,) bool
    root: np.ndarray  # (n_active, rank) float64
    eigvals: np.ndarray  # (rank,) kept eigenvalues, descending
    basis: np.ndarray  # (n_active, rank) orthonormal eigenvectors

    @property
    def rank(self) -> int:
        return int(self.root.shape[1])


def factor_covariance(cov: np.ndarray, rtol: float = EIG_RTOL) -> ClassFactor:
    """Factor one covariance (full (D, D) or diagonal (D,)) once, for sampling and scoring."""
    if cov.ndim == 1:
        active = cov > 0
        var = cov[active]
        order = np.argsort(var)[::-1]
        n_act = int(active.sum())
        basis = np.zeros((n_act, n_act))
        basis[order, np.arange(n_act)] = 1.0
        eig = var[order]
    else:
        diag = np.diagonal(cov)
        active = diag > 0
        sub = cov[np.ix_(active, active)]
        w, V = np.linalg.eigh(sub)
        w, V = w[::-1], V[:, ::-1]
        keep = w > rtol * max(w[0], 0.0) if len(w) else np.zeros(0, bool)
        eig, basis = w[keep], np.ascontiguousarray(V[:, keep])
    root = basis * np.sqrt(eig)
    return ClassFactor(active, np.ascontiguousarray(root), eig, basis)


#: Column panels of the triangular product in :meth:`Sampler.draw`: 8 panels do ~56% of
#: a full product's flops and keep each GEMM large enough to run at full speed.
PANELS = 8


def triangular_factor(factor: ClassFactor, n_features: int, panels: int = PANELS):
    """An upper-trapezoidal ``T`` (rank, D) with ``T.T @ T == root @ root.T`` on the
    active features and zero columns elsewhere, and its column panels.

    ``root.T = Q R`` (QR), so ``root = R.T Q.T`` and ``x = mean + R.T (Q.T z)``: ``Q.T z``
    is again standard normal, and ``R`` is upper trapezoidal, so output column ``j``
    needs only the first ``j + 1`` normals. The eigendecomposition fixes the rank and
    the distribution; the rotation only halves the sampling flops. Returns ``T`` and
    ``[(start, stop, k), ...]``: columns ``start:stop`` of a draw are
    ``z[:, :k] @ T[:k, start:stop]``.
    """
    rank = factor.rank
    T = np.zeros((rank, n_features))
    if rank:
        T[:, np.flatnonzero(factor.active)] = np.linalg.qr(factor.root.T, mode="r")
    active_before = np.concatenate([[0], np.cumsum(factor.active)])
    edges = np.unique(np.linspace(0, n_features, panels + 1).round().astype(int))
    spans = [(int(lo), int(hi), int(min(rank, active_before[hi]))) for lo, hi in itertools.pairwise(edges)]
    return T, spans


class Sampler:
    """Everything needed to draw samples of a model, prepared once per run.

    Holds, per class, the mean and a triangular square root of the covariance (see
    :func:`triangular_factor`) in the working precision (float32 when the output is
    float32: single-precision BLAS runs at twice the speed; float64 otherwise), so
    a chunk of ``n_k`` samples of class k costs one block of normals and one
    panelled matrix product. Picklable: it is what the distributed generation ships
    to each worker once.
    """

    def __init__(self, model: GaussianClassModel, dtype: Any = np.float64):
        self.work = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        self.priors = np.asarray(model.priors, dtype=np.float64)
        #: p(y) of draw_classes (a mixture's sampler draws components among self.priors)
        self.class_priors = self.priors
        self.n_features = model.n_features
        self.means = np.ascontiguousarray(model.means, dtype=self.work)
        self.factors_t: list[np.ndarray] = []
        self.spans: list[list[tuple[int, int, int]]] = []
        for f in model.factors:
            T, spans = triangular_factor(f, self.n_features)
            self.factors_t.append(np.ascontiguousarray(T, dtype=self.work))
            self.spans.append(spans)

    def draw_classes(self, n: int, rng: np.random.Generator, class_index: int | None = None) -> np.ndarray:
        """Class indices of ``n`` samples: from the prior, or all ``class_index``."""
        if class_index is not None:
            return np.full(n, class_index, dtype=np.intp)
        return rng.choice(len(self.class_priors), size=n, p=self.class_priors)

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample per entry of ``class_index``, shape (n, D), in the working dtype.

        Classes are visited in increasing index order and their normals drawn in that
        order, so the result depends only on ``rng``'s state and the inputs. Features
        a class never varies get exactly its mean (their columns of T are zero).
        """
        n, D = len(class_index), self.n_features
        out = np.empty((n, D), dtype=self.work)
        for k in np.unique(class_index):
            rows = np.flatnonzero(class_index == k)
            T, mean = self.factors_t[k], self.means[k]
            block = out if len(rows) == n else np.empty((len(rows), D), dtype=self.work)
            if T.shape[0] == 0:
                block[:] = mean
            else:
                z = rng.standard_normal((len(rows), T.shape[0]), dtype=self.work)
                for lo, hi, used in self.spans[k]:
                    if used:
                        np.matmul(z[:, :used], T[:used, lo:hi], out=block[:, lo:hi])
                    else:
                        block[:, lo:hi] = 0
                block += mean
            if block is not out:
                out[rows] = block
        return out


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind in "OUS":
            h.update("\x1f".join(map(str, a.tolist())).encode())
        else:
            h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # the same bytes, not copied
    return h.hexdigest()[:16]


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum_j exp(a[i, j]) per row, exact for rows of -inf (gives -inf)."""
    top = a.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (safe + np.log(np.exp(a - safe).sum(axis=1, keepdims=True)))[:, 0]


class BayesClassifier:
    """What every per-class density model shares: the class list, and the Bayes
    classifier built on its ``class_log_likelihood`` and ``priors``."""

    classes: np.ndarray
    priors: np.ndarray

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_index(self, label: Any) -> int:
        """Position of ``label`` in ``classes``; accepts the label or its string form."""
        for i, c in enumerate(self.classes.tolist()):
            if c == label or str(c) == str(label):
                return i
        raise InputError(
            f"class {label!r} is not in the model (classes: {', '.join(map(str, self.classes.tolist()))})"
        )

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """log p(x) = logsumexp_k [log p(y=k) + log p(x | y=k)], shape (n,)."""
        return logsumexp_rows(self.class_log_likelihood(X) + np.log(self.priors))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The Bayes classifier: argmax_k p(y = k | x), as class labels, shape (n,)."""
        return self.classes[np.argmax(self.class_log_likelihood(X) + np.log(self.priors), axis=1)]

    def sampler(self, dtype: Any = np.float64) -> Sampler:  # pragma: no cover - abstract
        """What draws samples of this model (prepared once per run)."""
        raise NotImplementedError

    def store_arrays(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """The arrays of the model store, besides ``classes``."""
        raise NotImplementedError

    def sample(
        self, n: int, seed: int | None = None, label: Any = None, dtype: Any = np.float64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` samples in memory: classes from the prior (or only ``label``).

        Returns ``(X, y)``: X of shape (n, D) in model units, y of shape (n,) labels.
        For large ``n`` use :func:`daskgen.generate`, which writes chunks to Zarr.
        """
        rng = np.random.default_rng(seed)
        sampler = self.sampler(dtype)
        idx = sampler.draw_classes(n, rng, None if label is None else self.class_index(label))
        return sampler.draw(idx, rng).astype(dtype, copy=False), self.classes[idx]

    def save(self, path: str, overwrite: bool = False, storage_options: dict | None = None) -> None:
        """Write the model store (a Zarr v3 group) atomically; see ``daskgen.io.store``."""
        from ..io.store import write_model

        write_model(self, path, overwrite=overwrite, storage_options=storage_options)


@dataclass
class GaussianClassModel(BayesClassifier):
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
        Class covariances (full or diagonal), in model units squared.
    image_shape : tuple of int or None
        (H, W) when rows are images.
    scale : float
        Factor from pixel units to model units (1/255 for 8-bit images by default).
    stats : ClassStats
        The raw sufficient statistics, so new data can be folded in later.
    """

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    stats: ClassStats
    image_shape: tuple[int, ...] | None = None
    scale: float = 1.0
    label_column: str = "label"
    feature_names: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)

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
        return _fingerprint(self.classes, self.priors, self.means, self.covariances)

    @cached_property
    def factors(self) -> list[ClassFactor]:
        """One PSD root per class, computed once per model (not per sample)."""
        return [factor_covariance(c) for c in self.covariances]

    # -- scoring -----------------------------------------------------------
    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K).

        Singular covariances are treated as degenerate Gaussians on their support (as
        ``scipy.stats.multivariate_normal(allow_singular=True)``): points off the
        support get ``-inf``.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.n_features:
            raise InputError(f"X has {X.shape[1]} features, the model {self.n_features}")
        out = np.empty((X.shape[0], self.n_classes))
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

    # -- sampling and persistence -----------------------------------------
    def sampler(self, dtype: Any = np.float64) -> Sampler:
        return Sampler(self, dtype)

    def store_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the model store, besides ``classes`` (``scatter``: the raw statistics)."""
        return {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
            "covariances": np.asarray(self.covariances, dtype=np.float64),
            "scatter": np.asarray(self.stats.scatter, dtype=np.float64),
        }

    def scoring_copy(self) -> GaussianClassModel:
        """What a worker needs to score rows: small and picklable, the factors computed
        once (no covariances, no statistics)."""
        copy = GaussianClassModel(
            classes=self.classes, counts=self.counts, priors=self.priors, means=self.means,
            covariances=np.zeros((self.n_classes, 0)), stats=None, image_shape=self.image_shape, scale=self.scale,
        )
        copy.__dict__["factors"] = self.factors
        return copy
