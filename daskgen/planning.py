"""The memory plan: whether a command fits the cluster's memory, known before any work.

From K classes, D features, the model kind and its options (a
:class:`~daskgen.models.memory.Workload`), the kind's
:meth:`~daskgen.models.base.ClassModel.memory_plan` gives the peak bytes of each stage
on one worker and on the client. :func:`make_plan` adds each process's baseline and
compares them with the memory there is (:class:`Resources`):

* a worker's ``memory_limit`` — given by ``--memory-limit`` (or distributed's "auto":
  the machine's memory shared by the workers), or read from the scheduler when
  ``--scheduler`` is given — of which :data:`USABLE` is usable: distributed pauses a
  worker at 80% of its limit (``distributed.worker.memory.pause``), and a paused
  worker runs no task;
* the client's: this machine's memory. A local cluster's worker processes share it
  with the client; the default local cluster runs its worker *in* the client's
  process, which then holds both.

:meth:`Plan.check` raises :class:`MemoryPlanError` (one line, exit code 2) saying how
much is needed, how much there is, and what would fit; :meth:`Plan.table` is what
``--dry-run`` prints. Nothing here reads data: K, D and the rows come from headers and
metadata (:func:`classes_of` reads a dataset's labels, never its images).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InputError
from .models import registry
from .models.memory import GIB, StageMemory, Workload

#: Bytes of a client process before any data: the interpreter, numpy, dask, distributed,
#: zarr and a local cluster's scheduler, and freed memory the console keeps for reuse
#: (``daskgen._malloc``): 0.09-0.24 GiB measured by benchmarks/memory.py.
CLIENT_BASELINE = 256 * 2**20
#: Bytes of a worker process of its own before any data (its imports, distributed's
#: buffers; ~0.15 GiB measured).
WORKER_BASELINE = 200 * 2**20
#: A worker's fraction of its memory limit a plan may use when dask's configuration
#: does not say (distributed pauses a worker at ``distributed.worker.memory.pause``).
USABLE = 0.8


class MemoryPlanError(InputError):
    """A command would not fit in memory: how much it needs, how much there is, what would fit."""


def gib(n: float) -> str:
    """Bytes as GiB for the plan (``"1.25 GiB"``; small amounts in MiB)."""
    if n < 0.1 * GIB:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class Resources:
    """The memory a command runs in.

    ``worker_memory``: each worker's memory limit in bytes (the smallest, on a
    scheduler), None when it has none; ``machine``: this machine's memory (the
    client's); ``in_process``: the worker runs in the client's process (the default
    local cluster); ``local``: the workers run on this machine; ``where``: in words.
    """

    workers: int
    threads: int
    worker_memory: int | None
    machine: int
    in_process: bool
    local: bool
    where: str
    usable: float = USABLE

    @property
    def worker_usable(self) -> int | None:
        """What a worker may use: ``usable`` of its limit (None: no limit)."""
        return None if self.worker_memory is None else int(self.usable * self.worker_memory)


def machine_memory() -> int:
    """This machine's memory in bytes (its cgroup's limit when lower), as distributed sees it."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def pause_fraction() -> float:
    """The fraction of its limit at which a worker pauses (dask's configuration, else :data:`USABLE`)."""
    import dask

    value = dask.config.get("distributed.worker.memory.pause", USABLE)
    return float(value) if value else float(dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def local_resources(workers: int | None = None, threads_per_worker: int | None = None,
                    memory_limit: str | int | None = None) -> Resources:
    """The local cluster :func:`daskgen.distributed.cluster.connect` would start, without starting it."""
    import logging

    from distributed.worker_memory import parse_memory_limit

    from .options import to_bytes

    cores = cpu_count()
    n = workers or 1
    threads = threads_per_worker or max(1, cores // n)
    limit = memory_limit if memory_limit not in (None, "auto") else "auto"
    limit = limit if limit == "auto" else to_bytes(limit)
    worker_memory = parse_memory_limit(limit, threads, total_cores=cores, logger=logging.getLogger("daskgen"))
    machine = machine_memory()
    in_process = workers is None
    where = ("a local worker in this process" if in_process else f"{n} local worker processes") + \
        f", {threads} thread{'s' if threads > 1 else ''} each" * (not in_process) + \
        (f", {threads} thread{'s' if threads > 1 else ''}" if in_process else "")
    return Resources(n, threads, int(worker_memory) if worker_memory else None, machine, in_process, True, where,
                     pause_fraction())


def scheduler_resources(scheduler: str | None, scheduler_file: str | None) -> Resources:
    """The workers of a running scheduler, as it reports them (the smallest memory limit)."""
    from distributed import Client

    with Client(address=scheduler, scheduler_file=scheduler_file, set_as_default=False) as client:
        workers = list(client.scheduler_info(n_workers=-1).get("workers", {}).values())
    if not workers:
        raise InputError(f"the scheduler {scheduler or scheduler_file} has no workers: nothing to plan on")
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    threads = max(int(w.get("nthreads") or 1) for w in workers)
    limit = min(limits) if all(limits) else None
    return Resources(len(workers), threads, limit, machine_memory(), False, False,
                     f"{len(workers)} worker{'s' if len(workers) > 1 else ''} of {scheduler or scheduler_file}",
                     pause_fraction())


def cluster_resources(scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None,
                      threads_per_worker: int | None = None, memory_limit: str | None = None,
                      **_: Any) -> Resources:
    """The memory of the cluster the cluster options describe (``daskgen``'s ``--scheduler``,
    ``--workers``, ...): a scheduler is asked (``DASK_SCHEDULER_ADDRESS`` too); a local
    cluster is known from the options without starting it."""
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if scheduler or scheduler_file:
        return scheduler_resources(scheduler, scheduler_file)
    return local_resources(workers, threads_per_worker, memory_limit)


# ---------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """The stages of one or more commands (``"fit/statistics"``, ...) and where they run."""

    kind: str
    covariance: str
    n_classes: int
    n_features: int
    resources: Resources
    stages: dict[str, StageMemory] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    #: what would fit instead (filled by :func:`make_plan` when it does not)
    alternatives: list[str] = field(default_factory=list)

    # -- peaks, baselines included ------------------------------------------
    def worker_peak(self, s: StageMemory) -> int:
        """The peak of a worker process in stage ``s`` (with the client when they share one)."""
        if self.resources.in_process:
            return s.total + CLIENT_BASELINE
        return s.worker + WORKER_BASELINE

    def client_peak(self, s: StageMemory) -> int:
        return s.total + CLIENT_BASELINE if self.resources.in_process else s.client + CLIENT_BASELINE

    def machine_peak(self, s: StageMemory) -> int:
        """This machine's share in stage ``s``: the client, and the workers when local."""
        if self.resources.in_process:
            return self.client_peak(s)
        local = self.resources.workers * (s.worker + WORKER_BASELINE) if self.resources.local else 0
        return s.client + CLIENT_BASELINE + local

    @property
    def worker_need(self) -> tuple[int, str]:
        """The largest worker peak and its stage."""
        return max(((self.worker_peak(s), name) for name, s in self.stages.items()), default=(0, ""))

    @property
    def machine_need(self) -> tuple[int, str]:
        return max(((self.machine_peak(s), name) for name, s in self.stages.items()), default=(0, ""))

    @property
    def fits(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """What does not fit, in words (None: everything fits)."""
        r = self.resources
        need, where = self.worker_need
        if r.worker_usable is not None and self.any_worker_stage() and need > r.worker_usable:
            who = "the process (worker and client)" if r.in_process else "per worker"
            return (f"needs ~{gib(need)} {who} ({where}: {self.stages[where].dominant}) but a worker has "
                    f"{gib(r.worker_usable)} usable ({r.usable:.0%} of its {gib(r.worker_memory)} limit)")
        need, where = self.machine_need
        if need > r.machine:
            return (f"needs ~{gib(need)} on this machine ({where}: {self.stages[where].dominant}) but it has "
                    f"{gib(r.machine)}")
        return None

    def any_worker_stage(self) -> bool:
        return any(s.worker for s in self.stages.values()) or self.resources.in_process

    def refusal(self) -> str:
        """The one line of a plan that does not fit."""
        what = " and ".join(self.commands)
        model = f"{self.kind} ({self.covariance}), K={self.n_classes:,}, D={self.n_features:,}"
        line = f"memory plan: {what} of a {model} {self.problem()}"
        if self.alternatives:
            line += "; would fit: " + ", ".join(self.alternatives)
        return line + " (--dry-run shows the plan)"

    def check(self) -> None:
        """Raise :class:`MemoryPlanError` (its one line) unless the plan fits."""
        if not self.fits:
            raise MemoryPlanError(self.refusal())

    def table(self) -> str:
        """The plan as ``--dry-run`` prints it: a header line, one row per stage, the verdict."""
        r = self.resources
        limit = "no memory limit" if r.worker_memory is None else \
            f"memory limit {gib(r.worker_memory)} per worker ({gib(r.worker_usable)} usable)"
        head = (f"memory plan: {' and '.join(self.commands)} of a {self.kind} ({self.covariance}) model, "
                f"K={self.n_classes:,} classes, D={self.n_features:,} features; {r.where}; {limit}; "
                f"this machine {gib(r.machine)}")
        rows = [("stage", "per worker", "client", "total", "what dominates")]
        for name, s in self.stages.items():
            total = self.client_peak(s) if r.in_process else s.client + CLIENT_BASELINE + r.workers * (
                s.worker + WORKER_BASELINE)
            worker = "(in client)" if r.in_process else gib(s.worker + WORKER_BASELINE)
            rows.append((name, worker, gib(self.client_peak(s)), gib(total), s.dominant))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [head] + ["  " + "  ".join([row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in (1, 2, 3)]
                                           + [row[4]]) for row in rows]
        lines.append("  baselines included: client "
                     f"{gib(CLIENT_BASELINE)}" + ("" if r.in_process else f", worker {gib(WORKER_BASELINE)}"))
        problem = self.problem()
        if problem is None:
            need, where = self.worker_need if r.in_process else self.machine_need
            lines.append(f"fits: peak ~{gib(need)} ({where})")
        else:
            lines.append(self.refusal())
        return "\n".join(lines)


def stage_plan(kind: str, n_classes: int, n_features: int, workload: Workload) -> dict[str, StageMemory] | None:
    """The kind's stages of ``workload.command``, named ``command/stage`` (None: the kind has no plan)."""
    stages = registry.get(kind).memory_plan(n_classes, n_features, workload)
    if stages is None:
        return None
    return {f"{workload.command}/{name}": s for name, s in stages.items()}


def make_plan(kind: str, n_classes: int, n_features: int, workloads: list[Workload],
              resources: Resources) -> Plan | None:
    """The plan of ``workloads`` (one per command: ``fit`` then ``sample`` for a run) of a
    ``kind`` model on ``resources``; with alternatives when it does not fit. None when
    the kind has no memory plan."""
    workloads = [replace(w, threads=resources.threads, workers=resources.workers, in_process=resources.in_process)
                 for w in workloads]
    plan = Plan(kind, workloads[0].covariance, int(n_classes), int(n_features), resources,
                commands=[w.command for w in workloads])
    for w in workloads:
        stages = stage_plan(kind, n_classes, n_features, w)
        if stages is None:
            return None
        plan.stages.update(stages)
    if not plan.fits:
        plan.alternatives = alternatives(plan, workloads)
    return plan


def alternatives(plan: Plan, workloads: list[Workload]) -> list[str]:
    """What would fit instead: diagonal covariances (when they do), low-rank kinds,
    tiles, or more memory per worker (how much)."""
    out = []
    sampling = [w for w in workloads if w.command == "sample"]
    if sampling and sampling[0].chunk_size > 1:  # smaller chunks of samples: the first size that fits
        size = sampling[0].chunk_size
        while size > 1:
            size //= 2
            smaller = make_plan(plan.kind, plan.n_classes, plan.n_features,
                                [replace(w, chunk_size=size) if w.command == "sample" else w for w in workloads],
                                plan.resources)
            if smaller is not None and smaller.fits:
                out.append(f"--chunk-size {size} (~{gib(smaller.worker_need[0])})")
                break
    refit = any(w.command == "fit" for w in workloads)  # a fitted model's kind is what it is
    full = refit and plan.covariance == "full"
    if full:
        diag = make_plan(plan.kind, plan.n_classes, plan.n_features,
                         [replace(w, covariance="diag") for w in workloads], plan.resources)
        if diag is not None and diag.fits:
            out.append(f"--covariance diag (~{gib(diag.worker_need[0])})")
        out.append(low_rank_alternative(plan, workloads))
        if plan.kind == "gaussian" and not workloads[0].tiles:
            out.append("--tiles T (statistics in tiles across workers)")
    r = plan.resources
    need = plan.worker_need[0]
    if r.worker_memory is not None and plan.any_worker_stage() and need > (r.worker_usable or 0):
        if need / r.usable <= r.machine or not r.local:
            out.append(f"workers of at least {gib(need / r.usable)} (--memory-limit)")
        else:
            out.append(f"workers of at least {gib(need / r.usable)} (more than this machine has: a larger cluster)")
    elif plan.machine_need[0] > r.machine:
        out.append(f"a machine with at least {gib(plan.machine_need[0])}")
    return out


#: Ranks a refusal tries for the low-rank kinds, largest first.
RANKS = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def low_rank_alternative(plan: Plan, workloads: list[Workload]) -> str:
    """``--covariance ppca|fa --rank q`` with the largest rank of :data:`RANKS` whose
    ``fa`` plan (the larger of the two; ``mfa`` for several components) fits, and its
    peak (as ``--covariance diag``'s: per worker, or of the process); ``q`` when none does."""
    kind = fit_kind("fa", workloads[0].components)
    for q in RANKS:
        if q + 10 > plan.n_features:
            continue
        low = make_plan(kind, plan.n_classes, plan.n_features,
                        [replace(w, covariance="fa", rank=q) for w in workloads], plan.resources)
        if low is not None and low.fits:
            return f"--covariance ppca|fa --rank {q} (~{gib(low.worker_need[0])})"
    return "--covariance ppca|fa --rank q (low-rank kinds)"


# ---------------------------------------------------------------------------- the inputs' side
def block_rows(dataset: Any) -> int:
    """Rows of the largest block a task reads, from the blocks' descriptions (no data read)."""
    D = max(dataset.n_features, 1)
    rows = 0
    for b in dataset.blocks:
        if b.fmt in ("zarr", "array"):
            rows = max(rows, b.stop - b.start)
        elif b.fmt == "csv":
            rows = max(rows, (b.stop - b.start) // (2 * D) + 1)  # at least "0," per value
    return rows or max(1, int(dataset.blocksize) // (D * (1 if dataset.integer_pixels else 8)))


def total_rows(dataset: Any) -> int | None:
    """Rows of the input when the metadata says (Zarr, arrays), else None."""
    if dataset.blocks and all(b.fmt in ("zarr", "array") for b in dataset.blocks):
        return sum(b.stop - b.start for b in dataset.blocks)
    return None


def classes_of(dataset: Any) -> list[str] | int:
    """The dataset's class labels (as text) without reading its rows: the dataset's
    ``class_names`` when it records them, else its labels only (a Zarr ``labels``
    array, a Parquet or CSV label column)."""
    import numpy as np

    if dataset.class_names:
        return sorted(dataset.class_names)
    labels: set[str] = set()
    for f in dataset.files:
        labels.update(str(v) for v in np.unique(_labels_of(f["path"], dataset)).tolist())
    return sorted(labels)


def _labels_of(url: str, dataset: Any):
    import numpy as np

    from .io.fs import open_zarr_group, url_to_fs

    so = dataset.storage_options or None
    if dataset.fmt == "zarr":
        options = next(b.options for b in dataset.blocks if b.url == url)
        return np.asarray(open_zarr_group(url, so)[options.label_name][...])
    fs, path = url_to_fs(url, so)
    if dataset.fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=[dataset.label_column], filesystem=fs).column(0).to_numpy()
    import pyarrow.csv as pcsv

    with fs.open(path, "rb") as fh:
        table = pcsv.read_csv(fh, convert_options=pcsv.ConvertOptions(include_columns=[dataset.label_column]))
    return table.column(0).to_numpy(zero_copy_only=False)


def fit_workload(dataset: Any, *, covariance: str = "full", components: int = 1, split_every: int = 8,
                 transform: str = "none", extra: Mapping[str, Any] | None = None) -> Workload:
    """The fit's workload of an opened (not read) dataset."""
    return Workload("fit", covariance=covariance, components=int(components), rows=total_rows(dataset),
                    block_rows=block_rows(dataset), itemsize=1 if dataset.integer_pixels else 8,
                    exact=bool(dataset.integer_pixels) and transform == "none" and components == 1,
                    split_every=int(split_every), extra=dict(extra or {}))


def sample_workload(n: int, chunk_size: int, dtype: str) -> Workload:
    return Workload("sample", n=int(n), chunk_size=int(chunk_size), dtype=str(dtype))


def evaluate_workload(dataset: Any, split_every: int = 8) -> Workload:
    """The workload of scoring an opened (not read) held-out dataset."""
    return Workload("evaluate", rows=total_rows(dataset), block_rows=block_rows(dataset),
                    itemsize=1 if dataset.integer_pixels else 8, split_every=int(split_every))


def model_workload(header: Any, workload: Workload) -> Workload:
    """``workload`` with a stored model's covariance and components."""
    rank = (header.config or {}).get("rank")
    return replace(workload, covariance=header.covariance_type, components=int(header.n_components),
                   tiles=header.tiles, rank=int(rank) if rank else workload.rank)


def plan_model(header: Any, workload: Workload, cluster: Mapping[str, Any]) -> Plan | None:
    """The plan of ``sample`` or ``evaluate`` of the model a :class:`~daskgen.io.store.ModelHeader` describes."""
    return make_plan(header.kind, header.n_classes, header.n_features, [model_workload(header, workload)],
                     cluster_resources(**cluster))


def fit_kind(covariance: str, components: int) -> str:
    """The model kind a fit's options make: a kind registered under the ``covariance``
    name itself (a low-rank kind; with several components, a mixture of low-rank
    Gaussians, ``mfa``), else a mixture for several components, else one Gaussian per class."""
    if covariance not in ("full", "diag") and covariance in registry.kinds():
        return "mfa" if components > 1 else covariance
    return "mixture" if components > 1 else "gaussian"


def plan_fit(dataset: Any, *, covariance: str = "full", components: int = 1, split_every: int = 8,
             transform: str = "none", cluster: Mapping[str, Any], previous: Any = None,
             then: Workload | None = None, rank: int | None = None, tiles: int | None = None,
             oversampling: int | None = None) -> Plan | None:
    """The plan of fitting an opened (not read) dataset on the cluster the options describe
    (and of ``then``, e.g. the sample stage of a run). K counts the dataset's classes (and
    those of the ``previous`` model of an update); ``oversampling``: the low-rank sketch's
    columns beyond the rank (its default when None)."""
    labels = set(classes_of(dataset))
    if previous is not None:
        labels |= {str(c) for c in previous.classes.tolist()}
    kind = fit_kind(covariance, components)
    if previous is not None:
        kind, covariance = previous.kind, previous.covariance_type
    fit = replace(fit_workload(dataset, covariance=covariance, components=components, split_every=split_every,
                               transform=transform), rank=rank, tiles=tiles or None,
                extra={} if oversampling is None else {"oversampling": int(oversampling)})
    workloads = [fit] + ([replace(then, covariance=covariance, components=components, rank=rank,
                                  tiles=tiles or None)] if then else [])
    return make_plan(kind, max(len(labels), 1), dataset.n_features, workloads, cluster_resources(**cluster))


def enforce(plan: Plan | None, dry_run: bool, echo: Any = print, warn: Any = None) -> bool:
    """Apply a plan: with ``dry_run`` echo its table and return True (the command stops
    there); raise :class:`MemoryPlanError` when it does not fit (after the table on a
    dry run) — unless ``warn`` is given (``--ignore-plan``): then ``warn`` gets the
    refusal as a warning and the command goes on. A kind without a plan: dry runs say
    so, other runs go on unchecked."""
    if plan is None:
        if dry_run:
            echo("memory plan: none (the model kind has no memory plan, or the data is not converted yet); "
                 "nothing was run")
        return dry_run
    if dry_run:
        echo(plan.table())
    if warn is not None and not plan.fits:
        warn("daskgen: warning: " + plan.refusal() + "; going on (--ignore-plan)")
        return dry_run
    plan.check()
    return dry_run
