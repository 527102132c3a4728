"""Shared fixtures: real datasets on disk, and one real multi-process Dask cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion():
    """Fashion-MNIST train: images (60000, 28, 28) uint8, labels (60000,) uint8."""
    from daskgen.datasets import load_idx_pair

    images = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not images.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return load_idx_pair(str(images), str(FASHION_DIR / "train-labels-idx1-ubyte.gz"))


@pytest.fixture(scope="session")
def fashion_zarr(fashion, tmp_path_factory):
    from daskgen.datasets import write_zarr_dataset

    path = tmp_path_factory.mktemp("fashion") / "train.zarr"
    write_zarr_dataset(str(path), fashion[0], fashion[1], chunk_rows=7000)
    return str(path)


@pytest.fixture(scope="session")
def fashion_csv(fashion, tmp_path_factory):
    """The first 12,000 Fashion-MNIST rows in the tutorial's Kaggle CSV layout."""
    from daskgen.datasets import write_csv_dataset

    path = tmp_path_factory.mktemp("fashion-csv") / "train.csv"
    write_csv_dataset(str(path), fashion[0][:12000], fashion[1][:12000])
    return str(path)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's handwritten digits: X (1797, 64) float64 in 0..16, y (1797,) int."""
    from daskgen.datasets import load_digits_dataset

    images, labels = load_digits_dataset()
    return images.reshape(len(images), -1).astype(np.float64), labels


@pytest.fixture(scope="session")
def digits_pixels():
    """The digits in pixel units (uint8, 0..16), flat: X (1797, 64), y (1797,)."""
    from daskgen.datasets import load_digits_dataset

    images, labels = load_digits_dataset()
    return images.reshape(len(images), -1).astype(np.uint8), labels


@pytest.fixture(scope="session")
def digits_store(digits_pixels, tmp_path_factory):
    """The digits as a Zarr dataset of 8x8 images, scale 1/16, blocks of 150 rows."""
    from daskgen.datasets import write_zarr_dataset

    X, y = digits_pixels
    path = tmp_path_factory.mktemp("digits") / "digits.zarr"
    write_zarr_dataset(str(path), X.reshape(-1, 8, 8), y, chunk_rows=150, attrs={"daskgen": {"scale": 1 / 16}})
    return str(path)


@pytest.fixture(scope="session")
def cluster():
    """A real LocalCluster: 2 worker processes on 127.0.0.1, shared by the session."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", memory_limit="3GiB",
    ) as c:
        yield c


@pytest.fixture
def client(cluster):
    """A client of the shared cluster, set as default for the test's duration."""
    from distributed import Client

    with Client(cluster, set_as_default=True) as c:
        yield c


@pytest.fixture
def sync_scheduler():
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


# ---------------------------------------------------------------------------- tiers
#: Fixtures that make a test part of the slow tier: real clusters (worker processes
#: to start), the 70,000-image Fashion-MNIST set, a local S3 server.
SLOW_FIXTURES = frozenset(
    {"cluster", "client", "start_cluster", "fashion", "fashion_zarr", "fashion_csv", "fashion_small", "s3"}
)


#: Modules that test whole runs end to end (jobs, the new-user path, deploy scripts and
#: manifests, object storage, faults on external clusters): slow as a whole.
SLOW_MODULES = frozenset(
    {
        "test_run.py", "test_new_user.py", "test_deploy_local.py", "test_kubernetes.py",
        "test_object_storage.py", "test_faults.py", "test_model_store_kills.py", "test_load.py",
    }
)


def pytest_collection_modifyitems(config, items):
    """Mark every test of a slow module, or that uses a slow fixture, as ``slow``.

    ``pytest -m "not slow"`` is then the fast tier (kernels, models, CLI parsing and
    errors on small data, in-process schedulers); plain ``pytest`` runs everything.
    Tests that are slow for another reason (a real subprocess, a long computation)
    carry ``@pytest.mark.slow`` themselves.
    """
    for item in items:
        if item.path.name in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
