"""The ``daskgen`` command line: parse options, call the Python API, map errors to exit codes.

Exit codes: 0 done; 2 bad input, options or an output that may not be replaced
(one line on stderr, no traceback); 1 any other failure.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from . import __version__
from .errors import DaskgenError, one_line
from .options import CLUSTER, EVALUATE, GAUSSIAN_FIT, MIXTURE_FIT, NDB, PLAN, READ, SAMPLE, Group, pairs, to_bytes


def cluster_options(func: Callable) -> Callable:
    """Options shared by every command that runs on a cluster."""
    return CLUSTER.click()(func)


def _cluster_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {o.argument: kw.pop(o.argument) for o in CLUSTER}


def _group_values(group: Group, kw: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of ``group``'s options among a command's arguments (removed from ``kw``)."""
    return {o.name: kw.pop(o.argument) for o in group if o.cli and o.name not in exclude and o.argument in kw}


def handle_errors(func: Callable) -> Callable:
    """Turn daskgen's user errors into one line on stderr and their exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DaskgenError as exc:
            click.echo(f"daskgen: error: {one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("daskgen: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            message = _cluster_failure(exc)
            if message is None:
                raise
            click.echo(f"daskgen: error: {message}", err=True)
            sys.exit(1)

    return wrapper


#: What to change when a task of this kind keeps killing its workers (most likely memory).
_REMEDY = {
    "generate": "pass a smaller --chunk-size or give workers more memory",
    "write": "pass a smaller --chunk-size or give workers more memory",
    "read": "pass a smaller --blocksize or give workers more memory",
    "chunk-stats": "pass a smaller --blocksize, --covariance diag, or give workers more memory",
    "combine": "pass a smaller --split-every, --covariance diag, or give workers more memory",
    "ndb-count": "pass a smaller --blocksize or give workers more memory",
    "ndb-lloyd": "pass a smaller --blocksize or give workers more memory",
}


def _cluster_failure(exc: BaseException) -> str | None:
    """One line for the cluster failures a user can act on, else None: a task that every
    worker it ran on died running (distributed's KilledWorker), or the scheduler lost."""
    try:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    from dask.utils import key_split

    if isinstance(exc, KilledWorker):
        stage = key_split(exc.task)
        address = getattr(exc.last_worker, "address", exc.last_worker)
        return (f"a {stage} task ({exc.task!r}) killed {exc.allowed_failures + 1} workers in turn, the last {address} "
                f"(most likely out of memory; see the workers' logs); "
                f"{_REMEDY.get(stage, 'give workers more memory')} (--memory-limit)")
    if isinstance(exc, FutureCancelledError) and exc.reason == "scheduler-connection-lost":
        return (f"lost the connection to the Dask scheduler (during {key_split(exc.key)} tasks); start it again and "
                "rerun the same command: sampling resumes from the chunks already written")
    return None


def _check_output(url: str, storage_options: dict | None = None) -> None:
    """Refuse an output location that cannot be written, before any work starts."""
    from .io.store import check_writable

    check_writable(url, storage_options)


@contextlib.contextmanager
def _writing(url: str) -> Iterator[None]:
    """Report an OS error while writing output ``url`` on one line (exit 2)."""
    from .errors import OutputError

    try:
        yield
    except DaskgenError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {url}: {one_line(exc)}") from None


def _refuse_existing(out: str, names: list[str], overwrite: bool) -> None:
    """The --overwrite rule for a folder of result files: replace them only when asked."""
    from .errors import OutputExistsError
    from .io.store import output_exists

    found = [n for n in names if output_exists(f"{out.rstrip('/')}/{n}")]
    if found and not overwrite:
        raise OutputExistsError(f"{out} already holds {', '.join(found)}; pass --overwrite to replace them")


def _planned(plan, dry_run: bool, kw: dict[str, Any]) -> bool:
    """Apply a memory plan (:func:`daskgen.planning.enforce`): True when the command stops
    here (a dry run, its plan printed); a plan that does not fit is one line, exit 2 —
    or, with ``--ignore-plan`` (taken from the command's ``kw``), a warning on stderr."""
    from .planning import enforce

    ignore = bool(kw.pop("ignore_plan", False))
    return enforce(plan, dry_run, echo=click.echo, warn=(lambda text: click.echo(text, err=True)) if ignore else None)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="daskgen")
def main() -> None:
    """Learn per-class Gaussian distributions of image data on Dask and generate new data."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _UserErrorFilter) for f in worker_log.filters):
        worker_log.addFilter(_UserErrorFilter())


class _UserErrorFilter(logging.Filter):
    """Drop an in-process worker's "Compute Failed" report of a daskgen user error
    (bad input, say): the error reaches the command, which prints it as one line."""

    _NAMES = ("DaskgenError(", "InputError(", "ModelError(", "OutputExistsError(", "NotEightBitError(")

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        return not any(name in str(arg) for arg in record.args or () for name in self._NAMES)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "-o", help="Model store to write (a Zarr group). Default with --update: the updated model.")
@click.option("--update", "update_path", help="Fold INPUTS into this stored model's statistics.")
@READ.click(exclude=("storage_options",))
@GAUSSIAN_FIT.click()
@MIXTURE_FIT.click()
@READ.click(only=("storage_options",))
@click.option("--overwrite", is_flag=True, help="Replace an existing model at --out.")
@cluster_options
@PLAN.click()
@handle_errors
def fit(inputs, out, update_path, label_column, fmt, blocksize, image_shape, scale, covariance, reg_covar, shrinkage,
        rank, oversampling, power_iterations, split_every, components, max_iter, tol, init, seed, prior_rows, transform,
        logit_lambda, tiles, storage, overwrite, dry_run, **kw):
    """Fit one Gaussian per class to INPUTS (CSV, Parquet or Zarr; files, globs, directories, URLs).

    With --components K > 1, fit a mixture of K Gaussians per class by EM instead.
    """
    from .distributed.cluster import connect
    from .distributed.factors import run_calls
    from .errors import InputError, OutputExistsError
    from .fitting import fit as fit_model
    from .fitting import fit_transform, prepare
    from .io.fs import remove_tree
    from .io.store import output_exists, read_model, scratch_beside
    from .planning import plan_fit

    cluster = _cluster_kwargs(kw)
    so = pairs(storage)
    if not out and not update_path and not dry_run:
        raise InputError("--out is required (or --update MODEL to fold new data into MODEL)")
    out = out or update_path
    if components > 1 and update_path:
        raise InputError("--update folds data into one Gaussian per class; it does not apply to --components > 1")
    if components > 1 and shrinkage != "none":
        raise InputError("--shrinkage applies to one Gaussian per class, not to --components > 1")
    if components > 1 and tiles:
        raise InputError("--tiles applies to one Gaussian per class, not to --components > 1")
    if logit_lambda is not None and transform != "logit":
        raise InputError("--logit-lambda applies to --transform logit")
    transform = fit_transform(transform, logit_lambda)  # checked before anything is read
    replacing_update = update_path is not None and out == update_path
    if out and output_exists(out, so) and not (overwrite or replacing_update):
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out and not dry_run:
        _check_output(out, so)
    previous = read_model(update_path, so) if update_path else None
    if previous is not None and previous.covariance_type in ("ppca", "fa"):
        raise InputError(f"{update_path} is a {previous.covariance_type} model: it keeps sketches' results, not the "
                         "scatter new data could be folded into; fit it again on all the data")
    if getattr(previous, "tiles", None):
        raise InputError(f"{update_path} is a tiled model (--tiles): --update does not fold data into it; fit it "
                         "again on all the data")
    if previous is not None and not hasattr(previous, "stats"):
        raise InputError(f"{update_path} is a mixture model ({previous.n_components} components per class): --update "
                         "folds data into one Gaussian per class; fit the mixture again on all the data instead")
    start = time.perf_counter()
    # Inputs are checked (headers, metadata) before a cluster is started.
    dataset = prepare(list(inputs), label_column=label_column, blocksize=to_bytes(blocksize),
                      image_shape=image_shape, scale=scale, fmt=fmt, update=previous, storage_options=so)
    # ... and the memory plan, before anything is read or written.
    if _planned(plan_fit(dataset, covariance=covariance, components=components, split_every=split_every,
                         transform=transform.name, cluster=cluster, previous=previous, rank=rank, tiles=tiles,
                         oversampling=oversampling),
                dry_run, kw):
        return
    with connect(**cluster):
        if components > 1:
            from .distributed.em import fit_mixture

            def report(it: dict) -> None:
                change = f" ({it['change']:+.4g})" if math.isfinite(it["change"]) else ""  # none at iteration 1
                _say(cluster["quiet"], f"daskgen: EM iteration {it['iteration']}: mean log-likelihood "
                     f"{it['log_likelihood']:,.4f}{change} in {it['seconds']:.1f}s")

            model = fit_mixture(dataset, components, covariance=covariance, reg_covar=reg_covar, max_iter=max_iter,
                                tol=tol, init=init, seed=seed, prior_rows=prior_rows, split_every=split_every,
                                callback=report, transform=transform, rank=rank)
        else:
            scratch = scratch_beside(out, so) if tiles else None
            try:
                model = fit_model(dataset, covariance=covariance, reg_covar=reg_covar, shrinkage=shrinkage,
                                  split_every=split_every, update=previous, progress=not cluster["quiet"],
                                  rank=rank, oversampling=oversampling, power_iterations=power_iterations,
                                  transform=previous.transform if previous is not None and transform.identity
                                  else transform,
                                  seed=previous.config.get("seed", seed) if previous is not None else seed,
                                  tiles=tiles, tile_store=scratch)
            except BaseException:
                remove_tree(scratch, so)
                raise
        try:
            with _writing(out):  # on the cluster: the store's Cholesky factors are one task per class
                model.save(out, overwrite=True if replacing_update else overwrite, storage_options=so,
                           run=functools.partial(run_calls, progress=not cluster["quiet"]))
        finally:
            remove_tree(getattr(model, "scratch_url", None), so)
    took = time.perf_counter() - start
    rows = int(model.counts.sum())
    if not dataset.blocks:
        _say(cluster["quiet"], f"daskgen: nothing new to read: every input was already folded into {update_path}; "
             f"{model.n_classes} classes, {rows:,} rows in {took:.1f}s -> {out}")
        return
    what = f"{model.n_classes} classes"
    if components > 1:
        em = model.config["em"]
        what += (f" x {components} components ({em['n_iter']} EM iterations, "
                 f"{'converged' if em['converged'] else 'not converged'}; input "
                 f"{'persisted' if em['persist']['persisted'] else 'not persisted: ' + em['persist']['reason']})")
    _say(cluster["quiet"], f"daskgen: fitted {what}, {rows:,} rows, D={model.n_features} "
         f"in {took:.1f}s ({rows / took:,.0f} rows/s) -> {out}")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "-o", help="Folder for evaluation.json and confusion-matrix.png (default: the table only).")
@READ.click(only=("label_column", "format", "blocksize"), defaults={"label_column": None},
            shown={"label_column": "the model's"})
@EVALUATE.click()
@READ.click(only=("storage_options",))
@click.option("--overwrite", is_flag=True, help="Replace evaluation.json and confusion-matrix.png in --out.")
@cluster_options
@PLAN.click()
@handle_errors
def evaluate(model_path, inputs, out, label_column, fmt, blocksize, dequantize, seed, split_every, storage, overwrite,
             dry_run, **kw):
    """Score MODEL on labelled held-out INPUT: log-likelihood (nats/image, bits/dim) and the Bayes classifier.

    Integer pixels are dequantized as RealNVP/Glow/MAF do, x~ = (x + u)/256 with u in
    [0, 1), and bits/dim = -log2 p(x~)/D + 8, for pixel-space and logit-space models
    alike. Prints a table; with --out, writes evaluation.json and confusion-matrix.png.
    """
    from .distributed.cluster import connect
    from .evaluation.heldout import FILES, format_table, open_for_model, write_outputs
    from .evaluation.heldout import evaluate as evaluate_model
    from .io.store import read_model, read_model_header
    from .planning import evaluate_workload, plan_model

    cluster = _cluster_kwargs(kw)
    so = pairs(storage)
    if out:
        _refuse_existing(out, list(FILES.values()), overwrite)
        if not dry_run:
            _check_output(f"{out.rstrip('/')}/{FILES['json']}")
    header = read_model_header(model_path, so)
    start = time.perf_counter()
    # Inputs are checked against the model (features, scale) before a cluster is started,
    # and the memory plan before the model's arrays or the inputs' rows are read.
    dataset = open_for_model(header, list(inputs), label_column=label_column, blocksize=to_bytes(blocksize),
                             fmt=fmt, storage_options=so)
    if _planned(plan_model(header, evaluate_workload(dataset, split_every), cluster), dry_run, kw):
        return
    model = read_model(model_path, so)
    with connect(**cluster):
        rep = evaluate_model(model, dataset, dequantize=dequantize, seed=seed, split_every=split_every,
                             progress=not cluster["quiet"])
    rep["model"]["path"] = model_path
    click.echo(format_table(rep))
    if out:
        with _writing(out):
            paths = write_outputs(rep, out)
        _say(cluster["quiet"], f"daskgen: wrote {', '.join(p.rsplit('/', 1)[-1] for p in paths.values())} -> {out}")
    _say(cluster["quiet"], f"daskgen: evaluated {rep['input']['rows']:,} rows in {time.perf_counter() - start:.1f}s")


@main.command("evaluate-samples")
@click.argument("samples", metavar="SAMPLES")
@click.option("--reference", multiple=True, required=True, metavar="TEST", help="Held-out data the samples are compared with (repeatable).")
@click.option("--train", multiple=True, required=True, metavar="TRAIN", help="Training data the k-means bins are fitted on (repeatable).")
@NDB.click(exclude=("split_every",))
@click.option("--out", "-o", help="Folder for ndb.json and ndb-bins.png (default: the table only).")
@click.option("--overwrite", is_flag=True, help="Replace ndb.json and ndb-bins.png in --out.")
@READ.click(only=("label_column", "format", "blocksize", "scale"),
            help={"format": "Format of TEST and TRAIN.",
                  "scale": "Pixels of TEST and TRAIN times this are model units; auto: 1/255 for integer pixels, "
                           "1 for floats."})
@NDB.click(only=("split_every",))
@READ.click(only=("storage_options",))
@cluster_options
@handle_errors
def evaluate_samples(samples, reference, train, bins, alpha, seed, max_iter, out, overwrite, label_column, fmt, blocksize,
                     scale, split_every, storage, **kw):
    """NDB of generated SAMPLES (a samples store, or any input): the number of k-means bins of TRAIN
    where the share of SAMPLES differs from the share of TEST (two-proportion z-test at --alpha).

    Two samples of one distribution differ in about alpha * k bins by chance. Every set is
    compared in model units (see --scale; a samples store records its own). Prints a table;
    with --out, writes ndb.json and ndb-bins.png (the centres of the most over- and
    under-represented bins).
    """
    from .distributed.cluster import connect
    from .evaluation.ndb import check_outputs, format_table, ndb, open_sets, write_outputs

    cluster = _cluster_kwargs(kw)
    so = pairs(storage)
    if out:
        check_outputs(out, overwrite, so)
        _check_output(f"{out.rstrip('/')}/ndb.json", so)
    start = time.perf_counter()
    # Inputs are checked (features, a complete samples store) before a cluster is started.
    sets = open_sets(samples, list(reference), list(train), label_column=label_column,
                     blocksize=to_bytes(blocksize), fmt=fmt, scale=scale, storage_options=so)
    with connect(**cluster):
        result = ndb(sets["samples"], sets["reference"], sets["train"], bins=bins, alpha=alpha, seed=seed,
                     max_iter=max_iter, split_every=split_every, progress=not cluster["quiet"])
    click.echo(format_table(result))
    if out:
        with _writing(out):
            paths = write_outputs(result, out, overwrite=overwrite, storage_options=so)
        _say(cluster["quiet"], f"daskgen: wrote {', '.join(p.rsplit('/', 1)[-1] for p in paths.values())} -> {out}")
    _say(cluster["quiet"], f"daskgen: NDB of {result.sets['samples']['rows']:,} samples in {time.perf_counter() - start:.1f}s")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--out", "-o", required=True, help="Samples store to write (a Zarr group).")
@SAMPLE.click(required=("n",))
@READ.click(only=("storage_options",))
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with other settings.")
@cluster_options
@PLAN.click()
@handle_errors
def sample(model_path, out, n, seed, chunk_size, dtype, label, storage, overwrite, dry_run, **kw):
    """Generate N samples of MODEL into a Zarr store; rerunning resumes an interrupted run."""
    from .distributed.cluster import connect
    from .distributed.generation import generate
    from .io.store import read_model, read_model_header
    from .planning import plan_model, sample_workload

    cluster = _cluster_kwargs(kw)
    so = pairs(storage)
    if not dry_run:
        _check_output(out, so)
    header = read_model_header(model_path, so)
    if _planned(plan_model(header, sample_workload(n, chunk_size, dtype), cluster), dry_run, kw):
        return
    model = read_model(model_path, so)
    start = time.perf_counter()
    with connect(**cluster), _writing(out):
        result = generate(model, n, out, seed=seed, chunk_size=chunk_size, dtype=dtype, label=label,
                          overwrite=overwrite, storage_options=so, progress=not cluster["quiet"])
    took = time.perf_counter() - start
    made = min(n, result.chunks_written * chunk_size)
    what = "resumed: " if result.resumed else ""
    _say(cluster["quiet"], f"daskgen: {what}wrote {result.chunks_written} of {result.n_chunks} chunks "
         f"({made:,} samples, seed {result.seed}) in {took:.1f}s ({made / took:,.0f} samples/s) -> {out}")


@main.command()
@click.argument("job_file", metavar="[JOB.yaml]", required=False)
@click.option("--out", "-o", help="Output folder (default: the job's 'out', else ./daskgen-run).")
@READ.click(overrides=True, exclude=("storage_options",))
@GAUSSIAN_FIT.click(overrides=True)
@MIXTURE_FIT.click(overrides=True, exclude=("seed",))  # --seed is the samples' (the job's fit.seed is EM's)
@SAMPLE.click(overrides=True, help={"seed": "Random seed of the samples."}, defaults={"seed": 0})
@click.option("--report", "report_html", metavar="FILE.html", help="Save distributed's performance report of the run.")
@click.option("--overwrite", is_flag=True, help="Redo every stage, replacing earlier outputs.")
@cluster_options
@PLAN.click()
@handle_errors
def run(job_file, out, report_html, overwrite, dry_run, **kw):
    """Fit, sample, draw the figures and write run-report.json, as a job file says.

    Without JOB.yaml: the tutorial's data/train.csv if the current folder has one,
    else the handwritten digits bundled with daskgen. Flags override the job file;
    --components K > 1 fits a mixture per class, as 'daskgen fit' does.
    A rerun skips a fit that is up to date and resumes sampling.
    """
    from .job import REPORT_FILE, load_job
    from .run import plan_run, run_job

    cluster = _cluster_kwargs(kw)
    quiet = cluster.pop("quiet")
    overrides = {
        "out": out,
        "report": report_html,
        **_group_values(READ, kw),
        "fit": {**_group_values(GAUSSIAN_FIT, kw), **_group_values(MIXTURE_FIT, kw, exclude=("seed",))},
        "sample": _group_values(SAMPLE, kw),
        "cluster": cluster,
    }
    job = load_job(job_file, overrides=overrides)
    if _planned(plan_run(job), dry_run, kw):
        return
    _check_output(f"{str(job.out).rstrip('/')}/{REPORT_FILE}")
    _say(quiet, f"daskgen: job {job.origin} -> {job.out}")
    with _writing(job.out):
        report = run_job(job, overwrite=overwrite, quiet=quiet, log=functools.partial(_say, quiet))
    _say(quiet, f"daskgen: done in {report['timings']['total']:.1f}s -> {job.out}")


@main.command()
@click.argument("name", metavar="NAME")
@click.option("--out", "-o", required=True, help="Zarr group or CSV file to write.")
@click.option("--format", "fmt", type=click.Choice(["zarr", "csv"]), help="Output layout (default: csv for a .csv --out, else zarr).")
@click.option("--source", help="fashion-mnist/mnist: folder of IDX files; idx: IMAGES,LABELS; csv: the CSV file.")
@click.option("--split", type=click.Choice(["train", "test", "t10k", "all"]), default="train", show_default=True,
              help="MNIST/Fashion-MNIST split (all: train then test).")
@click.option("--download", is_flag=True, help="Download MNIST/Fashion-MNIST (checksums verified) into --source or the cache.")
@READ.click(only=("label_column", "image_shape"),
            help={"label_column": "Label column of a CSV source and of a CSV output.",
                  "image_shape": "HxW for flat pixels."},
            shown={"image_shape": "square when the pixel count is"})
@click.option("--size", metavar="S|HxW", help="Resize every image to SxS (or HxW) by bilinear interpolation: "
              "wide stand-ins, e.g. --size 64 for 64x64 Fashion-MNIST.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Keep the first N images of the split.")
@click.option("--chunk-rows", type=click.IntRange(min=1), metavar="N",
              help="Samples per Zarr chunk [default: 10,000; fewer for wide images, chunks of at most 64 MiB].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
@handle_errors
def data(name, out, fmt, source, split, download, label_column, image_shape, size, limit, chunk_rows, overwrite, quiet):
    """Write dataset NAME (digits, fashion-mnist, mnist, idx, csv) in a layout 'daskgen fit' reads."""
    from .datasets import DIGITS_SCALE, convert

    fmt = fmt or ("csv" if out.lower().endswith(".csv") else "zarr")
    _check_output(out)
    start = time.perf_counter()
    with _writing(out):
        s = convert(
            name, out, fmt=fmt, source=source, split=split, overwrite=overwrite, chunk_rows=chunk_rows,
            size=size, limit=limit, download=download, label_column=label_column, image_shape=image_shape,
            progress=lambda text: _say(quiet, f"daskgen: {text}"),
        )
    shape = "x".join(map(str, s["image_shape"]))
    line = (f"daskgen: wrote {s['name']}: {s['n']:,} images of {shape} {s['dtype']}, {len(s['classes'])} classes "
            f"({min(s['counts']):,}..{max(s['counts']):,} per class) in {time.perf_counter() - start:.1f}s -> {s['path']}")
    if s.get("resized"):
        line += f" (bilinear upsampling from {'x'.join(map(str, s['resized']['from']))}: a stand-in for wide images)"
    if s["name"] == "digits":
        line += ("; pixels are 0..16: scale 1/16 is recorded in the store" if fmt == "zarr"
                 else f"; pixels are 0..16: fit with --scale {DIGITS_SCALE:g}")
    _say(quiet, line)


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--samples", "samples_path", metavar="SAMPLES", help="Samples store to show (default: fresh draws from MODEL).")
@click.option("--out", "-o", required=True, help="Folder for the PNG figures.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of draws from the model.")
@click.option("--overwrite", is_flag=True, help="Replace figures already in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
@handle_errors
def plot(model_path, samples_path, out, seed, overwrite, quiet):
    """Draw MODEL's figures: class means beside samples, a 10x4 sample grid, covariance spectra and priors."""
    from .io.store import read_model
    from .plot import FILES, MIXTURE_FILES, load_samples, plot_all

    _refuse_existing(out, [*FILES.values(), *MIXTURE_FILES.values()], overwrite)
    _check_output(f"{out.rstrip('/')}/{FILES['spectrum']}")
    model = read_model(model_path)
    samples = load_samples(samples_path, n=40) if samples_path else None
    start = time.perf_counter()
    with _writing(out):
        files = plot_all(model, out, samples=samples, seed=seed)
    names = ", ".join(os.path.basename(p) for p in files.values())
    _say(quiet, f"daskgen: wrote {names} in {time.perf_counter() - start:.1f}s -> {out}")


def console() -> None:
    """The ``daskgen`` console script: run a command, then leave at once.

    A finished run has closed its cluster and published its outputs; what is left
    is the interpreter's teardown of ~1,500 modules and their threads, 0.1-0.15 s
    of every short job. After flushing output and logs, the process exits without
    it. Errors with a traceback take the normal path. glibc is told to keep freed
    large buffers for reuse (see ``daskgen._malloc``).
    """
    from ._malloc import keep_freed_memory

    keep_freed_memory()
    try:
        main(standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away (daskgen ... | head)
            code = code or 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
