"""The estimators on arrays: the same model as the file path, scikit-learn references and protocol."""

from __future__ import annotations

import itertools
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskgen
from daskgen import GaussianClassifier, GaussianMixtureClassifier
from daskgen.datasets import load_digits_dataset, write_csv_dataset, write_zarr_dataset
from daskgen.io.arrays import from_arrays


@pytest.fixture(scope="module")
def pixels():
    """The bundled digits as 8-bit pixels: X (1797, 64) uint8 in 0..16, y (1797,) int64."""
    images, labels = load_digits_dataset()
    return images.reshape(len(images), -1), labels


@pytest.fixture(scope="module")
def dequantized(pixels):
    """The digits plus uniform noise in [0, 1): float64, every class covariance full rank."""
    X, y = pixels
    return X + np.random.default_rng(0).uniform(size=X.shape), y


def assert_same_model(a, b):
    for name in ("classes", "counts", "priors", "means", "covariances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.scale == b.scale and a.image_shape == b.image_shape


def uneven_chunks(n: int, cuts: list[int]) -> tuple[int, ...]:
    edges = sorted({0, n, *[c % n for c in cuts]})
    return tuple(int(b - a) for a, b in itertools.pairwise(edges))


# ---------------------------------------------------------------------------- the file path's model
def test_dask_array_fit_is_bit_equal_to_the_file_fit_on_8bit_pixels(fashion, tmp_path, sync_scheduler):
    images, labels = fashion[0][:3000], fashion[1][:3000]
    zarr_path = write_zarr_dataset(str(tmp_path / "f.zarr"), images, labels, chunk_rows=500)
    csv_path = write_csv_dataset(str(tmp_path / "f.csv"), images, labels)
    # reg_covar 0 everywhere: the covariances compared are the raw statistics' (both default
    # to scale**2 / 12 on 8-bit pixels)
    by_zarr = daskgen.fit(zarr_path, blocksize=500 * 784 * 8, reg_covar=0)  # blocks of 500 rows
    by_csv = daskgen.fit(csv_path, blocksize=1 << 20, reg_covar=0)
    X = images.reshape(len(images), -1)
    for chunks in [500, (1000, 7, 1993), 3000]:
        est = GaussianClassifier(reg_covar=0).fit(da.from_array(X, chunks=(chunks, 392)), labels)
        assert_same_model(est.model_, by_zarr)
        assert_same_model(est.model_, by_csv)
    est3d = GaussianClassifier(reg_covar=0, blocksize=777).fit(images, labels)  # numpy (n, 28, 28)
    assert_same_model(est3d.model_, by_zarr)
    assert est3d.model_.image_shape == (28, 28) and est3d.scale_ == 1 / 255
    np.testing.assert_array_equal(est3d.means_, by_zarr.means / (1 / 255))


def test_float_fit_with_the_file_blocks_is_bit_equal(dequantized, tmp_path, sync_scheduler):
    X, y = dequantized
    path = write_zarr_dataset(str(tmp_path / "d.zarr"), X, y, chunk_rows=300)
    by_path = daskgen.fit(path, blocksize=300 * 64 * 8, split_every=3)
    est = GaussianClassifier(split_every=3).fit(da.from_array(X, chunks=(300, 64)), y)
    assert_same_model(est.model_, by_path)
    other = GaussianClassifier().fit(da.from_array(X, chunks=(211, 64)), y)  # other blocks: rounding only
    np.testing.assert_allclose(other.covariances_, est.covariances_, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, 1796), max_size=6), split_every=st.integers(2, 5))
def test_any_row_chunks_give_the_same_8bit_model(pixels, cuts, split_every):
    X, y = pixels
    ref = GaussianClassifier(blocksize=500).fit(X, y).model_
    chunks = uneven_chunks(len(X), cuts)
    with dask.config.set(scheduler="synchronous"):
        est = GaussianClassifier(split_every=split_every).fit(da.from_array(X, chunks=(chunks, 64)), da.from_array(y, chunks=50))
    assert_same_model(est.model_, ref)


# ---------------------------------------------------------------------------- other inputs, same model
@pytest.mark.slow  # integration: several fits
def test_dataframes_and_xarray_give_the_numpy_model(pixels, sync_scheduler):
    import dask.dataframe as dd
    import pandas as pd
    import xarray as xr

    X, y = pixels
    ref = GaussianClassifier().fit(X, y)
    frame = pd.DataFrame(X, columns=[f"p{i}" for i in range(64)]).assign(label=y)
    by_pandas = GaussianClassifier(blocksize=400).fit(frame, "label")
    by_dask_frame = GaussianClassifier().fit(dd.from_pandas(frame, npartitions=5), y="label")
    images = xr.DataArray(X.reshape(-1, 8, 8), dims=("image", "y", "x"), coords={"digit": ("image", y)})
    chunked = images.chunk({"image": 300, "x": 4})
    assert [b.stop for b in from_arrays(chunked, "digit", sample_dim="image").blocks] == [*range(300, 1797, 300), 1797]
    by_coord = GaussianClassifier(sample_dim="image").fit(chunked, y="digit")
    by_array = GaussianClassifier(sample_dim="image").fit(images.transpose("x", "image", "y"), xr.DataArray(y, dims="image"))
    for est in (by_pandas, by_dask_frame, by_coord):
        assert_same_model(est.model_, ref.model_)
    np.testing.assert_array_equal(by_array.classes_, ref.classes_)  # features in another order
    assert list(by_dask_frame.feature_names_in_) == [f"p{i}" for i in range(64)]
    np.testing.assert_array_equal(by_pandas.predict(frame.drop(columns="label")), ref.predict(X))
    np.testing.assert_allclose(by_coord.score_samples(images), ref.score_samples(X), rtol=1e-12)
    opts = dict(n_components=2, max_iter=2, reg_covar=1e-2)
    mix = GaussianMixtureClassifier(**opts).fit(dd.from_pandas(frame, npartitions=5), "label")
    assert mix.model_.config["em"]["persist"]["persisted"]  # a dataframe's size is unknown: kept
    np.testing.assert_allclose(mix.means_, GaussianMixtureClassifier(**opts).fit(X, y).means_, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- references
@pytest.mark.slow
def test_gaussian_classifier_matches_qda_and_np_cov(dequantized, sync_scheduler):
    from scipy.stats import multivariate_normal
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    X, y = dequantized
    est = GaussianClassifier(blocksize=256).fit(X, y)
    qda = QuadraticDiscriminantAnalysis(store_covariance=True).fit(X, y)
    assert est.scale_ == 1.0 and est.n_features_in_ == 64
    np.testing.assert_array_equal(est.classes_, qda.classes_)
    np.testing.assert_allclose(est.priors_, qda.priors_, rtol=1e-15)
    np.testing.assert_allclose(est.means_, qda.means_, rtol=1e-12, atol=1e-12)
    n = est.counts_[:, None, None]
    # scikit-learn 1.9's QDA stores the biased (1/n) covariance, daskgen the unbiased one
    np.testing.assert_allclose(est.covariances_ * (n - 1) / n, np.array(qda.covariance_), rtol=1e-9, atol=1e-11)
    for k, c in enumerate(est.classes_):
        np.testing.assert_allclose(est.covariances_[k], np.cov(X[y == c].T), rtol=1e-10, atol=1e-12)
    joint = np.stack([multivariate_normal(np.mean(X[y == c], 0), np.cov(X[y == c].T)).logpdf(X) for c in est.classes_], 1)
    joint += np.log(est.priors_)
    reference = np.exp(joint - joint.max(1, keepdims=True))
    np.testing.assert_allclose(est.predict_proba(X), reference / reference.sum(1, keepdims=True), atol=1e-9)
    assert (est.predict(X) == qda.predict(X)).mean() > 0.99
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X[:50])), est.predict_proba(X[:50]), rtol=1e-12)


def test_score_samples_is_the_density_of_the_data_units(pixels, sync_scheduler):
    X, y = pixels
    est = GaussianClassifier(reg_covar=1e-3).fit(X, y)  # 8-bit: model units are X / 255
    expected = est.model_.log_prob(X / 255.0) + 64 * np.log(1 / 255)
    np.testing.assert_allclose(est.score_samples(X), expected, rtol=1e-12)
    assert est.score(X) == pytest.approx(expected.mean(), rel=1e-12)
    lazy = est.score_samples(da.from_array(X, chunks=(400, 64)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-12)
    np.testing.assert_array_equal(est.predict(da.from_array(X, chunks=(400, 64))).compute(), est.predict(X))
    Xs, ys = est.sample(400, random_state=3)
    Zs, zs = est.model_.sample(400, seed=3)
    np.testing.assert_allclose(Xs, Zs * 255)
    np.testing.assert_array_equal(ys, zs)
    assert Xs.shape == (400, 64) and set(ys) <= set(est.classes_)


@pytest.mark.slow  # integration: several fits
def test_mixture_is_the_file_path_mixture_and_one_sklearn_em_step(pixels, tmp_path, sync_scheduler):
    from sklearn.mixture import GaussianMixture

    X, y = pixels
    path = write_zarr_dataset(str(tmp_path / "d.zarr"), X.reshape(-1, 8, 8), y, chunk_rows=150)
    opts = dict(reg_covar=1e-2, max_iter=6, tol=0.0)
    by_path = daskgen.fit_mixture(path, 3, blocksize=150 * 64 * 8, scale=1 / 16, seed=11, split_every=3, **opts)
    est = GaussianMixtureClassifier(3, random_state=11, scale=1 / 16, split_every=3, **opts)
    est.fit(da.from_array(X, chunks=(150, 64)), y)
    for name in ("weights", "means", "covariances", "priors"):
        np.testing.assert_array_equal(getattr(est.model_, name), getattr(by_path, name), err_msg=name)
    assert est.means_.shape == (10, 3, 64) and est.covariances_.shape == (10, 3, 64, 64)
    assert est.weights_.shape == (10, 3) and est.n_iter_ == 6 and not est.converged_
    assert not est.model_.config["em"]["events"]
    # One more EM iteration from est's parameters, by scikit-learn, per class.
    more = GaussianMixtureClassifier(3, random_state=11, scale=1 / 16, split_every=3, **dict(opts, max_iter=7))
    more.fit(X, y)
    for k, c in enumerate(est.classes_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning after one iteration
            sk = GaussianMixture(3, reg_covar=1e-2, max_iter=1, tol=0.0, weights_init=est.model_.weights[k],
                                 means_init=est.model_.means[k],
                                 precisions_init=np.linalg.inv(est.model_.covariances[k])).fit(X[y == c] / 16)
        np.testing.assert_allclose(more.model_.weights[k], sk.weights_, rtol=1e-8)
        np.testing.assert_allclose(more.model_.means[k], sk.means_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(more.model_.covariances[k], sk.covariances_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
    assert (est.predict(X) == y).mean() > 0.95


# ---------------------------------------------------------------------------- schedulers
@pytest.mark.slow  # integration: several fits
def test_fits_on_a_threaded_distributed_client(pixels, dequantized):
    from distributed import Client, LocalCluster

    X, y = pixels
    local = GaussianClassifier().fit(da.from_array(X, chunks=(300, 64)), y)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=True):
        exact = GaussianClassifier(split_every=2).fit(da.from_array(X, chunks=(97, 64)), y)  # as completed
        floats = GaussianClassifier().fit(da.from_array(dequantized[0], chunks=(300, 64)), y)  # fixed tree
        mix = GaussianMixtureClassifier(2, max_iter=3).fit(da.from_array(X, chunks=(300, 64)), y)
    assert_same_model(exact.model_, local.model_)
    ref = GaussianClassifier().fit(da.from_array(dequantized[0], chunks=(300, 64)), y)
    assert_same_model(floats.model_, ref.model_)
    alone = GaussianMixtureClassifier(2, max_iter=3).fit(da.from_array(X, chunks=(300, 64)), y)
    np.testing.assert_allclose(mix.means_, alone.means_, rtol=1e-10, atol=1e-12)  # BLAS threads may round otherwise


# ---------------------------------------------------------------------------- scikit-learn protocol
def test_clone_params_and_model_selection(pixels, sync_scheduler):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = pixels
    est = GaussianClassifier(reg_covar=1e-2, covariance="diag")
    assert est.get_params()["reg_covar"] == 1e-2 and "sample_dim" in est.get_params()
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert repr(twin) == "GaussianClassifier(covariance='diag', reg_covar=0.01)"
    assert est.set_params(reg_covar=0.1) is est and est.reg_covar == 0.1
    with pytest.raises(ValueError, match="invalid parameter 'regcovar'"):
        est.set_params(regcovar=1)
    accuracy = cross_val_score(GaussianClassifier(reg_covar=1e-2), X, y, cv=3, scoring="accuracy")
    assert accuracy.min() > 0.8
    loglik = cross_val_score(GaussianClassifier(reg_covar=1e-2), X, y, cv=3)  # score: mean log-likelihood
    assert np.isfinite(loglik).all()
    search = GridSearchCV(GaussianClassifier(), {"reg_covar": [1e-3, 1e-1]}, cv=2).fit(X, y)
    assert search.best_params_["reg_covar"] in (1e-3, 1e-1)
    mixture = clone(GaussianMixtureClassifier(n_components=3, random_state=None))
    assert mixture.n_components == 3 and mixture.random_state is None


def test_model_saves_and_loads(pixels, tmp_path, sync_scheduler):
    X, y = pixels
    est = GaussianClassifier().fit(X, y)
    est.model_.save(str(tmp_path / "m.zarr"))
    assert_same_model(daskgen.load_model(str(tmp_path / "m.zarr")), est.model_)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("X", "y", "params", "match"),
    [
        (np.zeros((10, 4)), np.zeros(9), {}, r"y must have shape \(10,\)"),
        (np.zeros(10), np.zeros(10), {}, r"X must have shape \(n, D\)"),
        (np.zeros((10, 2, 2, 2)), np.zeros(10), {}, r"X must have shape"),
        (np.array([["a", "b"]] * 3), np.zeros(3), {}, "X must hold numbers"),
        (np.zeros((0, 4)), np.zeros(0), {}, "X has no rows"),
        (np.zeros((10, 4)), None, {}, "y is required"),
        (np.zeros((10, 4)), "label", {}, "names a column or coordinate"),
        (np.zeros((10, 4)), np.r_[np.zeros(9), np.nan], {}, "NaN or infinite labels"),
        (np.zeros((10, 4)), np.zeros(10), {"covariance": "spherical"}, "covariance: expected one of full, diag"),
        (np.zeros((10, 4)), np.zeros(10), {"reg_covar": -1}, "reg_covar: must be >= 0"),
        (np.zeros((10, 4)), np.zeros(10), {"split_every": 1}, "split_every: must be at least 2"),
        (np.zeros((10, 4)), np.zeros(10), {"blocksize": 0}, "blocksize must be a positive"),
        (np.zeros((10, 4)), np.zeros(10), {"scale": "big"}, "scale: expected auto or a number"),
    ],
)
def test_bad_input_is_a_clear_value_error(X, y, params, match):
    with pytest.raises(ValueError, match=match):
        GaussianClassifier(**params).fit(X, y)


def test_bad_values_and_chunks_are_value_errors(pixels, sync_scheduler):
    import dask.dataframe as dd
    import pandas as pd

    X, y = pixels
    bad = X.astype(np.float64)
    bad[700, 5] = np.nan
    with pytest.raises(ValueError, match=r"rows 600-800\): feature pixel5 has a missing, NaN or infinite value"):
        GaussianClassifier().fit(da.from_array(bad, chunks=(200, 64)), y)
    big = X.astype(np.int64)
    big[3, 2] = 300
    with pytest.raises(ValueError, match="pixel2 has value 300 outside 0..255"):
        GaussianClassifier().fit(big, y)
    assert GaussianClassifier(scale=1.0).fit(big, y).scale_ == 1.0  # a fixed scale: any values
    with pytest.raises(ValueError, match="unknown row chunk sizes"):
        GaussianClassifier().fit(da.from_array(X, chunks=100)[da.from_array(y, chunks=100) >= 0], y)
    with pytest.raises(ValueError, match="no label column 'digit'"):
        GaussianClassifier().fit(dd.from_pandas(pd.DataFrame(X).assign(label=y), npartitions=2), "digit")
    with pytest.raises(ValueError, match="is not numeric"):
        GaussianClassifier().fit(pd.DataFrame({"a": ["x"] * 4, "label": [0, 0, 1, 1]}), "label")
    with pytest.raises(ValueError, match="every class needs at least 2 rows"):
        GaussianClassifier().fit(X[:11], y[:11])
    with pytest.raises(ValueError, match="not fitted yet"):
        GaussianClassifier().predict(X)
    est = GaussianClassifier(reg_covar=1e-3).fit(X, y)
    with pytest.raises(ValueError, match="X has 63 features"):
        est.predict(X[:, :63])
    with pytest.raises(ValueError, match="a mixture needs reg_covar > 0"):
        GaussianMixtureClassifier(reg_covar=0).fit(X, y)
