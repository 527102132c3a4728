"""What a model kind's memory plan is made of: the workload, a stage's peak, copies of a unit.

A kind answers :meth:`~daskgen.models.base.ClassModel.memory_plan` with the peak bytes
of each stage of a command, per process role: one worker process and the client
(:class:`StageMemory`). :mod:`daskgen.planning` compares them with the cluster's memory
before any work starts and prints them for ``--dry-run``.

Estimates are written as **copies of a unit**: for full covariances the unit is one
statistic, ``K * D**2 * 8`` bytes (every class's D x D float64 array), and a stage
holds a small number of such copies, plus the rows of the blocks its running tasks
hold. :func:`stage` builds a :class:`StageMemory` from those counts, so a stage
whose code stops making a full-size temporary is a one-number change in the kind's
table. Bytes exclude the interpreter and libraries (:mod:`daskgen.planning` adds a
measured baseline per process).

Pure arithmetic: no numpy arrays, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
#: Bytes of one float64.
F8 = 8
#: q of the low-rank kinds (ppca, fa, mfa) when ``--rank`` is not given: fits and plans alike.
DEFAULT_RANK = 16


@dataclass(frozen=True)
class Workload:
    """What a command will do, as far as memory goes: the ``options`` of a memory plan.

    ``command`` is ``"fit"``, ``"sample"`` or ``"evaluate"``. The kind's options:
    ``covariance`` (``"full"``, ``"diag"``, or a low-rank kind's name), ``components``
    (per class), ``rank`` (low-rank kinds: q), ``tiles`` (T, or None: untiled).
    The cluster: ``workers`` and ``threads`` per worker (tasks running at once in one
    worker). The data: ``rows`` (N of the input: training rows for ``fit``, held-out
    rows for ``evaluate``; None when unknown), ``block_rows`` (rows per read task),
    ``itemsize`` (bytes per stored value: 1 for uint8 pixels), ``exact`` (8-bit
    pixels take the exact integer path), ``split_every`` (fan-in of the reductions).
    ``sample``: ``n`` samples in chunks of ``chunk_size`` rows of ``dtype``.
    ``in_process``: the only worker runs in the client's process (nothing crosses a
    network, so nothing is received or sent as a second copy). ``extra``: anything
    else a kind needs (e.g. power iterations), by name.
    """

    command: str
    covariance: str = "full"
    components: int = 1
    rank: int | None = None
    tiles: int | None = None
    workers: int = 1
    threads: int = 1
    rows: int | None = None
    block_rows: int = 4096
    itemsize: int = 1
    exact: bool = True
    split_every: int = 8
    n: int = 10_000
    chunk_size: int = 10_000
    dtype: str = "float32"
    in_process: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageMemory:
    """The peak of one stage of a command: bytes in one worker process and in the client,
    beyond each process's baseline, and what dominates (words for the plan's table)."""

    worker: int
    client: int
    dominant: str
    #: of ``worker``, the bytes that copy what the client holds too (parameters shipped
    #: in the graph): a process that is both holds them once
    shared: int = 0

    @property
    def total(self) -> int:
        """Worker and client together: the peak of a process that is both (a local
        cluster whose worker runs in the client's process)."""
        return self.worker + self.client - self.shared


@dataclass(frozen=True)
class Copies:
    """How many copies of a unit one stage holds: ``worker`` in one worker process, plus
    ``per_task`` for each task running at once there (``Workload.threads``), and
    ``client`` on the client, plus ``classes`` arrays of one class's share of the unit
    there (temporaries made class by class: at most one per class); ``task_classes``
    class arrays per task running on a worker (a task that works on one class).
    ``shipped``: of the worker's copies, those of parameters the client holds too (a
    worker in the client's process shares them)."""

    worker: float = 0
    client: float = 0
    per_task: float = 0
    classes: float = 0
    shipped: float = 0
    task_classes: float = 0

    def on_worker(self, threads: int, n_classes: int = 1) -> float:
        """Copies in one worker running ``threads`` tasks at once (of ``n_classes`` class arrays)."""
        per_class = min(self.task_classes * threads, n_classes) / max(n_classes, 1)
        return self.worker + self.per_task * threads + per_class

    def on_client(self, n_classes: int) -> float:
        """Copies on the client: ``client`` and ``classes`` class arrays (of ``n_classes``)."""
        return self.client + min(self.classes, n_classes) / max(n_classes, 1)


def copies_text(n: float, unit_name: str) -> str:
    """``"3 x statistic"`` (whole numbers without decimals)."""
    if n == 0:
        return ""
    count = f"{n:g}" if float(n).is_integer() else f"{n:.1f}"
    return f"{count} x {unit_name}"


def stage(unit: int, unit_name: str, *, worker: float = 0, client: float = 0, worker_extra: int = 0,
          client_extra: int = 0, extra_name: str = "", shared: float = 0) -> StageMemory:
    """A stage holding ``worker`` copies of ``unit`` bytes (named ``unit_name``) in one
    worker and ``client`` copies on the client, plus ``worker_extra`` and
    ``client_extra`` bytes of something else (``extra_name``: blocks of rows, say);
    ``shared`` of the worker's copies are the client's parameters shipped to it."""
    w = int(worker * unit) + int(worker_extra)
    c = int(client * unit) + int(client_extra)
    parts = []
    big = max(worker, client)
    if big and big * unit >= max(worker_extra, client_extra):
        parts.append(copies_text(big, unit_name))
        if extra_name and max(worker_extra, client_extra) > 0.05 * (w + c):
            parts.append(extra_name)
    elif extra_name:
        parts.append(extra_name)
        if big:
            parts.append(copies_text(big, unit_name))
    return StageMemory(w, c, " + ".join(parts) or "small", int(shared * unit))


def merge_fan_in(options: Workload) -> int:
    """Parts a merge of the fixed tree holds: ``split_every``, or fewer when the input has
    fewer blocks (its rows known)."""
    if not options.rows:
        return int(options.split_every)
    return max(1, min(int(options.split_every), -(-int(options.rows) // max(int(options.block_rows), 1))))


def block_bytes(rows: int, n_features: int, itemsize: int, copies: float) -> int:
    """Bytes of ``rows`` rows held as read (``itemsize`` per value) plus ``copies``
    float64 copies of them (converted, centered, scored)."""
    return int(rows * n_features * (itemsize + copies * F8))


#: Stages whose tasks hold blocks of rows (on workers).
BLOCK_STAGES = ("statistics", "em", "draw", "score", "sketch", "range", "scatter", "moments")
#: float64 copies of a block's rows a running task makes (fit: 8-bit sums use float32
#: rows; the float path centers them; evaluate: deviations, projections and residuals;
#: sample: normals, the draw and its output, in float32 when that is the output).
BLOCK_COPIES = {"fit-exact": 0.75, "fit": 1.5, "evaluate": 4.0, "sample": 3.0, "sample-float32": 1.5}


def class_memory_plan(n_classes: int, n_features: int, options: Workload, table: dict[str, dict[str, Copies]],
                      unit_name: str = "statistic") -> dict[str, StageMemory]:
    """The memory plan of a per-class model whose unit is K * M * D**2 * 8 bytes (full
    covariances, M components per class) or K * M * D * 8 (diagonal), holding the copies
    of ``table`` per stage (e.g. ``daskgen.models.gaussian.GAUSSIAN_COPIES``) and, in the stages of
    :data:`BLOCK_STAGES`, a block of rows per running task."""
    K, D, M = int(n_classes), int(n_features), int(options.components)
    full = options.covariance != "diag"
    unit = K * M * (D * D if full else D) * F8
    formula = ("K·M·D²·8" if M > 1 else "K·D²·8") if full else "K·D·8"
    exact = options.exact and full
    return copies_plan(unit, f"{unit_name} ({formula} = {size_text(unit)})", K * M, D, options, table, exact)


def size_text(n: int) -> str:
    """``"0.08 GiB"``, or MiB below 0.01 GiB (a unit's size in its name)."""
    return f"{n / GIB:.2f} GiB" if n >= 0.01 * GIB else f"{n / 2**20:.1f} MiB"


def copies_plan(unit: int, name: str, n_arrays: int, n_features: int, options: Workload,
                table: dict[str, dict[str, Copies]], exact: bool = False,
                per_row: float | None = None) -> dict[str, StageMemory]:
    """The stages of ``table[options.command]``, each holding its copies of ``unit`` bytes
    (``name`` in words; ``n_arrays`` per-class arrays make up a unit) and, in the stages of
    :data:`BLOCK_STAGES`, a block of rows per running task (``exact``: the 8-bit path's
    float32 rows; ``per_row``: float64 copies of the rows a task makes, when not those
    of :data:`BLOCK_COPIES`)."""
    D, cmd = int(n_features), options.command
    if cmd == "sample":
        rows, itemsize = min(options.chunk_size, options.n), 0
        copies = BLOCK_COPIES["sample-float32" if options.dtype == "float32" else "sample"]
    else:
        rows, itemsize = options.block_rows, options.itemsize
        copies = BLOCK_COPIES["evaluate" if cmd == "evaluate" else "fit-exact" if exact else "fit"]
    per_row = copies if per_row is None else per_row
    blocks = options.threads * block_bytes(rows, D, itemsize, per_row)
    what = f"{options.threads} block{'s' if options.threads > 1 else ''} of {rows:,} rows"
    plan = {}
    for stage_name, n in table[cmd].items():
        rows_here = stage_name in BLOCK_STAGES
        plan[stage_name] = stage(unit, name, worker=n.on_worker(options.threads, n_arrays),
                                 client=n.on_client(n_arrays), worker_extra=blocks if rows_here else 0,
                                 extra_name=what if rows_here else "", shared=n.shipped)
    return plan
