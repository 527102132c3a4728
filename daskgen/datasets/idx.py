"""IDX files (the MNIST format): read them, pair images with labels, find them on disk.

MNIST and Fashion-MNIST are published as four IDX files (:data:`IDX_FILES`);
Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST in
:data:`FASHION_MNIST_DIRS`. Errors are :class:`~daskgen.errors.InputError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import fsspec
import numpy as np

from ..errors import InputError, first_line

#: Folders searched for Fashion-MNIST when no folder is given (Debian's dataset-fashion-mnist).
FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

#: split -> (images file, labels file), as published for MNIST and Fashion-MNIST.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
        raise InputError(f"{name}: cannot read: {first_line(exc)}") from None
    if data[:2] == b"\x1f\x8b":  # gzip without a .gz suffix
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{name}: not a valid gzip file: {first_line(exc)}") from None
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


def idx_name(name: str) -> str:
    """``"mnist"`` or ``"fashion-mnist"`` from the spellings users write (``fashion_mnist``, ``Fashion``)."""
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
    key = idx_name(name)
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


