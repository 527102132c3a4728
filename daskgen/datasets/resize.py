"""Bilinear resizing of image stacks: wide stand-ins made from small real images.

``daskgen data fashion-mnist --size 64`` upsamples every 28x28 image to 64x64 with
separable bilinear interpolation (half-pixel centres, edges clamped — the convention of
PIL's and OpenCV's bilinear resize), rounded back to the input's integer dtype. The
result is *not* new information: an upsampled 28x28 image still has at most 784 degrees
of freedom (plus rounding), so it is a stand-in for the *width* of real high-resolution
data (memory, time, the code paths of wide models), not for its statistics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bilinear_matrix", "resize_images"]


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``A`` (n_out, n_in): output pixel i is ``A[i] @ input`` along one axis."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    A = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(A, (rows, lo), 1.0 - w)
    np.add.at(A, (rows, hi), w)
    return A


def resize_images(images: np.ndarray, size: tuple[int, int], rows_per_step: int = 1000) -> np.ndarray:
    """``images`` (N, H, W) resized to (N, *size) by bilinear interpolation.

    Integer images are rounded to the nearest value and stay in their dtype (the
    interpolation is a convex combination, so values stay in the input's range); float
    images become float64. Works ``rows_per_step`` images at a time, so the only large
    allocation is the output.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"resizing needs images of shape (N, H, W), got {images.shape}")
    n, H, W = images.shape
    out_h, out_w = (int(s) for s in size)
    Ah = bilinear_matrix(H, out_h).astype(np.float32)
    AwT = np.ascontiguousarray(bilinear_matrix(W, out_w).T.astype(np.float32))
    integer = images.dtype.kind in "iub"
    out = np.empty((n, out_h, out_w), dtype=images.dtype if integer else np.float64)
    for start in range(0, n, rows_per_step):
        block = images[start:start + rows_per_step].astype(np.float32 if integer else np.float64)
        res = np.matmul(Ah, np.matmul(block, AwT))
        if integer:
            np.rint(res, out=res)
        out[start:start + rows_per_step] = res
    return out
