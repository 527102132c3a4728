"""Getting a Dask cluster, and running a graph on whatever scheduler is current.

* :func:`connect` — a context manager yielding a ``distributed.Client``: an
  existing scheduler (address, scheduler file, or ``DASK_SCHEDULER_ADDRESS``), or a
  ``LocalCluster`` on 127.0.0.1 sized to the machine.
* :func:`compute` — compute a Dask collection inside a named ``distributed.span``
  with a terminal progress bar when a distributed client is active, or with the
  local Dask scheduler otherwise (so the Python API works without a cluster).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import dask

log = logging.getLogger("daskgen")
_PROGRESS_INTERVAL = 0.1
#: The only address a cluster started here listens on.
LOOPBACK = "127.0.0.1"


def active_client() -> Any:
    """The distributed Client that ``dask.compute`` would use now, or None.

    None when there is no client, or when ``dask.config`` names another scheduler
    (e.g. ``scheduler="synchronous"`` in a ``dask.config.set`` block).
    """
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute(obj: Any, stage: str = "compute", progress: bool = False) -> Any:
    """Compute ``obj``; on a distributed client, inside span ``stage`` and with progress."""
    client = active_client()
    if client is None:
        return dask.compute(obj)[0]
    from distributed import span

    with span(stage):
        future = client.compute(obj)
        try:
            if progress:
                show_futures(future, stage)
            return client.gather(future)
        except Exception:  # not on Ctrl-C: that stops at once
            settle(client, future)
            raise


#: Seconds :func:`settle` waits, at most, for the tasks of a failed computation to stop.
SETTLE_SECONDS = 30.0


def settle(client: Any, futures: Any, timeout: float = SETTLE_SECONDS) -> None:
    """After a computation failed: cancel what is left of it and wait (at most
    ``timeout`` seconds) until no worker still runs one of its tasks. Tasks that were
    running keep running after a cancel, and one that writes (a tile into a scratch store)
    would otherwise undo the caller's cleanup by writing after it. Best effort: a worker
    that cannot be asked is not waited for."""
    from distributed import futures_of

    keys = {f.key for f in futures_of(futures)}
    names = {key_name(k) for k in keys}
    client.cancel(futures)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = client.run(_running_names, names)
        except Exception:  # a lost worker has nothing left to wait for
            return
        if not any(running.values()):
            return
        time.sleep(0.05)


def key_name(key: Any) -> str:
    """The name part of a Dask key (``('name', 3)`` and ``'name'`` -> ``'name'``)."""
    return str(key[0] if isinstance(key, tuple) else key)


def _running_names(names: set, dask_worker: Any = None) -> int:
    """How many tasks whose key name is in ``names`` a worker still runs (executing or
    long-running, cancelled ones included)."""
    return sum(1 for ts in dask_worker.state.all_running_tasks if key_name(ts.key) in names)


def show_futures(futures: Any, stage: str) -> None:
    """A progress bar of ``futures`` (a future, a collection of them or one computed),
    until they finish: redrawn on a terminal, a line per tenth in a log or a pipe."""
    from distributed import futures_of
    from distributed import progress as show_progress

    if sys.stdout.isatty():
        show_progress(futures, interval=_PROGRESS_INTERVAL)
    else:
        _tenths_bar(stage)(futures_of(futures), interval=_PROGRESS_INTERVAL)
    # The scheduler feeds the bar every interval; let that feed see the bar's comm closed
    # before a quickly following cluster shutdown cancels it (which distributed would log
    # as an error).
    time.sleep(2 * _PROGRESS_INTERVAL)


def _tenth_line(label: str, frac: float, seconds: float) -> str:
    """The line a progress bar prints per tenth of the work when its stream is not a terminal."""
    return f"[{label}] {frac:4.0%} Completed | {seconds:4.1f}s\n"


def _tenths_bar(stage: str) -> Any:
    """distributed's text progress bar, printing a line per tenth of the work instead
    of redrawing one line (thousands of updates in a log file)."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class TenthsBar(TextProgressBar):
        shown = -1

        def _draw_bar(self, remaining, all, **kwargs):
            frac = (1 - remaining / all) if all else 1.0
            if int(10 * frac) > self.shown:
                self.shown = int(10 * frac)
                sys.stdout.write(_tenth_line(stage, self.shown / 10, self.elapsed))
                sys.stdout.flush()

        def _draw_stop(self, **kwargs):
            pass

    return TenthsBar


class TextBar:
    """A text progress bar on stderr, for work followed item by item (the fit's
    blocks, merged as they finish, have no single future to give ``progress``): one
    redrawn line on a terminal, else a line per tenth of the work."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.start = total, label, 0, time.perf_counter()
        self.live, self.shown = sys.stderr.isatty(), -1
        self._draw()

    def step(self) -> None:
        self.done += 1
        self._draw()

    def _draw(self) -> None:
        frac = self.done / self.total if self.total else 1.0
        seconds = time.perf_counter() - self.start
        if not self.live:
            if int(10 * frac) > self.shown:
                self.shown = int(10 * frac)
                sys.stderr.write(_tenth_line(self.label, self.shown / 10, seconds))
            return
        bar = "#" * int(40 * frac)
        sys.stderr.write(f"\r[{bar:<40}] | {frac:4.0%} Completed | {seconds:4.1f}s {self.label}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _local_cluster(n_workers, threads, processes, memory_limit, dashboard_address):
    """A LocalCluster whose every server listens on 127.0.0.1 only.

    distributed binds the scheduler's HTTP server (dashboard, /metrics, /info) and
    each worker's to all interfaces unless told otherwise, and an in-process cluster
    refuses ``host=``: the addresses are set one by one. Without a dashboard (quiet)
    the scheduler's HTTP server still runs, on a free loopback port instead of 8787.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=processes,
        memory_limit=memory_limit or "auto",
        # worker processes and nannies talk TCP on loopback only; a threaded worker
        # lives in this process and uses the in-process transport (no port at all)
        **({"host": "127.0.0.1"} if processes else {}),
        dashboard_address=dashboard_address or f"{LOOPBACK}:0",
        worker_dashboard_address=f"{LOOPBACK}:0",
        scheduler_kwargs={} if dashboard_address else {"dashboard": False},
    )


def _quiet_worker_logs() -> None:
    """Run on each worker of an interrupted run: its cancelled tasks are not news."""
    logging.disable(logging.CRITICAL)


def dashboard_link(client: Any, local: bool = False) -> str | None:
    """The dashboard URL (None without one); for a cluster started here, on 127.0.0.1."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    link = client.dashboard_link
    if local:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(link)
        link = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))
    return link


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    dashboard_address: str = "127.0.0.1:8787",
    quiet: bool = False,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for the run, closing what this call started.

    With no scheduler given (and no ``DASK_SCHEDULER_ADDRESS``), starts a LocalCluster
    on 127.0.0.1: one worker with a thread per core by default (numpy, pyarrow and
    zarr release the GIL, so threads share data without copies and start in a
    fraction of a second), or ``workers`` worker processes when asked. A ``quiet``
    local cluster serves no dashboard (nobody is told where it is, and bokeh's start
    costs ~0.3 s of every short run).
    """
    from distributed import Client

    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if scheduler or scheduler_file:
        client = Client(address=scheduler, scheduler_file=scheduler_file, set_as_default=True)
        cluster = None
    else:
        cores = _cpu_count()
        processes = workers is not None
        n_workers = workers or 1
        threads = threads_per_worker or max(1, cores // n_workers)
        with warnings.catch_warnings():
            # "Port 8787 is already in use ... hosting on port N instead": the link we
            # print names the port actually used.
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = _local_cluster(
                n_workers, threads, processes, memory_limit, None if quiet else dashboard_address
            )
        client = Client(cluster, set_as_default=True)
    if not quiet:
        print(f"daskgen: dashboard {dashboard_link(client, local=cluster is not None)}", file=sys.stderr)
    interrupted = False
    try:
        yield client
    except KeyboardInterrupt:
        # Closing now cancels the tasks in flight, which distributed and asyncio report
        # (warnings, "Task exception was never retrieved" tracebacks): the user asked
        # for the stop, and the command says "interrupted" once.
        interrupted = True
        logging.disable(logging.CRITICAL)
        if cluster is not None and cluster.processes:
            with contextlib.suppress(Exception):  # worker processes log the cancellations themselves
                client.run(_quiet_worker_logs, wait=True)
        raise
    finally:
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        finally:
            if interrupted:
                gc.collect()  # report (silently) the cancelled tasks' exceptions now
                logging.disable(logging.NOTSET)
