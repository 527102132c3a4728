"""daskgen.fit end to end on files: formats, labels, chunking, --update, clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _helpers import write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskgen
from daskgen.datasets import write_zarr_dataset


def per_class_reference(X, y):
    classes = np.unique(y)
    return classes, np.array([X[y == c].mean(0) for c in classes]), np.array([np.cov(X[y == c].T) for c in classes])


def assert_model_matches(model, X, y, rtol=1e-9):
    classes, means, covs = per_class_reference(X, y)
    np.testing.assert_array_equal(model.classes, classes)
    np.testing.assert_array_equal(model.counts, [(y == c).sum() for c in classes])
    np.testing.assert_allclose(model.priors, [(y == c).mean() for c in classes], rtol=1e-15)
    assert np.abs(model.means - means).max() <= rtol * np.abs(means).max()
    assert np.abs(model.covariances - covs).max() <= rtol * np.abs(covs).max()


@pytest.fixture
def offset_data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2500, 6)) @ rng.normal(size=(6, 6)) + 1e6
    y = rng.choice([3, 17, 40], size=2500)  # labels that are not 0..K-1
    return X, y


def test_csv_with_1e6_offset_label_in_the_middle(tmp_path, offset_data, sync_scheduler):
    X, y = offset_data
    path = write_csv(tmp_path / "a.csv", X, y, label_column="digit", label_position=3)
    model = daskgen.fit(path, label_column="digit", blocksize=30_000)
    assert_model_matches(model, X, y)
    assert model.scale == 1.0 and model.image_shape is None
    assert model.feature_names == [f"pixel{i}" for i in range(6)]


def test_csv_parquet_and_zarr_give_the_same_model(tmp_path, sync_scheduler):
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, size=(900, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, size=900)
    X = images.reshape(900, -1).astype(np.float64)
    write_csv(tmp_path / "d.csv", X.astype(int), labels)
    df = pd.read_csv(tmp_path / "d.csv")
    df.iloc[:450].to_parquet(tmp_path / "p1.parquet", row_group_size=100)
    df.iloc[450:].to_parquet(tmp_path / "p2.parquet", row_group_size=100)
    write_zarr_dataset(str(tmp_path / "d.zarr"), images, labels, chunk_rows=128)
    models = [
        daskgen.fit(str(tmp_path / "d.csv"), blocksize=5000, reg_covar=0),
        daskgen.fit(str(tmp_path / "*.parquet"), reg_covar=0),
        daskgen.fit(str(tmp_path / "d.zarr"), reg_covar=0),
    ]
    for m in models:
        assert m.scale == pytest.approx(1 / 255) and m.image_shape == (4, 4)
        assert_model_matches(m, X / 255, labels)
    assert models[0].fingerprint == models[1].fingerprint or np.allclose(models[0].covariances, models[1].covariances, rtol=1e-12)


def test_several_files_directory_and_glob(tmp_path, offset_data, sync_scheduler):
    X, y = offset_data
    (tmp_path / "in").mkdir()
    for i, sl in enumerate([slice(0, 1000), slice(1000, 1800), slice(1800, None)]):
        write_csv(tmp_path / "in" / f"part{i}.csv", X[sl], y[sl])
    by_dir = daskgen.fit(str(tmp_path / "in"))
    by_glob = daskgen.fit(str(tmp_path / "in" / "part*.csv"))
    by_list = daskgen.fit([str(tmp_path / "in" / f"part{i}.csv") for i in range(3)])
    for m in (by_dir, by_glob, by_list):
        assert_model_matches(m, X, y)
    assert len(by_dir.inputs) == 3 and all(f["size"] > 0 for f in by_dir.inputs)


def test_string_labels_in_csv_and_zarr(tmp_path, sync_scheduler):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(400, 3))
    y = np.array(["shirt", "boot", "bag"])[rng.integers(0, 3, 400)]
    m = daskgen.fit(write_csv(tmp_path / "s.csv", X, y))
    assert m.classes.tolist() == ["bag", "boot", "shirt"]
    assert_model_matches(m, X, y)
    m.save(str(tmp_path / "m.zarr"))
    assert daskgen.load_model(str(tmp_path / "m.zarr")).classes.tolist() == ["bag", "boot", "shirt"]
    write_zarr_dataset(str(tmp_path / "s.zarr"), X, y, chunk_rows=64)
    assert_model_matches(daskgen.fit(str(tmp_path / "s.zarr")), X, y)


def test_zarr_through_fsspec_memory_url(sync_scheduler):
    rng = np.random.default_rng(10)
    images = rng.integers(0, 256, size=(300, 5, 5), dtype=np.uint8)
    labels = rng.integers(0, 4, size=300)
    write_zarr_dataset("memory://fit-test/d.zarr", images, labels, chunk_rows=50)
    m = daskgen.fit("memory://fit-test/d.zarr", blocksize=50 * 25 * 8, reg_covar=0)
    assert_model_matches(m, images.reshape(300, -1) / 255, labels)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocksize=st.integers(min_value=300, max_value=60_000), split_every=st.integers(min_value=2, max_value=9))
def test_result_does_not_depend_on_blocks_or_tree(tmp_path_factory, offset_data, blocksize, split_every):
    X, y = offset_data
    path = tmp_path_factory.getbasetemp() / "chunking.csv"
    if not path.exists():
        write_csv(path, X, y)
    import dask

    with dask.config.set(scheduler="synchronous"):
        m = daskgen.fit(str(path), blocksize=blocksize, split_every=split_every)
        ref = daskgen.fit(str(path), blocksize=10**9)
    assert np.abs(m.means - ref.means).max() <= 1e-12 * np.abs(ref.means).max()
    assert np.abs(m.covariances - ref.covariances).max() <= 1e-12 * np.abs(ref.covariances).max() * 10


def test_update_equals_a_fit_on_everything(tmp_path, offset_data, sync_scheduler):
    X, y = offset_data
    a = write_csv(tmp_path / "a.csv", X[:1200], y[:1200])
    b = write_csv(tmp_path / "b.csv", X[1200:], y[1200:])
    both = daskgen.fit([a, b])
    first = daskgen.fit(a)
    first.save(str(tmp_path / "m.zarr"))
    updated = daskgen.fit(b, update=daskgen.load_model(str(tmp_path / "m.zarr")))
    assert np.abs(updated.covariances - both.covariances).max() <= 1e-12 * np.abs(both.covariances).max()
    np.testing.assert_array_equal(updated.counts, both.counts)
    assert [f["path"] for f in updated.inputs] == [a, b]


def test_against_scikit_learn_qda_on_digits(digits, sync_scheduler, tmp_path):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    X, y = digits
    write_zarr_dataset(str(tmp_path / "digits.zarr"), X.reshape(-1, 8, 8).astype(np.uint8), y, chunk_rows=200)
    m = daskgen.fit(str(tmp_path / "digits.zarr"), scale=1.0, reg_covar=0)
    # The digits have pixels that are always 0, so every class covariance is singular and
    # scikit-learn insists on a regularization: 1e-13 changes its covariances by < 1e-11.
    qda = QuadraticDiscriminantAnalysis(store_covariance=True, reg_param=1e-13, tol=1e-20).fit(X, y)
    np.testing.assert_allclose(m.means, qda.means_, rtol=0, atol=1e-12)
    for k in range(10):
        n = (y == k).sum()  # scikit-learn 1.9 stores the maximum-likelihood (1/n) covariance
        np.testing.assert_allclose(m.covariances[k], qda.covariance_[k] * n / (n - 1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.priors, qda.priors_, rtol=1e-14)


def test_fashion_mnist_on_a_two_process_cluster(fashion, fashion_zarr, client):
    images, labels = fashion
    X = images.reshape(len(images), -1) / 255.0
    model = daskgen.fit(fashion_zarr, reg_covar=0)
    assert model.image_shape == (28, 28) and model.scale == pytest.approx(1 / 255)
    for k in (0, 9):
        Xk = X[labels == k]
        np.testing.assert_allclose(model.means[k], Xk.mean(0), rtol=0, atol=1e-13)
        ref = np.cov(Xk.T)
        assert np.abs(model.covariances[k] - ref).max() <= 1e-9 * np.abs(ref).max()
    assert set(client.run(lambda: 1)) and len(client.scheduler_info()["workers"]) == 2


def test_cluster_and_synchronous_results_agree(fashion, fashion_csv, client):
    import dask

    on_cluster = daskgen.fit(fashion_csv, blocksize=4 * 2**20, split_every=3, reg_covar=0)  # merged as blocks finish
    with dask.config.set(scheduler="synchronous"):
        local = daskgen.fit(fashion_csv, blocksize=16 * 2**20, reg_covar=0)  # a fixed tree of other blocks
    # 8-bit pixels are summed exactly: any blocks, any merge order, the same bits
    np.testing.assert_array_equal(on_cluster.covariances, local.covariances)
    np.testing.assert_array_equal(on_cluster.means, local.means)
    np.testing.assert_array_equal(on_cluster.counts, local.counts)
    # at once again in the same session (same blocks, other groupings): never a stale combine
    again = daskgen.fit(fashion_csv, blocksize=4 * 2**20, split_every=2, reg_covar=0)
    np.testing.assert_array_equal(again.covariances, on_cluster.covariances)
    images, labels = fashion
    assert_model_matches(on_cluster, images[:12000].reshape(12000, -1) / 255, labels[:12000], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="0123456789,x", min_size=0, max_size=12), min_size=0, max_size=30),
    final_newline=st.booleans(),
    blocksize=st.integers(min_value=1, max_value=40),
)
def test_local_csv_blocks_are_exactly_fsspecs(tmp_path_factory, lines, final_newline, blocksize):
    """Local CSV blocks are memory-mapped, remote ones read with fsspec's read_block:
    both must cut a file into the same lines, whatever the block size."""
    import fsspec
    from fsspec.utils import read_block

    from daskgen.io.readers import Block, _csv_block_bytes

    text = ("\n".join(lines) + ("\n" if final_newline and lines else "")).encode()
    path = tmp_path_factory.mktemp("blocks") / "f.csv"
    path.write_bytes(text)
    fsspec.filesystem("memory").pipe("/blocks/f.csv", text)
    local, remote = [], []
    for off in range(0, max(len(text), 1), blocksize):
        block = Block("csv", str(path), off, min(off + blocksize, len(text)), first=off == 0)
        raw, lo, hi = _csv_block_bytes(block, None)
        local.append(bytes(raw[lo:hi]))
        mem = Block("csv", "memory:///blocks/f.csv", block.start, block.stop, first=block.first)
        raw, lo, hi = _csv_block_bytes(mem, None)
        remote.append(bytes(raw[lo:hi]))
        with open(path, "rb") as f:
            assert local[-1] == read_block(f, block.start, block.stop - block.start, delimiter=b"\n")
    assert local == remote
    assert b"".join(local) == text


def test_default_reg_covar_is_the_dequantization_variance(tmp_path, sync_scheduler):
    # Integer pixels stand for bins one pixel unit wide: the default reg_covar is the
    # variance of uniform noise on such a bin, scale**2 / 12 (model units squared).
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(200, 3, 3), dtype=np.uint8)
    images[:, 0, 0] = 0  # a pixel that is always 0: singular without regularisation
    labels = rng.integers(0, 2, size=200)
    write_zarr_dataset(str(tmp_path / "d.zarr"), images, labels, chunk_rows=64)
    default = daskgen.fit(str(tmp_path / "d.zarr"))
    plain = daskgen.fit(str(tmp_path / "d.zarr"), reg_covar=0)
    eps = (1 / 255) ** 2 / 12
    assert default.config["reg_covar"] == pytest.approx(eps, rel=1e-15)
    np.testing.assert_allclose(default.covariances - plain.covariances, np.broadcast_to(eps * np.eye(9), (2, 9, 9)), rtol=0, atol=1e-16)
    assert plain.covariances[:, 0, 0].max() == 0  # explicit 0 stays possible
    # float data: no default regularisation
    write_csv(tmp_path / "f.csv", rng.normal(size=(50, 4)), rng.integers(0, 2, size=50))
    assert daskgen.fit(str(tmp_path / "f.csv")).config["reg_covar"] == 0.0


def test_the_exact_8bit_path_does_not_depend_on_how_the_scale_is_given(tmp_path, sync_scheduler):
    # The same 8-bit pixels as a CSV (scale auto), a Zarr dataset that records its scale
    # (as `daskgen data` writes) and a Zarr dataset fitted with an explicit scale: the
    # same exact integer sums, so the same bits.
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(700, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, size=700)
    write_csv(tmp_path / "d.csv", images.reshape(700, -1).astype(int), labels)
    write_zarr_dataset(str(tmp_path / "d.zarr"), images, labels, chunk_rows=100, attrs={"daskgen": {"scale": 1 / 255}})
    csv = daskgen.fit(str(tmp_path / "d.csv"), blocksize=3000)
    recorded = daskgen.fit(str(tmp_path / "d.zarr"))
    explicit = daskgen.fit(str(tmp_path / "d.zarr"), scale=1 / 255)
    csv_explicit = daskgen.fit(str(tmp_path / "d.csv"), blocksize=3000, scale="1/255")
    for m in (recorded, explicit, csv_explicit):
        np.testing.assert_array_equal(m.covariances, csv.covariances)
        np.testing.assert_array_equal(m.means, csv.means)
        assert m.config["integer_pixels"]
    # integers wider than 8 bits with an explicit scale: the general path, still exact to rounding
    wide = images.reshape(700, -1).astype(int) * 16
    write_csv(tmp_path / "w.csv", wide, labels)
    m = daskgen.fit(str(tmp_path / "w.csv"), blocksize=3000, scale=1 / 4080, reg_covar=0)
    assert not m.config["integer_pixels"]
    np.testing.assert_allclose(m.covariances, csv.covariances - csv.config["reg_covar"] * np.eye(16), rtol=1e-9, atol=1e-15)
