"""The data transform of a model: dequantized pixels in [0, 1], optionally in logit space.

Pure numpy (raises ``ValueError``). Two spaces matter:

* **data space** x~ in [0, 1]^D. For 8-bit pixels x (integers 0..255),
  ``x~ = (x + u) / 256`` with ``u ~ U[0, 1)^D`` (dequantization, as RealNVP, Glow and
  MAF); integer pixels of another depth, with levels 0..L-1 and scale 1/(L-1) (the
  bundled digits: 0..16, scale 1/16), take ``x~ = (x + u) / L`` (:func:`pixel_levels`).
  Other data, already in [0, 1] (values times the dataset's scale), take ``x~ = x``
  (no noise; values outside [0, 1] are refused).
* **feature space**, where a model's Gaussians live. ``none``: the features are the
  values times the scale, as always (no dequantization in the fit). ``logit``:
  ``y = logit(p)``, ``p = lam + (1 - 2 lam) x~``, and a density of y is a density of
  x~ by the change of variables::

      log p(x~) = log p_Y(y) + sum_d [log(1 - 2 lam) - log p_d - log(1 - p_d)]

The noise ``u`` of a row is a function of (seed, stream, the row's values) only: a
SplitMix64 stream seeded by :func:`~daskgen.kernels.init_sample.row_keys` of the row.
A fit is therefore the same whatever the chunking, the order or the file format of its
input (identical rows get identical noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .init_sample import row_keys, splitmix64

TRANSFORMS = ("none", "logit")
DEFAULT_LAMBDA = 1e-6
#: The dequantization convention, as recorded with a logit model.
DEQUANTIZATION = ("x~ = (x + u)/L, u ~ U[0,1)^D from (seed, row values), for integer pixels of L = 1/scale + 1 levels "
                  "(256: 8-bit); x~ = x*scale otherwise")
#: Default ``reg_covar`` of a logit-space model (one Gaussian per class or a mixture), in
#: logit units squared: chosen on a validation split held out of Fashion-MNIST TRAIN
#: (bits/dim on validation, ``benchmarks/quality.py``; 0.1 minimised it among 0.01..1).
LOGIT_REG_COVAR = 0.1
#: Streams of :func:`dequantization_noise`: the fit's noise and evaluate's are independent.
FIT_STREAM, EVALUATE_STREAM = 1, 2
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def dequantization_noise(X: np.ndarray, seed: int, stream: int = FIT_STREAM) -> np.ndarray:
    """Uniform noise u in [0, 1) for every value of ``X`` (n, D): float64 (n, D).

    Row i's noise is SplitMix64 seeded by a hash of (``seed``, ``stream``, row i's
    values): it depends on nothing else (not the block, not the row's position).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"dequantization_noise needs X (n, D), got shape {X.shape}")
    n, D = X.shape
    key_seed = (int(seed) * 0x100000001B3 + int(stream)) % 2**63
    keys = row_keys(X, key_seed) if n else np.zeros(0, np.uint64)
    steps = np.arange(D, dtype=np.uint64) * _GAMMA
    out = np.empty((n, D))
    rows = max(1, 2**20 // max(D, 1))
    with np.errstate(over="ignore"):
        for a in range(0, n, rows):
            h = splitmix64(keys[a : a + rows, None] + steps[None, :])  # value d: the stream's (d + 1)-th output
            out[a : a + rows] = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def pixel_levels(scale: float) -> int:
    """L, the number of levels of integer pixels of scale ``scale`` (model units per pixel
    unit): ``round(1 / scale) + 1`` — 256 for 8-bit pixels (scale 1/255), 17 for 0..16."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return round(1.0 / scale) + 1


def to_unit(X: np.ndarray, pixels: bool, scale: float = 1 / 255, seed: int = 0,
            stream: int = FIT_STREAM) -> np.ndarray:
    """x~ in [0, 1]: ``(X + u) / L`` for integer ``pixels`` of L levels (:func:`pixel_levels`
    of ``scale``; 256 for 8-bit), else ``X * scale``: float64, (n, D).

    Raises ``ValueError`` when pixels lie outside 0..L-1 or other values outside [0, 1].
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"to_unit needs X (n, D), got shape {X.shape}")
    if pixels:
        levels = pixel_levels(scale)
        if X.size and (X.min() < 0 or X.max() > levels - 1):
            raise ValueError(f"pixels of scale {scale:g} must lie in 0..{levels - 1}, got "
                             f"{float(X.min()):g}..{float(X.max()):g}")
        return (X + dequantization_noise(X, seed, stream)) / float(levels)
    out = np.asarray(X, dtype=np.float64) * scale
    if out.size and not (out.min() >= 0.0 and out.max() <= 1.0):
        raise ValueError(f"a logit transform needs values in [0, 1] (times the scale), got {out.min():g}..{out.max():g}")
    return out


def logit(xt: np.ndarray, lam: float) -> np.ndarray:
    """y = logit(lam + (1 - 2 lam) x~), elementwise, float64."""
    p = lam + (1.0 - 2.0 * lam) * np.asarray(xt, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def logit_log_det(xt: np.ndarray, lam: float) -> np.ndarray:
    """log |dy/dx~| of :func:`logit` summed over each row: (n,) float64 (nats)."""
    p = lam + (1.0 - 2.0 * lam) * np.asarray(xt, dtype=np.float64)
    return (math.log1p(-2.0 * lam) - np.log(p) - np.log1p(-p)).sum(axis=-1)


def sigmoid_unit(y: np.ndarray, lam: float) -> np.ndarray:
    """The inverse of :func:`logit`: x~ = (sigmoid(y) - lam) / (1 - 2 lam), clipped to [0, 1]."""
    y = np.asarray(y)
    p = 0.5 * (1.0 + np.tanh(0.5 * y))  # the sigmoid without overflow
    return np.clip((p - lam) / (1.0 - 2.0 * lam), 0.0, 1.0)


def unit_to_pixels(xt: np.ndarray, levels: int = 256) -> np.ndarray:
    """Pixels of x~ in [0, 1]: floor(L x~) clipped to 0..L-1 (the bin x~ falls in), uint8
    (``levels`` L <= 256; 8-bit: 256)."""
    return np.clip(np.floor(np.asarray(xt) * float(levels)), 0, levels - 1).astype(np.uint8)


@dataclass(frozen=True)
class Transform:
    """How a model's features are made from data: ``name`` none|logit and ``lam`` (λ)."""

    name: str = "none"
    lam: float = DEFAULT_LAMBDA

    def __post_init__(self):
        if self.name not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, not {self.name!r}")
        if not (0.0 <= float(self.lam) < 0.5):
            raise ValueError(f"logit lambda must lie in [0, 0.5), got {self.lam}")

    @property
    def identity(self) -> bool:
        return self.name == "none"

    def features(self, X: np.ndarray, pixels: bool, scale: float, seed: int = 0,
                 stream: int = FIT_STREAM) -> np.ndarray:
        """Feature rows (n, D) float64 of a block ``X`` in pixel units (logit only).

        ``X`` holds 8-bit pixels when ``pixels`` (the reader checked 0..255) or when its
        dtype is an integer one (a uint8 Zarr store with a recorded scale, say).
        """
        pixels = bool(pixels) or np.asarray(X).dtype.kind in "iub"
        return logit(to_unit(X, pixels, scale, seed, stream), self.lam)

    def block(self, X: np.ndarray, pixels: bool, scale: float, seed: int = 0,
              stream: int = FIT_STREAM) -> np.ndarray:
        """The rows to hand a statistics kernel for a block ``X`` in pixel units: ``X``
        itself for ``none`` (the kernel applies ``scale``), the feature rows (float64)
        for ``logit`` (then the kernel's scale is 1, :meth:`feature_scale`)."""
        return X if self.identity else self.features(X, pixels, scale, seed, stream)

    def feature_scale(self, scale: float) -> float:
        """The scale a statistics kernel applies to the rows of :meth:`block`."""
        return scale if self.identity else 1.0

    def forward(self, xt: np.ndarray) -> np.ndarray:
        """Features of x~ (data space -> feature space)."""
        return xt if self.identity else logit(xt, self.lam)

    def log_det(self, xt: np.ndarray) -> np.ndarray:
        """log |d features / d x~| per row, (n,) (0 for ``none``)."""
        if self.identity:
            return np.zeros(np.shape(xt)[0])
        return logit_log_det(xt, self.lam)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """x~ of features (feature space -> data space)."""
        return y if self.identity else sigmoid_unit(y, self.lam)

    def to_attrs(self) -> dict[str, Any]:
        """As stored with a model (attribute ``transform``)."""
        if self.identity:
            return {"name": "none"}
        return {"name": self.name, "lambda": float(self.lam), "dequantization": DEQUANTIZATION}

    @classmethod
    def from_attrs(cls, attrs: Any) -> Transform:
        """From a stored ``transform`` attribute; missing (stores written before it): ``none``."""
        if not attrs:
            return cls()
        if isinstance(attrs, str):
            return cls(attrs)
        return cls(str(attrs.get("name", "none")), float(attrs.get("lambda", DEFAULT_LAMBDA)))

    def fingerprint_parts(self) -> tuple[np.ndarray, ...]:
        """What a model's fingerprint hashes of the transform: nothing for ``none``
        (fingerprints of models without a transform are unchanged)."""
        return () if self.identity else (np.array([f"{self.name}:{self.lam!r}"]),)

    def __str__(self) -> str:
        return "none" if self.identity else f"{self.name} (lambda {self.lam:g})"


NONE = Transform()


def make_transform(name: str | Transform | None = "none", lam: float | None = None) -> Transform:
    """A :class:`Transform` from options (``name`` none|logit, ``lam`` default 1e-6); ``ValueError`` if bad."""
    if isinstance(name, Transform):
        return name if lam is None else Transform(name.name, float(lam))
    try:
        lam = DEFAULT_LAMBDA if lam is None else float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"logit lambda must be a number, got {lam!r}") from None
    return Transform(str(name or "none"), lam)
