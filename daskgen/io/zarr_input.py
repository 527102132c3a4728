"""Zarr inputs: groups with ``images`` (N, H, W) or (N, D) and ``labels`` (N,), read in row ranges.

``open_zarr`` checks each group's arrays and attributes (an incomplete samples
store is refused; a dataset's ``scale`` and ``class_names`` are taken along) and
cuts the rows into blocks of whole chunks of about ``blocksize`` bytes;
``read_zarr_block`` reads one row range.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import InputError, first_line
from .blocks import Block, Opened, ZarrOptions, checked_rows
from .fs import open_zarr_group, unstrip
from .labels import as_labels

#: A chunk is cut into parts when it holds more than this many blocks' worth of rows, and
#: more than CHUNK_PART_BYTES (as float64): a tiny ``blocksize`` still reads whole chunks.
CHUNK_PARTS = 8
CHUNK_PART_BYTES = 256 * 2**20


def open_zarr(entries: list, label_column: str, blocksize: int, storage_options: dict | None) -> Opened:
    """Plan the blocks of Zarr ``entries`` (``[(format, fs, path)]``): whole chunks of rows."""
    blocks, files = [], []
    features, image_shape, integer, stored_scale = None, None, True, None
    eight_bit, class_names = True, None
    for _, fs, path in entries:
        url = unstrip(fs, path)
        try:
            group = open_zarr_group(url, storage_options)
        except Exception as exc:
            raise InputError(f"{url}: not a Zarr group: {first_line(exc)}") from None
        attrs = dict(group.attrs)
        meta = attrs.get("daskgen", {})
        if meta.get("kind") == "samples" and not meta.get("complete", False):
            raise InputError(f"{url}: this samples store is incomplete; rerun `daskgen sample` to finish it")
        names = set(group.array_keys())
        for need in ("images", label_column if label_column in names else "labels"):
            if need not in names:
                raise InputError(f"{url}: no array {need!r} in the group (arrays: {sorted(names)})")
        images = group["images"]
        labels = group[label_column if label_column in names else "labels"]
        if images.ndim not in (2, 3):
            raise InputError(f"{url}: 'images' must have shape (N, H, W) or (N, D), got {images.shape}")
        if labels.ndim != 1:
            raise InputError(f"{url}: 'labels' must have shape (N,), got {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise InputError(
                f"{url}: 'images' has {images.shape[0]} rows but 'labels' has {labels.shape[0]}"
            )
        shape = tuple(images.shape[1:])
        D = int(np.prod(shape))
        if features is None:
            features, image_shape = [f"pixel{i}" for i in range(D)], (shape if len(shape) == 2 else None)
        elif D != len(features):
            raise InputError(f"{url}: images have {D} features, earlier inputs {len(features)}")
        if images.dtype.kind not in "iub":
            integer = False
        if images.dtype != np.uint8:
            eight_bit = False
        if meta.get("class_names") and class_names is None:
            class_names = {str(k): str(v) for k, v in dict(meta["class_names"]).items()}
        if meta.get("scale") and stored_scale is None:
            stored_scale = float(meta["scale"])  # e.g. 1/16 for the digits' 0..16 pixels
        if images.dtype.kind not in "iufb":
            raise InputError(f"{url}: 'images' has non-numeric dtype {images.dtype}")
        N = images.shape[0]
        rows_per_chunk = images.chunks[0]
        row_bytes = max(D * 8, 1)
        step = max(rows_per_chunk, (max(blocksize // row_bytes, 1) // rows_per_chunk) * rows_per_chunk)
        if step == rows_per_chunk:
            # A chunk far larger than a block (wide images in chunks of 10,000 rows, say) is
            # read in a few equal parts: otherwise three chunks make three tasks, and one of
            # two workers' threads does two of them while the other waits. Each part
            # decompresses the whole chunk, cheap next to its statistics.
            part = max(CHUNK_PARTS * blocksize, CHUNK_PART_BYTES)
            step = -(-rows_per_chunk // -(-rows_per_chunk * row_bytes // part))
        label_name = label_column if label_column in names else "labels"
        options = ZarrOptions(label_name)
        blocks.extend(Block("zarr", url, a, min(a + step, N), options=options) for a in range(0, N, step))
        files.append({"path": url, "size": int(N), "mtime": "", "etag": _zarr_token(group)})
    return Opened(blocks, files, features, integer, image_shape, stored_scale, integer and eight_bit, class_names)


def _zarr_token(group) -> str:
    """A digest of a group's layout and attributes: its identity in a model's manifest."""
    h = hashlib.sha256()
    for key in ("images", "labels"):
        if key in group:
            arr = group[key]
            h.update(repr((arr.shape, str(arr.dtype), arr.chunks)).encode())
    h.update(repr(sorted(dict(group.attrs).get("daskgen", {}).items())).encode())
    return h.hexdigest()[:16]


def read_zarr_block(block: Block, storage_options: dict | None, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read one row range: ``X`` (n, D) with the stored dtype (uint8 when ``pixels``), ``y`` (n,)."""
    label_name = block.options.label_name
    group = open_zarr_group(block.url, storage_options)
    images = group["images"][block.start : block.stop]
    y = as_labels(group[label_name][block.start : block.stop])
    return checked_rows(block, np.asarray(images).reshape(len(y), -1), y, pixels)


