"""Benchmark data shared by the scripts in this folder."""

from __future__ import annotations

import numpy as np


def write_tiled(path: str, images: np.ndarray, labels: np.ndarray, tiles: int) -> None:
    """Fashion-MNIST tiled ``tiles`` times with noise (so no two rows repeat), as a Zarr
    group of 10,000-row chunks: the benchmarks' "10x the rows" input."""
    import zarr

    rng = np.random.default_rng(0)
    n = len(images) * tiles
    g = zarr.open_group(str(path), mode="w")
    img = g.create_array("images", shape=(n, *images.shape[1:]), dtype="uint8", chunks=(10_000, *images.shape[1:]))
    lab = g.create_array("labels", shape=(n,), dtype="int64", chunks=(10_000,))
    for t in range(tiles):
        noisy = np.clip(images.astype(np.int16) + rng.integers(-8, 9, images.shape), 0, 255).astype(np.uint8)
        img[t * len(images) : (t + 1) * len(images)] = noisy
        lab[t * len(images) : (t + 1) * len(images)] = labels
