"""Per-class mixtures: weighted statistics, EM against scikit-learn, degenerate components,
the distributed EM on a real cluster, the store, generation, figures and the CLI."""

from __future__ import annotations

import itertools
import logging
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import daskgen
from daskgen.cli import main
from daskgen.distributed.em import fit_mixture
from daskgen.kernels.class_stats import chunk_stats
from daskgen.kernels.estep import Components, estep_stats
from daskgen.kernels.weighted import merge_weighted
from daskgen.models.gaussian import GaussianClassModel
from daskgen.models.mixture import GaussianMixtureClassModel
from daskgen.models.mixture_em import fit_em, memory_passes

DIGITS_SCALE = 1 / 16


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


def sklearn_init(Xc, M, covariance, seed=0):
    rng = np.random.default_rng(seed)
    means = Xc[rng.choice(len(Xc), M, replace=False)]
    weights = rng.uniform(0.8, 1.2, M)
    weights /= weights.sum()
    if covariance == "full":
        covs = np.array([np.cov(Xc.T) * (1 + 0.1 * m) + 0.01 * np.eye(Xc.shape[1]) for m in range(M)])
        precisions = np.linalg.inv(covs)
    else:
        covs = np.array([Xc.var(0) * (1 + 0.1 * m) + 0.01 for m in range(M)])
        precisions = 1 / covs
    return weights, means, covs, precisions


# ---------------------------------------------------------------------------- against scikit-learn
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_same_log_likelihood_as_scikit_learn_from_the_same_init(digits_pixels, covariance):
    from sklearn.mixture import GaussianMixture

    X, y = digits_pixels
    Xc = X[y == 3] * DIGITS_SCALE
    M, T, reg = 4, 12, 1e-3
    weights, means, _, precisions = sklearn_init(Xc, M, covariance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never converges
        sk = GaussianMixture(M, covariance_type=covariance, reg_covar=reg, max_iter=T, tol=0.0,
                             weights_init=weights, means_init=means, precisions_init=precisions,
                             init_params="random_from_data").fit(Xc)
    ours = fit_em(X[y == 3], np.zeros((y == 3).sum(), int), M, scale=DIGITS_SCALE, covariance=covariance,
                  reg_covar=reg, max_iter=T, tol=0.0, block_rows=37,
                  init_params={"weights": weights[None], "means": means[None], "precisions": precisions[None]})
    history = ours.config["em"]["log_likelihood"]
    assert len(history) == len(sk.lower_bounds_) == T
    # sklearn's lower bound of iteration t is the mean log-likelihood at its E-step: ours too.
    assert rel(history, sk.lower_bounds_) <= 1e-6
    assert rel(ours.log_prob(Xc).mean(), sk.score(Xc)) <= 1e-6  # after the last M-step
    assert rel(ours.weights[0], sk.weights_) < 1e-9
    assert rel(ours.means[0], sk.means_) < 1e-9
    assert rel(ours.covariances[0], sk.covariances_) < 1e-9


def test_one_component_is_the_single_gaussian(digits_pixels):
    X, y = digits_pixels
    reg = 1e-3
    mix = fit_em(X, y, 1, scale=DIGITS_SCALE, reg_covar=reg, max_iter=5, block_rows=400)
    single = GaussianClassModel.from_stats(chunk_stats(X, y, scale=DIGITS_SCALE), reg_covar=reg)
    np.testing.assert_array_equal(mix.classes, single.classes)
    np.testing.assert_array_equal(mix.counts, single.counts)
    np.testing.assert_array_equal(mix.weights, 1.0)
    np.testing.assert_allclose(mix.priors, single.priors, rtol=1e-15)
    assert np.abs(mix.means[:, 0] - single.means).max() < 1e-13
    n = single.counts[:, None, None]
    eye = np.eye(X.shape[1]) * reg
    # EM's covariances are maximum likelihood (1/n), the single Gaussian's unbiased (1/(n-1)).
    assert rel(mix.covariances[:, 0] - eye, (single.covariances - eye) * (n - 1) / n) < 1e-12
    # Same parameters, same scores.
    same = GaussianClassModel(classes=single.classes, counts=single.counts, priors=single.priors,
                              means=mix.means[:, 0], covariances=mix.covariances[:, 0], stats=single.stats)
    Xs = X[::7] * DIGITS_SCALE
    assert rel(mix.class_log_likelihood(Xs), same.class_log_likelihood(Xs)) < 1e-10
    np.testing.assert_array_equal(mix.predict(Xs), same.predict(Xs))
    assert mix.config["em"]["n_iter"] == 2 and mix.config["em"]["converged"]


@pytest.mark.slow
def test_prior_rows_shrink_each_component_toward_its_class(digits_pixels):
    from daskgen.models.mixture_em import m_step

    X, y = digits_pixels
    passes = memory_passes(X, y, DIGITS_SCALE, block_rows=500)
    plain = fit_em(X, y, 3, scale=DIGITS_SCALE, reg_covar=1e-2, max_iter=3, tol=0, seed=1)
    stats = passes.estep(plain.components)
    nu, reg = 200.0, 1e-2
    params, _ = m_step(stats, reg, prior_rows=nu)
    _, class_scatter = stats.class_totals()
    for k in (0, 7):
        C = class_scatter[k] / stats.mass[k].sum()
        for m in range(3):
            expected = (stats.scatter[k, m] + nu * C) / (stats.mass[k, m] + nu) + reg * np.eye(64)
            assert rel(params.covariances[k, m], expected) < 1e-12
            assert rel(params.means[k, m], stats.means[k, m]) < 1e-15
    shrunk = fit_em(X, y, 3, scale=DIGITS_SCALE, reg_covar=1e-2, max_iter=3, tol=0, seed=1, prior_rows=nu)
    assert shrunk.config["prior_rows"] == nu and plain.config["prior_rows"] == 0.0
    with pytest.raises(ValueError, match="prior_rows"):
        fit_em(X, y, 2, reg_covar=1e-2, prior_rows=-1.0)


# ---------------------------------------------------------------------------- weighted statistics
def random_components(rng, K, M, D, diagonal=False):
    means = rng.normal(size=(K, M, D)) * 2
    if diagonal:
        covs = rng.uniform(0.5, 2.0, size=(K, M, D))
    else:
        A = rng.normal(size=(K, M, D, D))
        covs = A @ np.swapaxes(A, 2, 3) / D + np.eye(D)
    weights = rng.uniform(0.2, 1.0, size=(K, M))
    return Components.from_covariances(np.arange(K), weights / weights.sum(1, keepdims=True), means, covs)


def test_weighted_statistics_are_the_weighted_moments():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)) + 1e4  # a large offset: the centered scatter keeps its digits
    y = rng.integers(0, 2, 500)
    comps = random_components(rng, 2, 3, 4)
    comps.means += 1e4
    s = estep_stats(X, y, comps)
    for k in range(2):
        Xk = X[y == k]
        lp = comps.component_log_prob(np.ascontiguousarray(Xk), k)
        r = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))
        for m in range(3):
            W = r[:, m].sum()
            mu = r[:, m] @ Xk / W
            S = (r[:, m, None] * (Xk - mu)).T @ (Xk - mu)
            assert abs(s.mass[k, m] - W) <= 1e-12 * W
            assert np.abs(s.means[k, m] - mu).max() <= 1e-12 * 1e4
            assert rel(s.scatter[k, m], S) < 1e-9
        assert abs(s.loglik[k] - np.logaddexp.reduce(lp, axis=1).sum()) < 1e-9 * abs(s.loglik[k])
    assert s.counts.tolist() == [(y == 0).sum(), (y == 1).sum()]


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8), diagonal=st.booleans(),
       order_seed=st.integers(0, 2**16))
def test_merge_does_not_depend_on_chunking(cuts, diagonal, order_seed):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5)) * 3 + 50
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 400)]
    comps = random_components(rng, 3, 2, 5, diagonal)
    comps = Components(np.array(["a", "b", "c"]), comps.log_weights, comps.means + 50, comps.prec_chol, comps.log_det)
    whole = estep_stats(X, y, comps)
    bounds = [0, *sorted(cuts), 400]
    parts = [estep_stats(X[a:b], y[a:b], comps) for a, b in itertools.pairwise(bounds)]
    order = np.random.default_rng(order_seed).permutation(len(parts))
    parts = [parts[i] for i in order]
    # an arbitrary tree: merge pairs, then everything
    merged = merge_weighted([merge_weighted(parts[i : i + 2]) for i in range(0, len(parts), 2)])
    np.testing.assert_array_equal(merged.classes, whole.classes)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert rel(merged.mass, whole.mass) < 1e-12
    assert rel(merged.means, whole.means) < 1e-12
    assert rel(merged.scatter, whole.scatter) < 1e-10
    assert rel(merged.loglik, whole.loglik) < 1e-12
    np.testing.assert_array_equal(merged.worst_score, whole.worst_score)
    assert (merged.minimum, merged.maximum) == (whole.minimum, whole.maximum)


@pytest.mark.slow
def test_initial_sample_and_fit_do_not_depend_on_blocks(digits_pixels):
    X, y = digits_pixels
    one = memory_passes(X, y, DIGITS_SCALE).sample(5, 50)
    many = memory_passes(X, y, DIGITS_SCALE, block_rows=97).sample(5, 50)
    assert all(np.array_equal(a, b) for a, b in zip(one.rows, many.rows))
    assert [len(r) for r in one.rows] == [50] * 10
    a = fit_em(X, y, 3, scale=DIGITS_SCALE, reg_covar=1e-2, max_iter=6, tol=0, seed=5)
    b = fit_em(X, y, 3, scale=DIGITS_SCALE, reg_covar=1e-2, max_iter=6, tol=0, seed=5, block_rows=97)
    assert rel(a.means, b.means) < 1e-10 and rel(a.covariances, b.covariances) < 1e-10


# ---------------------------------------------------------------------------- degenerate components
def test_component_on_a_duplicated_point_is_reseeded_not_nan(caplog):
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 6])
    X = np.concatenate([X, X[:1], X[:1]])  # one point three times
    y = np.zeros(len(X), int)
    tiny = np.eye(3) * 1e-12
    init = {"weights": np.array([[0.45, 0.45, 0.1]]),
            "means": np.array([[[0, 0, 0], [6, 6, 6], X[0]]], dtype=float),
            "covariances": np.array([[np.eye(3), np.eye(3), tiny]])}
    with caplog.at_level(logging.WARNING, logger="daskgen"):
        m = fit_em(X, y, 3, reg_covar=1e-9, max_iter=30, tol=1e-8, init_params=init)
    events = m.config["em"]["events"]
    assert events and events[0]["component"] == 2 and "collapsed" in events[0]["problem"]
    assert "component 2 collapsed" in caplog.text
    for a in (m.weights, m.means, m.covariances, m.config["em"]["log_likelihood"]):
        assert np.all(np.isfinite(a))
    assert np.isfinite(m.log_prob(X)).all()
    assert abs(m.weights.sum() - 1) < 1e-12


def test_empty_component_is_reseeded_then_dropped(caplog):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 2))
    y = np.zeros(200, int)
    init = {"weights": np.array([[0.5, 0.5]]), "means": np.array([[[0.0, 0.0], [1e6, 1e6]]]),
            "covariances": np.array([[np.eye(2), np.eye(2)]])}
    with caplog.at_level(logging.WARNING, logger="daskgen"):
        m = fit_em(X, y, 2, reg_covar=1e-6, max_iter=40, tol=0, init_params=init, max_reseeds=0)
    assert "empty" in caplog.text and "dropped" in caplog.text
    assert m.weights[0, 1] == 0 and m.weights[0, 0] == 1
    assert np.isfinite(m.log_prob(X)).all()
    X2, y2 = m.sample(50, seed=0)
    assert np.isfinite(X2).all() and (y2 == 0).all()


def test_mixtures_need_reg_covar(digits_pixels):
    X, y = digits_pixels
    with pytest.raises(ValueError, match="reg_covar > 0"):
        fit_em(X, y, 2, reg_covar=0.0)


# ---------------------------------------------------------------------------- on a cluster
def test_distributed_em_equals_in_memory_em(digits_pixels, digits_store, client):
    X, y = digits_pixels
    opts = dict(reg_covar=1e-2, max_iter=8, tol=0.0, seed=11)
    dist = fit_mixture(digits_store, 3, blocksize=150 * 64 * 8, split_every=3, **opts)
    mem = fit_em(X, y, 3, scale=DIGITS_SCALE, **opts)
    em = dist.config["em"]
    assert em["persist"]["persisted"] and em["persist"]["estimated_bytes"] == X.size
    assert dist.scale == DIGITS_SCALE and dist.image_shape == (8, 8)
    assert rel(em["log_likelihood"], mem.config["em"]["log_likelihood"]) < 1e-12
    assert rel(dist.means, mem.means) < 1e-10
    assert rel(dist.covariances, mem.covariances) < 1e-10
    assert rel(dist.weights, mem.weights) < 1e-10
    assert dist.data_range == (0.0, 1.0)
    assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.slow
def test_threaded_worker_equals_in_memory_em(digits_pixels, digits_store):
    """A worker with two threads scores with numpy's matmul (it releases the GIL), not trmm."""
    from distributed import Client, LocalCluster

    X, y = digits_pixels
    opts = dict(reg_covar=1e-2, max_iter=4, tol=0.0, seed=3)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c, Client(c):
        threaded = fit_mixture(digits_store, 2, blocksize=150 * 64 * 8, **opts)
    mem = fit_em(X, y, 2, scale=DIGITS_SCALE, **opts)
    assert rel(threaded.config["em"]["log_likelihood"], mem.config["em"]["log_likelihood"]) < 1e-12
    assert rel(threaded.covariances, mem.covariances) < 1e-10


def test_input_that_does_not_fit_is_not_persisted(digits_store, sync_scheduler, monkeypatch, caplog):
    import daskgen.distributed.em as em

    monkeypatch.setattr(em, "_host_memory", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="daskgen"):
        m = em.fit_mixture(digits_store, 2, reg_covar=1e-2, max_iter=2)
    assert not m.config["em"]["persist"]["persisted"]
    assert "re-reads" in m.config["em"]["persist"]["reason"] and "not persisted" in caplog.text


# ---------------------------------------------------------------------------- model, store, generation
@pytest.fixture(scope="module")
def mixture(digits_pixels):
    X, y = digits_pixels
    return fit_em(X, y, 3, scale=DIGITS_SCALE, image_shape=(8, 8), reg_covar=1e-2, max_iter=10, seed=1)


def test_sampling_follows_the_weights():
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(600, 2)) * 0.1, rng.normal(size=(200, 2)) * 0.1 + 10])
    y = np.zeros(800, int)
    m = fit_em(X, y, 2, reg_covar=1e-6, max_iter=20)
    S, labels = m.sample(20_000, seed=0)
    assert abs((S[:, 0] > 5).mean() - 0.25) < 0.01
    assert (labels == 0).all()
    a, _ = m.sample(100, seed=3)
    b, _ = m.sample(100, seed=3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_store_round_trip(mixture, tmp_path):
    mixture.save(str(tmp_path / "m.zarr"))
    back = daskgen.load_model(str(tmp_path / "m.zarr"))
    assert isinstance(back, GaussianMixtureClassModel)
    assert back.fingerprint == mixture.fingerprint
    for name in ("classes", "counts", "priors", "weights", "means", "covariances", "mass"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mixture, name))
    assert back.image_shape == (8, 8) and back.scale == DIGITS_SCALE and back.data_range == mixture.data_range
    assert back.config["em"]["n_iter"] == mixture.config["em"]["n_iter"]
    attrs = dict(__import__("zarr").open_group(str(tmp_path / "m.zarr")).attrs)["daskgen"]
    assert attrs["components"] == 3 and attrs["format"] == 1


def test_generate_and_plot_a_mixture(mixture, tmp_path, sync_scheduler):
    from daskgen.distributed.generation import generate
    from daskgen.plot import load_samples, plot_all

    result = generate(mixture, 250, str(tmp_path / "s.zarr"), seed=7, chunk_size=100, dtype="uint8")
    assert result.chunks_written == 3
    X, y = load_samples(str(tmp_path / "s.zarr"), n=250)
    assert X.shape == (250, 64) and X.dtype == np.uint8 and X.max() <= 16
    assert set(np.unique(y)) <= set(range(10))
    again = generate(mixture, 100, str(tmp_path / "t.zarr"), seed=7, chunk_size=100, dtype="uint8", label=4)
    assert again.n_chunks == 1
    assert (load_samples(str(tmp_path / "t.zarr"), n=100)[1] == 4).all()
    files = plot_all(mixture, str(tmp_path / "figs"), samples=(X, y))
    assert set(files) == {"means-and-samples", "samples-grid", "spectrum", "component-means"}
    from PIL import Image

    w, h = Image.open(files["component-means"]).size
    assert h > w  # 10 rows of classes, 3 columns of components


# ---------------------------------------------------------------------------- command line
def test_cli_components_1_is_todays_model_and_3_is_a_mixture(digits_store, tmp_path):
    runner = CliRunner()
    common = [digits_store, "--reg-covar", "0.01", "-q"]
    r0 = runner.invoke(main, ["fit", *common, "--out", str(tmp_path / "a.zarr")])
    r1 = runner.invoke(main, ["fit", *common, "--components", "1", "--out", str(tmp_path / "b.zarr")])
    assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
    a, b = daskgen.load_model(str(tmp_path / "a.zarr")), daskgen.load_model(str(tmp_path / "b.zarr"))
    assert type(a) is type(b) is GaussianClassModel and a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.stats.scatter, b.stats.scatter)
    r3 = runner.invoke(main, ["fit", digits_store, "--components", "3", "--max-iter", "4", "--tol", "0",
                              "--init", "random", "--seed", "2", "--reg-covar", "0.01", "--prior-rows", "50",
                              "--out", str(tmp_path / "c.zarr")])
    assert r3.exit_code == 0, r3.output
    assert "EM iteration 4" in r3.output and "x 3 components (4 EM iterations" in r3.output
    assert "input persisted" in r3.output
    c = daskgen.load_model(str(tmp_path / "c.zarr"))
    assert isinstance(c, GaussianMixtureClassModel) and c.config["init"] == "random" and c.config["seed"] == 2
    assert c.config["prior_rows"] == 50.0
    bad = runner.invoke(main, ["fit", digits_store, "--components", "2", "--shrinkage", "oas", "-o", str(tmp_path / "d.zarr")])
    assert bad.exit_code == 2 and "--shrinkage" in bad.output


def test_row_keys_of_distinct_8_bit_rows_do_not_collide(digits):
    """Small integers have float64 bits that are zero below the top mantissa bits; the keys
    must still separate every distinct row (a tie between distinct rows makes the initial
    sample depend on which block a row was in)."""
    from daskgen.kernels.init_sample import row_keys

    X = np.unique(digits[0], axis=0)
    keys = row_keys(X, seed=0)
    assert len(np.unique(keys)) == len(X)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 3, size=(20000, 784)).astype(np.uint8)
    pixels = np.unique(pixels, axis=0)
    assert len(np.unique(row_keys(pixels, seed=7))) == len(pixels)
    np.testing.assert_array_equal(row_keys(pixels[:50], 7), row_keys(pixels[:50].astype(np.float64), 7))
