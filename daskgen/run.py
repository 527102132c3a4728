"""The whole run of a job: data -> fit -> sample -> figures -> run report.

:func:`run_job` writes under the job's ``out``: ``data/NAME.zarr`` (for ``dataset``),
``model.zarr``, ``samples.zarr``, ``figures/*.png`` and ``run-report.json``. A rerun
skips a fit whose stored model was made from the same input files (path, size,
modification time) with the same options, resumes sampling (see
:func:`daskgen.generate`) and redraws the figures. A model whose inputs
changed is refitted and replaced (it is derived from the job); the samples of the
old model are then refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from .errors import InputError, ModelError, OutputExistsError, one_line
from .io.fs import is_url as _is_url
from .io.fs import join as _join
from .io.store import output_exists
from .job import Job
from .options import MIXTURE_FIT

#: Samples shown in the figures of a run.
PLOT_SAMPLES = 40
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
    from .distributed.cluster import connect

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
    if not _is_url(job.out):
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
        report.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=one_line(exc))
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
    target = dataset_target(job)
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


def dataset_target(job: Job) -> str:
    """Where the job's named dataset is converted to: ``OUT/data/NAME[-SPLIT].zarr``."""
    name, split = job.dataset["name"], job.dataset["split"]
    return _join(job.out, "data", f"{name}.zarr" if split == "train" else f"{name}-{split}.zarr")


def plan_run(job: Job):
    """The memory plan of the job's fit and sample (:mod:`daskgen.planning`), from the
    inputs' headers; None when the job's dataset is not converted yet (its data stage
    runs first) or the kind has no plan."""
    from .fitting import prepare
    from .planning import plan_fit, sample_workload

    inputs = list(job.inputs)
    if job.dataset:
        target = dataset_target(job)
        if not _dataset_matches(target, job.dataset):
            return None
        inputs = [target]
    options = _fit_options(job)
    dataset = prepare(inputs, **{k: options[k] for k in ("label_column", "blocksize", "image_shape", "scale", "fmt")})
    return plan_fit(dataset, covariance=options["covariance"], components=int(job.fit["components"]),
                    split_every=options["split_every"], transform=options["transform"].name, cluster=job.cluster,
                    then=sample_workload(job.sample["n"], job.sample["chunk_size"], job.sample["dtype"]),
                    rank=job.fit.get("rank"), tiles=options.get("tiles"), oversampling=options.get("oversampling"))


def _dataset_matches(target: str, cfg: dict[str, Any]) -> bool:
    """Whether ``target`` is a complete dataset store converted from what ``cfg`` names."""
    from .io.fs import open_zarr_group

    if not output_exists(target):
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
    """The keyword arguments of :func:`daskgen.fit` (and of the mixture's fit) the job asks for."""
    from .kernels.transform import make_transform
    from .options import to_bytes

    if job.fit["logit_lambda"] is not None and job.fit["transform"] != "logit":
        raise InputError(f"{job.origin}: fit.logit_lambda applies to fit.transform: logit")
    transform = make_transform(job.fit["transform"], job.fit["logit_lambda"])
    shape = job.image_shape
    return {
        "label_column": job.label_column,
        "blocksize": to_bytes(job.blocksize),
        "image_shape": tuple(shape) if isinstance(shape, list) else shape,
        "scale": job.scale,
        "fmt": job.format,
        "covariance": job.fit["covariance"],
        "reg_covar": job.fit["reg_covar"],
        "shrinkage": job.fit["shrinkage"],
        "split_every": int(job.fit["split_every"]),
        "transform": transform,
        **{k: job.fit[k] for k in LOW_RANK_OPTIONS},
        **({"tiles": int(job.fit["tiles"])} if job.fit.get("tiles") else {}),
    }


#: The ppca/fa options of a job's fit (one Gaussian per class of low rank).
LOW_RANK_OPTIONS = ("rank", "oversampling", "power_iterations")


def _mixture_options(job: Job) -> dict[str, Any]:
    """The EM options of the job (its mixture options but ``components``), as the model records them."""
    return {o.name: job.fit[o.name] for o in MIXTURE_FIT if o.job and o.name != "components"}


def _stale(model, options: dict[str, Any], inputs: list[str], incremental: bool, mixture: dict[str, Any] | None = None):
    """``(reason, dataset)``: why a stored ``model`` is not the fit the job asks for (reason
    None: it is up to date), and the inputs as opened to find out (a refit reuses them).

    Compares the input files as the reader sees them now (path, size, modification
    time, or a Zarr group's layout) and the options that change the model (``mixture``:
    ``components`` and the EM options of a mixture fit). The tree's fan-in and the
    block size do not: they change how, not what, is computed.
    """
    from .fitting import default_reg_covar
    from .io.inputs import open_inputs
    from .models.memory import DEFAULT_RANK

    dataset = open_inputs(
        inputs, label_column=options["label_column"], blocksize=options["blocksize"],
        image_shape=options["image_shape"], scale=options["scale"], fmt=options["fmt"],
    )
    if _canonical(model.inputs) != _canonical(dataset.files):
        known = {_canonical(f) for f in dataset.files}
        if incremental and all(_canonical(f) in known for f in model.inputs):
            return _NEW_INPUTS, dataset
        return "its inputs changed", dataset
    components = int((mixture or {}).get("components", 1))
    reg_covar = options["reg_covar"]
    if reg_covar in (None, "auto"):
        reg_covar = default_reg_covar(dataset, components, transform=options["transform"])
    want = {"components": components, "covariance": options["covariance"], "reg_covar": reg_covar,
            "shrinkage": options["shrinkage"] if components == 1 else "none", "transform": str(options["transform"]),
            "tiles": options.get("tiles")}
    have = {
        "components": int(model.config.get("components", 1)),
        "covariance": model.covariance_type,
        "reg_covar": float(model.config.get("reg_covar", 0.0)),
        "shrinkage": model.config.get("shrinkage", "none"),
        "transform": str(model.transform),
        "tiles": model.config.get("tiles"),
    }
    if options["covariance"] in ("ppca", "fa"):
        # a mixture of them is fitted by EM: of the sketch's options only the rank applies
        want.update({k: options[k] for k in (("rank",) if mixture else LOW_RANK_OPTIONS)})
        want["rank"] = want["rank"] or DEFAULT_RANK
        have.update({k: model.config.get(k) for k in want if k in LOW_RANK_OPTIONS})
    if mixture:
        want.update({k: v for k, v in mixture.items() if k != "components"})
        have.update({k: model.config.get(k) for k in mixture if k != "components"})
    have.update(label_column=model.label_column, scale=model.scale, image_shape=tuple(model.image_shape or ()))
    want.update(label_column=options["label_column"], scale=dataset.scale, image_shape=tuple(dataset.image_shape or ()))
    changed = [k for k in want if (not math.isclose(have[k], want[k], rel_tol=1e-12) if k == "scale" else have[k] != want[k])]
    if changed:
        return "options changed (" + ", ".join(f"{k} {have[k]!r} -> {want[k]!r}" for k in changed) + ")", dataset
    return None, dataset


#: What _stale says when the stored model's inputs are all unchanged and new ones appeared.
_NEW_INPUTS = "new inputs appeared"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _fit_stage(job: Job, inputs: list[str], overwrite: bool, quiet: bool, say) -> tuple[Any, dict[str, Any]]:
    from .distributed.factors import run_calls
    from .fitting import fit
    from .io.fs import remove_tree
    from .io.store import read_model, scratch_beside, write_model

    path = job.paths["model"]
    options = _fit_options(job)
    components = int(job.fit["components"])
    mixture = {"components": components, **_mixture_options(job)} if components > 1 else None
    if mixture and options["shrinkage"] != "none":
        raise InputError("fit.shrinkage applies to one Gaussian per class, not to fit.components > 1")
    t = time.perf_counter()
    reason = "--overwrite" if overwrite else None
    opened = None  # the inputs as _stale opened them, for the refit
    existed = output_exists(path)
    if existed and not overwrite:
        try:
            old = read_model(path)
        except ModelError as exc:
            reason = f"the stored model is unusable: {exc}"
        else:
            incremental = bool(job.fit.get("incremental", False)) and mixture is None
            reason, opened = _stale(old, options, inputs, incremental, mixture)
            if reason is None:
                took = time.perf_counter() - t
                say(f"daskgen: fit: skipped: up to date ({path})")
                return old, {"status": "skipped: up to date", "skipped": True, "seconds": took, "rows": 0, "rows_per_s": None}
            if reason != _NEW_INPUTS:
                say(f"daskgen: fit: refitting: {reason}")
    incremental = reason == _NEW_INPUTS
    if incremental:  # fold only the files the model has not seen (its manifest says which)
        model = fit(inputs, progress=not quiet, update=old, **options)
        say(f"daskgen: fit: folded {len(model.inputs) - len(old.inputs)} new input(s) into the model")
    elif mixture:
        model = _fit_mixture(opened if opened is not None else inputs, options, mixture, quiet, say)
    else:  # a tiled fit's workers write the tiles beside the model (moved into it when saved)
        scratch = scratch_beside(path) if options.get("tiles") else None
        try:
            model = fit(opened if opened is not None else inputs, progress=not quiet, tile_store=scratch, **options)
        except BaseException:
            remove_tree(scratch)
            raise
    write_model(model, path, overwrite=True, run=functools.partial(run_calls, progress=not quiet))
    took = time.perf_counter() - t
    rows = int(model.counts.sum()) - (int(old.counts.sum()) if incremental else 0)
    rate = rows / took if took > 0 else None
    say(f"daskgen: fit: {model.n_classes} classes, {rows:,} rows read, D={model.n_features} in {took:.1f}s "
        f"({rows / took:,.0f} rows/s) -> {path}")
    status = "updated: new inputs folded in" if incremental else (f"refitted: {reason}" if existed else "done")
    return model, {"status": status, "skipped": False, "refitted": existed and not incremental, "seconds": took,
                   "rows": rows, "rows_per_s": rate, "updated_from": old.fingerprint if incremental else None}


def _fit_mixture(inputs, options: dict[str, Any], mixture: dict[str, Any], quiet: bool, say):
    """A mixture of ``mixture["components"]`` Gaussians per class, by EM, a line per iteration."""
    from .distributed.em import fit_mixture

    em = {k: v for k, v in mixture.items() if k != "components"}
    read = {k: v for k, v in options.items() if k != "shrinkage" and k not in LOW_RANK_OPTIONS}
    if options["covariance"] in ("ppca", "fa"):
        read["rank"] = options["rank"]

    def report(it: dict[str, Any]) -> None:
        change = f" ({it['change']:+.4g})" if math.isfinite(it["change"]) else ""  # none at iteration 1
        say(f"daskgen: fit: EM iteration {it['iteration']}: mean log-likelihood {it['log_likelihood']:,.4f}{change} "
            f"in {it['seconds']:.1f}s")

    return fit_mixture(inputs, mixture["components"], progress=not quiet, callback=report, **read, **em)


def _sample_stage(job: Job, model, fit_stage: dict[str, Any], overwrite: bool, quiet: bool, say):
    from .distributed.generation import generate

    path = job.paths["samples"]
    s = job.sample
    t = time.perf_counter()
    # An incremental fit exists to refresh a scheduled job's outputs: the samples of
    # the model it just replaced are this job's own derived data, so they are redrawn.
    redraw = fit_stage.get("updated_from") is not None and _samples_model(path) == fit_stage["updated_from"]
    if redraw:
        say("daskgen: sample: the model was updated with new inputs; redrawing the samples")
    try:
        result = generate(
            model, s["n"], path, seed=s["seed"], chunk_size=s["chunk_size"], dtype=s["dtype"],
            label=s["class"], overwrite=overwrite or redraw, progress=not quiet,
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
    from .distributed.generation import existing_identity

    return (existing_identity(path, None) or {}).get("model_fingerprint")


def _plot_stage(job: Job, model, seed: int, say) -> dict[str, Any]:
    from .plot import load_samples, plot_all

    if not job.plot:
        return {"status": "skipped: plot is false", "skipped": True, "seconds": 0.0, "files": {}}
    t = time.perf_counter()
    samples = load_samples(job.paths["samples"], n=PLOT_SAMPLES)
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
    from .distributed.cluster import dashboard_link

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
    if _is_url(path):  # one object, replaced whole by its PUT: no temporary name needed
        import fsspec

        with fsspec.open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
