"""`daskgen data NAME --out PATH`: every source, in the layouts `daskgen fit` reads."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

import daskgen
from daskgen import datasets as ds
from daskgen.cli import main

FASHION = Path(ds.FASHION_MNIST_DIRS[0])
_IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_file(path: Path, arr: np.ndarray) -> str:
    """An IDX file made by hand (gzipped when the name ends in .gz): magic, type, rank, dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[arr.dtype.str[1:]], arr.ndim)
    data = header + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return str(path)


def daskgen_data(*args: str):
    result = CliRunner().invoke(main, ["data", *map(str, args)])
    return result


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("daskgen: error: ")
    return line


def test_digits_then_fit(tmp_path):
    result = daskgen_data("digits", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 0, result.stderr
    assert "1,797 images of 8x8 uint8, 10 classes" in result.stderr and "scale 1/16 is recorded" in result.stderr
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "m.zarr"), "-q"])
    assert result.exit_code == 0, result.stderr
    model = daskgen.load_model(str(tmp_path / "m.zarr"))
    images, labels = ds.load_digits_dataset()
    assert model.scale == ds.DIGITS_SCALE and model.image_shape == (8, 8)
    assert model.counts.tolist() == np.bincount(labels).tolist()
    np.testing.assert_allclose(model.means[0], images[labels == 0].reshape(-1, 64).mean(axis=0) / 16)
    # the same digits as a Kaggle-style CSV: the summary says which scale to fit them with
    result = daskgen_data("digits", "--out", tmp_path / "d.csv")
    assert result.exit_code == 0 and "--scale 0.0625" in result.stderr
    df = pd.read_csv(tmp_path / "d.csv")
    assert list(df.columns) == ["label"] + [f"pixel{i}" for i in range(64)] and len(df) == 1797
    np.testing.assert_array_equal(df.iloc[:, 1:].to_numpy(), images.reshape(-1, 64))
    # an existing output is refused (exit 2, one line), unless --overwrite
    line = one_error_line(daskgen_data("digits", "--out", tmp_path / "x.zarr"))
    assert "x.zarr already exists" in line and "--overwrite" in line
    assert daskgen_data("digits", "--out", tmp_path / "x.zarr", "--overwrite", "-q").exit_code == 0


def test_wide_stand_in_then_fit(tmp_path):
    result = daskgen_data("digits", "--size", "16", "--limit", "600", "--out", tmp_path / "w.zarr")
    assert result.exit_code == 0, result.stderr
    assert "600 images of 16x16 uint8" in result.stderr and "a stand-in for wide images" in result.stderr
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "w.zarr"), "--covariance", "diag",
                                       "--out", str(tmp_path / "m.zarr"), "-q"])
    assert result.exit_code == 0, result.stderr
    assert daskgen.load_model(str(tmp_path / "m.zarr")).image_shape == (16, 16)
    line = one_error_line(daskgen_data("digits", "--size", "0", "--out", tmp_path / "z.zarr"))
    assert "image shape" in line and not (tmp_path / "z.zarr").exists()


def test_idx_pair_matches_numpy(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.integers(0, 256, (30, 5, 4)).astype(np.uint8)
    y = (np.arange(30) % 3).astype(np.uint8)
    images, labels = idx_file(tmp_path / "images-idx3-ubyte.gz", X), idx_file(tmp_path / "labels-idx1-ubyte", y)
    result = daskgen_data("idx", "--source", f"{images},{labels}", "--out", tmp_path / "a.zarr", "--chunk-rows", "8")
    assert result.exit_code == 0, result.stderr
    assert "30 images of 5x4 uint8, 3 classes" in result.stderr
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(g["images"][...], X)
    np.testing.assert_array_equal(g["labels"][...], y.astype(np.int64))
    assert g["images"].chunks == (8, 5, 4)
    result = daskgen_data("idx", "--source", f"{images},{labels}", "--out", tmp_path / "a.csv")
    assert result.exit_code == 0, result.stderr
    df = pd.read_csv(tmp_path / "a.csv")
    np.testing.assert_array_equal(df["label"].to_numpy(), y)
    np.testing.assert_array_equal(df.drop(columns="label").to_numpy(), X.reshape(30, -1))
    # a broken file: one line naming it
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    line = one_error_line(daskgen_data("idx", "--source", f"{tmp_path / 'bad'},{labels}", "--out", tmp_path / "b.zarr"))
    assert str(tmp_path / "bad") in line and "not an IDX file" in line
    assert not (tmp_path / "b.zarr").exists()


def test_csv_source(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, (12, 16)).astype(np.uint8)
    y = np.array(list("abcd") * 3)
    df = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(16)])
    df.insert(0, "target", y)
    df.to_csv(tmp_path / "in.csv", index=False)
    result = daskgen_data("csv", "--source", tmp_path / "in.csv", "--label-column", "target", "--out", tmp_path / "c.zarr")
    assert result.exit_code == 0, result.stderr
    assert "12 images of 4x4 uint8, 4 classes" in result.stderr
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    np.testing.assert_array_equal(g["images"][...], X.reshape(12, 4, 4))
    assert [str(v) for v in g["labels"][...].tolist()] == y.tolist()
    line = one_error_line(daskgen_data("csv", "--source", tmp_path / "in.csv", "--out", tmp_path / "d.zarr"))
    assert "no label column 'label'" in line


def test_fashion_mnist_test_split_from_debian(tmp_path):
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION} (apt-get install dataset-fashion-mnist)")
    result = daskgen_data("fashion-mnist", "--split", "test", "--out", tmp_path / "f.zarr")
    assert result.exit_code == 0, result.stderr
    assert "10,000 images of 28x28 uint8, 10 classes (1,000..1,000 per class)" in result.stderr
    X, y = ds.load_idx_pair(FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz")
    g = zarr.open_group(str(tmp_path / "f.zarr"), mode="r")
    np.testing.assert_array_equal(g["images"][...], X)
    np.testing.assert_array_equal(g["labels"][...], y)
    assert dict(g.attrs)["daskgen"]["split"] == "test"


@pytest.fixture
def mnist_server(tmp_path, monkeypatch):
    """A loopback HTTP server with small MNIST-named IDX files, set as the MNIST download location."""
    root = tmp_path / "served"
    root.mkdir()
    rng = np.random.default_rng(11)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (15, 4, 4)).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(15) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 4, 4)).astype(np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(6) % 3).astype(np.uint8),
    }
    for name, arr in arrays.items():
        idx_file(root / name, arr)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setitem(ds.URLS, "mnist", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield {"arrays": arrays, "sha256": {n: "sha256:" + hashlib.sha256((root / n).read_bytes()).hexdigest() for n in arrays}}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_with_a_wrong_checksum_is_refused(tmp_path, mnist_server):
    # the official checksums do not match the test server's files
    folder = tmp_path / "dl"
    line = one_error_line(daskgen_data("mnist", "--download", "--source", folder, "--out", tmp_path / "m.zarr", "-q"))
    assert "checksum mismatch" in line and "train-images-idx3-ubyte.gz" in line
    assert ds.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"].removeprefix("md5:") in line
    assert os.listdir(folder) == [] and not (tmp_path / "m.zarr").exists()


def test_download_with_good_checksums(tmp_path, mnist_server, monkeypatch):
    monkeypatch.setitem(ds.CHECKSUMS, "mnist", mnist_server["sha256"])
    folder = tmp_path / "dl"
    result = daskgen_data("mnist", "--download", "--source", folder, "--split", "all", "--out", tmp_path / "m.zarr")
    assert result.exit_code == 0, result.stderr
    assert "downloading http://127.0.0.1:" in result.stderr and "21 images of 4x4 uint8" in result.stderr
    assert sorted(os.listdir(folder)) == sorted(mnist_server["arrays"])
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    a = mnist_server["arrays"]
    np.testing.assert_array_equal(g["images"][...], np.concatenate([a["train-images-idx3-ubyte.gz"], a["t10k-images-idx3-ubyte.gz"]]))
    # the downloaded folder then serves as a local source
    result = daskgen_data("mnist", "--source", folder, "--split", "t10k", "--out", tmp_path / "t.csv", "-q")
    assert result.exit_code == 0 and result.stderr == "" and len(pd.read_csv(tmp_path / "t.csv")) == 6


def test_bad_names_and_missing_files(tmp_path):
    line = one_error_line(daskgen_data("cifar", "--out", tmp_path / "x.zarr"))
    assert "unknown dataset 'cifar'" in line
    line = one_error_line(daskgen_data("mnist", "--source", tmp_path, "--out", tmp_path / "x.zarr"))
    assert "no mnist IDX files found" in line and "--download" in line
    assert sorted(os.listdir(tmp_path)) == []
