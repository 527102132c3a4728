"""GaussianClassModel: finalize options, scoring, the Bayes classifier, in-memory sampling, the store."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

import daskgen
from daskgen.errors import ModelError
from daskgen.kernels.class_stats import chunk_stats
from daskgen.kernels.linalg import factor_covariance
from daskgen.models.gaussian import GaussianClassModel


@pytest.fixture
def blobs():
    rng = np.random.default_rng(11)
    X = np.concatenate([rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + 3 * k for k in range(3)])
    y = np.repeat(np.array([10, 20, 30]), 400)
    return X, y


def test_oas_matches_scikit_learn(blobs):
    from sklearn.covariance import OAS

    X, y = blobs
    m = GaussianClassModel.from_stats(chunk_stats(X, y), shrinkage="oas")
    for k, c in enumerate([10, 20, 30]):
        np.testing.assert_allclose(m.covariances[k], OAS().fit(X[y == c]).covariance_, rtol=1e-10, atol=1e-12)


def test_reg_covar_and_diag(blobs):
    X, y = blobs
    base = GaussianClassModel.from_stats(chunk_stats(X, y))
    reg = GaussianClassModel.from_stats(chunk_stats(X, y), reg_covar=0.5)
    np.testing.assert_allclose(reg.covariances - base.covariances, np.broadcast_to(np.eye(5) * 0.5, (3, 5, 5)), atol=1e-12)
    diag = GaussianClassModel.from_stats(chunk_stats(X, y), covariance="diag")
    np.testing.assert_allclose(diag.covariances, np.diagonal(base.covariances, axis1=1, axis2=2), rtol=1e-12)
    assert diag.covariance_type == "diag"


def test_one_row_class_is_an_error_naming_the_class():
    X = np.arange(10.0).reshape(5, 2)
    with pytest.raises(ValueError, match="class 'lonely' has 1 row"):
        GaussianClassModel.from_stats(chunk_stats(X, np.array(["a", "a", "lonely", "a", "a"])))


def test_log_prob_matches_scipy(blobs):
    X, y = blobs
    m = GaussianClassModel.from_stats(chunk_stats(X, y))
    test = X[::37]
    ll = m.class_log_likelihood(test)
    for k in range(3):
        ref = sps.multivariate_normal(m.means[k], m.covariances[k]).logpdf(test)
        np.testing.assert_allclose(ll[:, k], ref, rtol=1e-10)
    joint = ll + np.log(m.priors)
    np.testing.assert_allclose(m.log_prob(test), np.logaddexp.reduce(joint, axis=1), rtol=1e-12)


def test_singular_log_prob_is_scipy_allow_singular(blobs):
    X, y = blobs
    X = X.copy()
    X[:, 2] = 0.0  # a pixel that is always 0
    m = GaussianClassModel.from_stats(chunk_stats(X, y))
    inside = X[::50]
    ref = sps.multivariate_normal(m.means[0], m.covariances[0], allow_singular=True).logpdf(inside)
    np.testing.assert_allclose(m.class_log_likelihood(inside)[:, 0], ref, rtol=1e-8)
    outside = inside.copy()
    outside[:, 2] = 0.5
    assert np.isneginf(m.class_log_likelihood(outside)).all()


def test_predict_is_the_bayes_classifier_like_qda(blobs):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    X, y = blobs
    m = GaussianClassModel.from_stats(chunk_stats(X, y))
    qda = QuadraticDiscriminantAnalysis().fit(X, y)
    np.testing.assert_array_equal(m.predict(X), qda.predict(X))
    assert (m.predict(X) == y).mean() > 0.9


def test_factor_keeps_constant_features_exact_and_drops_null_directions():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 2))
    cov = np.zeros((8, 8))
    cov[1:7, 1:7] = A @ A.T  # rank 2; features 0 and 7 constant
    f = factor_covariance(cov)
    assert f.rank == 2 and f.active.tolist() == [False] + [True] * 6 + [False]
    np.testing.assert_allclose(f.root @ f.root.T, cov[1:7, 1:7], atol=1e-12)


def test_in_memory_sampling_uses_the_prior_and_respects_constants():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 4))
    X[:, 0] = 7.0
    y = np.where(rng.random(1000) < 0.8, "a", "b")
    m = GaussianClassModel.from_stats(chunk_stats(X, y))
    S, labels = m.sample(20000, seed=1)
    assert abs((labels == "a").mean() - m.priors[0]) < 0.02
    assert (S[:, 0] == 7.0).all()
    only_b, lb = m.sample(50, seed=2, label="b")
    assert set(lb) == {"b"} and only_b.shape == (50, 4)
    np.testing.assert_array_equal(m.sample(10, seed=3)[0], m.sample(10, seed=3)[0])
    with pytest.raises(ValueError, match="class 'zebra' is not in the model"):
        m.sample(1, label="zebra")


def test_store_round_trip_and_refusals(tmp_path, blobs):
    X, y = blobs
    m = GaussianClassModel.from_stats(chunk_stats(X, y), image_shape=None, feature_names=list("abcde"))
    path = str(tmp_path / "m.zarr")
    m.save(path)
    back = daskgen.load_model(path)
    for name in ("classes", "counts", "priors", "means", "covariances"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    np.testing.assert_array_equal(back.stats.scatter, m.stats.scatter)
    assert back.fingerprint == m.fingerprint and back.feature_names == list("abcde")
    with pytest.raises(daskgen.OutputExistsError):
        m.save(path)
    m.save(path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]  # no temporary left behind

    import zarr

    g = zarr.open_group(path, mode="r+")
    meta = dict(g.attrs["daskgen"])
    g.attrs["daskgen"] = {**meta, "format": 99}
    with pytest.raises(ModelError, match="format 99"):
        daskgen.load_model(path)
    g.attrs["daskgen"] = {**meta, "complete": False}
    with pytest.raises(ModelError, match="incomplete"):
        daskgen.load_model(path)
    g.attrs["daskgen"] = meta
    import shutil

    shutil.rmtree(tmp_path / "m.zarr" / "means")
    with pytest.raises(ModelError, match="corrupted"):
        daskgen.load_model(path)
    with pytest.raises(ModelError, match="no such model"):
        daskgen.load_model(str(tmp_path / "nope.zarr"))
