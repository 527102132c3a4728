"""The logit transform against independent references: its log-Jacobian against finite
differences, evaluate's protocol bits/dim against scipy, samples in range, chunking
invariance of logit fits, old stores, CLI and job-file options."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import zarr
from _helpers import assert_one_line_error, run_cli
from scipy.special import logit as scipy_logit
from scipy.stats import multivariate_normal

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.evaluation.heldout import evaluate
from daskgen.io.arrays import from_arrays
from daskgen.io.store import read_model
from daskgen.kernels.transform import (
    EVALUATE_STREAM,
    FIT_STREAM,
    Transform,
    dequantization_noise,
    logit,
    logit_log_det,
    pixel_levels,
    sigmoid_unit,
    to_unit,
    unit_to_pixels,
)

LAM = 1e-6


def synthetic(n: int = 600, D: int = 12, K: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8-bit images of K classes: a bright blob per class on a mostly dark background."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    centre = rng.uniform(0, 255, (K, D)) * (rng.random((K, D)) < 0.6)
    X = np.clip(centre[y] + rng.normal(0, 40, (n, D)), 0, 255)
    return np.rint(X).astype(np.uint8), y


# ---------------------------------------------------------------------------- the kernel
def test_log_jacobian_equals_finite_differences():
    rng = np.random.default_rng(1)
    for lam in (1e-6, 0.05):
        xt = rng.uniform(0.01, 0.99, (5, 7))
        h = 1e-6
        # the map acts elementwise: its Jacobian is diagonal, d y_d / d x_d by central differences
        deriv = (logit(xt + h, lam) - logit(xt - h, lam)) / (2 * h)
        np.testing.assert_allclose(logit_log_det(xt, lam), np.log(np.abs(deriv)).sum(axis=1), rtol=1e-8)
        # and the forward map itself against scipy
        np.testing.assert_allclose(logit(xt, lam), scipy_logit(lam + (1 - 2 * lam) * xt), rtol=1e-12)
        np.testing.assert_allclose(sigmoid_unit(logit(xt, lam), lam), xt, atol=1e-12)


def test_dequantization_noise_is_uniform_and_depends_on_rows_seed_and_stream_only():
    X, _ = synthetic(2000, 16)
    u = dequantization_noise(X, 3)
    assert u.shape == X.shape and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05
    # a row's noise does not depend on the other rows of its block, nor on its position
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(dequantization_noise(X[perm], 3), u[perm])
    np.testing.assert_array_equal(np.concatenate([dequantization_noise(X[:7], 3), dequantization_noise(X[7:], 3)]), u)
    assert not np.array_equal(dequantization_noise(X, 4), u)
    assert not np.array_equal(dequantization_noise(X, 3, EVALUATE_STREAM), dequantization_noise(X, 3, FIT_STREAM))


def test_dequantized_pixels_round_trip_and_refusals():
    X, _ = synthetic(300)
    xt = to_unit(X, True, 1 / 255, seed=0)
    assert xt.min() >= 0 and xt.max() < 1
    np.testing.assert_array_equal(unit_to_pixels(xt), X)  # x~ stays in its pixel's bin
    assert pixel_levels(1 / 255) == 256 and pixel_levels(1 / 16) == 17
    with pytest.raises(ValueError, match="0..255"):
        to_unit(np.array([[0, 256]]), True, 1 / 255)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        to_unit(np.array([[0.5, 1.5]]), False, 1.0)
    with pytest.raises(ValueError, match="transform must be"):
        Transform("logt")
    with pytest.raises(ValueError, match="lambda"):
        Transform("logit", 0.5)


# ---------------------------------------------------------------------------- evaluate's protocol
@pytest.fixture(scope="module")
def split(tmp_path_factory):
    X, y = synthetic(900, 12)
    tr, te = slice(0, 600), slice(600, None)
    path = tmp_path_factory.mktemp("protocol") / "test.zarr"
    write_zarr_dataset(str(path), X[te], y[te], chunk_rows=100)
    return X[tr], y[tr], X[te], y[te], str(path)


def _reference_gaussians(Y: np.ndarray, y: np.ndarray, reg: float):
    """Per class: prior, mean and unbiased covariance + reg, in plain numpy."""
    out = []
    for k in np.unique(y):
        Z = Y[y == k]
        out.append(((y == k).mean(), Z.mean(0), np.cov(Z.T) + reg * np.eye(Y.shape[1])))
    return out


def _log_mixture(Z: np.ndarray, gaussians) -> np.ndarray:
    lp = np.stack([np.log(w) + multivariate_normal(m, C).logpdf(Z) for w, m, C in gaussians], axis=1)
    mx = lp.max(axis=1, keepdims=True)
    return (mx + np.log(np.exp(lp - mx).sum(axis=1, keepdims=True)))[:, 0]


def test_protocol_bits_per_dim_of_a_logit_model_equal_scipy(split, sync_scheduler):
    Xtr, ytr, Xte, yte, path = split
    D, reg = Xtr.shape[1], 0.1
    model = daskgen.fit(from_arrays(Xtr, ytr, blocksize=97), transform="logit", seed=5)
    assert model.transform == Transform("logit", LAM) and model.config["reg_covar"] == reg
    # the reference: plain numpy/scipy on the same dequantized rows
    xt_train = (Xtr + dequantization_noise(Xtr, 5, FIT_STREAM)) / 256
    ref = _reference_gaussians(scipy_logit(LAM + (1 - 2 * LAM) * xt_train), ytr, reg)
    np.testing.assert_allclose(model.means, np.stack([m for _, m, _ in ref]), rtol=1e-10, atol=1e-10)
    rep = evaluate(model, path, seed=9)
    xt = (Xte + dequantization_noise(Xte, 9, EVALUATE_STREAM)) / 256
    p = LAM + (1 - 2 * LAM) * xt
    log_det = (np.log(1 - 2 * LAM) - np.log(p) - np.log(1 - p)).sum(axis=1)
    log_p = _log_mixture(scipy_logit(p), ref) + log_det  # density of x~ on [0, 1]^D
    bits = -log_p.mean() / (D * math.log(2)) + 8
    ll = rep["log_likelihood"]
    assert ll["bits_per_dim"] == pytest.approx(bits, rel=1e-9)
    assert ll["nats_per_image"] == pytest.approx(log_p.mean(), rel=1e-9)
    assert "RealNVP" in ll["protocol"]
    # the classifier scores each pixel's bin centre
    centre = scipy_logit(LAM + (1 - 2 * LAM) * (Xte + 0.5) / 256)
    joint = np.stack([np.log(w) + multivariate_normal(m, C).logpdf(centre) for w, m, C in ref], axis=1)
    assert rep["classifier"]["accuracy"] == pytest.approx((joint.argmax(1) == yte).mean(), abs=0)
    # and the in-memory API gives the same density of x~
    np.testing.assert_allclose(model.log_prob(xt), log_p, rtol=1e-9)


def test_protocol_bits_per_dim_of_a_pixel_model_is_the_density_at_the_bin_centred_noise(split, sync_scheduler):
    Xtr, ytr, Xte, _, path = split
    D, s, reg = Xtr.shape[1], 1 / 255, 1e-3
    model = daskgen.fit(from_arrays(Xtr, ytr), reg_covar=reg)
    ref = _reference_gaussians(Xtr * s, ytr, reg)
    rep = evaluate(model, path, seed=2)
    z = (Xte + dequantization_noise(Xte, 2, EVALUATE_STREAM) - 0.5) * s
    log_p = _log_mixture(z, ref) + D * math.log(256 * s)  # the density of x~ = (x + u)/256
    assert rep["log_likelihood"]["bits_per_dim"] == pytest.approx(-log_p.mean() / (D * math.log(2)) + 8, rel=1e-9)


def test_protocol_bits_per_dim_of_a_logit_mixture_of_factor_analysers_equal_scipy(split, sync_scheduler):
    """The README's best logit model kind: a mixture of factor analysers per class, fitted in
    logit space; evaluate's protocol bits/dim against scipy's dense normals of its own
    parameters (W W^T + diag psi) on the same dequantized, transformed rows."""
    Xtr, ytr, Xte, _, path = split
    D, lam = Xtr.shape[1], 3e-4
    model = daskgen.fit_mixture(from_arrays(Xtr, ytr), 2, covariance="fa", rank=3, transform="logit",
                                logit_lambda=lam, reg_covar=0.01, max_iter=5, seed=1)
    assert model.kind == "mfa" and model.transform == Transform("logit", lam)
    rep = evaluate(model, path, seed=4)
    xt = (Xte + dequantization_noise(Xte, 4, EVALUATE_STREAM)) / 256
    p = lam + (1 - 2 * lam) * xt
    Z = scipy_logit(p)
    lp = [np.log(model.priors[k] * model.weights[k, m]) + multivariate_normal(
        model.means[k, m], model.loadings[k, m] @ model.loadings[k, m].T + np.diag(model.noise[k, m])).logpdf(Z)
        for k in range(model.n_classes) for m in range(model.weights.shape[1]) if model.weights[k, m] > 0]
    top = np.max(lp, axis=0)
    log_p = top + np.log(np.exp(np.array(lp) - top).sum(axis=0))
    log_p += (np.log(1 - 2 * lam) - np.log(p) - np.log(1 - p)).sum(axis=1)
    assert rep["log_likelihood"]["bits_per_dim"] == pytest.approx(-log_p.mean() / (D * math.log(2)) + 8, rel=1e-9)


# ---------------------------------------------------------------------------- fits and samples
@pytest.mark.parametrize("components", [1, 2])
def test_a_logit_fit_does_not_depend_on_the_chunking(split, components, tmp_path, sync_scheduler):
    Xtr, ytr, *_ = split
    path = tmp_path / "train.zarr"
    write_zarr_dataset(str(path), Xtr, ytr, chunk_rows=64)

    def fit(data):
        if components == 1:
            return daskgen.fit(data, transform="logit")
        return daskgen.fit_mixture(data, components, transform="logit", max_iter=3, tol=0)

    a = fit(from_arrays(Xtr, ytr, blocksize=600))
    perm = np.random.default_rng(0).permutation(len(ytr))
    for other in (fit(from_arrays(Xtr[perm], ytr[perm], blocksize=37)), fit(str(path))):
        np.testing.assert_allclose(other.means, a.means, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(other.covariances, a.covariances, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("components", [1, 2])
def test_samples_of_a_logit_model_stay_in_range(split, components, tmp_path, sync_scheduler):
    Xtr, ytr, *_ = split
    model = (daskgen.fit(from_arrays(Xtr, ytr), transform="logit") if components == 1
             else daskgen.fit_mixture(from_arrays(Xtr, ytr), components, transform="logit", max_iter=3))
    X, _ = model.sample(2000, seed=0)
    assert X.min() >= 0 and X.max() <= 1 and np.isfinite(X).all()
    for dtype in ("uint8", "float32"):
        out = tmp_path / f"s-{dtype}.zarr"
        daskgen.generate(model, 3000, str(out), seed=1, chunk_size=1000, dtype=dtype)
        images = zarr.open_group(str(out), mode="r")["images"][...]
        assert images.dtype == np.dtype(dtype)
        if dtype == "uint8":
            assert images.min() == 0 and images.max() >= 200  # the whole range, without clipping
        else:
            assert images.min() >= 0 and images.max() <= 1
    # samples of the background are dark: the pixel-space model's Gaussian tails are gone
    dark = (Xtr < 5).mean(axis=0) > 0.9
    if dark.any():
        assert np.median(X[:, dark]) < 0.02


def test_the_transform_is_stored_fingerprinted_and_summarised(split, tmp_path, sync_scheduler):
    Xtr, ytr, *_ = split
    model = daskgen.fit(from_arrays(Xtr, ytr), transform="logit", logit_lambda=1e-4)
    model.save(str(tmp_path / "m.zarr"))
    back = read_model(str(tmp_path / "m.zarr"))
    assert back.transform == Transform("logit", 1e-4) and back.fingerprint == model.fingerprint
    assert back.summary()["transform"]["name"] == "logit" and "lambda 0.0001" in str(back.transform)
    assert "logit" in repr(back)
    assert dataclasses.replace(model, transform=Transform()).fingerprint != model.fingerprint


def test_old_stores_load_as_none(split, tmp_path, sync_scheduler):
    Xtr, ytr, *_ = split
    model = daskgen.fit(from_arrays(Xtr, ytr))
    path = tmp_path / "old.zarr"
    model.save(str(path))
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["daskgen"])
    assert meta.pop("transform") == {"name": "none"}
    group.attrs["daskgen"] = meta  # as written before the transform existed
    back = read_model(str(path))
    assert back.transform == Transform() and back.transform.identity
    assert back.fingerprint == model.fingerprint == meta["fingerprint"]


# ---------------------------------------------------------------------------- the command line
@pytest.fixture
def digits_zarr(tmp_path, digits):
    path = tmp_path / "digits.zarr"
    X, y = digits
    write_zarr_dataset(str(path), X.reshape(-1, 8, 8).astype(np.uint8), y, chunk_rows=500,
                       attrs={"daskgen": {"scale": 1 / 16}})
    return path


def test_fit_and_evaluate_in_logit_space_through_the_cli(tmp_path, digits_zarr):
    out = tmp_path / "m.zarr"
    r = run_cli("fit", digits_zarr, "--out", out, "--transform", "logit", "--logit-lambda", "1e-5", "--seed", 3)
    assert r.exit_code == 0, r.output
    model = read_model(str(out))
    assert model.transform == Transform("logit", 1e-5) and model.config["seed"] == 3
    r = run_cli("evaluate", out, digits_zarr, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    assert "logit space" in r.output and "RealNVP" in r.output
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["model"]["transform"]["name"] == "logit" and rep["classifier"]["accuracy"] > 0.9
    r = run_cli("fit", digits_zarr, "--out", tmp_path / "mix.zarr", "--transform", "logit", "--components", 2,
                "--max-iter", 2)
    assert r.exit_code == 0, r.output
    assert read_model(str(tmp_path / "mix.zarr")).transform.name == "logit"


def test_bad_transform_options_are_one_line_errors(tmp_path, digits_zarr):
    out = tmp_path / "m.zarr"
    assert_one_line_error(run_cli("fit", digits_zarr, "--out", out, "--transform", "logit", "--logit-lambda", 0.7),
                          "lambda", "[0, 0.5)")
    assert_one_line_error(run_cli("fit", digits_zarr, "--out", out, "--logit-lambda", 0.01), "--transform logit")
    assert not out.exists()
    bad = tmp_path / "floats.zarr"
    write_zarr_dataset(str(bad), np.full((4, 2, 2), 2.0), np.array([0, 0, 1, 1]), attrs={"daskgen": {"scale": 1.0}})
    assert_one_line_error(run_cli("fit", bad, "--out", out, "--transform", "logit"), "logit transform", "[0, 1]")


@pytest.mark.parametrize(("fit", "needles"), [
    ("{transform: logt}", ["fit.transform", "logt"]),
    ("{transform: logit, logit_lambda: 0.6}", ["fit.logit_lambda", "[0, 0.5)"]),
    ("{logit_lambda: 0.01}", ["fit.logit_lambda", "transform: logit"]),
])
def test_job_file_transform_options(tmp_path, fit, needles):
    job = tmp_path / "job.yaml"
    job.write_text(f"dataset: digits\nout: {tmp_path / 'run'}\nfit: {fit}\nsample: {{n: 100}}\nplot: false\n")
    assert_one_line_error(run_cli("run", job), *needles)


def test_a_job_in_logit_space(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"dataset: digits\nout: {tmp_path / 'run'}\nfit: {{transform: logit}}\n"
                   "sample: {n: 500, dtype: uint8}\nplot: false\n")
    r = run_cli("run", job)
    assert r.exit_code == 0, r.output
    model = read_model(str(tmp_path / "run" / "model.zarr"))
    assert model.transform.name == "logit" and model.config["reg_covar"] == 0.1
    images = zarr.open_group(str(tmp_path / "run" / "samples.zarr"), mode="r")["images"][...]
    assert images.max() <= 16  # the digits' 17 levels
    r = run_cli("run", job)  # up to date: not refitted
    assert r.exit_code == 0, r.output
