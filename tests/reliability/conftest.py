"""Fixtures of the reliability tests: external clusters started per test (and killed by
PID at its end), and a small Fashion-MNIST subset."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _cluster import FASHION_DIR, ExternalCluster


@pytest.fixture
def start_cluster(tmp_path_factory, request):
    """Start external clusters for one test; every process is killed at its end.

    ``start_cluster(n_workers=2, memory_limit="2GiB", nanny=True, env=None)``.
    """
    started: list[ExternalCluster] = []

    def start(**kw) -> ExternalCluster:
        c = ExternalCluster(tmp_path_factory.mktemp("cluster"), **kw)
        started.append(c)
        try:
            return c.start()
        except BaseException:
            print(c.logs(), file=sys.stderr)
            raise

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for c in started:
        if failed:
            print(c.logs(), file=sys.stderr)
        c.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def fashion_small():
    """The first 12,000 Fashion-MNIST training images (12000, 28, 28) uint8 and labels."""
    from daskgen.datasets import load_idx_pair

    images = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not images.exists():
        pytest.skip("Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist")
    X, y = load_idx_pair(str(images), str(FASHION_DIR / "train-labels-idx1-ubyte.gz"))
    return np.ascontiguousarray(X[:12000]), np.ascontiguousarray(y[:12000])


