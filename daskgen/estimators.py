"""scikit-learn style estimators on arrays: :class:`GaussianClassifier` and
:class:`GaussianMixtureClassifier`.

They are thin, as dask-ml's: ``fit`` turns its input into the
:class:`~daskgen.io.inputs.Dataset` the file readers give
(:func:`daskgen.io.arrays.from_arrays`) and hands it to :func:`daskgen.fit` or
:func:`daskgen.fit_mixture`, so the same block statistics and merges run (exact
8-bit sums merged as blocks finish on a distributed client, a fixed tree
otherwise) and fitting a dask array gives the model fitting the same rows from
files gives — bit-equal on 8-bit pixels. The fit runs on the active
``distributed.Client`` if there is one, else on Dask's local scheduler.

Units. The model (``model_``) is of ``X * scale`` ("model units", as every daskgen
model; ``scale`` "auto" is 1/255 for integer pixels, 1 for floats). Everything
else an estimator returns or holds is in the units of the ``X`` given to ``fit``
(data units): ``means_``, ``covariances_``, samples, and ``score_samples``, the
log-density of ``x`` itself, ``log p_model(x * scale) + D * log(scale)``.

Logit space (``transform="logit"``). The model is of logit(lam + (1 - 2 lam) x~),
x~ in [0, 1] the dequantized data (``(x + u) / 256`` for 8-bit pixels, ``x * scale``
for other data in [0, 1]); ``means_`` and ``covariances_`` are then in logit space.
Scoring maps each 8-bit pixel to its bin centre, x~ = (x + 1/2) / 256, and
``score_samples`` is the log-density in pixel units, ``log p(x~) - D log 256``;
``sample`` returns ``256 x~ - 1/2`` (pixel units; rounding gives the pixel). Integer
pixels of L = 1/scale + 1 levels (e.g. 0..16) take L in place of 256.

scikit-learn is not needed: ``get_params``/``set_params`` follow its protocol
(parameters are the ``__init__`` arguments, stored unchanged and validated in
``fit``), and ``__sklearn_tags__`` says "classifier", so ``sklearn.base.clone`` and
its model selection (``cross_val_score``, ``GridSearchCV``) work.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from .errors import InputError
from .io.arrays import as_rows, from_arrays, is_dataframe
from .kernels.linalg import logsumexp_rows
from .kernels.transform import make_transform, pixel_levels, to_unit
from .options import GAUSSIAN_FIT, MIXTURE_FIT, READ, SPLIT_EVERY, OptionError

__all__ = ["GaussianClassifier", "GaussianMixtureClassifier"]


class NotFittedError(InputError, AttributeError):
    """The estimator is used before ``fit`` (a ValueError and an AttributeError, as scikit-learn's)."""


class _Estimator:
    """Parameters (``get_params``/``set_params``), input handling and the scoring methods
    shared by both estimators; a subclass sets ``_fit_model`` and ``_fitted_attributes``."""

    # -- parameters (scikit-learn's protocol) --------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters and their values (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any):
        """Set constructor parameters; returns the estimator. Unknown names raise ValueError."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (read by its model selection): a classifier that
        needs labels. Only called by scikit-learn, so importing it here costs nothing else."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags(three_d_array=True),
                    non_deterministic=getattr(self, "random_state", 0) is None)

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults.get(k))]
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- fitting -------------------------------------------------------------
    def fit(self, X: Any, y: Any = None):
        """Fit to labelled rows; returns the estimator.

        Parameters
        ----------
        X : array-like (n, D) or (n, H, W), dask array, (dask) dataframe or xarray DataArray
            Feature values in data units (e.g. 8-bit pixels), any real dtype.
            numpy/pandas input is cut into blocks of ``blocksize`` rows; a dask array
            keeps its chunks along rows as blocks (chunks along the features are
            rechunked to one chunk, so a block holds whole rows); a dask dataframe
            its partitions; a DataArray is ordered ``sample_dim`` first and its other
            dimensions flattened (two of them give the image shape).
        y : array-like (n,) or str
            Labels (numbers or strings; numpy, dask, pandas or xarray), or the name
            of ``X``'s label column (dataframes: ``fit(ddf, y="label")``) or of a
            coordinate along ``sample_dim`` (DataArrays: ``fit(da, y="label")``).

        Raises ``ValueError`` (:class:`~daskgen.errors.InputError`) for mismatched
        lengths, wrong shapes or dtypes, unknown chunk sizes, bad parameters, and —
        when the blocks are computed — NaN or infinite values, or integer pixels
        outside 0..255 with ``scale="auto"``.
        """
        self._check_params()
        READ.check(scale=self.scale)
        dataset = from_arrays(X, y, scale=self.scale, blocksize=self.blocksize, sample_dim=self.sample_dim)
        model = self._fit_model(dataset)
        self.model_ = model
        self.scale_ = float(model.scale)
        # 8-bit pixels as the logit transform sees them (its kernel also takes integer blocks as pixels)
        self.pixels_ = bool(dataset.integer_pixels) or np.dtype(getattr(X, "dtype", np.float64)).kind in "iub"
        self.classes_ = np.asarray(model.classes)
        self.counts_ = np.asarray(model.counts)
        self.priors_ = np.asarray(model.priors)
        self.n_features_in_ = int(model.n_features)
        if is_dataframe(X):
            self.feature_names_in_ = np.asarray(dataset.feature_names, dtype=object)
        self._set_fitted(model)
        return self

    # -- scoring (X in data units) ----------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _rows(self, X: Any):
        self._check_fitted()
        rows, _ = as_rows(X, self.sample_dim)
        if rows.shape[1] != self.n_features_in_:
            raise InputError(f"X has {rows.shape[1]} features, the estimator was fitted on {self.n_features_in_}")
        return rows

    def _joint(self, rows: np.ndarray) -> np.ndarray:
        """log p(y = k) + log p(x * scale | y = k) for numpy rows, shape (n, K), model units
        (logit models: log p(x~ | y = k), x~ the rows' bin centres in [0, 1])."""
        Z = np.asarray(rows, dtype=np.float64)
        if not self.model_.transform.identity:
            try:
                levels = pixel_levels(self.scale_)
                unit = to_unit(Z + 0.5, False, 1 / levels) if self.pixels_ else to_unit(Z, False, self.scale_)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            return self.model_.data_log_likelihood(unit) + np.log(self.model_.priors)
        if self.scale_ != 1.0:
            Z = Z * self.scale_
        return self.model_.class_log_likelihood(Z) + np.log(self.model_.priors)

    def _data_offset(self) -> float:
        """log-density in data units minus that in the model's units, per row."""
        if not self.model_.transform.identity and self.pixels_:
            return -self.n_features_in_ * math.log(pixel_levels(self.scale_))
        return self.n_features_in_ * math.log(self.scale_)

    def _per_row(self, X: Any, fn, columns: int | None, dtype: Any = np.float64):
        """``fn(numpy rows)`` per row block: a numpy result, or a lazy dask array for dask input."""
        rows = self._rows(X)
        if hasattr(rows, "map_blocks"):
            if columns is None:
                return rows.map_blocks(fn, drop_axis=1, dtype=dtype, meta=np.empty(0, dtype=dtype))
            return rows.map_blocks(fn, chunks=(rows.chunks[0], (columns,)), dtype=dtype,
                                   meta=np.empty((0, 0), dtype=dtype))
        return fn(rows)

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each row, shape (n,), float64, in data units:
        ``log p_model(x * scale) + D * log(scale)`` (lazy for dask input; logit models:
        ``log p(x~) - D log 256`` at the bin centres of 8-bit pixels)."""
        offset = self._data_offset()
        return self._per_row(X, lambda r: logsumexp_rows(self._joint(r)) + offset, None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of the rows of ``X`` (scikit-learn's density-estimator
        convention: higher is better; ``y`` is ignored)."""
        return float(np.mean(np.asarray(self.score_samples(X))))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log p(y = classes_[k] | x), shape (n, K)."""

        def fn(r):
            joint = self._joint(r)
            return joint - logsumexp_rows(joint)[:, None]

        return self._per_row(X, fn, len(self.classes_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(y = classes_[k] | x), shape (n, K); rows sum to 1."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The Bayes classifier: the most probable class of each row, shape (n,)."""
        self._check_fitted()
        classes = self.classes_
        return self._per_row(X, lambda r: classes[np.argmax(self._joint(r), axis=1)], None, classes.dtype)

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows in memory: ``(X (n, D) float64 in data units, y (n,) labels)``.

        Classes come from ``priors_``; ``random_state`` (an int or None) seeds numpy's
        default generator. For large samples use :func:`daskgen.generate` on ``model_``.
        """
        self._check_fitted()
        Z, y = self.model_.sample(int(n_samples), seed=random_state)
        if not self.model_.transform.identity and self.pixels_:
            return Z * pixel_levels(self.scale_) - 0.5, y
        return Z / self.scale_, y

    def _check_params(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self):
        """The transform of ``transform``/``logit_lambda``; ValueError (InputError) when bad."""
        try:
            return make_transform(self.transform, self.logit_lambda)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def _fit_model(self, dataset):  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_fitted(self, model) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class GaussianClassifier(_Estimator):
    """One Gaussian per class and the prior p(y): a generative classifier and sampler
    (scikit-learn's ``QuadraticDiscriminantAnalysis``, fitted by daskgen's reduction).

    Parameters (as the command line's ``daskgen fit`` options)
    ----------
    covariance : {"full", "diag", "ppca", "fa"}
        ``ppca``/``fa``: a low-rank class model (:mod:`daskgen.models.lowrank`), fitted
        from randomized sketches; never a D x D array.
    rank, oversampling, power_iterations : int
        ``ppca``/``fa`` only: q (None: 16), the sketch's extra columns and extra passes.
    reg_covar : "auto" or float >= 0
        Added to every covariance's diagonal, in model units squared (logit units
        squared in logit space); "auto" (as ``daskgen fit``): ``scale**2 / 12``, the
        dequantization noise's variance, for integer pixels, 0 for floats, 0.1 with
        ``transform="logit"``.
    shrinkage : {"none", "oas"}
        Oracle Approximating Shrinkage of each class covariance.
    transform : {"none", "logit"}
        ``logit``: model logit(lam + (1 - 2 lam) x~) of the dequantized data (see the module).
    logit_lambda : float, optional
        lam of the logit transform (None: 1e-6).
    random_state : int
        Seed of the logit transform's dequantization noise.
    scale : "auto" or float
        Model units are ``X * scale``; "auto": 1/255 for integer pixels (exact 8-bit
        path, values must lie in 0..255), 1 for floats.
    split_every : int >= 2
        Fan-in of the merges.
    blocksize : int, optional
        Rows per block of numpy/pandas input (default ~32 MiB of float64 rows).
    sample_dim : str
        The sample dimension of xarray input.
    tiles : int, optional
        Keep each class's covariance as tiles of this many features, on disk (``daskgen fit
        --tiles``); ``covariances_`` is then None.

    Attributes (after ``fit``; data units)
    ----------
    classes_ : (K,)  sorted labels
    counts_ : (K,) int64  training rows per class
    priors_ : (K,) float64  counts_ / counts_.sum()
    means_ : (K, D) float64
    covariances_ : (K, D, D) or (K, D) float64  unbiased (n - 1), plus reg_covar / scale**2
        (full and diag only)
    loadings_ : (K, D, q), noise_variance_ : (K, D) float64  ppca/fa only: each class's
        covariance is ``loadings_ @ loadings_.T + diag(noise_variance_)``
    n_features_in_ : int
    feature_names_in_ : (D,) object  column names, for dataframe input only
    scale_ : float  the scale applied (model units = data units * scale_)
    model_ : GaussianClassModel  the daskgen model (model units): ``model_.save(path)``
    """

    def __init__(
        self,
        covariance: str = "full",
        reg_covar: float | str = "auto",
        shrinkage: str = "none",
        transform: str = "none",
        logit_lambda: float | None = None,
        random_state: int = 0,
        scale: str | float = "auto",
        split_every: int = SPLIT_EVERY.default,
        blocksize: int | None = None,
        sample_dim: str = "sample",
        rank: int | None = None,
        oversampling: int = GAUSSIAN_FIT["oversampling"].default,
        power_iterations: int = GAUSSIAN_FIT["power_iterations"].default,
        tiles: int | None = None,
    ):
        self.tiles = tiles
        self.covariance = covariance
        self.reg_covar = reg_covar
        self.shrinkage = shrinkage
        self.rank = rank
        self.oversampling = oversampling
        self.power_iterations = power_iterations
        self.transform = transform
        self.logit_lambda = logit_lambda
        self.random_state = random_state
        self.scale = scale
        self.split_every = split_every
        self.blocksize = blocksize
        self.sample_dim = sample_dim

    def _check_params(self) -> None:
        GAUSSIAN_FIT.check(covariance=self.covariance, reg_covar=self.reg_covar, shrinkage=self.shrinkage,
                           split_every=self.split_every, transform=self.transform, logit_lambda=self.logit_lambda,
                           rank=self.rank, oversampling=self.oversampling, power_iterations=self.power_iterations,
                           tiles=self.tiles)
        MIXTURE_FIT.check(names={"seed": "random_state"}, seed=self.random_state)

    def _fit_model(self, dataset):
        from .fitting import fit

        return fit(dataset, covariance=self.covariance, reg_covar=self.reg_covar, shrinkage=self.shrinkage,
                   split_every=self.split_every, transform=self._transform(), seed=int(self.random_state),
                   rank=self.rank, oversampling=self.oversampling, power_iterations=self.power_iterations,
                   tiles=self.tiles)

    def _set_fitted(self, model) -> None:
        s = self.scale_ if model.transform.identity else 1.0  # logit space: as the model holds them
        self.means_ = model.means / s
        if model.covariance_type in ("ppca", "fa"):  # low rank: no D x D covariance
            self.loadings_ = model.loadings / s
            self.noise_variance_ = model.noise / (s * s)
        else:
            # a tiled model (tiles=T) keeps its covariances on disk, as tiles: none in memory
            self.covariances_ = None if getattr(model, "tiles", None) else model.covariances / (s * s)


class GaussianMixtureClassifier(_Estimator):
    """A mixture of ``n_components`` Gaussians per class, fitted by EM, and the prior p(y).

    Parameters (as the command line's ``daskgen fit --components`` options)
    ----------
    n_components : int >= 1
    covariance : {"full", "diag", "ppca", "fa"}
        ``ppca``/``fa``: components ``W Wᵀ + σ² I`` or ``W Wᵀ + diag ψ`` with ``W`` of ``rank``
        columns (:mod:`daskgen.models.mfa`; ψ floored at ``reg_covar``), never a D×D array.
    rank : int or None
        ``ppca``/``fa`` only: q, the columns of each component's W (None: 16).
    reg_covar : "auto" or float > 0
        Added to every component covariance's diagonal, in model units squared; "auto"
        (as ``daskgen fit --components``): max(1e-6, scale**2 / 12) for integer pixels,
        1e-6 for floats, 0.1 with ``transform="logit"``.
    max_iter : int >= 1
    tol : float >= 0
        On the change of the mean log-likelihood per row (model units).
    init : {"kmeans++", "random"}
    random_state : int or None
        Seed of the initialisation (None: a fresh random seed at each fit).
    init_sample : int
        Rows per class the initialisation looks at.
    prior_rows : float >= 0
        Shrinks each component covariance toward its class's, with this weight in rows.
    persist : {"auto", "always", "never"}
        Keep the blocks in the cluster's memory across iterations.
    transform, logit_lambda, scale, split_every, blocksize, sample_dim : as :class:`GaussianClassifier`
        (the logit transform's noise is seeded by ``random_state``).

    Attributes (after ``fit``; data units)
    ----------
    classes_, counts_, priors_, n_features_in_, feature_names_in_, scale_ : as :class:`GaussianClassifier`
    weights_ : (K, M) float64  component weights per class (rows sum to 1; 0: dropped)
    means_ : (K, M, D) float64  component means
    covariances_ : (K, M, D, D) or (K, M, D) float64  component covariances (full, diag)
    loadings_ : (K, M, D, q) float64, noise_variance_ : (K, M, D) float64  ``ppca``/``fa``: each
        component's covariance is ``loadings_ @ loadings_.T + diag(noise_variance_)``
    n_iter_ : int  EM iterations run
    converged_ : bool
    model_ : GaussianMixtureClassModel or LowRankMixtureClassModel  the daskgen model (model units)
    """

    def __init__(
        self,
        n_components: int = 2,
        covariance: str = "full",
        rank: int | None = None,
        reg_covar: float | str = "auto",
        max_iter: int = 100,
        tol: float = 1e-3,
        init: str = "kmeans++",
        random_state: int | None = 0,
        init_sample: int = 10_000,
        prior_rows: float = 0.0,
        persist: str = "auto",
        transform: str = "none",
        logit_lambda: float | None = None,
        scale: str | float = "auto",
        split_every: int = SPLIT_EVERY.default,
        blocksize: int | None = None,
        sample_dim: str = "sample",
    ):
        self.n_components = n_components
        self.covariance = covariance
        self.rank = rank
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.init_sample = init_sample
        self.prior_rows = prior_rows
        self.persist = persist
        self.transform = transform
        self.logit_lambda = logit_lambda
        self.scale = scale
        self.split_every = split_every
        self.blocksize = blocksize
        self.sample_dim = sample_dim

    def _check_params(self) -> None:
        GAUSSIAN_FIT.check(covariance=self.covariance, reg_covar=self.reg_covar, split_every=self.split_every,
                           transform=self.transform, logit_lambda=self.logit_lambda, rank=self.rank)
        MIXTURE_FIT.check(names={"components": "n_components", "seed": "random_state"},
                          components=self.n_components, max_iter=self.max_iter, tol=self.tol, init=self.init,
                          prior_rows=self.prior_rows, init_sample=self.init_sample,
                          **({} if self.random_state is None else {"seed": self.random_state}))
        if self.reg_covar not in ("auto", None) and not float(self.reg_covar) > 0:
            raise OptionError("reg_covar", f"a mixture needs reg_covar > 0 (its likelihood is unbounded without "
                              f"it), got {self.reg_covar:g}")
        if self.persist not in ("auto", "always", "never"):
            raise InputError(f"persist must be 'auto', 'always' or 'never', not {self.persist!r}")

    def _fit_model(self, dataset):
        from .distributed.em import fit_mixture

        seed = self.random_state
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        return fit_mixture(
            dataset, self.n_components, covariance=self.covariance, reg_covar=self.reg_covar,
            max_iter=self.max_iter, tol=self.tol, init=self.init, seed=int(seed),
            init_sample=self.init_sample, prior_rows=self.prior_rows, persist=self.persist,
            split_every=self.split_every, transform=self._transform(),
            rank=self.rank,
        )

    def _set_fitted(self, model) -> None:
        s = self.scale_ if model.transform.identity else 1.0  # logit space: as the model holds them
        self.weights_ = np.asarray(model.weights)
        self.means_ = model.means / s
        if model.covariance_type in ("ppca", "fa"):  # low rank: no D x D covariance
            self.loadings_ = model.loadings / s
            self.noise_variance_ = model.noise / (s * s)
        else:
            self.covariances_ = model.covariances / (s * s)
        em = model.config.get("em", {})
        self.n_iter_ = int(em.get("n_iter", 0))
        self.converged_ = bool(em.get("converged", False))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):  # arrays
        return a is b

