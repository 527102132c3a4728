"""Helpers of the reliability tests: an external Dask cluster run as real processes,
waits with deadlines, and byte-level snapshots of stores and folders.

The cluster is ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (random
ports, a scheduler file), stopped by PID at the end.

Every process is started in a session of its own, so its process group holds exactly
what it spawned (a nanny's worker process too). The tests kill single worker
processes by PID; teardown sends SIGTERM, then SIGKILL, to each group it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Dask address or config a developer may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class ExternalCluster:
    """A scheduler and ``n_workers`` single-threaded workers, each a process started here."""

    def __init__(self, workdir: Path, n_workers: int = 2, memory_limit: str = "2GiB", nanny: bool = True,
                 env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = str(self.workdir / "scheduler.json")
        self.n_workers = n_workers
        self.memory_limit = memory_limit
        self.nanny = nanny
        self.env = clean_env(**(env or {}))
        self.procs: list[subprocess.Popen] = []
        self._client = None

    # -- processes ---------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.workdir, start_new_session=True,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 90) -> ExternalCluster:
        """Start the scheduler and the workers; on failure, stop what was started and raise."""
        Path(self.scheduler_file).unlink(missing_ok=True)  # never a dead scheduler's address
        try:
            self._spawn("scheduler", [
                str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                "--scheduler-file", self.scheduler_file,
            ])
            wait_until(self._scheduler_file_ready, timeout, "the scheduler file")
            for i in range(self.n_workers):
                self.add_worker(f"w{i}")
            self.wait_for_workers(self.n_workers, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, name: str) -> subprocess.Popen:
        return self._spawn(f"worker-{name}", [
            str(BIN / "dask"), "worker", "--scheduler-file", self.scheduler_file, "--host", "127.0.0.1",
            "--nthreads", "1", "--memory-limit", self.memory_limit, "--no-dashboard", "--name", name,
            "--local-directory", str(self.workdir / "space"), "--death-timeout", "60",
            "--nanny" if self.nanny else "--no-nanny",
        ])

    def _scheduler_file_ready(self) -> bool:
        try:
            return bool(json.loads(Path(self.scheduler_file).read_text()).get("address"))
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close(timeout=10)
            self._client = None
        for proc in reversed(self.procs):  # workers first, then the scheduler
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:  # whatever is left of each group, nanny children included
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.workdir.glob("*.log")))

    # -- the test's view of the cluster ------------------------------------
    @property
    def client(self):
        """A client of the cluster (not set as default: daskgen runs in its own processes)."""
        if self._client is None:
            from distributed import Client

            self._client = Client(scheduler_file=self.scheduler_file, set_as_default=False, timeout=30)
        return self._client

    def workers(self) -> dict[str, dict]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.workers()) == n, timeout, f"{n} workers", interval=0.2)

    def worker_pids(self) -> dict[str, int]:
        """Address -> PID of each worker process (the one running tasks, not its nanny)."""
        return self.client.run(os.getpid)

    def kill_worker(self, address: str | None = None) -> tuple[str, int]:
        """SIGKILL one worker process (the one with most tasks in hand by default)."""
        pids = self.worker_pids()
        if address is None:
            processing = self.client.processing()
            address = max(sorted(pids), key=lambda a: len(processing.get(a, ())))
        pid = pids[address]
        os.kill(pid, signal.SIGKILL)
        return address, pid

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler process (the workers stay, without a scheduler)."""
        os.kill(self.procs[0].pid, signal.SIGKILL)
        self.procs[0].wait(timeout=30)

    def daskgen(self, *args, quiet: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``daskgen ARGS --scheduler-file FILE [--quiet]`` to completion (killed at ``timeout``)."""
        return subprocess.run(self.daskgen_args(*args, quiet=quiet), capture_output=True, text=True,
                              timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)

    def popen(self, *args, quiet: bool = True, **kw) -> subprocess.Popen:
        """Start ``daskgen ARGS --scheduler-file FILE [--quiet]`` in the background."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(self.daskgen_args(*args, quiet=quiet), env=clean_env(), stdin=subprocess.DEVNULL, **kw)

    def daskgen_args(self, *args, quiet: bool = True) -> list[str]:
        return [str(BIN / "daskgen"), *map(str, args), "--scheduler-file", self.scheduler_file,
                *(["--quiet"] if quiet else [])]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file and folder under ``folder``: (size, mtime_ns, bytes) — to prove nothing was touched."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    return out
