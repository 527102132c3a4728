"""Drawing Gaussian rows in blocks from factors prepared once.

Pure numpy. A :class:`Sampler` holds, per Gaussian, a mean and a triangular square
root of its covariance; one draw of ``n`` rows of one Gaussian is one block of normals
and one panelled matrix product. The result depends only on the generator's state and
the inputs (the Gaussians are visited in increasing index order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .linalg import ClassFactor, triangular_factor, upper_product


class Sampler:
    """Everything needed to draw samples of Gaussians, prepared once per run.

    ``priors`` (G,) are the probabilities of the Gaussians, ``means`` (G, D) their
    means, ``factors`` their PSD roots (:func:`~daskgen.kernels.linalg.factor_covariance`)
    or ready triangular factors ``(T, spans)`` (:func:`~daskgen.kernels.linalg.cholesky_factor`).
    Holds, per Gaussian, the mean and a triangular square root of the covariance (see
    :func:`~daskgen.kernels.linalg.triangular_factor`) in the working precision (float32 when the output is
    float32: single-precision BLAS runs at twice the speed; float64 otherwise), so
    a chunk of ``n_k`` samples of class k costs one block of normals and one
    panelled matrix product. Picklable: it is what the distributed generation ships
    to each worker once.
    """

    def __init__(self, priors: np.ndarray, means: np.ndarray, factors: Sequence[ClassFactor | tuple],
                 dtype: Any = np.float64):
        self.work = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        self.priors = np.asarray(priors, dtype=np.float64)
        #: p(y) of draw_classes (a mixture's sampler draws components among self.priors)
        self.class_priors = self.priors
        self.n_features = int(np.shape(means)[1])
        self.means = np.ascontiguousarray(means, dtype=self.work)
        self.factors_t: list[np.ndarray] = []
        self.spans: list[list[tuple[int, int, int]]] = []
        for f in factors:
            T, spans = f if isinstance(f, tuple) else triangular_factor(f, self.n_features)
            self.factors_t.append(np.ascontiguousarray(T, dtype=self.work))
            self.spans.append(spans)

    def draw_classes(self, n: int, rng: np.random.Generator, class_index: int | None = None) -> np.ndarray:
        """Class indices of ``n`` samples: from the prior, or all ``class_index``."""
        if class_index is not None:
            return np.full(n, class_index, dtype=np.intp)
        return rng.choice(len(self.class_priors), size=n, p=self.class_priors)

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample per entry of ``class_index``, shape (n, D), in the working dtype.

        Classes are visited in increasing index order and their normals drawn in that
        order, so the result depends only on ``rng``'s state and the inputs. Features
        a class never varies get exactly its mean (their columns of T are zero).
        """
        n, D = len(class_index), self.n_features
        out = np.empty((n, D), dtype=self.work)
        for k in np.unique(class_index):
            rows = np.flatnonzero(class_index == k)
            T, mean = self.factors_t[k], self.means[k]
            block = out if len(rows) == n else np.empty((len(rows), D), dtype=self.work)
            if T.shape[0] == 0:
                block[:] = mean
            else:
                z = rng.standard_normal((len(rows), T.shape[0]), dtype=self.work)
                upper_product(z, T, self.spans[k], block)
                block += mean
            if block is not out:
                out[rows] = block
        return out


def draw_components(class_index: np.ndarray, component_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For rows of classes ``class_index`` (n,), a component of each drawn from its class's
    ``component_weights`` (K, M) (classes in increasing order): flat indices ``k * M + m`` (n,)."""
    M = component_weights.shape[1]
    flat = np.empty(len(class_index), dtype=np.intp)
    for k in np.unique(class_index):
        rows = np.flatnonzero(class_index == k)
        flat[rows] = k * M + rng.choice(M, size=len(rows), p=component_weights[k])
    return flat
