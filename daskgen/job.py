"""Job files and the whole run: data -> fit -> sample -> figures -> run report.

A job file is YAML. Every key is optional except the input (``inputs`` or
``dataset``); command-line flags override it::

    inputs: data/train.csv          # file, glob, directory or URL, or a list of them
    # dataset: digits               # ... or a named dataset daskgen converts first:
    # dataset: {name: fashion-mnist, split: train, source: DIR, download: false}
    out: runs/kaggle                # output folder (default: ./daskgen-run)
    label_column: label
    format: csv                     # csv | parquet | zarr (default: from the names)
    blocksize: 32MiB                # bytes of input per read task
    image_shape: 28x28              # or [28, 28] (default: from Zarr, or square)
    scale: auto                     # auto | a number | a fraction such as 1/16
    fit: {covariance: full, reg_covar: 0.0, shrinkage: none, split_every: 8}
    sample: {n: 10000, seed: 0, chunk_size: 10000, dtype: float32, class: null}
    cluster: {scheduler: null, scheduler_file: null, workers: null,
              threads_per_worker: null, memory_limit: null}
    plot: true
    report: null                    # also save distributed's performance report (HTML)

Relative paths in a job file (``inputs``, ``out``, ``dataset.source``, ``report``,
``cluster.scheduler_file``) are relative to the job file's folder; paths given on the
command line are relative to the current folder. :func:`load_job` validates the
whole file before any work starts and raises :class:`~daskgen.errors.InputError`
with one line naming the file and the key at fault (an unknown key, a wrong type or
value, a missing input).

:func:`run_job` writes under ``out``: ``data/NAME.zarr`` (for ``dataset``),
``model.zarr``, ``samples.zarr``, ``figures/*.png`` and ``run-report.json``. A rerun
skips a fit whose stored model was made from the same input files (path, size,
modification time) with the same options, resumes sampling (see
:func:`daskgen.generate.generate`) and redraws the figures. A model whose inputs
changed is refitted and replaced (it is derived from the job); the samples of the
old model are then refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import glob
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .errors import InputError, ModelError, OutputExistsError

__all__ = ["DEFAULTS", "Job", "default_job", "load_job", "run_job"]

#: Values of every key a job file may leave out.
DEFAULTS: dict[str, Any] = {
    "out": "daskgen-run",
    "label_column": "label",
    "format": None,
    "blocksize": "32MiB",
    "image_shape": None,
    "scale": "auto",
    "fit": {"covariance": "full", "reg_covar": 0.0, "shrinkage": "none", "split_every": 8},
    "sample": {"n": 10_000, "seed": 0, "chunk_size": 10_000, "dtype": "float32", "class": None},
    "cluster": {"scheduler": None, "scheduler_file": None, "workers": None, "threads_per_worker": None, "memory_limit": None},
    "plot": True,
    "report": None,
}
_SECTIONS = ("fit", "sample", "cluster")
_TOP = ("inputs", "dataset", "out", "label_column", "format", "blocksize", "image_shape", "scale", *_SECTIONS, "plot", "report")
_DATASET_KEYS = ("name", "source", "split", "download")
_DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "idx", "csv")
#: The tutorial's convention: a Kaggle digit-recognizer CSV in the working folder.
TUTORIAL_CSV = os.path.join("data", "train.csv")
#: Samples read back for the figures (the 10 x 4 grid).
_PLOT_SAMPLES = 40
REPORT_FILE = "run-report.json"


# ---------------------------------------------------------------------------- the job
@dataclass
class Job:
    """A validated job: absolute local paths, every option filled in."""

    origin: str  # the job file, or a description of the built-in default
    inputs: list[str]
    dataset: dict[str, Any] | None
    out: str
    label_column: str = "label"
    format: str | None = None
    blocksize: str | int = "32MiB"
    image_shape: str | list[int] | None = None
    scale: str | float = "auto"
    fit: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["fit"]))
    sample: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["sample"]))
    cluster: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["cluster"]))
    plot: bool = True
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        keys = ("inputs", "dataset", "out", "label_column", "format", "blocksize", "image_shape", "scale",
                "fit", "sample", "cluster", "plot", "report")
        return {"job_file": self.origin, **{k: copy.deepcopy(getattr(self, k)) for k in keys}}

    @property
    def paths(self) -> dict[str, str]:
        """Where the run writes its outputs."""
        return {
            "model": os.path.join(self.out, "model.zarr"),
            "samples": os.path.join(self.out, "samples.zarr"),
            "figures": os.path.join(self.out, "figures"),
            "report": os.path.join(self.out, REPORT_FILE),
        }


class _Bad(Exception):
    """A value is wrong: the message is completed with the file and key."""


def load_job(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None, cwd: str | None = None) -> Job:
    """Read and validate a job file (or, with ``path=None``, the default job) and apply ``overrides``.

    ``overrides`` has the job file's layout (``{"out": ..., "sample": {"n": ...}}``);
    None values are ignored; its relative paths are relative to ``cwd`` (default:
    the current folder). Raises :class:`InputError` naming the file and key at fault.
    """
    import yaml

    cwd = os.path.abspath(cwd or os.getcwd())
    if path is None:
        return default_job(cwd, overrides)
    name = os.fspath(path)
    full = os.path.join(cwd, os.path.expanduser(name))
    if not os.path.isfile(full):
        raise InputError(f"{name}: no such job file")
    try:
        with open(full, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{name}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: cannot read the job file: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{name}: a job file is a mapping of keys (inputs, out, fit, sample, ...), not a {_type(raw)}")
    return _build(raw, name, os.path.dirname(os.path.abspath(full)), overrides, cwd)


def default_job(cwd: str | None = None, overrides: Mapping[str, Any] | None = None) -> Job:
    """The job of ``daskgen run`` without a job file.

    ``data/train.csv`` in ``cwd`` (the tutorial's Kaggle CSV) if it exists, else the
    digits bundled with daskgen (converted into ``OUT/data/digits.zarr``).
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    if os.path.isfile(os.path.join(cwd, TUTORIAL_CSV)):
        raw: dict[str, Any] = {"inputs": TUTORIAL_CSV}
        origin = f"(default: {TUTORIAL_CSV} in {cwd})"
    else:
        raw = {"dataset": "digits"}
        origin = "(default: the bundled digits)"
    return _build(raw, origin, cwd, overrides, cwd)


def _build(raw: dict, origin: str, base: str, overrides: Mapping[str, Any] | None, cwd: str) -> Job:
    values = _check(raw, origin, base)
    if overrides:
        extra = _check(_drop_none(overrides), "command line", cwd)
        if extra.get("inputs") or extra.get("dataset"):
            values.pop("inputs", None)
            values.pop("dataset", None)
        for key, value in extra.items():
            if key in _SECTIONS:
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
    if values.get("inputs") and values.get("dataset"):
        raise InputError(f"{origin}: give either 'inputs' (files) or 'dataset' (a named dataset), not both")
    if not values.get("inputs") and not values.get("dataset"):
        raise InputError(
            f"{origin}: no input: add 'inputs' (CSV, Parquet or Zarr files) or 'dataset' "
            f"({', '.join(_DATASET_NAMES[:3])}, ...)"
        )
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for key, value in values.items():
        if key in _SECTIONS:
            merged[key].update(value)
        else:
            merged[key] = value
    if "out" not in values:
        merged["out"] = os.path.join(cwd, DEFAULTS["out"])
    return Job(
        origin=origin,
        inputs=list(merged.pop("inputs", None) or []),
        dataset=merged.pop("dataset", None),
        **merged,
    )


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


# ---------------------------------------------------------------------------- validation
def _check(raw: Mapping[str, Any], origin: str, base: str) -> dict[str, Any]:
    """Validate one layer of settings (a job file's, or the command line's) and resolve its paths."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key not in _TOP:
            raise InputError(f"{origin}: unknown key {key!r}{_suggest(key, _TOP)}")
        try:
            if key in _SECTIONS:
                out[key] = _check_section(key, value, base)
            else:
                out[key] = _CHECKS[key](value, base)
        except _Bad as exc:
            text = str(exc)
            where, msg = text.split("\x00", 1) if "\x00" in text else (key, text)
            raise InputError(f"{origin}: {where}: {msg}") from None
        except _Unknown as exc:
            raise InputError(f"{origin}: unknown key {exc.args[0]!r}{exc.args[1]}") from None
    return out


class _Unknown(Exception):
    pass


def _suggest(key: str, known: tuple[str, ...], prefix: str = "") -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    for section in _SECTIONS:  # a section's key written at the top level
        if key.replace("-", "_") in DEFAULTS[section]:
            return f" (did you mean '{section}.{key.replace('-', '_')}'?)"
    return f" (known keys: {', '.join(prefix + k for k in known)})"


def _check_section(section: str, value: Any, base: str) -> dict[str, Any]:
    known = tuple(DEFAULTS[section])
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"{section}\x00expected a mapping of {', '.join(known)}; got {_show(value)}")
    out = {}
    for key, v in value.items():
        key = str(key)
        if key not in known:
            raise _Unknown(f"{section}.{key}", _suggest(key, known, prefix=f"{section}."))
        try:
            out[key] = _SECTION_CHECKS[section][key](v, base)
        except _Bad as exc:
            raise _Bad(f"{section}.{key}\x00{exc}") from None
    return out


def _type(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    text = repr(v)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({_type(v)})"


def _string(v: Any, base: str = "") -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"expected a non-empty string, got {_show(v)}")
    return v


def _optional_string(v: Any, base: str = "") -> str | None:
    return None if v is None else _string(v)


def _boolean(v: Any, base: str = "") -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_show(v)}")
    return v


def _integer(lo: int, optional: bool = False) -> Callable[[Any, str], int | None]:
    def check(v: Any, base: str = "") -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {_show(v)}")
        if v < lo:
            raise _Bad(f"must be at least {lo}, got {v}")
        return v

    return check


def _number(v: Any) -> float:
    """A float from a number or a numeric string (YAML reads 1e-4 as a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Bad(f"expected a number, got {_show(v)}")
    try:
        x = float(Fraction(v.strip())) if isinstance(v, str) else float(v)
    except (ValueError, ZeroDivisionError):
        raise _Bad(f"expected a number, got {_show(v)}") from None
    if not math.isfinite(x):
        raise _Bad(f"expected a finite number, got {_show(v)}")
    return x


def _reg_covar(v: Any, base: str = "") -> float:
    x = _number(v)
    if x < 0:
        raise _Bad(f"must be >= 0, got {v}")
    return x


def _scale(v: Any, base: str = "") -> str | float:
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        x = _number(v)
    except _Bad:
        raise _Bad(f"expected 'auto' or a positive number such as 1/255, got {_show(v)}") from None
    if x <= 0:
        raise _Bad(f"must be positive, got {v}")
    return x


def _choice(*options: str, optional: bool = False) -> Callable[[Any, str], str | None]:
    def check(v: Any, base: str = "") -> str | None:
        if v is None and optional:
            return None
        if v not in options:
            raise _Bad(f"expected one of {', '.join(options)}, got {_show(v)}")
        return v

    return check


def _shrinkage(v: Any, base: str = "") -> str:
    return "none" if v is None else _choice("none", "oas")(v)


def _blocksize(v: Any, base: str = "") -> str | int:
    from dask.utils import parse_bytes

    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(f"expected a size such as 32MiB, got {_show(v)}")
    try:
        if int(parse_bytes(v)) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise _Bad(f"expected a positive size such as 32MiB, got {_show(v)}") from None
    return v


def _image_shape(v: Any, base: str = "") -> str | list[int] | None:
    if v is None:
        return None
    if isinstance(v, list) and 1 <= len(v) <= 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v):
        return v
    if isinstance(v, str):
        parts = v.lower().replace("×", "x").split("x")
        if 1 <= len(parts) <= 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
            return v
    raise _Bad(f"expected HxW such as 28x28 or [28, 28], got {_show(v)}")


def _label(v: Any, base: str = "") -> Any:
    if v is None or (isinstance(v, (int, float, str)) and not isinstance(v, bool)):
        return v
    raise _Bad(f"expected a class label (a number or a string), got {_show(v)}")


def _memory(v: Any, base: str = "") -> str | int | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, str) and v.strip():
        return v
    raise _Bad(f"expected a size such as 4GiB, got {_show(v)}")


def _is_url(p: str) -> bool:
    return "://" in p or p.startswith(("s3:", "gs:", "gcs:", "az:", "abfs:"))


def _resolve(p: str, base: str) -> str:
    """A local path made absolute against ``base``; URLs unchanged."""
    if _is_url(p):
        return p
    return os.path.normpath(os.path.join(base, os.path.expanduser(p)))


def _must_exist(p: str) -> None:
    if _is_url(p):
        return  # checked when read (a remote listing may need credentials or network)
    if any(ch in p for ch in "*?["):
        if not glob.glob(p):
            raise _Bad(f"{p}: no file matches this pattern")
    elif not os.path.exists(p):
        raise _Bad(f"{p}: no such file or directory")


def _inputs(v: Any, base: str) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise _Bad(f"expected a path or a non-empty list of paths, got {_show(v)}")
    paths = [_resolve(p, base) for p in items]
    for p in paths:
        _must_exist(p)
    return paths


def _out(v: Any, base: str) -> str:
    p = _string(v)
    if _is_url(p):
        raise _Bad(f"must be a local folder, got {p!r}")
    p = _resolve(p, base)
    if os.path.exists(p) and not os.path.isdir(p):
        raise _Bad(f"{p} exists and is not a folder")
    return p


def _local_file(v: Any, base: str) -> str | None:
    return None if v is None else _resolve(_string(v), base)


def _dataset(v: Any, base: str) -> dict[str, Any]:
    if isinstance(v, str):
        v = {"name": v}
    if not isinstance(v, dict):
        raise _Bad(f"expected a dataset name ({', '.join(_DATASET_NAMES)}) or a mapping of {', '.join(_DATASET_KEYS)}; got {_show(v)}")
    for key in v:
        if key not in _DATASET_KEYS:
            raise _Unknown(f"dataset.{key}", _suggest(str(key), _DATASET_KEYS, prefix="dataset."))
    if "name" not in v:
        raise _Bad(f"dataset\x00needs a name ({', '.join(_DATASET_NAMES)})")
    raw_name = v["name"]
    name = str(raw_name).strip().lower().replace("_", "-") if isinstance(raw_name, str) else None
    name = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(name, name)
    if name not in _DATASET_NAMES:
        raise _Bad(f"dataset.name\x00expected one of {', '.join(_DATASET_NAMES)}, got {_show(raw_name)}")
    split = v.get("split", "train")
    split = "test" if split == "t10k" else split
    if split not in ("train", "test", "all"):
        raise _Bad(f"dataset.split\x00expected one of train, test, all, got {_show(split)}")
    download = v.get("download", False)
    if not isinstance(download, bool):
        raise _Bad(f"dataset.download\x00expected true or false, got {_show(download)}")
    if download and name not in ("mnist", "fashion-mnist"):
        raise _Bad(f"dataset.download\x00only mnist and fashion-mnist can be downloaded, not {name}")
    source = v.get("source")
    if source is not None:
        parts = source.split(",") if isinstance(source, str) else source
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p.strip() for p in parts):
            raise _Bad(f"dataset.source\x00expected a path (or IMAGES,LABELS for idx), got {_show(source)}")
        parts = [_resolve(p.strip(), base) for p in parts]
        if not download:
            for p in parts:
                try:
                    _must_exist(p)
                except _Bad as exc:
                    raise _Bad(f"dataset.source\x00{exc}") from None
        source = ",".join(parts)
    if name in ("idx", "csv") and source is None:
        what = "IMAGES,LABELS (two IDX files)" if name == "idx" else "the CSV file"
        raise _Bad(f"dataset.source\x00{name} needs a source: {what}")
    return {"name": name, "source": source, "split": split, "download": download}


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "inputs": _inputs,
    "dataset": _dataset,
    "out": _out,
    "label_column": _string,
    "format": _choice("csv", "parquet", "zarr", optional=True),
    "blocksize": _blocksize,
    "image_shape": _image_shape,
    "scale": _scale,
    "plot": _boolean,
    "report": _local_file,
}
_SECTION_CHECKS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "fit": {
        "covariance": _choice("full", "diag"),
        "reg_covar": _reg_covar,
        "shrinkage": _shrinkage,
        "split_every": _integer(2),
    },
    "sample": {
        "n": _integer(1),
        "seed": _integer(0, optional=True),
        "chunk_size": _integer(1),
        "dtype": _choice("float32", "float64", "uint8"),
        "class": _label,
    },
    "cluster": {
        "scheduler": _optional_string,
        "scheduler_file": _local_file,
        "workers": _integer(1, optional=True),
        "threads_per_worker": _integer(1, optional=True),
        "memory_limit": _memory,
    },
}


# ---------------------------------------------------------------------------- running
def run_job(
    job: Job,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``job``: (convert the dataset,) fit, sample, draw, and write ``run-report.json``.

    Finished stages are not redone (see the module docstring); ``overwrite`` redoes
    everything. ``quiet`` turns off the cluster's progress bars and dashboard line;
    ``log`` receives one line per stage. Returns the report, also written to
    ``OUT/run-report.json`` — with ``status: failed`` and the error when a stage
    fails (the error is raised again).
    """
    from .cluster import connect

    say = log or (lambda text: None)
    t0 = time.perf_counter()
    paths = job.paths
    stages: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "daskgen_run_report": 1,
        "status": "running",
        "started": _now(),
        "versions": _versions(),
        "config": job.to_dict(),
        "stages": stages,
    }
    os.makedirs(job.out, exist_ok=True)
    try:
        inputs = list(job.inputs)
        if job.dataset:
            inputs, stages["data"] = _data_stage(job, overwrite, say)
        with connect(**job.cluster, quiet=quiet) as client:
            report["cluster"] = _cluster_info(client)
            with _performance_report(job.report):
                model, stages["fit"] = _fit_stage(job, inputs, overwrite, quiet, say)
                report.update(_model_info(model))
                result, stages["sample"] = _sample_stage(job, model, stages["fit"], overwrite, quiet, say)
                report["config"]["sample"]["seed"] = result.seed
        stages["plot"] = _plot_stage(job, model, result.seed, say)
    except BaseException as exc:
        report.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=_one_line(exc))
        report.update(_summary(job, stages, time.perf_counter() - t0))
        try:
            _write_json(paths["report"], report)
        except OSError:  # pragma: no cover - the error being raised matters more
            pass
        raise
    report["status"] = "done"
    report.update(_summary(job, stages, time.perf_counter() - t0))
    _write_json(paths["report"], report)
    say(f"daskgen: report -> {paths['report']}")
    return report


def _data_stage(job: Job, overwrite: bool, say: Callable[[str], None]) -> tuple[list[str], dict[str, Any]]:
    """Convert the job's named dataset into ``OUT/data/NAME.zarr`` unless that is already there."""
    from .datasets import convert

    cfg = job.dataset or {}
    name, split = cfg["name"], cfg["split"]
    target = os.path.join(job.out, "data", f"{name}.zarr" if split == "train" else f"{name}-{split}.zarr")
    t = time.perf_counter()
    if not overwrite and _dataset_matches(target, cfg):
        say(f"daskgen: data: {target} is up to date")
        return [target], {"status": "skipped: up to date", "skipped": True, "path": target, "seconds": time.perf_counter() - t}
    summary = convert(
        name, target, fmt="zarr", source=cfg.get("source"), split=split, overwrite=True,
        download=bool(cfg.get("download")), progress=lambda text: say(f"daskgen: data: {text}"),
        label_column=job.label_column,
    )
    took = time.perf_counter() - t
    say(f"daskgen: data: wrote {name} ({summary['n']:,} images, {len(summary['classes'])} classes, "
        f"scale {_fraction(summary['scale'])}) in {took:.1f}s -> {target}")
    return [target], {"status": "done", "skipped": False, "path": target, "n": summary["n"], "seconds": took}


def _dataset_matches(target: str, cfg: dict[str, Any]) -> bool:
    """Whether ``target`` is a complete dataset store converted from what ``cfg`` names."""
    from .io.readers import open_zarr_group

    if not os.path.isdir(target):
        return False
    try:
        group = open_zarr_group(target)
        meta = dict(group.attrs).get("daskgen") or {}
        names = set(group.array_keys())
    except Exception:
        return False
    if meta.get("kind") != "dataset" or meta.get("source") != cfg["name"] or meta.get("split") != cfg["split"]:
        return False
    if cfg.get("source") and cfg["name"] in ("idx", "csv") and meta.get("origin") != cfg["source"]:
        return False
    if cfg.get("source") and cfg["name"] in ("mnist", "fashion-mnist") and os.path.normpath(str(meta.get("origin"))) != cfg["source"]:
        return False
    return {"images", "labels"} <= names


def _fit_options(job: Job) -> dict[str, Any]:
    from dask.utils import parse_bytes

    shape = job.image_shape
    return {
        "label_column": job.label_column,
        "blocksize": int(parse_bytes(job.blocksize)),
        "image_shape": tuple(shape) if isinstance(shape, list) else shape,
        "scale": job.scale,
        "fmt": job.format,
        "covariance": job.fit["covariance"],
        "reg_covar": float(job.fit["reg_covar"]),
        "shrinkage": job.fit["shrinkage"],
        "split_every": int(job.fit["split_every"]),
    }


def _stale(model, options: dict[str, Any], inputs: list[str]) -> str | None:
    """Why a stored ``model`` is not the fit the job asks for (None: it is up to date).

    Compares the input files as the reader sees them now (path, size, modification
    time, or a Zarr group's layout) and the options that change the model. The tree's
    fan-in and the block size do not: they change how, not what, is computed.
    """
    from .io.readers import open_inputs

    dataset = open_inputs(
        inputs, label_column=options["label_column"], blocksize=options["blocksize"],
        image_shape=options["image_shape"], scale=options["scale"], fmt=options["fmt"],
    )
    if _canonical(model.inputs) != _canonical(dataset.files):
        return "its inputs changed"
    want = {"covariance": options["covariance"], "reg_covar": options["reg_covar"], "shrinkage": options["shrinkage"]}
    have = {
        "covariance": model.covariance_type,
        "reg_covar": float(model.config.get("reg_covar", 0.0)),
        "shrinkage": model.config.get("shrinkage", "none"),
    }
    have.update(label_column=model.label_column, scale=model.scale, image_shape=tuple(model.image_shape or ()))
    want.update(label_column=options["label_column"], scale=dataset.scale, image_shape=tuple(dataset.image_shape or ()))
    changed = [k for k in want if (not math.isclose(have[k], want[k], rel_tol=1e-12) if k == "scale" else have[k] != want[k])]
    if changed:
        return "options changed (" + ", ".join(f"{k} {have[k]!r} -> {want[k]!r}" for k in changed) + ")"
    return None


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _fit_stage(job: Job, inputs: list[str], overwrite: bool, quiet: bool, say) -> tuple[Any, dict[str, Any]]:
    from .fitting import fit
    from .io.store import output_exists, read_model, write_model

    path = job.paths["model"]
    options = _fit_options(job)
    t = time.perf_counter()
    reason = "--overwrite" if overwrite else None
    existed = output_exists(path)
    if existed and not overwrite:
        try:
            old = read_model(path)
        except ModelError as exc:
            reason = f"the stored model is unusable: {exc}"
        else:
            reason = _stale(old, options, inputs)
            if reason is None:
                took = time.perf_counter() - t
                say(f"daskgen: fit: skipped: up to date ({path})")
                return old, {"status": "skipped: up to date", "skipped": True, "seconds": took, "rows": 0, "rows_per_s": None}
            say(f"daskgen: fit: refitting: {reason}")
    model = fit(inputs, progress=not quiet, **options)
    write_model(model, path, overwrite=True)
    took = time.perf_counter() - t
    rows = int(model.counts.sum())
    rate = rows / took if took > 0 else None
    say(f"daskgen: fit: {model.n_classes} classes, {rows:,} rows, D={model.n_features} in {took:.1f}s "
        f"({rows / took:,.0f} rows/s) -> {path}")
    status = f"refitted: {reason}" if existed else "done"
    return model, {"status": status, "skipped": False, "refitted": existed, "seconds": took, "rows": rows, "rows_per_s": rate}


def _sample_stage(job: Job, model, fit_stage: dict[str, Any], overwrite: bool, quiet: bool, say):
    from .generate import generate

    path = job.paths["samples"]
    s = job.sample
    t = time.perf_counter()
    try:
        result = generate(
            model, s["n"], path, seed=s["seed"], chunk_size=s["chunk_size"], dtype=s["dtype"],
            label=s["class"], overwrite=overwrite, progress=not quiet,
        )
    except OutputExistsError as exc:
        if fit_stage.get("refitted"):
            raise OutputExistsError(
                f"{path} holds samples of the previous model, and the model was refitted "
                f"({fit_stage['status'].removeprefix('refitted: ')}); pass --overwrite to replace the samples"
            ) from None
        if _samples_model(path) not in (None, model.fingerprint):
            raise OutputExistsError(
                f"{path} holds samples of another model than {job.paths['model']}; "
                "pass --overwrite to replace the samples"
            ) from None
        raise OutputExistsError(f"{exc} (or run the job with the settings the samples were made with)") from None
    took = time.perf_counter() - t
    n_chunks, written = result.n_chunks, result.chunks_written
    made = s["n"] if written == n_chunks else min(s["n"], written * s["chunk_size"])
    if result.resumed and written == 0:
        status = "skipped: complete"
    elif result.resumed:
        status = "resumed"
    else:
        status = "done"
    rate = made / took if made and took > 0 else None
    what = "resumed: " if result.resumed else ""
    say(f"daskgen: sample: {what}wrote {written} of {n_chunks} chunks ({made:,} samples, seed {result.seed}) "
        f"in {took:.1f}s -> {path}")
    stage = {
        "status": status, "skipped": result.resumed and written == 0, "resumed": result.resumed,
        "seconds": took, "n": s["n"], "seed": result.seed, "chunks": n_chunks, "chunks_written": written,
        "samples_written": made, "samples_per_s": rate,
    }
    return result, stage


def _samples_model(path: str) -> str | None:
    """The model fingerprint a samples store records (None if it is not one)."""
    from .io.readers import open_zarr_group

    try:
        meta = dict(open_zarr_group(path).attrs).get("daskgen") or {}
    except Exception:
        return None
    return meta.get("model_fingerprint") if meta.get("kind") == "samples" else None


def _plot_stage(job: Job, model, seed: int, say) -> dict[str, Any]:
    from .plot import load_samples, plot_all

    if not job.plot:
        return {"status": "skipped: plot is false", "skipped": True, "seconds": 0.0, "files": {}}
    t = time.perf_counter()
    samples = load_samples(job.paths["samples"], n=_PLOT_SAMPLES)
    files = plot_all(model, job.paths["figures"], samples=samples, seed=seed)
    took = time.perf_counter() - t
    say(f"daskgen: plot: {len(files)} figures in {took:.1f}s -> {job.paths['figures']}")
    return {"status": "done", "skipped": False, "seconds": took, "files": files}


def _performance_report(filename: str | None):
    """``distributed.performance_report`` around the cluster work, when a file is asked for."""
    if not filename:
        return contextlib.nullcontext()
    from distributed import performance_report

    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    return performance_report(filename=filename)


def _cluster_info(client) -> dict[str, Any]:
    from .cluster import dashboard_link

    try:
        nthreads = client.nthreads()
    except Exception:  # pragma: no cover - a scheduler that went away
        nthreads = {}
    try:
        link = dashboard_link(client, local=client.cluster is not None)
    except Exception:  # pragma: no cover - no dashboard
        link = None
    return {
        "scheduler": getattr(client.scheduler, "address", None),
        "dashboard": link,
        "workers": len(nthreads),
        "threads": int(sum(nthreads.values())),
        "local": client.cluster is not None,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from ._version import __version__

    out = {"daskgen": __version__}
    for name in ("dask", "distributed", "zarr", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            out[name] = "unknown"
    out["python"] = platform.python_version()
    return out


def _fraction(x: float) -> str:
    f = Fraction(x).limit_denominator(1000)
    return f"1/{f.denominator}" if f.numerator == 1 and f.denominator > 1 and math.isclose(float(f), x) else f"{x:g}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _model_info(model) -> dict[str, Any]:
    """The report's account of the model: its input fingerprint, classes and counts."""
    classes = model.classes.tolist()
    counts = [int(c) for c in model.counts]
    return {
        "inputs": {"files": model.inputs, "sha256": hashlib.sha256(_canonical(model.inputs).encode()).hexdigest()},
        "model": {
            "fingerprint": model.fingerprint,
            "classes": classes,
            "counts": counts,
            "class_counts": {str(c): n for c, n in zip(classes, counts)},
            "rows": int(sum(counts)),
            "n_features": model.n_features,
            "image_shape": list(model.image_shape) if model.image_shape else None,
            "scale": model.scale,
            "covariance": model.covariance_type,
        },
    }


def _summary(job: Job, stages: dict[str, Any], total: float) -> dict[str, Any]:
    """Timings, throughput and outputs of the stages that ran."""

    def seconds(name: str) -> float | None:
        return stages[name]["seconds"] if name in stages else None

    outputs: dict[str, Any] = {}
    if "data" in stages:
        outputs["data"] = stages["data"]["path"]
    if "fit" in stages:
        outputs["model"] = job.paths["model"]
    if "sample" in stages:
        outputs["samples"] = job.paths["samples"]
    if "plot" in stages:
        outputs["figures"] = stages["plot"]["files"]
    if job.report and "fit" in stages:
        outputs["performance_report"] = job.report
    outputs["report"] = job.paths["report"]
    return {
        "finished": _now(),
        "timings": {
            "data": seconds("data"), "read+fit": seconds("fit"), "sample": seconds("sample"),
            "plot": seconds("plot"), "total": total,
        },
        "throughput": {
            "rows_per_s": stages.get("fit", {}).get("rows_per_s"),
            "samples_per_s": stages.get("sample", {}).get("samples_per_s"),
        },
        "outputs": outputs,
    }


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
