"""One Gaussian per class whose covariances live on disk as tiles (``daskgen fit --tiles T``).

A :class:`TiledGaussianClassModel` is stored as the model kind ``gaussian`` (covariance
``full``) with the attribute ``tiles: T``: its arrays ``scatter`` (the raw centred
scatter, symmetric) and ``cholesky`` (the lower factor L of each class covariance,
tiles above the diagonal never written) are (K, D, D) chunked (1, T, T) and are never
read whole. Its scorer and sampler hold the open ``cholesky`` array (picklable) and
read one T x T tile at a time: scoring is a blocked forward substitution, log|Sigma|
comes from the diagonal tiles, and sampling forms x = mu + L z column block by column
block. The covariances themselves are not available in memory (``class_covariances``
refuses); :meth:`spectra` gives each class's variances (its covariance's diagonal).

Pure numpy and Zarr; this module imports no Dask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelError
from ..kernels.tiles import Span, gaussian_log_likelihood, tile_spans, tiled_colour
from .base import ClassModel, check_features, fingerprint_arrays, meta_fields, read_arrays, stored_data_range
from .memory import F8, Copies, StageMemory, Workload, copies_plan, size_text

#: The tiled (K, D, D) arrays of the store.
TILE_ARRAYS = ("scatter", "cholesky")

#: The memory plan of a tiled model (:mod:`daskgen.distributed.tiled`), in copies of one
#: tile of every class, K·T²·8 bytes; nothing holds a class's D x D matrix, the client
#: holds only (K, D) moments. fit: scatter — each running task holds its (K, T, T) total
#: and one block's part, and a class's mirrored tile while writing it, and reads one
#: block of rows at a time; cholesky — a task (one class) holds the covariance tile,
#: a pair of the factor's tiles to its left, their product and its result. sample and
#: evaluate read one tile of the factor at a time per task (with the rows: normals and
#: the draw; deviations and whitened rows).
TILED_COPIES: dict[str, dict[str, Copies]] = {
    "fit": {"moments": Copies(), "scatter": Copies(per_task=2, task_classes=1), "cholesky": Copies(task_classes=5)},
    "sample": {"load": Copies(), "draw": Copies(task_classes=1)},
    "evaluate": {"load": Copies(), "score": Copies(task_classes=1)},
}


def tiled_memory_plan(n_classes: int, n_features: int, options: Workload) -> dict[str, StageMemory]:
    """See :data:`TILED_COPIES` (``options.tiles`` = T). A scatter task converts only two
    spans of T columns of a block's rows (float32 Gram or float64 centred), not all D."""
    K, D = int(n_classes), int(n_features)
    T = min(int(options.tiles), D)
    unit = K * T * T * F8
    name = f"tile (K·T²·8, T = {T:,}: {size_text(unit)})"
    table = TILED_COPIES
    moments = (options.split_every + 1) * D / (T * T)  # the moments' tree: (K, D) sums per merge
    if options.command == "fit":
        table = {"fit": {**table["fit"], "moments": Copies(worker=moments, client=2 * D / (T * T))}}
    per_row = 2 * T / D if options.command == "fit" else None
    return copies_plan(unit, name, K, D, options, table, per_row=per_row)


class TileSource:
    """Tiles of the lower factors L of a store's ``cholesky`` array, read one at a time.

    Picklable (the Zarr array is); reads are not cached, so a task holds one tile at a time.
    """

    def __init__(self, array: Any, spans: list[Span]):
        self.array = array
        self.spans = spans

    def reader(self, k: int):
        def tile(i: int, j: int) -> np.ndarray:
            (a, b), (c, d) = self.spans[i], self.spans[j]
            return np.asarray(self.array[k, a:b, c:d])

        return tile


@dataclass(frozen=True, eq=False)
class TiledScorer:
    """Scores rows under one Gaussian per class, reading each class's factor tile by tile."""

    classes: np.ndarray
    priors: np.ndarray
    means: np.ndarray
    source: TileSource
    fingerprint: str

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(x | y = k) for every row and class, shape (n, K)."""
        X = check_features(X, self.means.shape[1])
        out = np.empty((X.shape[0], len(self.classes)))
        for k in range(len(self.classes)):
            out[:, k] = gaussian_log_likelihood(X - self.means[k], self.source.spans, self.source.reader(k))
        return out


class TiledSampler:
    """Draws rows of one Gaussian per class, x = mu + L z, one tile of L at a time.

    The normals are drawn as :class:`~daskgen.kernels.sampling.Sampler` draws them (one
    (n_k, D) block per class, classes in increasing order, in the working dtype), so with
    the same generator the samples equal a whole-matrix ``z @ L.T`` up to the order of
    the additions.
    """

    def __init__(self, priors: np.ndarray, means: np.ndarray, source: TileSource, dtype: Any = np.float64):
        self.work = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        self.priors = np.asarray(priors, dtype=np.float64)
        self.class_priors = self.priors
        self.means = np.ascontiguousarray(means, dtype=self.work)
        self.source = source

    def draw_classes(self, n: int, rng: np.random.Generator, class_index: int | None = None) -> np.ndarray:
        if class_index is not None:
            return np.full(n, class_index, dtype=np.intp)
        return rng.choice(len(self.class_priors), size=n, p=self.class_priors)

    def draw(self, class_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, D = len(class_index), self.means.shape[1]
        out = np.empty((n, D), dtype=self.work)
        for k in np.unique(class_index):
            rows = np.flatnonzero(class_index == k)
            z = rng.standard_normal((len(rows), D), dtype=self.work)
            block = tiled_colour(z, self.source.spans, self.source.reader(int(k)), np.empty_like(z))
            block += self.means[k]
            out[rows] = block
        return out


@dataclass(repr=False, kw_only=True)
class TiledGaussianClassModel(ClassModel):
    """A prior over classes and one full-covariance Gaussian per class, tiled on disk.

    Attributes: ``classes``, ``counts``, ``priors``, ``means`` as
    :class:`~daskgen.models.gaussian.GaussianClassModel`'s; ``tiles`` (T); ``group``
    the open Zarr group holding ``scatter`` and ``cholesky``; ``digests`` the SHA-256
    digests of the factor's tiles (class, then column, then row order), which the
    fingerprint is made of; ``minimum``/``maximum`` the data range.
    """

    kind: ClassVar[str] = "gaussian"

    classes: np.ndarray = None
    counts: np.ndarray = None
    priors: np.ndarray = None
    means: np.ndarray = None
    tiles: int = 0
    group: Any = None
    digests: list[str] = field(default_factory=list)
    minimum: float = np.nan
    maximum: float = np.nan
    #: Where the tiles live while they are in a scratch group of the fit's own (moved or copied
    #: into the store on save, then removed)
    scratch_url: str | None = None

    # -- shape ------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def covariance_type(self) -> str:
        return "full"

    @property
    def data_range(self) -> tuple[float, float]:
        return (self.minimum, self.maximum)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_arrays(self.classes, self.priors, self.means, np.asarray(self.digests, dtype=str),
                                  np.asarray([self.tiles]), *self.transform.fingerprint_parts())

    @property
    def spans(self) -> list[Span]:
        return tile_spans(self.n_features, self.tiles)

    def array(self, name: str) -> Any:
        return self.group[name]

    # -- the interface -------------------------------------------------------------
    @property
    def class_means(self) -> np.ndarray:
        return self.means

    @property
    def class_covariances(self) -> np.ndarray:
        raise ModelError("a tiled model (--tiles) keeps its covariances on disk as tiles; they are never "
                         "formed whole in memory")

    spectrum_scope: ClassVar[str] = " (variances: a tiled model's eigenvalues are not computed)"

    def spectra(self) -> list[np.ndarray]:
        """Per class, the variances of its covariance (read from the diagonal tiles), descending."""
        reg = float(self.config.get("reg_covar") or 0.0)
        scatter = self.array("scatter")
        out = []
        for k, n in enumerate(self.counts.tolist()):
            var = np.concatenate([np.diagonal(np.asarray(scatter[k, a:b, a:b])) for a, b in self.spans])
            out.append(np.sort(var / (n - 1) + reg)[::-1])
        return out

    def scorer(self) -> TiledScorer:
        return TiledScorer(self.classes, self.priors, self.means, TileSource(self.array("cholesky"), self.spans),
                           self.fingerprint)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        return self.scorer().class_log_likelihood(X)

    def sampler(self, dtype: Any = np.float64) -> TiledSampler:
        return TiledSampler(self.priors, self.means, TileSource(self.array("cholesky"), self.spans), dtype)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "tiles": int(self.tiles)}

    # -- the store --------------------------------------------------------------------
    def to_store(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The small arrays; ``scatter`` and ``cholesky`` go by :meth:`write_large_arrays`."""
        arrays = {
            "counts": np.asarray(self.counts, dtype=np.int64),
            "priors": np.asarray(self.priors, dtype=np.float64),
            "means": np.asarray(self.means, dtype=np.float64),
        }
        return arrays, {"tiles": int(self.tiles), "tile_digests": list(self.digests)}

    def write_large_arrays(self, url: str, storage_options: dict | None = None) -> None:
        """Put ``scatter`` and ``cholesky`` into the store being written at ``url``: moved (a
        rename) from the fit's scratch group on a local disk, else copied tile by tile."""
        from ..io.fs import is_local, open_zarr_group, remove_tree, url_to_fs

        fs, path = url_to_fs(url, storage_options)
        if self.scratch_url is not None and is_local(fs) and os.path.isdir(self.scratch_url):
            for name in TILE_ARRAYS:
                os.rename(os.path.join(self.scratch_url, name), os.path.join(path, name))
            remove_tree(self.scratch_url)
            self.scratch_url = None
            self.__dict__["_moved_to"] = path
            return
        target = open_zarr_group(url, storage_options, mode="a")
        K, D = len(self.classes), self.n_features
        for name in TILE_ARRAYS:
            src = self.array(name)
            dst = target.create_array(name, shape=(K, D, D), dtype=np.float64, chunks=(1, self.tiles, self.tiles),
                                      compressors=None, fill_value=0.0)
            for k in range(K):
                for i, (a, b) in enumerate(self.spans):
                    for j, (c, d) in enumerate(self.spans):
                        if name == "scatter" or j <= i:
                            dst[k, a:b, c:d] = src[k, a:b, c:d]
        if self.scratch_url is not None:
            self.__dict__["_moved_to"] = url

    def published(self, url: str, storage_options: dict | None = None) -> None:
        """Once saved from the fit's scratch group: read the tiles from the store from now on,
        and remove the scratch group (emptied by the move, or copied)."""
        if self.__dict__.pop("_moved_to", None) is not None:
            from ..io.fs import open_zarr_group, remove_tree

            remove_tree(self.scratch_url, storage_options)
            self.scratch_url = None
            self.group = open_zarr_group(url, storage_options)

    @classmethod
    def from_store(cls, group: Any, meta: dict[str, Any], classes: np.ndarray, url: str) -> TiledGaussianClassModel:
        a = read_arrays(group, ("counts", "priors", "means"), url)
        K, D = a["means"].shape if a["means"].ndim == 2 else (-1, -1)
        tiles = meta.get("tiles")
        digests = meta.get("tile_digests") or []
        try:
            shapes = [group[name].shape for name in TILE_ARRAYS]
        except Exception:
            shapes = []
        if (
            K < 1
            or not isinstance(tiles, int)
            or tiles < 1
            or classes.shape != (K,)
            or a["counts"].shape != (K,)
            or a["priors"].shape != (K,)
            or shapes != [(K, D, D)] * 2
            or not all(np.isfinite(a[k]).all() for k in ("priors", "means"))
        ):
            raise ModelError(f"{url}: corrupted model store (array shapes or values are inconsistent)")
        lo, hi = stored_data_range(meta)
        return cls(classes=classes, counts=a["counts"], priors=a["priors"], means=a["means"], tiles=tiles,
                   group=group, digests=list(digests), minimum=lo, maximum=hi, **meta_fields(meta))
