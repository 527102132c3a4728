"""Numerics at the edges, end to end through Zarr inputs, the block reads and the merge tree:
1e6 offsets, 10^7 rows in one class against exact integer arithmetic, float32 and uint8
inputs, D = 1 and D = 4096, zero-variance pixels, nearly singular covariances under
``reg_covar`` and OAS shrinkage, and sampling from a rank-1 covariance."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import zarr

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.distributed.generation import generate
from daskgen.kernels.class_stats import chunk_stats
from daskgen.models.gaussian import GaussianClassModel

# Dask's synchronous scheduler: the numerics do not depend on the cluster (the fault
# tests show a cluster's result is bit-identical).
pytestmark = pytest.mark.usefixtures("sync_scheduler")


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (norm-wise, so near-zero entries do not dominate)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(float).tiny))


def fit_zarr(path, X, y, chunk_rows, **kw):
    write_zarr_dataset(str(path), X, y, chunk_rows=chunk_rows)
    kw.setdefault("reg_covar", 0)  # compared with exact sums: no regularisation
    return daskgen.fit(str(path), blocksize=1, split_every=kw.pop("split_every", 4), **kw)  # one block per chunk


def test_offset_of_1e6(tmp_path):
    rng = np.random.default_rng(1)
    n, D = 20_000, 5
    A = rng.normal(size=(D, D))
    X = 1e6 + (rng.normal(size=(n, D)) @ A) * 1e-2
    y = rng.integers(0, 2, n)
    model = fit_zarr(tmp_path / "o.zarr", X, y, chunk_rows=500)  # 40 blocks, a 3-level tree
    for k in (0, 1):
        Z = X[y == k] - 1e6  # exact: X is within a factor 2 of 1e6
        assert rel_err(model.covariances[k], np.cov(Z.T)) <= 1e-9
        # as close as float64 gets: within one unit in the last place of 1e6 (1.2e-10)
        assert np.abs(model.means[k] - (1e6 + Z.mean(axis=0))).max() <= np.spacing(1e6)


@pytest.mark.slow
def test_ten_million_rows_in_one_class_against_exact_sums(tmp_path):
    """10^7 rows of 10^6 + small integers (int32), 100 blocks: means and scatter within
    1e-9 (relative, norm-wise; the mean's error relative to the spread) of the exact
    values from integer sums and fractions."""
    n, D, c = 10_000_000, 3, 1_000_000
    rng = np.random.default_rng(7)
    Z = rng.integers(0, 16, size=(n, D), dtype=np.int32)
    Z[:, 1] += Z[:, 0]  # correlated features
    Z[:, 2] = 31 - Z[:, 1] + (Z[:, 2] & 3)
    S1 = Z.sum(axis=0, dtype=np.int64)
    Z64 = Z.astype(np.int64)
    S2 = Z64.T @ Z64  # integer matmul: exact
    del Z64
    exact_mean = [c + Fraction(int(s), n) for s in S1]
    exact_scatter = np.array([[float(Fraction(int(S2[i, j])) - Fraction(int(S1[i]) * int(S1[j]), n)) for j in range(D)]
                              for i in range(D)])
    X = Z + np.int32(c)
    del Z
    model = fit_zarr(tmp_path / "big.zarr", X, np.zeros(n, dtype=np.int64), chunk_rows=100_000, scale=1, split_every=8)
    assert model.counts.tolist() == [n]
    scatter = model.stats.scatter[0]
    assert rel_err(scatter, exact_scatter) <= 1e-9
    spread = np.sqrt(np.diagonal(exact_scatter) / n)
    mean_err = [abs(Fraction(float(m)) - e) for m, e in zip(model.means[0], exact_mean)]
    assert max(float(err) / s for err, s in zip(mean_err, spread)) <= 1e-9
    assert rel_err(model.covariances[0], exact_scatter / (n - 1)) <= 1e-9


def test_float32_and_uint8_inputs(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.integers(0, 3, n)
    F = (100 + rng.normal(size=(n, 4, 4)) * 0.1).astype(np.float32)
    m32 = fit_zarr(tmp_path / "f32.zarr", F, y, chunk_rows=256)
    assert m32.scale == 1.0
    U = rng.integers(0, 256, size=(n, 4, 4)).astype(np.uint8)
    m8 = fit_zarr(tmp_path / "u8.zarr", U, y, chunk_rows=256)
    assert m8.scale == pytest.approx(1 / 255)
    for k in range(3):
        F64 = F[y == k].reshape(-1, 16).astype(np.float64)  # float32 -> float64 is exact
        assert rel_err(m32.covariances[k], np.cov(F64.T)) <= 1e-10  # not accumulated in float32
        assert rel_err(m32.means[k], F64.mean(axis=0)) <= 1e-12
        U64 = U[y == k].reshape(-1, 16).astype(np.float64) / 255
        assert rel_err(m8.covariances[k], np.cov(U64.T)) <= 1e-12
        assert rel_err(m8.means[k], U64.mean(axis=0)) <= 1e-12
    assert m8.data_range == pytest.approx((U.min() / 255, U.max() / 255))


@pytest.mark.parametrize("covariance, shrinkage", [("full", "none"), ("diag", "none"), ("full", "oas")])
def test_one_feature(tmp_path, covariance, shrinkage):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1000, 1)) * 2 + 5
    y = np.repeat([0, 1], 500)
    X[y == 1] += 10
    model = fit_zarr(tmp_path / "d1.zarr", X, y, chunk_rows=128, covariance=covariance, shrinkage=shrinkage)
    assert model.image_shape is None and model.n_features == 1
    for k in (0, 1):
        var = np.var(X[y == k], ddof=0 if shrinkage == "oas" else 1)  # OAS of 1 feature: the ML variance
        assert model.covariances[k].ravel()[0] == pytest.approx(var, rel=1e-12)
    r = generate(model, 20_000, str(tmp_path / "s.zarr"), seed=1, chunk_size=3000, dtype="float64")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    S, labels = g["images"][...], g["labels"][...]
    assert r.n_chunks == 7 and S.shape == (20_000, 1) and np.isfinite(S).all()
    for k in (0, 1):
        sd = np.sqrt(model.covariances[k].ravel()[0])
        Sk = S[labels == k, 0]
        assert abs(Sk.mean() - model.means[k, 0]) <= 5 * sd / np.sqrt(len(Sk))
        assert Sk.std() == pytest.approx(sd, rel=0.05)


@pytest.mark.slow
def test_4096_features_full_covariance(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    images = rng.integers(0, 256, size=(n, 64, 64), dtype=np.uint8)
    y = np.repeat([0, 1], n // 2)
    model = fit_zarr(tmp_path / "d4096.zarr", images, y, chunk_rows=100)  # 3 blocks, both classes in the middle one
    assert model.image_shape == (64, 64) and model.covariances.shape == (2, 4096, 4096)
    X = images.reshape(n, -1).astype(np.float64) / 255
    for k in (0, 1):
        assert rel_err(model.covariances[k], np.cov(X[y == k].T)) <= 1e-11
        assert rel_err(model.means[k], X[y == k].mean(axis=0)) <= 1e-12
        np.testing.assert_array_equal(model.covariances[k], model.covariances[k].T)


def test_zero_variance_pixels_and_a_constant_class(tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(600, 3, 3)) + 10
    X[:, 0, 0] = 0.0  # a pixel constant in classes 0 and 1
    y = np.repeat([0, 1, 2], 200)
    X[y == 2] = 7.5  # a class whose every pixel is constant
    model = fit_zarr(tmp_path / "z.zarr", X, y, chunk_rows=64)
    assert (model.covariances[:, 0, :] == 0).all() and (model.covariances[:, :, 0] == 0).all()
    assert (model.covariances[:2, 1:, 1:].diagonal(axis1=1, axis2=2) > 0.5).all()
    assert (model.covariances[2] == 0).all() and (model.means[2] == 7.5).all()
    generate(model, 6000, str(tmp_path / "s.zarr"), seed=3, chunk_size=1000, dtype="float64")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    S, labels = g["images"][...].reshape(6000, 9), g["labels"][...]
    assert (S[labels != 2, 0] == 0.0).all()  # exactly, not approximately
    assert (S[labels == 2] == 7.5).all()
    assert np.isfinite(S).all() and S[labels == 0, 1:].std() > 0.5


@pytest.mark.parametrize("options", [{"reg_covar": 1e-3}, {"shrinkage": "oas"}, {"shrinkage": "oas", "reg_covar": 1e-6}])
def test_nearly_singular_covariances_are_finite_psd_and_sample(tmp_path, options):
    """Class 0: 20 rows in 30 dimensions (a singular scatter); class 1: rank 3 plus 1e-12 noise."""
    rng = np.random.default_rng(8)
    D = 30
    X0 = rng.normal(size=(20, D))
    X1 = rng.normal(size=(400, 3)) @ rng.normal(size=(3, D)) + 1e-12 * rng.normal(size=(400, D)) + 100
    X, y = np.concatenate([X0, X1]), np.repeat([0, 1], [20, 400])
    plain = fit_zarr(tmp_path / "plain.zarr", X, y, chunk_rows=50)
    model = fit_zarr(tmp_path / "n.zarr", X, y, chunk_rows=50, **options)
    for k in (0, 1):
        cov = model.covariances[k]
        eig = np.linalg.eigvalsh(cov)
        assert np.isfinite(cov).all() and (cov == cov.T).all()
        assert eig.min() >= -1e-12 * eig.max()  # PSD up to rounding
        assert np.linalg.eigvalsh(plain.covariances[k]).min() < 1e-9 * eig.max()  # without: (nearly) singular
        if "reg_covar" in options:
            assert eig.min() >= options["reg_covar"] * (1 - 1e-6)
        if options.get("shrinkage") == "oas":
            assert eig.min() > 0
    for dtype in ("float64", "float32"):
        generate(model, 5000, str(tmp_path / f"s-{dtype}.zarr"), seed=2, chunk_size=1000, dtype=dtype)
        S = zarr.open_group(str(tmp_path / f"s-{dtype}.zarr"), mode="r")["images"][...]
        assert np.isfinite(S).all()


def test_rank_one_covariance_samples_lie_on_the_line(tmp_path):
    rng = np.random.default_rng(9)
    a = np.array([3.0, -1.0, 2.0, 50.0, 0.5])
    v = np.array([1.0, 2.0, -0.5, 0.25, 3.0])
    t = rng.normal(size=2000) * 3
    X = a + t[:, None] * v
    model = GaussianClassModel.from_stats(chunk_stats(X, np.zeros(len(X), int)))
    assert model.factors[0].rank == 1
    unit = v / np.linalg.norm(v)

    def off_line(S):
        R = S - a
        return np.linalg.norm(R - (R @ unit)[:, None] * unit, axis=1)

    S, _ = model.sample(10_000, seed=1)
    scale = np.abs(S).max()
    assert off_line(S).max() <= 1e-12 * scale
    generate(model, 10_000, str(tmp_path / "s.zarr"), seed=1, chunk_size=2500, dtype="float64")
    G = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["images"][...]
    assert off_line(G).max() <= 1e-12 * np.abs(G).max()
    assert np.std(G @ unit) == pytest.approx(3 * np.linalg.norm(v), rel=0.05)  # the spread along the line is kept
