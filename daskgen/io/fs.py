"""Where data lives: local paths and fsspec URLs, as one set of helpers.

Every module that opens, lists or writes a location goes through these: the
filesystem of a path or URL, whether it is the local disk, a path's URL form,
joining parts onto a folder or a URL, a file's identity (size, mtime, etag), and
opening a Zarr v3 group at a location, and writing a small JSON output.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import fsspec

#: URL schemes written without ``//`` that still name object storage.
_BARE_SCHEMES = ("s3:", "gs:", "gcs:", "az:", "abfs:")


def url_to_fs(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None):
    """``(fs, path)``: the fsspec filesystem of a local path or URL and the path within it."""
    return fsspec.core.url_to_fs(os.fspath(url), **dict(storage_options or {}))


def is_local(fs) -> bool:
    """Whether ``fs`` is the local disk (where renames are atomic and files can be mapped)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def unstrip(fs, path: str) -> str:
    """``path`` as users gave it: a URL for remote filesystems, the plain path locally."""
    return fs.unstrip_protocol(path) if not is_local(fs) else path


def is_url(p: str) -> bool:
    """Whether ``p`` names a remote location (``s3://…``, ``gs:…``) rather than a local path."""
    return "://" in p or p.startswith(_BARE_SCHEMES)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local folder or an fsspec URL."""
    return "/".join([base.rstrip("/"), *parts]) if is_url(base) else os.path.join(base, *parts)


def file_info(fs, path: str) -> dict[str, Any]:
    """What identifies a file's content for an update: ``{"path", "size", "mtime", "etag"}``."""
    info = fs.info(path)
    return {
        "path": unstrip(fs, path),
        "size": int(info.get("size") or 0),
        "mtime": str(info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""),
        "etag": str(info.get("ETag") or info.get("etag") or "").strip('"'),
    }


def write_json(path: str, data: Any, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``data`` as indented JSON (and a final newline) at a local path or fsspec URL,
    creating the parent folder. Returns ``path``."""
    fs, where = url_to_fs(path, storage_options)
    parent = posixpath.dirname(where)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(where, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return str(path)


def open_zarr_group(url: str, storage_options: Mapping[str, Any] | None = None, mode: str = "r"):
    """Open a Zarr v3 group from a local path or an fsspec URL.

    Always from the group's own metadata, never the consolidated copy (written for
    other readers when a store is complete): that copy would hide an array removed
    or rewritten since.
    """
    import zarr

    fs, path = url_to_fs(url, storage_options)
    if is_local(fs):
        return zarr.open_group(path, mode=mode, use_consolidated=False)
    return zarr.open_group(url, mode=mode, storage_options=dict(storage_options or {}), use_consolidated=False)


def remove_tree(url: str | None, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete the folder (or prefix) at a local path or URL, if it exists; errors are ignored."""
    if not url:
        return
    try:
        fs, path = url_to_fs(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except (OSError, ValueError):
        pass
