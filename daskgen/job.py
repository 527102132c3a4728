"""Job files: the YAML schema, defaults, validation and resolution of paths.

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
    fit: {covariance: full, reg_covar: auto, shrinkage: none, split_every: 8,
          transform: none, logit_lambda: null,
          components: 1, max_iter: 100, tol: 0.001, init: kmeans++, seed: 0,
          prior_rows: 0, init_sample: 10000, incremental: false}
                                    # reg_covar auto: scale²/12 for integer pixels, else 0;
                                    # 0.1 with transform logit (logit_lambda null: 1e-6);
                                    # components > 1: a mixture per class by EM (seed: EM's
                                    # and the logit transform's dequantization noise's)
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
value, a missing input). The keys of the read options and of the ``fit``, ``sample``
and ``cluster`` sections, with their defaults and checks, are defined in
:mod:`daskgen.options`.

What a run does with a job, and how it resumes, is :mod:`daskgen.run`'s part.
"""

from __future__ import annotations

import copy
import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .datasets import DATASETS
from .errors import InputError
from .io.fs import is_url as _is_url
from .io.fs import join as _join
from .options import (
    CLUSTER,
    GAUSSIAN_FIT,
    MIXTURE_FIT,
    READ,
    SAMPLE,
    Group,
    Option,
    OptionError,
    UnknownKeyError,
    type_name,
)
from .options import describe as _show
from .options import suggest as _suggest_close

__all__ = ["DEFAULTS", "Job", "default_job", "load_job"]

#: The options of the job file's sections, defined in :mod:`daskgen.options`; ``fit`` holds
#: both the Gaussian and the mixture options (``components`` > 1 fits a mixture).
INCREMENTAL = Option("incremental", "flag", False, "Fold new input files into the stored model (one Gaussian per "
                     "class) instead of refitting when only new files appeared.", cli=False)
SECTIONS: dict[str, Group] = {
    "fit": Group("fit", (*GAUSSIAN_FIT, *(o for o in MIXTURE_FIT if o.job), INCREMENTAL), section="fit"),
    "sample": SAMPLE.with_defaults(seed=0),
    "cluster": CLUSTER,
}
#: The top-level keys that are read options.
READ_KEYS = tuple(o.name for o in READ.job_options())
#: Values of every key a job file may leave out.
DEFAULTS: dict[str, Any] = {
    "out": "daskgen-run",
    **READ.defaults(job=True),
    **{name: group.defaults(job=True) for name, group in SECTIONS.items()},
    "plot": True,
    "report": None,
}
_SECTIONS = tuple(SECTIONS)
_TOP = ("inputs", "dataset", "out", *READ_KEYS, *_SECTIONS, "plot", "report")
_DATASET_KEYS = ("name", "source", "split", "download")
#: The tutorial's convention: a Kaggle digit-recognizer CSV in the working folder.
TUTORIAL_CSV = os.path.join("data", "train.csv")
#: The run report's file name in the output folder (versions, inputs, model, outputs, timings).
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
        return {"job_file": self.origin, **{k: copy.deepcopy(getattr(self, k)) for k in _TOP}}

    @property
    def paths(self) -> dict[str, str]:
        """Where the run writes its outputs."""
        return {
            "model": _join(self.out, "model.zarr"),
            "samples": _join(self.out, "samples.zarr"),
            "figures": _join(self.out, "figures"),
            "report": _join(self.out, REPORT_FILE),
        }


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
        raise InputError(f"{name}: a job file is a mapping of keys (inputs, out, fit, sample, ...), not a {type_name(raw)}")
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
            f"({', '.join(DATASETS[:3])}, ...)"
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
            if key in SECTIONS:
                out[key] = SECTIONS[key].check_section(value, key)
                if key == "cluster" and out[key].get("scheduler_file") is not None:
                    out[key]["scheduler_file"] = _resolve(out[key]["scheduler_file"], base)
            elif key in READ_KEYS:
                out[key] = READ[key].check(value)
            else:
                out[key] = _CHECKS[key](value, base)
        except _Bad as exc:
            text = str(exc)
            where, msg = text.split("\x00", 1) if "\x00" in text else (key, text)
            raise InputError(f"{origin}: {where}: {msg}") from None
        except (OptionError, UnknownKeyError) as exc:
            raise InputError(f"{origin}: {exc}") from None
    return out


def _suggest(key: str, known: tuple[str, ...], prefix: str = "") -> str:
    hint = _suggest_close(key, known, prefix)
    if "did you mean" in hint:
        return hint
    name = key.replace("-", "_")
    for section in ("sample", "cluster", "fit"):  # a section's key written at the top level
        if name in DEFAULTS[section]:
            return f" (did you mean '{section}.{name}'?)"
    return hint


class _Bad(Exception):
    """A value is wrong: the message is completed with the file and key."""


def _string(v: Any, base: str = "") -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"expected a non-empty string, got {_show(v)}")
    return v


def _boolean(v: Any, base: str = "") -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_show(v)}")
    return v




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
        return p.rstrip("/")  # object storage: what a cluster's pods share
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
        raise _Bad(f"expected a dataset name ({', '.join(DATASETS)}) or a mapping of {', '.join(_DATASET_KEYS)}; got {_show(v)}")
    for key in v:
        if key not in _DATASET_KEYS:
            raise UnknownKeyError(f"dataset.{key}", _suggest(str(key), _DATASET_KEYS, prefix="dataset."))
    if "name" not in v:
        raise _Bad(f"dataset\x00needs a name ({', '.join(DATASETS)})")
    raw_name = v["name"]
    name = str(raw_name).strip().lower().replace("_", "-") if isinstance(raw_name, str) else None
    name = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(name, name)
    if name not in DATASETS:
        raise _Bad(f"dataset.name\x00expected one of {', '.join(DATASETS)}, got {_show(raw_name)}")
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
    "plot": _boolean,
    "report": _local_file,
}
