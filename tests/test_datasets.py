"""Tests of daskgen.datasets: IDX parsing, finding/downloading, bundled digits, writers, convert."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest

from daskgen import datasets as ds
from daskgen.errors import InputError, OutputExistsError

CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file built by hand: magic, type code, rank, big-endian dims, big-endian data."""
    code = CODES[arr.dtype.str[1:]]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr: np.ndarray, gz: bool | None = None) -> str:
    data = idx_bytes(arr)
    if gz if gz is not None else str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def one_line_naming(exc: pytest.ExceptionInfo, *names: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for name in names:
        assert str(name) in text


# ---------------------------------------------------------------------------- IDX
SAMPLES = {
    "uint8-3d": np.random.default_rng(0).integers(0, 256, (5, 4, 3)).astype(np.uint8),
    "int32-1d": np.array([0, -1, 2**31 - 1, -(2**31), 123456], dtype=np.int32),
    "float32-2d": np.random.default_rng(1).normal(size=(3, 7)).astype(np.float32),
    "int8-1d": np.array([-128, 0, 127], dtype=np.int8),
    "int16-2d": np.array([[-300, 300], [1, -1]], dtype=np.int16),
    "float64-1d": np.array([np.pi, -1e300, 0.0]),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("key", list(SAMPLES))
def test_read_idx_matches_numpy(tmp_path, key, suffix):
    arr = SAMPLES[key]
    path = write_idx(tmp_path / f"x-idx{arr.ndim}-ubyte{suffix}", arr)
    got = ds.read_idx(path)
    assert got.shape == arr.shape
    assert got.dtype == arr.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    got[...] = 0  # writable, not a view of the file's bytes


def test_read_idx_gzip_without_suffix_and_file_url(tmp_path):
    arr = SAMPLES["uint8-3d"]
    path = write_idx(tmp_path / "images.idx", arr, gz=True)
    np.testing.assert_array_equal(ds.read_idx(path), arr)
    np.testing.assert_array_equal(ds.read_idx(f"file://{path}"), arr)


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "bad magic":
        return b"\x01\x00" + data[2:]
    if how == "unknown type":
        return data[:2] + b"\x0a" + data[3:]
    if how == "truncated data":
        return data[:-1]
    if how == "trailing bytes":
        return data + b"\x00"
    if how == "truncated header":
        return data[:9]
    if how == "empty":
        return b""
    raise AssertionError(how)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "how, words",
    [
        ("bad magic", "not an IDX file"),
        ("unknown type", "unknown IDX data type code 0x0A"),
        ("truncated data", "truncated"),
        ("trailing bytes", "longer than its header says"),
        ("truncated header", "truncated IDX header"),
        ("empty", "not an IDX file"),
    ],
)
def test_read_idx_rejects_broken_files(tmp_path, how, words, gz):
    data = _corrupt(idx_bytes(SAMPLES["uint8-3d"]), how)
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(InputError, match=words) as exc:
        ds.read_idx(path)
    one_line_naming(exc, path)


def test_read_idx_missing_and_broken_gzip(tmp_path):
    with pytest.raises(InputError, match="no such file") as exc:
        ds.read_idx(tmp_path / "nope.gz")
    one_line_naming(exc, tmp_path / "nope.gz")
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(SAMPLES["uint8-3d"]))[:-12])
    with pytest.raises(InputError) as exc:
        ds.read_idx(path)
    one_line_naming(exc, path)


def test_load_idx_pair(tmp_path):
    images = SAMPLES["uint8-3d"]
    img = write_idx(tmp_path / "img.gz", images)
    lab = write_idx(tmp_path / "lab.gz", np.arange(5, dtype=np.uint8))
    X, y = ds.load_idx_pair(img, lab)
    np.testing.assert_array_equal(X, images)
    assert X.dtype == np.uint8 and y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3, 4]
    short = write_idx(tmp_path / "short.gz", np.arange(4, dtype=np.uint8))
    with pytest.raises(InputError, match="holds 5 images but .* holds 4 labels") as exc:
        ds.load_idx_pair(img, short)
    one_line_naming(exc, img, short)
    with pytest.raises(InputError, match="expected labels of shape"):
        ds.load_idx_pair(img, img)


# ---------------------------------------------------------------------------- finding local files
def test_find_local(tmp_path):
    assert ds.find_local("mnist", tmp_path) is None
    assert ds.find_local("mnist") is None  # no default folder for MNIST
    images, labels = SAMPLES["uint8-3d"], np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)  # raw
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    assert ds.find_local("mnist", tmp_path) == {
        "train": (str(tmp_path / "train-images-idx3-ubyte"), str(tmp_path / "train-labels-idx1-ubyte.gz"))
    }
    write_idx(tmp_path / "t10k-images.idx3-ubyte", images)  # Kaggle's spelling
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", labels)
    found = ds.find_local("Fashion_MNIST", str(tmp_path))
    assert set(found) == {"train", "test"}
    assert found["test"] == (
        str(tmp_path / "t10k-images.idx3-ubyte"),
        str(tmp_path / "t10k-labels.idx1-ubyte"),
    )
    with pytest.raises(InputError, match="unknown IDX dataset"):
        ds.find_local("cifar10", tmp_path)


def _debian_fashion():
    folder = ds.FASHION_MNIST_DIRS[0]
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} missing (Debian package dataset-fashion-mnist not installed)")
    return folder


def test_real_fashion_mnist_train_from_debian():
    folder = _debian_fashion()
    found = ds.find_local("fashion-mnist")
    assert found is not None and set(found) == {"train", "test"}
    assert os.path.dirname(found["train"][0]) == folder
    X, y = ds.load_idx_pair(*found["train"])
    assert X.shape == (60000, 28, 28) and X.dtype == np.uint8
    assert y.shape == (60000,) and y.min() == 0 and y.max() == 9
    assert np.bincount(y).tolist() == [6000] * 10
    assert 0 < X.mean() < 255 and X.max() == 255


# ---------------------------------------------------------------------------- digits
def test_digits_bundle():
    images, labels = ds.load_digits_dataset()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    assert sorted(set(labels.tolist())) == list(range(10))
    assert ds.DIGITS_SCALE == 1 / 16


def test_digits_bundle_equals_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    images, labels = ds.load_digits_dataset()
    np.testing.assert_array_equal(images.astype(np.float64), ref.images)
    np.testing.assert_array_equal(images.reshape(1797, 64).astype(np.float64), ref.data)
    np.testing.assert_array_equal(labels, ref.target)


# ---------------------------------------------------------------------------- Zarr writer
def test_zarr_round_trip(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(2)
    X = rng.integers(0, 256, (25, 6, 5)).astype(np.uint8)
    y = rng.integers(0, 3, 25).astype(np.uint8)
    out = tmp_path / "sub" / "data.zarr"
    written = ds.write_zarr_dataset(
        out, X, y, chunk_rows=10, attrs={"daskgen": {"source": "test"}, "note": "hi"}
    )
    assert written == str(out)
    g = zarr.open_group(str(out), mode="r")
    assert g["images"].dtype == np.uint8 and g["images"].chunks == (10, 6, 5)
    assert g["labels"].dtype == np.int64 and g["labels"].chunks == (10,)
    assert g["images"].metadata.dimension_names == ("sample", "y", "x")
    assert g["labels"].metadata.dimension_names == ("sample",)
    np.testing.assert_array_equal(g["images"][...], X)
    np.testing.assert_array_equal(g["labels"][...], y)
    meta = dict(g.attrs)
    assert meta["note"] == "hi"
    assert meta["daskgen"] == {"kind": "dataset", "n": 25, "image_shape": [6, 5], "source": "test"}
    assert os.listdir(out.parent) == ["data.zarr"]  # no temporary left beside it

    with pytest.raises(OutputExistsError, match="already exists") as exc:
        ds.write_zarr_dataset(out, X, y)
    one_line_naming(exc, out)
    # 2-D float images, string labels, replacing the old group
    X2, y2 = rng.normal(size=(4, 3)), np.array(["cat", "dog", "cat", "émeu"])
    ds.write_zarr_dataset(out, X2, y2, overwrite=True)
    g = zarr.open_group(str(out), mode="r")
    assert g["images"].metadata.dimension_names == ("sample", "feature")
    assert g["images"].chunks == (4, 3)
    np.testing.assert_array_equal(g["images"][...], X2)
    assert g["labels"][...].tolist() == y2.tolist()
    assert os.listdir(out.parent) == ["data.zarr"]


def test_zarr_remote_url_and_bad_input():
    zarr = pytest.importorskip("zarr")
    url = "memory://daskgen-test-datasets/remote.zarr"
    X, y = np.ones((3, 2, 2), np.uint8), np.array([1.0, 2.0, 1.0])
    try:
        assert ds.write_zarr_dataset(url, X, y) == url
        g = zarr.open_group(url, mode="r")
        assert g["labels"].dtype == np.int64  # integral float labels become int64
        with pytest.raises(OutputExistsError):
            ds.write_zarr_dataset(url, X, y)
        ds.write_zarr_dataset(url, X[:2], y[:2], overwrite=True)
        assert zarr.open_group(url, mode="r")["images"].shape == (2, 2, 2)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/daskgen-test-datasets", recursive=True)
    with pytest.raises(InputError, match="3 rows but labels has 2"):
        ds.write_zarr_dataset(url, X, y[:2])
    with pytest.raises(InputError, match="shape"):
        ds.write_zarr_dataset(url, np.ones(3), y)


def test_written_layouts_are_what_the_reader_reads(tmp_path):
    readers = pytest.importorskip("daskgen.io.inputs")
    images, labels = ds.load_digits_dataset()
    for path, writer in (
        (tmp_path / "d.zarr", ds.write_zarr_dataset),
        (tmp_path / "d.csv", ds.write_csv_dataset),
    ):
        writer(path, images[:100], labels[:100])
        data = readers.open_inputs(str(path), scale=ds.DIGITS_SCALE)
        assert data.image_shape == (8, 8) and data.n_features == 64
        assert data.scale == ds.DIGITS_SCALE
        parts = [readers.read_block(b, data.integer_pixels) for b in data.blocks]
        X = np.concatenate([p[0] for p in parts])  # pixel units; the fit applies the scale
        y = np.concatenate([p[1] for p in parts])
        np.testing.assert_array_equal(X, images[:100].reshape(100, 64))
        np.testing.assert_array_equal(y, labels[:100])


# ---------------------------------------------------------------------------- CSV writer
def test_csv_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, (30, 4, 4)).astype(np.uint8)
    y = rng.integers(0, 10, 30)
    path = tmp_path / "train.csv"
    assert ds.write_csv_dataset(path, X, y) == str(path)
    header = path.read_text().splitlines()[0]
    assert header == "label," + ",".join(f"pixel{i}" for i in range(16))
    assert ".0" not in path.read_text()  # integer pixels as integers
    df = pd.read_csv(path)
    assert list(df.columns) == ["label"] + [f"pixel{i}" for i in range(16)]
    assert all(dt.kind == "i" for dt in df.dtypes)
    np.testing.assert_array_equal(df["label"].to_numpy(), y)
    np.testing.assert_array_equal(df.drop(columns="label").to_numpy(), X.reshape(30, 16))

    with pytest.raises(OutputExistsError) as exc:
        ds.write_csv_dataset(path, X, y)
    one_line_naming(exc, path)
    # string labels with a comma, float pixels, another label column name, replaced in place
    Xf, ys = np.array([[0.5, 1.0], [2.0, -3.25]]), np.array(["a,b", "c"])
    ds.write_csv_dataset(path, Xf, ys, label_column="class", overwrite=True)
    df = pd.read_csv(path)
    assert list(df.columns) == ["class", "pixel0", "pixel1"]
    assert df["class"].tolist() == ["a,b", "c"]
    np.testing.assert_array_equal(df[["pixel0", "pixel1"]].to_numpy(), Xf)
    assert sorted(os.listdir(tmp_path)) == ["train.csv"]
    with pytest.raises(InputError, match="collides"):
        ds.write_csv_dataset(tmp_path / "x.csv", Xf, ys, label_column="pixel1")


# ---------------------------------------------------------------------------- download
@pytest.fixture
def idx_server(tmp_path):
    """A loopback HTTP server serving small gzipped IDX files named like MNIST's."""
    root = tmp_path / "served"
    root.mkdir()
    rng = np.random.default_rng(4)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 4, 4)).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(20) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 4, 4)).astype(np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(6) % 3).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(root / name, arr)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://127.0.0.1:{server.server_address[1]}/",
            "arrays": arrays,
            "requests": requests,
            "md5": {n: hashlib.md5((root / n).read_bytes()).hexdigest() for n in arrays},
            "sha256": {n: "sha256:" + hashlib.sha256((root / n).read_bytes()).hexdigest() for n in arrays},
        }
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_download_verifies_and_skips_good_files(tmp_path, idx_server, algo):
    dest = tmp_path / "dl"
    files = ds.download("mnist", dest, base_url=idx_server["url"], checksums=idx_server[algo])
    assert set(files) == {"train", "test"}
    X, y = ds.load_idx_pair(*files["train"])
    np.testing.assert_array_equal(X, idx_server["arrays"]["train-images-idx3-ubyte.gz"])
    assert y.tolist() == (np.arange(20) % 3).tolist()
    assert sorted(os.listdir(dest)) == sorted(idx_server["arrays"])
    assert len(idx_server["requests"]) == 4
    again = ds.download("fashion-mnist", dest, base_url=idx_server["url"], checksums=idx_server[algo])
    assert again == files and len(idx_server["requests"]) == 4  # present and good: not fetched again


def test_download_checksum_mismatch_leaves_nothing(tmp_path, idx_server):
    dest = tmp_path / "dl"
    wrong = dict(idx_server["md5"], **{"train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(InputError, match="checksum mismatch") as exc:
        ds.download("mnist", dest, base_url=idx_server["url"], checksums=wrong)
    one_line_naming(
        exc, "train-images-idx3-ubyte.gz", "0" * 32, idx_server["md5"]["train-images-idx3-ubyte.gz"]
    )
    assert os.listdir(dest) == []
    # the official digests do not match the test server's files either
    with pytest.raises(InputError, match=ds.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"][4:]):
        ds.download("mnist", dest, base_url=idx_server["url"])
    assert os.listdir(dest) == []


def test_download_http_error(tmp_path, idx_server):
    with pytest.raises(InputError, match="download failed") as exc:
        ds.download(
            "mnist", tmp_path / "dl", base_url=idx_server["url"] + "missing/", checksums=idx_server["md5"]
        )
    one_line_naming(exc, "missing/train-images-idx3-ubyte.gz")
    assert os.listdir(tmp_path / "dl") == []


def test_convert_downloads_mnist(tmp_path, idx_server, monkeypatch):
    zarr = pytest.importorskip("zarr")
    monkeypatch.setitem(ds.URLS, "mnist", idx_server["url"])
    monkeypatch.setitem(ds.CHECKSUMS, "mnist", idx_server["sha256"])
    summary = ds.convert("mnist", tmp_path / "m.zarr", split="all", download_dir=tmp_path / "cache")
    assert summary["n"] == 26 and summary["image_shape"] == (4, 4) and summary["classes"] == [0, 1, 2]
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    np.testing.assert_array_equal(
        g["images"][...],
        np.concatenate(
            [
                idx_server["arrays"]["train-images-idx3-ubyte.gz"],
                idx_server["arrays"]["t10k-images-idx3-ubyte.gz"],
            ]
        ),
    )
    assert dict(g.attrs)["daskgen"]["split"] == "all"
    # the cached download is used from then on (as a local folder, too)
    summary = ds.convert("mnist", tmp_path / "t.csv", fmt="csv", source=tmp_path / "cache", split="t10k")
    assert summary["n"] == 6 and len(idx_server["requests"]) == 4


# ---------------------------------------------------------------------------- convert
def test_convert_digits_zarr_and_refuses_existing(tmp_path):
    out = tmp_path / "digits.zarr"
    summary = ds.convert("digits", out)
    assert summary == {
        "name": "digits",
        "path": str(out),
        "format": "zarr",
        "n": 1797,
        "image_shape": (8, 8),
        "dtype": "uint8",
        "classes": list(range(10)),
        "counts": np.bincount(ds.load_digits_dataset()[1]).tolist(),
        "scale": 1 / 16,
        "resized": None,
    }
    with pytest.raises(OutputExistsError) as exc:
        ds.convert("digits", out)
    one_line_naming(exc, out)
    assert ds.convert("digits", out, overwrite=True, chunk_rows=500)["n"] == 1797
    with pytest.raises(InputError, match="single set"):
        ds.convert("digits", tmp_path / "x.zarr", split="test")


def test_convert_idx_and_csv(tmp_path):
    zarr = pytest.importorskip("zarr")
    X = np.random.default_rng(5).integers(0, 256, (12, 3, 3)).astype(np.uint8)
    y = np.arange(12, dtype=np.uint8) % 4
    img, lab = write_idx(tmp_path / "i.gz", X), write_idx(tmp_path / "l", y)
    s = ds.convert("idx", tmp_path / "a.zarr", source=f"{img},{lab}")
    assert s["n"] == 12 and s["image_shape"] == (3, 3) and s["classes"] == [0, 1, 2, 3]
    s = ds.convert("idx", tmp_path / "a.csv", fmt="csv", source=(img, lab))
    # the CSV (square pixel count) becomes (N, 3, 3) images again
    s = ds.convert("csv", tmp_path / "b.zarr", source=tmp_path / "a.csv")
    assert s["image_shape"] == (3, 3) and s["dtype"] == "uint8" and s["scale"] == 1 / 255
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    np.testing.assert_array_equal(g["images"][...], X)
    np.testing.assert_array_equal(g["labels"][...], y)
    s = ds.convert("csv", tmp_path / "c.zarr", source=tmp_path / "a.csv", image_shape="9")
    assert s["image_shape"] == (9,)
    with pytest.raises(InputError, match="IMAGES_PATH,LABELS_PATH"):
        ds.convert("idx", tmp_path / "x.zarr", source=img)
    with pytest.raises(InputError, match="no label column 'target'"):
        ds.convert("csv", tmp_path / "x.zarr", source=tmp_path / "a.csv", label_column="target")
    with pytest.raises(InputError, match="image shape"):
        ds.convert("csv", tmp_path / "x.zarr", source=tmp_path / "a.csv", image_shape="4x4")
    with pytest.raises(InputError, match="unknown dataset"):
        ds.convert("cifar", tmp_path / "x.zarr")
    with pytest.raises(InputError, match="format"):
        ds.convert("digits", tmp_path / "x.parquet", fmt="parquet")


def test_convert_without_files_says_download(tmp_path):
    with pytest.raises(InputError, match="--download") as exc:
        ds.convert("mnist", tmp_path / "x.zarr", source=tmp_path)
    one_line_naming(exc, tmp_path)
    with pytest.raises(InputError, match="--download"):
        ds.convert("mnist", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_convert_debian_fashion_test_split_to_zarr(tmp_path):
    _debian_fashion()
    s = ds.convert("fashion-mnist", tmp_path / "f.zarr", split="test")
    assert s["n"] == 10000 and s["image_shape"] == (28, 28) and s["counts"] == [1000] * 10


def test_bilinear_matrix_rows_are_convex_and_exact_on_ramps():
    from daskgen.datasets.resize import bilinear_matrix

    for n_in, n_out in [(28, 64), (28, 90), (8, 8), (5, 3)]:
        A = bilinear_matrix(n_in, n_out)
        assert A.shape == (n_out, n_in) and (A >= 0).all()
        np.testing.assert_allclose(A.sum(axis=1), 1.0)
    A = bilinear_matrix(28, 256)
    ramp = np.arange(28.0)
    inner = slice(5, 251)  # away from the clamped edges a linear ramp is reproduced exactly
    np.testing.assert_allclose((A @ ramp)[inner], ((np.arange(256) + 0.5) * 28 / 256 - 0.5)[inner], atol=1e-12)
    np.testing.assert_array_equal(bilinear_matrix(28, 28), np.eye(28))


def test_resize_matches_pillow_bilinear():
    from PIL import Image

    from daskgen.datasets.resize import resize_images

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    ours = resize_images(images, (64, 48), rows_per_step=2)
    assert ours.shape == (3, 64, 48) and ours.dtype == np.uint8
    for img, got in zip(images, ours):
        ref = np.asarray(Image.fromarray(img).resize((48, 64), Image.BILINEAR))
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # Pillow rounds in fixed point


def test_convert_size_and_limit(tmp_path):
    import zarr

    summary = ds.convert("digits", tmp_path / "d.zarr", size=32, limit=100)
    assert summary["n"] == 100 and summary["image_shape"] == (32, 32)
    assert summary["resized"] == {"method": "bilinear", "from": [8, 8], "to": [32, 32]}
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    assert g["images"].shape == (100, 32, 32) and g.attrs["daskgen"]["resized"]["to"] == [32, 32]
    images, labels = ds.load_digits_dataset()
    np.testing.assert_array_equal(g["labels"][:], labels[:100])
    from daskgen.datasets.resize import resize_images

    np.testing.assert_array_equal(g["images"][:], resize_images(images[:100], (32, 32)))
    ds.convert("digits", tmp_path / "w.zarr", size="256x256", limit=1100)  # wide: chunks of at most 64 MiB
    assert zarr.open_group(str(tmp_path / "w.zarr"), mode="r")["images"].chunks == (1024, 256, 256)
    for bad in ("0", "2x3x4", "big"):
        with pytest.raises(InputError, match="image shape"):
            ds.convert("digits", tmp_path / "bad.zarr", size=bad)
    with pytest.raises(InputError, match="limit"):
        ds.convert("digits", tmp_path / "bad.zarr", limit=0)
    assert not (tmp_path / "bad.zarr").exists()
