"""Model kinds: a kind defined only here goes through every public path; old stores still load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pytest
import zarr
from _helpers import run_cli

import daskgen
from daskgen.errors import ModelError
from daskgen.evaluation.heldout import evaluate
from daskgen.io.store import read_model
from daskgen.kernels.class_stats import ClassStats
from daskgen.kernels.linalg import factor_covariance
from daskgen.kernels.sampling import Sampler
from daskgen.models import registry
from daskgen.models.base import ClassModel, check_features, fingerprint_arrays, meta_fields, read_arrays


# ---------------------------------------------------------------------------- the tiny kind
@dataclass
class DiagonalGaussian(ClassModel):
    """One axis-aligned Gaussian per class: per-pixel means and variances, nothing else."""

    kind = "test-diagonal"

    classes: np.ndarray
    counts: np.ndarray
    priors: np.ndarray
    means: np.ndarray  # (K, D)
    variances: np.ndarray  # (K, D)
    data_range: tuple[float, float] = (np.nan, np.nan)

    n_features = property(lambda self: int(self.means.shape[1]))
    covariance_type = "diag"
    class_means = property(lambda self: self.means)
    class_covariances = property(lambda self: self.variances)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_arrays(self.classes, self.priors, self.means, self.variances)

    @classmethod
    def diagonal_stats(cls, covariance: str) -> bool:
        return True

    @classmethod
    def from_stats(cls, stats: ClassStats, covariance="diag", reg_covar=0.0, shrinkage="none", **meta):
        counts = stats.counts.astype(np.int64)
        config = {**meta.pop("config", {}), "reg_covar": float(reg_covar)}
        return cls(stats.classes, counts, counts / counts.sum(), stats.means.copy(),
                   stats.scatter / (counts - 1)[:, None] + reg_covar, (stats.minimum, stats.maximum),
                   config=config, **meta)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X, self.n_features)
        z = (X[:, None, :] - self.means) ** 2 / self.variances
        return -0.5 * (z.sum(axis=2) + np.log(2 * np.pi * self.variances).sum(axis=1))

    def sampler(self, dtype=np.float64) -> Sampler:
        return Sampler(self.priors, self.means, [factor_covariance(v) for v in self.variances], dtype)

    def to_store(self):
        return {"counts": self.counts, "priors": self.priors, "means": self.means, "variances": self.variances}, {}

    @classmethod
    def from_store(cls, group, meta, classes, url):
        a = read_arrays(group, ("counts", "priors", "means", "variances"), url)
        lo, hi = meta["data_range"]
        return cls(classes, a["counts"], a["priors"], a["means"], a["variances"], (lo, hi), **meta_fields(meta))


@pytest.fixture
def diagonal_kind():
    registry.register(DiagonalGaussian)
    yield DiagonalGaussian
    registry.unregister(DiagonalGaussian.kind)


@pytest.fixture
def digits_zarr(digits, tmp_path):
    from daskgen.datasets import write_zarr_dataset

    X, y = digits
    path = str(tmp_path / "digits.zarr")
    write_zarr_dataset(path, X.reshape(-1, 8, 8).astype(np.uint8), y.astype(np.uint8), chunk_rows=500)
    return path


def test_a_kind_defined_in_a_test_fits_saves_loads_samples_evaluates_and_plots(diagonal_kind, digits_zarr, tmp_path):
    import dask

    with dask.config.set(scheduler="synchronous"):
        model = daskgen.fit(digits_zarr, kind=diagonal_kind.kind, reg_covar=1e-3)
        reference = daskgen.fit(digits_zarr, covariance="diag", reg_covar=1e-3)
    assert isinstance(model, DiagonalGaussian) and model.image_shape == (8, 8)
    np.testing.assert_allclose(model.variances, reference.covariances, rtol=1e-12)
    X = np.random.default_rng(0).random((20, 64))
    np.testing.assert_allclose(model.class_log_likelihood(X), reference.class_log_likelihood(X), rtol=1e-10)

    store = str(tmp_path / "model.zarr")
    model.save(store)
    assert zarr.open_group(store, mode="r").attrs["daskgen"]["model_kind"] == "test-diagonal"
    loaded = daskgen.load_model(store)
    assert isinstance(loaded, DiagonalGaussian) and loaded.fingerprint == model.fingerprint

    # The same sampler on the same factors: the samples are those of the diagonal Gaussian.
    with dask.config.set(scheduler="synchronous"):
        daskgen.generate(loaded, 300, str(tmp_path / "a.zarr"), seed=3, chunk_size=100)
        daskgen.generate(reference, 300, str(tmp_path / "b.zarr"), seed=3, chunk_size=100)
    a, b = zarr.open_group(str(tmp_path / "a.zarr"), mode="r"), zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    np.testing.assert_array_equal(a["images"][...], b["images"][...])
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])

    result = run_cli("evaluate", store, digits_zarr, "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["model"]["kind"] == "test-diagonal" and report["model"]["components"] == 1
    with dask.config.set(scheduler="synchronous"):
        expected = evaluate(reference, digits_zarr)
    assert report["log_likelihood"]["raw_nats_per_image"] == pytest.approx(
        expected["log_likelihood"]["raw_nats_per_image"], rel=1e-9)
    assert report["classifier"]["accuracy"] == expected["classifier"]["accuracy"]

    result = run_cli("plot", store, "--samples", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "figures"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "means-and-samples.png", "samples-grid.png", "spectrum.png"]


def test_an_unknown_kind_is_a_one_line_model_error(tmp_path, digits):
    X, y = digits
    store = str(tmp_path / "model.zarr")
    daskgen.GaussianClassModel.from_stats(daskgen.chunk_stats(X, y), reg_covar=1e-3).save(store)
    group = zarr.open_group(store, mode="r+")
    group.attrs["daskgen"] = {**group.attrs["daskgen"], "model_kind": "ppca-from-the-future"}
    with pytest.raises(ModelError, match="unknown model kind 'ppca-from-the-future'"):
        read_model(store)


# ---------------------------------------------------------------------------- stores written before kinds
def _old_store(path: str, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
    """A model store as daskgen wrote it before ``model_kind``: the same arrays and attributes."""
    group = zarr.open_group(path, mode="w")
    for name, data in arrays.items():
        arr = group.create_array(name, shape=data.shape, dtype=str if data.dtype.kind == "U" else data.dtype)
        arr[...] = data
    group.attrs["daskgen"] = {
        "kind": "model", "format": 1, "version": "0.1.0", "image_shape": [2, 2], "scale": 0.5,
        "label_column": "digit", "feature_names": None, "covariance_type": "diag", "config": {"reg_covar": 0.1},
        "inputs": [], "data_range": [0.0, 2.0], "fingerprint": "0123456789abcdef", **extra, "complete": True,
    }


def test_an_old_gaussian_store_without_a_kind_loads(tmp_path):
    rng = np.random.default_rng(1)
    means, var = rng.random((2, 4)), rng.random((2, 4)) + 0.1
    arrays = {"classes": np.array(["a", "b"]), "counts": np.array([3, 5]), "priors": np.array([3 / 8, 5 / 8]),
              "means": means, "covariances": var, "scatter": var * np.array([[2.0], [4.0]])}
    _old_store(str(tmp_path / "old.zarr"), arrays, {})
    model = read_model(str(tmp_path / "old.zarr"))
    assert isinstance(model, daskgen.GaussianClassModel) and model.kind == "gaussian"
    assert model.classes.tolist() == ["a", "b"] and model.label_column == "digit" and model.image_shape == (2, 2)
    np.testing.assert_array_equal(model.covariances, var)
    np.testing.assert_array_equal(model.stats.scatter, arrays["scatter"])
    assert model.data_range == (0.0, 2.0) and model.scale == 0.5
    X, y = model.sample(5, seed=0)
    assert X.shape == (5, 4) and set(y) <= {"a", "b"}


def test_an_old_mixture_store_without_a_kind_loads(tmp_path):
    rng = np.random.default_rng(2)
    K, M, D = 2, 3, 4
    w = rng.random((K, M))
    arrays = {"classes": np.array([4, 7]), "counts": np.array([10, 20]), "priors": np.array([1 / 3, 2 / 3]),
              "weights": w / w.sum(1, keepdims=True), "mass": rng.random((K, M)), "means": rng.random((K, M, D)),
              "covariances": rng.random((K, M, D)) + 0.1}
    _old_store(str(tmp_path / "old.zarr"), arrays, {"components": M})
    model = read_model(str(tmp_path / "old.zarr"))
    assert isinstance(model, daskgen.GaussianMixtureClassModel) and model.n_components == M
    np.testing.assert_array_equal(model.means, arrays["means"])
    assert model.class_log_likelihood(rng.random((3, D))).shape == (3, K)
