"""Downloading the IDX files of MNIST and Fashion-MNIST, verified against published digests.

Each file streams into a hidden temporary file beside its target while being
hashed, and is renamed to its final name only once its digest matched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from ..errors import InputError, first_line
from .idx import IDX_FILES, idx_name

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
    key = idx_name(name)
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
        raise InputError(f"{url}: download failed: {first_line(exc.reason)}") from None
    except OSError as exc:
        raise InputError(f"{url}: download failed: {first_line(exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir(name: str) -> str:
    """Where downloads of ``name`` go by default: ``$XDG_CACHE_HOME/daskgen/NAME`` (``~/.cache/daskgen/NAME``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "daskgen", name)


