"""Distributed generation into a Zarr samples store: seeded per chunk, resumable.

Output chunk ``i`` holds rows ``[i * chunk_size, (i + 1) * chunk_size)``. Its random
stream is derived from ``(seed, i)`` only (``SeedSequence(seed, spawn_key=(i,))``)
and the generation kernel runs with BLAS pinned to one thread, so the bytes of a
chunk do not depend on the number of workers, threads, task order or retries.

A chunk is written (``images`` then ``labels``), then marked in the ``done`` array.
A rerun writes only chunks not marked, after removing partial files a killed
writer left; when every chunk is marked the store's ``complete`` attribute is set.
An existing store made from another model, seed, n, chunk size, dtype or class is
refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from .._blas import one_blas_thread
from .._version import __version__
from ..errors import OutputExistsError, user_input
from ..io.fs import is_local, open_zarr_group, url_to_fs
from ..io.labels import as_labels
from ..io.store import consolidate
from ..kernels.transform import NONE, Transform, pixel_levels, unit_to_pixels
from ..models.base import ClassModel, ModelSampler
from .factors import ready, sampler_node

DEFAULT_CHUNK_SIZE = 10_000
#: Attributes that identify a samples store: a rerun with other values is refused.
IDENTITY = ("model_fingerprint", "seed", "n", "dtype", "chunk_size", "class", "draw")
#: Version of the draw (bit generator, class choice, factor, panels): a store begun by
#: another version is refused rather than finished with different bits. 3: a mixture's
#: components are factored by Cholesky. 4: low-rank kinds (ppca, fa, mfa) draw in float32
#: for uint8 and float32 output.
DRAW_VERSION = 4


@dataclass
class GenerateResult:
    out: str
    n: int
    seed: int
    n_chunks: int
    chunks_written: int
    resumed: bool

    @property
    def chunks_skipped(self) -> int:
        return self.n_chunks - self.chunks_written


def chunk_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of output chunk ``index``: a function of (seed, index) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


@dataclass(frozen=True)
class _Plan:
    sampler: ModelSampler
    classes: np.ndarray
    class_index: int | None
    dtype: str
    scale: float
    clip: tuple[float, float]
    shape: tuple[int, ...]
    transform: Transform = NONE

    def __sizeof__(self) -> int:
        # what the scheduler counts for this key (dask's sizeof falls back to
        # sys.getsizeof): the sampler's arrays
        return _array_bytes(vars(self.sampler)) + self.classes.nbytes


def _array_bytes(value: Any) -> int:
    """Bytes of the numpy arrays in ``value`` (a dict, list or tuple of them, nested)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(_array_bytes(v) for v in value)
    return 0


def _spread(plan_key: Any, budget: int) -> None:
    """Copy the plan to every worker of the active cluster when it is no bigger than
    ``budget`` bytes (one chunk's working array). Distributed runs a task only where its
    dependencies are, so a plan held by one worker would draw every chunk on that worker
    while the others idle; a large plan (a full covariance's factors at large D) stays put,
    its chunks moving to another worker only by work stealing."""
    from distributed import futures_of

    from .cluster import active_client

    client = active_client()
    futures = futures_of(plan_key) if client is not None else []
    if not futures or len(client.scheduler_info()["workers"]) < 2:
        return
    if sum(client.nbytes([f.key for f in futures], summary=False).values()) <= budget:
        client.replicate(futures)


def generate_chunk(plan: _Plan, seed: int, index: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw output chunk ``index`` (``rows`` samples): images in the output dtype and labels.

    A logit model draws in logit space and maps back through the sigmoid to x~ in
    [0, 1]: floats are x~, 8-bit pixels floor(256 x~) (L levels: floor(L x~)); no
    clipping of Gaussian tails is needed.
    """
    rng = chunk_rng(seed, index)
    idx = plan.sampler.draw_classes(rows, rng, plan.class_index)
    with one_blas_thread():  # the same bits whatever the worker's thread count
        X = plan.sampler.draw(idx, rng)
    if not plan.transform.identity:
        X = plan.transform.inverse(X)
        X = unit_to_pixels(X, pixel_levels(plan.scale)) if plan.dtype == "uint8" else X.astype(plan.dtype, copy=False)
    elif plan.dtype == "uint8":
        X /= plan.scale
        np.clip(X, plan.clip[0], plan.clip[1], out=X)
        X = np.rint(X).astype(np.uint8)
    else:
        X = X.astype(plan.dtype, copy=False)
    return X.reshape((rows,) + plan.shape), as_labels(plan.classes[idx], widen=True)


def _write_chunk(url: str, storage_options: dict | None, index: int, start: int, data) -> int:
    X, y = data
    group = open_zarr_group(url, storage_options, mode="r+")
    # Every chunk is written: zarr's default would first compare each generated chunk
    # with the fill value to skip empty ones (~10 ms per 31 MB chunk, never true here).
    # Set per array: zarr.config is process-wide and other tasks run beside this one.
    group["images"].with_config({"write_empty_chunks": True})[start : start + len(y)] = X
    group["labels"].with_config({"write_empty_chunks": True})[start : start + len(y)] = y
    group["done"][index] = 1  # only after the data is written
    return index


def _remove_partials(url: str, storage_options: dict | None) -> int:
    """Delete ``*.partial`` files a killed local writer left behind."""
    fs, path = url_to_fs(url, storage_options)
    if not is_local(fs):
        return 0
    removed = 0
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial"):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def _create_store(url, storage_options, identity, n, shape, chunk_size, dtype, label_values, scale):
    from zarr.codecs import ZstdCodec

    group = open_zarr_group(url, storage_options, mode="w")
    dims = ("sample", "y", "x") if len(shape) == 2 else ("sample", "feature")
    group.create_array(
        "images", shape=(n,) + shape, dtype=dtype, chunks=(chunk_size,) + shape,
        compressors=ZstdCodec(level=1), dimension_names=dims, fill_value=0,
    )
    labels = as_labels(label_values, widen=True)
    group.create_array(
        "labels", shape=(n,), dtype=labels.dtype if labels.dtype.kind != "U" else str,
        chunks=(chunk_size,), compressors=ZstdCodec(level=1), dimension_names=("sample",),
    )
    n_chunks = -(-n // chunk_size)
    group.create_array("done", shape=(n_chunks,), dtype="uint8", chunks=(1,), fill_value=0, dimension_names=("chunk",))
    group.attrs["daskgen"] = {
        "kind": "samples", **identity, "version": __version__, "complete": False,
        # pixel units -> model units, so `daskgen fit` reads a uint8 store on the model's scale
        "scale": scale if dtype == "uint8" else 1.0,
    }
    return group


def existing_identity(url, storage_options) -> dict | None:
    try:
        meta = dict(open_zarr_group(url, storage_options).attrs).get("daskgen")
    except Exception:
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == "samples" else None


def generate(
    model: ClassModel,
    n: int,
    out: str,
    *,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: str = "float32",
    label: Any = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = False,
) -> GenerateResult:
    """Generate ``n`` samples of ``model`` into the Zarr samples store ``out``.

    Classes come from the model's prior p(y) (or are all ``label``). ``images`` has
    shape (n, H, W) (or (n, D)) in ``dtype``: ``float32``/``float64`` in model units,
    ``uint8`` clipped to the training data's range and rounded to pixel units (a logit
    model: x~ in [0, 1], and ``uint8`` floor(256 x~), see :func:`generate_chunk`);
    ``labels`` (n,) holds class values. With ``seed=None`` a new seed is drawn and
    recorded, except when resuming a store, whose seed is reused.

    Runs on the active ``distributed.Client`` if there is one, else on Dask's local
    scheduler. Re-running resumes: only chunks not yet marked done are written.
    """
    from ..options import SAMPLE
    from .cluster import compute

    SAMPLE.check(n=n, seed=seed, chunk_size=chunk_size, dtype=dtype)
    n, chunk_size = int(n), int(chunk_size)
    with user_input():
        class_index = None if label is None else model.class_index(label)
    fs, path = url_to_fs(out, storage_options)
    existing = existing_identity(out, storage_options) if fs.exists(path) else None
    if seed is None:
        seed = int(existing["seed"]) if existing else int(np.random.SeedSequence().entropy % 2**63)
    identity = {
        "model_fingerprint": model.fingerprint,
        "seed": int(seed),
        "n": n,
        "dtype": dtype,
        "chunk_size": chunk_size,
        "class": None if class_index is None else str(model.classes[class_index]),
        "draw": DRAW_VERSION,
    }
    resumed = False
    if fs.exists(path):
        if existing is not None and all(existing.get(k) == identity[k] for k in IDENTITY) and not overwrite:
            resumed = True
        elif not overwrite:
            if existing is None:
                raise OutputExistsError(f"{out} already exists and is not a daskgen samples store; pass --overwrite to replace it")
            diff = ", ".join(f"{k} {existing.get(k)!r} -> {identity[k]!r}" for k in IDENTITY if existing.get(k) != identity[k])
            raise OutputExistsError(f"{out} holds samples made with other settings ({diff}); pass --overwrite to replace them")
    shape = tuple(model.image_shape) if model.image_shape else (model.n_features,)
    n_chunks = -(-n // chunk_size)
    token = tokenize(identity, out)
    lo, hi = model.data_range
    clip = (
        max(0.0, lo / model.scale) if np.isfinite(lo) else 0.0,
        min(255.0, hi / model.scale) if np.isfinite(hi) else 255.0,
    )
    # The sampler is one key, its classes factored (or their stored factors read) one task
    # each on the workers; every chunk task depends on it. It is computed before anything
    # is written or removed (even for a finished store): a corrupted model fails here.
    plan_key = ready(delayed(_Plan, pure=True)(sampler_node(model, dtype, token), model.classes, class_index,
                                               dtype, float(model.scale), clip, shape, model.transform,
                                               dask_key_name=f"plan-{token}"), stage="factor")
    if fs.exists(path) and not resumed:
        fs.rm(path, recursive=True)
    if resumed:
        _remove_partials(out, storage_options)
        group = open_zarr_group(out, storage_options, mode="r+")
        done = np.asarray(group["done"][...], dtype=bool)
    else:
        group = _create_store(out, storage_options, identity, n, shape, chunk_size, dtype, model.classes, float(model.scale))
        done = np.zeros(n_chunks, dtype=bool)
    todo = np.flatnonzero(~done)
    if len(todo) > 1:
        _spread(plan_key, chunk_size * int(np.prod(shape)) * 8)
    if len(todo):
        writes = []
        for i in todo.tolist():
            start = i * chunk_size
            rows = min(chunk_size, n - start)
            data = delayed(generate_chunk, pure=True)(plan_key, seed, i, rows, dask_key_name=f"generate-{token}-{i}")
            writes.append(
                delayed(_write_chunk, pure=True)(out, storage_options or None, i, start, data, dask_key_name=f"write-{token}-{i}")
            )
        with warnings.catch_warnings():
            # the sampler is in the graph once, on purpose (see in_graph)
            warnings.filterwarnings("ignore", message="Sending large graph")
            compute(writes, stage="generate", progress=progress)
        # a worker killed mid-write leaves zarr's temporary file; its chunk was rewritten
        _remove_partials(out, storage_options)
        group = open_zarr_group(out, storage_options, mode="r+")
        done = np.asarray(group["done"][...], dtype=bool)
        if not done.all():  # pragma: no cover - a write task returned without marking
            raise RuntimeError(f"{out}: {int((~done).sum())} chunks were not written")
    meta = dict(group.attrs["daskgen"])
    if not meta.get("complete"):
        meta["complete"] = True
        group.attrs["daskgen"] = meta
        consolidate(group)
    return GenerateResult(out, n, int(seed), n_chunks, len(todo), resumed)

