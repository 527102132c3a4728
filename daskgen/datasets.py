"""Get real image datasets into the layouts daskgen reads.

Sources:

- **IDX files** (MNIST, Fashion-MNIST): :func:`read_idx`, :func:`load_idx_pair`,
  found locally with :func:`find_local` (Debian's ``dataset-fashion-mnist`` package
  installs Fashion-MNIST in :data:`FASHION_MNIST_DIRS`) or fetched and checksum-verified
  with :func:`download`.
- **scikit-learn's handwritten digits**, bundled as ``daskgen/data/digits.npz`` so no
  scikit-learn is needed: :func:`load_digits_dataset`. Their pixels are 0..16, so fit
  them with ``scale =`` :data:`DIGITS_SCALE`.
- **tutorial-style CSV files** (``label,pixel0,...``), read by :func:`convert`.

Layouts written:

- **Zarr v3 group** (:func:`write_zarr_dataset`): arrays ``images`` (N, H, W) or (N, D)
  and ``labels`` (N,), as :mod:`daskgen.io.readers` expects.
- **CSV** (:func:`write_csv_dataset`): Kaggle digit-recognizer layout
  ``label,pixel0,...,pixel{D-1}``.

:func:`convert` strings these together for ``daskgen data NAME --out PATH``. Every
error that is the user's to fix raises :class:`~daskgen.errors.InputError` (or
:class:`~daskgen.errors.OutputExistsError`) with a one-line message naming the file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fsspec
import numpy as np

from .errors import InputError, OutputExistsError

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DIGITS_SCALE",
    "FASHION_MNIST_DIRS",
    "IDX_FILES",
    "URLS",
    "convert",
    "download",
    "find_local",
    "load_digits_dataset",
    "load_idx_pair",
    "read_idx",
    "write_csv_dataset",
    "write_zarr_dataset",
]

#: Names :func:`convert` accepts.
DATASETS = ("digits", "fashion-mnist", "mnist", "idx", "csv")

#: Display names of the classes of the datasets that have them, by label (stored in the
#: Zarr dataset's attributes as ``class_names``; the labels stay as published).
CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}

#: Folders searched for Fashion-MNIST when no folder is given (Debian's dataset-fashion-mnist).
FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

#: Scale that maps the digits' pixel values 0..16 to 0..1.
DIGITS_SCALE = 1 / 16

#: split -> (images file, labels file), as published for MNIST and Fashion-MNIST.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: Official download locations (the files of :data:`IDX_FILES` sit directly below).
URLS: dict[str, str] = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

#: Published digests of the downloadable ``.gz`` files, as ``"algorithm:hexdigest"``.
#: Only MD5 digests are published for both datasets (Fashion-MNIST README; torchvision
#: for MNIST). Debian's copies are recompressed (no file name in the gzip header), so
#: their ``.gz`` digests differ although the IDX content is the same.
CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
}

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_SPLITS = ("train", "test", "all")


# ---------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or raw, local or an fsspec URL.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL. ``.gz`` (and other suffixes fsspec knows) are
        decompressed; a gzip stream is also recognised by its magic bytes.

    Returns
    -------
    numpy.ndarray
        Array of the shape stored in the header — (N, H, W) for image files, (N,)
        for label files — in native byte order, with the dtype the header names:
        uint8 (0x08), int8 (0x09), int16 (0x0B), int32 (0x0C), float32 (0x0D) or
        float64 (0x0E).

    Raises
    ------
    InputError
        The file is missing or unreadable, is not IDX (bad magic), names an unknown
        data type, or holds more or fewer bytes than its dimensions require.
    """
    name = os.fspath(path)
    try:
        with fsspec.open(name, "rb", compression="infer") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read: {_first_line(exc)}") from None
    if data[:2] == b"\x1f\x8b":  # gzip without a .gz suffix
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{name}: not a valid gzip file: {_first_line(exc)}") from None
    return _parse_idx(data, name)


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(
            f"{name}: not an IDX file (magic {data[:4].hex() or 'missing'}; expected 0000 followed "
            "by a type and a rank byte)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise InputError(f"{name}: unknown IDX data type code 0x{code:02X} (known: {known})")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise InputError(
            f"{name}: truncated IDX header ({ndim} dimensions need {start} bytes, the file has {len(data)})"
        )
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(data) - start
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise InputError(
            f"{name}: IDX data is {what}: shape {tuple(dims)} of {dtype.name} needs {need} bytes, "
            f"found {have}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_idx_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images IDX file and its labels IDX file and check they belong together.

    Parameters
    ----------
    images_path, labels_path : str or path-like
        Local paths or fsspec URLs, gzipped or raw (see :func:`read_idx`).

    Returns
    -------
    images : numpy.ndarray
        (N, H, W) — or (N, D) for 2-D files — with the stored dtype: uint8 for MNIST and
        Fashion-MNIST, pixel values 0..255.
    labels : numpy.ndarray
        (N,) int64 (integer label files; float label files keep their float dtype).

    Raises
    ------
    InputError
        Either file is unreadable or malformed, the images are not 2-D or 3-D, the labels
        not 1-D, or the two files hold different numbers of samples (names both files).
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (2, 3):
        raise InputError(f"{os.fspath(images_path)}: expected images of shape (N, H, W), got {images.shape}")
    if labels.ndim != 1:
        raise InputError(f"{os.fspath(labels_path)}: expected labels of shape (N,), got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"{os.fspath(images_path)} holds {images.shape[0]} images but {os.fspath(labels_path)} "
            f"holds {labels.shape[0]} labels"
        )
    if labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    return images, labels


# ---------------------------------------------------------------------------- finding & downloading
def _idx_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist", "fashion"):
        return "fashion-mnist"
    if key == "mnist":
        return "mnist"
    raise InputError(f"unknown IDX dataset {name!r}; expected 'mnist' or 'fashion-mnist'")


def _candidates(folder: str, gz_name: str) -> list[str]:
    raw = gz_name[: -len(".gz")]  # train-images-idx3-ubyte
    dotted = raw.replace("-idx", ".idx")  # train-images.idx3-ubyte (Kaggle's copy of MNIST)
    return [os.path.join(folder, n) for n in (gz_name, raw, dotted + ".gz", dotted)]


def find_local(name: str, folder: str | os.PathLike[str] | None = None) -> dict[str, tuple[str, str]] | None:
    """Find the IDX files of ``mnist`` or ``fashion-mnist`` on the local disk.

    Parameters
    ----------
    name : {"fashion-mnist", "mnist"}
        Dataset name.
    folder : str or path-like, optional
        Folder to look in. Without it, Fashion-MNIST is looked for in
        :data:`FASHION_MNIST_DIRS` (Debian's package); MNIST has no default folder.
        Accepted file names: ``train-images-idx3-ubyte.gz`` (the published name), the
        same without ``.gz``, and the ``train-images.idx3-ubyte`` variants.

    Returns
    -------
    dict or None
        ``{"train": (images_path, labels_path), "test": (...)}`` for every split whose two
        files are both present (normally both splits, four files); None if none is.
    """
    key = _idx_name(name)
    if folder is not None:
        folders = [os.fspath(folder)]
    else:
        folders = list(FASHION_MNIST_DIRS) if key == "fashion-mnist" else []
    for where in folders:
        found: dict[str, tuple[str, str]] = {}
        for split, (images_gz, labels_gz) in IDX_FILES.items():
            images = next((p for p in _candidates(where, images_gz) if os.path.isfile(p)), None)
            labels = next((p for p in _candidates(where, labels_gz) if os.path.isfile(p)), None)
            if images and labels:
                found[split] = (images, labels)
        if found:
            return found
    return None


def _parse_digest(value: str, fname: str) -> tuple[str, str]:
    text = str(value).strip().lower()
    algo, sep, digest = text.partition(":")
    if not sep:
        algo, digest = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}.get(len(text), ""), text
    if (
        algo not in hashlib.algorithms_available
        or not digest
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise InputError(
            f"{fname}: cannot understand checksum {value!r} (use 'md5:HEX', 'sha256:HEX' or bare hex)"
        )
    return algo, digest


def _file_digest(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    name: str,
    dest_dir: str | os.PathLike[str],
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
    *,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, tuple[str, str]]:
    """Download the four IDX ``.gz`` files of MNIST or Fashion-MNIST into ``dest_dir``.

    Each file is streamed into a hidden temporary file in ``dest_dir`` while being
    hashed and renamed to its final name only once its digest matched. Files already
    present with a matching digest are not downloaded again; a present file with a
    wrong digest is replaced (after the new copy verified).

    Parameters
    ----------
    name : {"fashion-mnist", "mnist"}
        Dataset name.
    dest_dir : str or path-like
        Local folder, created if missing.
    base_url : str, optional
        Where the files are, instead of the official :data:`URLS` entry.
    checksums : mapping, optional
        ``file name -> digest`` overriding :data:`CHECKSUMS` for those files. A digest is
        ``"md5:HEX"``, ``"sha256:HEX"`` or bare hex (the algorithm guessed from its length).
    timeout : float
        Socket timeout in seconds.
    progress : callable, optional
        Called with a one-line message before each download.

    Returns
    -------
    dict
        ``{"train": (images_path, labels_path), "test": (images_path, labels_path)}``.

    Raises
    ------
    InputError
        Unknown dataset, a file without a known checksum, a failed download, or a digest
        mismatch (the message names the file and both digests; nothing is left behind).
    """
    key = _idx_name(name)
    expected = dict(CHECKSUMS[key])
    expected.update(checksums or {})
    base = (base_url or URLS[key]).rstrip("/") + "/"
    dest = os.path.abspath(os.fspath(dest_dir))
    os.makedirs(dest, exist_ok=True)
    out: dict[str, tuple[str, str]] = {}
    for split, files in IDX_FILES.items():
        paths = []
        for fname in files:
            if fname not in expected:
                raise InputError(f"{fname}: no checksum known; pass one to verify the download")
            algo, digest = _parse_digest(expected[fname], fname)
            target = os.path.join(dest, fname)
            if not (os.path.isfile(target) and _file_digest(target, algo) == digest):
                if progress is not None:
                    progress(f"downloading {base}{fname}")
                _fetch(base + fname, target, algo, digest, timeout)
            paths.append(target)
        out[split] = (paths[0], paths[1])
    return out


def _fetch(url: str, target: str, algo: str, digest: str, timeout: float) -> None:
    folder, fname = os.path.split(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{fname}.", suffix=".part")
    try:
        h = hashlib.new(algo)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if got != digest:
            raise InputError(
                f"{fname}: {algo} checksum mismatch for {url}: expected {digest}, got {got}; "
                "the download was discarded"
            )
        os.replace(tmp, target)
    except urllib.error.URLError as exc:
        raise InputError(f"{url}: download failed: {_first_line(exc.reason)}") from None
    except OSError as exc:
        raise InputError(f"{url}: download failed: {_first_line(exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- digits
def load_digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits, from the copy bundled with daskgen.

    Returns
    -------
    images : numpy.ndarray
        (1797, 8, 8) uint8, values 0..16 — scale with :data:`DIGITS_SCALE` (1/16).
    labels : numpy.ndarray
        (1797,) int64, digits 0..9.

    Notes
    -----
    Source: UCI ML hand-written digits (test set) via ``sklearn.datasets.load_digits``,
    CC BY 4.0; see ``daskgen/data/README.md``. scikit-learn is not needed.
    """
    from importlib import resources

    ref = resources.files("daskgen").joinpath("data/digits.npz")
    try:
        with ref.open("rb") as f:
            payload = io.BytesIO(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            "daskgen/data/digits.npz is missing from this installation of daskgen; reinstall it"
        ) from None
    with np.load(payload) as z:
        return np.asarray(z["images"], dtype=np.uint8), np.asarray(z["labels"], dtype=np.int64)


# ---------------------------------------------------------------------------- writing
def _label_values(labels: Any, where: str = "labels") -> np.ndarray:
    """Labels as int64 (integers, bools, integral floats), float64 (other floats) or str."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"{where}: expected labels of shape (N,), got {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InputError(f"{where}: labels hold NaN or infinite values")
        if np.array_equal(y, np.round(y)) and (y.size == 0 or np.abs(y).max() < 2**53):
            return y.astype(np.int64)
        return y.astype(np.float64)
    values = y.tolist()
    if y.dtype.kind in "OT" and any(v is None for v in values):
        raise InputError(f"{where}: labels hold missing values")
    # not y.astype(str): numpy 2 cannot cast StringDType (what Zarr returns) to str that way
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)


def _check_arrays(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(images)
    if X.ndim not in (2, 3):
        raise InputError(f"images must have shape (N, H, W) or (N, D), got {X.shape}")
    if X.dtype.kind not in "biuf":
        raise InputError(f"images must be numeric, got dtype {X.dtype}")
    if X.dtype.kind == "b":
        X = X.astype(np.uint8)
    y = _label_values(labels)
    if X.shape[0] != y.shape[0]:
        raise InputError(f"images has {X.shape[0]} rows but labels has {y.shape[0]}")
    if X.shape[0] == 0:
        raise InputError("no samples to write (N = 0)")
    return X, y


def _url_to_fs(url: str, storage_options: Mapping[str, Any] | None):
    fs, path = fsspec.core.url_to_fs(os.fspath(url), **dict(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return fs, path, ("file" in protocols or "local" in protocols)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _publish_local(path: str, exists: bool, write: Callable[[str], None]) -> str:
    """Write via ``write(tmp)`` beside ``path``, then rename into place (replacing the old one)."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        if exists:
            trash = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            os.rename(tmp, path)
            _remove(trash)
        else:
            os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return path


def write_zarr_dataset(
    url: str | os.PathLike[str],
    images: Any,
    labels: Any,
    chunk_rows: int = 10000,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write a Zarr v3 group with arrays ``images`` and ``labels`` (daskgen's Zarr input layout).

    Parameters
    ----------
    url : str or path-like
        Local path or fsspec URL of the group to create.
    images : array-like
        (N, H, W) or (N, D), numeric (bools are stored as uint8). Stored with its dtype,
        chunked ``(chunk_rows, H, W)`` / ``(chunk_rows, D)``, dimension names
        ``("sample", "y", "x")`` / ``("sample", "feature")``.
    labels : array-like
        (N,). Integers (and integral floats) are stored as int64, other floats as float64,
        anything else as strings; chunked ``(chunk_rows,)``, dimension names ``("sample",)``.
    chunk_rows : int
        Samples per chunk (capped at N).
    overwrite : bool
        Replace an existing ``url``; otherwise :class:`OutputExistsError` is raised.
    storage_options : mapping, optional
        fsspec options for remote URLs.
    attrs : mapping, optional
        Extra group attributes (JSON-serialisable). Keys under ``"daskgen"`` are merged into
        daskgen's own entry ``{"kind": "dataset", "n": N, "image_shape": [H, W] | None, ...}``.

    Returns
    -------
    str
        The path (absolute, for local outputs) or URL written.

    Notes
    -----
    Locally the group is written under a hidden temporary name in the same folder and
    renamed into place, so readers never see a half-written group. On object storage the
    group is written in place.
    """
    import zarr

    X, y = _check_arrays(images, labels)
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    rows = min(chunk_rows, X.shape[0])
    meta: dict[str, Any] = {
        "kind": "dataset",
        "n": int(X.shape[0]),
        "image_shape": list(X.shape[1:]) if X.ndim == 3 else None,
    }
    extra = dict(attrs or {})
    meta.update(dict(extra.pop("daskgen", None) or {}))
    extra["daskgen"] = meta

    def fill(group) -> None:
        from .io.store import consolidate

        dims = ("sample", "y", "x") if X.ndim == 3 else ("sample", "feature")
        arr = group.create_array(
            "images", shape=X.shape, dtype=X.dtype, chunks=(rows,) + X.shape[1:], dimension_names=dims
        )
        arr[...] = X
        lab = group.create_array(
            "labels",
            shape=y.shape,
            dtype=str if y.dtype.kind == "U" else y.dtype,
            chunks=(rows,),
            dimension_names=("sample",),
        )
        lab[...] = y
        group.attrs.update(extra)
        consolidate(group)

    target = os.fspath(url)
    fs, path, local = _url_to_fs(target, storage_options)
    exists = fs.exists(path)
    if exists and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    if not local:
        if exists:
            fs.rm(path, recursive=True)
        fill(zarr.open_group(target, mode="w", storage_options=dict(storage_options or {})))
        return target
    return _publish_local(path, exists, lambda tmp: fill(zarr.open_group(tmp, mode="w")))


def write_csv_dataset(
    path: str | os.PathLike[str],
    images: Any,
    labels: Any,
    label_column: str = "label",
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a CSV in the Kaggle digit-recognizer layout: ``label,pixel0,...,pixel{D-1}``.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL of the CSV file to create.
    images : array-like
        (N, H, W) or (N, D), numeric; flattened row-major to D = H*W columns. Integer
        pixels are written as integers.
    labels : array-like
        (N,) labels, written first (integers as integers, see :func:`write_zarr_dataset`).
    label_column : str
        Name of the label column.
    overwrite : bool
        Replace an existing file; otherwise :class:`OutputExistsError` is raised.
    storage_options : mapping, optional
        fsspec options for remote URLs.

    Returns
    -------
    str
        The path (absolute, for local outputs) or URL written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    X, y = _check_arrays(images, labels)
    X = X.reshape(X.shape[0], -1)
    names = [f"pixel{i}" for i in range(X.shape[1])]
    if label_column in names:
        raise InputError(f"label column {label_column!r} collides with a pixel column name")
    XF = np.asfortranarray(X)  # contiguous columns: each becomes an Arrow array without a copy
    columns = [pa.array(y)] + [pa.array(XF[:, i]) for i in range(XF.shape[1])]
    table = pa.Table.from_arrays(columns, names=[label_column] + names)
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow([label_column] + names)
    header = line.getvalue().encode()
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")

    def write(sink) -> None:
        sink.write(header)
        pacsv.write_csv(table, sink, write_options=options)

    target = os.fspath(path)
    fs, fpath, local = _url_to_fs(target, storage_options)
    exists = fs.exists(fpath)
    if exists and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    if fs.isdir(fpath):
        raise OutputExistsError(f"{target} is a directory; refusing to replace it with a CSV file")
    if not local:
        with fs.open(fpath, "wb") as f:
            write(f)
        return target

    def write_local(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink:
            write(sink)

    return _publish_local(fpath, exists, write_local)


# ---------------------------------------------------------------------------- CSV input
def _read_csv_images(
    source: str, label_column: str, storage_options: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a tutorial-style CSV (a label column and pixel columns) into ``(N, D)`` pixels and labels."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.types as pat

    try:
        with fsspec.open(source, "rb", compression="infer", **dict(storage_options or {})) as f:
            table = pacsv.read_csv(f)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot parse CSV: {_first_line(exc)}") from None
    if label_column not in table.column_names:
        shown = ", ".join(table.column_names[:4])
        raise InputError(
            f"{source}: no label column {label_column!r} (columns: {shown}, ...); pass the label column"
        )
    features = [c for c in table.column_names if c != label_column]
    if not features:
        raise InputError(f"{source}: no pixel columns besides {label_column!r}")
    if table.num_rows == 0:
        raise InputError(f"{source}: no data rows")
    lab = table.column(label_column)
    if lab.null_count:
        raise InputError(f"{source}: column {label_column!r}: {lab.null_count} missing label(s)")
    integer = True
    for c in features:
        col = table.column(c)
        if not (pat.is_integer(col.type) or pat.is_floating(col.type)):
            raise InputError(f"{source}: column {c!r} is not numeric (type {col.type})")
        if col.null_count:
            raise InputError(f"{source}: column {c!r}: {col.null_count} missing value(s)")
        integer = integer and pat.is_integer(col.type)
    X = np.empty((table.num_rows, len(features)), dtype=np.int64 if integer else np.float64)
    for i, c in enumerate(features):
        X[:, i] = table.column(c).to_numpy()
    if integer:
        lo, hi = int(X.min()), int(X.max())
        if lo >= 0 and hi <= 255:
            X = X.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            X = X.astype(np.uint16)
    elif not np.isfinite(X).all():
        raise InputError(f"{source}: pixel columns hold NaN or infinite values")
    return X, lab.to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------- convert
def _parse_shape(shape: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        if isinstance(shape, str):
            dims = tuple(int(p) for p in shape.lower().replace("×", "x").split("x"))
        else:
            dims = tuple(int(p) for p in shape)
    except (TypeError, ValueError):
        raise InputError(f"image shape must look like 28x28, got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims) or len(dims) > 2:
        raise InputError(f"image shape must be one or two positive sizes like 28x28, got {shape!r}")
    return dims


def _idx_source(source: str | Sequence[str] | None) -> tuple[str, str]:
    if source is None:
        raise InputError("idx needs a source: IMAGES_PATH,LABELS_PATH")
    if isinstance(source, (str, os.PathLike)):
        parts = [p.strip() for p in os.fspath(source).split(",")]
    else:
        parts = [os.fspath(p) for p in source]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"idx source must be IMAGES_PATH,LABELS_PATH, got {source!r}")
    return parts[0], parts[1]


def _cache_dir(name: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "daskgen", name)


def _load_idx_dataset(
    name: str,
    source: str | os.PathLike[str] | None,
    split: str,
    download_files: bool,
    download_dir: str | os.PathLike[str] | None,
    progress: Callable[[str], None] | None,
) -> tuple[np.ndarray, np.ndarray, str]:
    if download_files:
        folder = os.fspath(download_dir or source or _cache_dir(name))
        files: dict[str, tuple[str, str]] | None = download(name, folder, progress=progress)
    else:
        files = find_local(name, source)
        if files is None:
            where = (
                os.fspath(source)
                if source is not None
                else (", ".join(FASHION_MNIST_DIRS) if name == "fashion-mnist" else "")
            )
            looked = f" in {where}" if where else ""
            raise InputError(
                f"no {name} IDX files found{looked}; pass a folder holding {IDX_FILES['train'][0]} etc. "
                "or use --download"
            )
        folder = os.path.dirname(next(iter(files.values()))[0])
    wanted = ["train", "test"] if split == "all" else [split]
    missing = [s for s in wanted if s not in files]
    if missing:
        raise InputError(f"{folder}: no {name} {missing[0]} files ({' and '.join(IDX_FILES[missing[0]])})")
    parts = [load_idx_pair(*files[s]) for s in wanted]
    if len(parts) == 1:
        return parts[0][0], parts[0][1], folder
    first = parts[0][0].shape[1:]
    if any(p[0].shape[1:] != first for p in parts):
        raise InputError(f"{folder}: train and test images differ in shape")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), folder


def convert(
    name: str,
    out: str | os.PathLike[str],
    fmt: str = "zarr",
    source: str | os.PathLike[str] | Sequence[str] | None = None,
    split: str = "train",
    overwrite: bool = False,
    chunk_rows: int = 10000,
    *,
    download: bool = False,
    download_dir: str | os.PathLike[str] | None = None,
    label_column: str = "label",
    image_shape: str | Sequence[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Turn a known dataset into a Zarr group or a CSV file that ``daskgen fit`` reads.

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "idx", "csv"}
        ``digits``: the bundled scikit-learn digits (1797 8x8 images, pixels 0..16).
        ``fashion-mnist`` / ``mnist``: IDX files from ``source`` (a folder), else Debian's
        folder for Fashion-MNIST, else downloaded when ``download``.
        ``idx``: ``source`` is ``"IMAGES_PATH,LABELS_PATH"`` or a pair of paths.
        ``csv``: ``source`` is a tutorial-style CSV (``label_column`` plus pixel columns).
    out : str or path-like
        Output path or fsspec URL.
    fmt : {"zarr", "csv"}
        Output layout (:func:`write_zarr_dataset` or :func:`write_csv_dataset`).
    source : str, path-like or pair, optional
        See ``name``.
    split : {"train", "test", "all"}
        Which MNIST/Fashion-MNIST split to convert (``"t10k"`` means ``"test"``; ``"all"``
        concatenates train then test). ``digits``, ``idx`` and ``csv`` have a single set.
    overwrite : bool
        Replace an existing output; otherwise :class:`OutputExistsError`.
    chunk_rows : int
        Samples per Zarr chunk.
    download : bool
        Download the MNIST/Fashion-MNIST files (checksum-verified, see :func:`download`)
        instead of looking for local copies. Implied by ``download_dir``.
    download_dir : str or path-like, optional
        Where to download to; default ``source`` if given, else
        ``$XDG_CACHE_HOME/daskgen/NAME`` (``~/.cache/daskgen/NAME``). Files already there
        with a good checksum are reused.
    label_column : str
        Label column of an input CSV and of an output CSV.
    image_shape : str or pair of int, optional
        ``"HxW"`` to give flat (N, D) pixels an image shape; CSV input with a square number
        of pixel columns is reshaped to a square by default.
    storage_options : mapping, optional
        fsspec options for ``out`` (and a ``csv`` source).
    progress : callable, optional
        Called with one-line messages while downloading.

    Returns
    -------
    dict
        ``{"name", "path", "format", "n", "image_shape", "dtype", "classes", "counts",
        "scale"}``: ``image_shape`` is ``(H, W)`` or ``(D,)``; ``classes`` the sorted labels
        (Python scalars); ``counts`` samples per class in that order; ``scale`` the factor to
        fit with (1/16 for digits, 1/255 for other integer pixels, else 1.0).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key in ("fashion", "fashionmnist"):
        key = "fashion-mnist"
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    fmt = str(fmt).lower()
    if fmt not in ("zarr", "csv"):
        raise InputError(f"format must be zarr or csv, not {fmt!r}")
    split = {"t10k": "test"}.get(str(split).lower(), str(split).lower())
    if split not in _SPLITS:
        raise InputError(f"split must be one of {', '.join(_SPLITS)}, not {split!r}")
    shape = _parse_shape(image_shape)
    target = os.fspath(out)
    fs, path, _ = _url_to_fs(target, storage_options)
    if fs.exists(path) and not overwrite:  # checked again on writing; fail before any work
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")

    origin: str
    if key in ("mnist", "fashion-mnist"):
        if isinstance(source, (tuple, list)):
            raise InputError(f"{key} source must be a folder holding its IDX files, got {source!r}")
        images, labels, origin = _load_idx_dataset(
            key, source, split, download or download_dir is not None, download_dir, progress
        )
    else:
        if split == "test":
            raise InputError(f"{key} has a single set of samples; use split 'train' (or 'all')")
        if key == "digits":
            images, labels = load_digits_dataset()
            origin = "sklearn.datasets.load_digits (UCI ML hand-written digits, CC BY 4.0)"
        elif key == "idx":
            img_path, lab_path = _idx_source(source)
            images, labels = load_idx_pair(img_path, lab_path)
            origin = f"{img_path},{lab_path}"
        else:
            if source is None or isinstance(source, (tuple, list)):
                raise InputError("csv needs a source: the path of a CSV file with a label column")
            origin = os.fspath(source)
            images, labels = _read_csv_images(origin, label_column, storage_options)
            if shape is None and images.ndim == 2:
                side = math.isqrt(images.shape[1])
                if side > 1 and side * side == images.shape[1]:
                    shape = (side, side)
    if shape is not None:
        D = int(np.prod(images.shape[1:]))
        if math.prod(shape) != D:
            raise InputError(f"image shape {shape} has {math.prod(shape)} pixels, the data {D}")
        images = images.reshape((images.shape[0],) + shape)

    integer = images.dtype.kind in "iub"
    scale = DIGITS_SCALE if key == "digits" else (1 / 255 if integer else 1.0)
    if fmt == "zarr":
        attrs = {"daskgen": {"source": key, "origin": origin, "split": split, "scale": scale}}
        if key in CLASS_NAMES:
            attrs["daskgen"]["class_names"] = {str(i): n for i, n in enumerate(CLASS_NAMES[key])}
        written = write_zarr_dataset(
            target,
            images,
            labels,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            storage_options=storage_options,
            attrs=attrs,
        )
    else:
        written = write_csv_dataset(
            target,
            images,
            labels,
            label_column=label_column,
            overwrite=overwrite,
            storage_options=storage_options,
        )
    classes, counts = np.unique(_label_values(labels), return_counts=True)
    return {
        "name": key,
        "path": written,
        "format": fmt,
        "n": int(images.shape[0]),
        "image_shape": tuple(int(s) for s in images.shape[1:]),
        "dtype": str(images.dtype),
        "classes": classes.tolist(),
        "counts": [int(c) for c in counts],
        "scale": scale,
    }


def _first_line(exc: BaseException | object) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
