"""deploy/local: a real scheduler and workers started by the scripts, a job run on them,
the dashboard and Prometheus endpoint checked, and everything stopped by PID."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "deploy" / "local"
DASK_YAML = ROOT / "deploy" / "dask.yaml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the scripts use Linux process groups")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DASK_CONFIG", None)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.update(extra)
    return env


def _script(name: str, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LOCAL / name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env or _env(), stdin=subprocess.DEVNULL,
    )


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (never Dask's defaults 8786/8787)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in (8786, 8787):
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _group_members(pgids: set[int]) -> list[int]:
    """PIDs of live processes (not zombies) whose process group is one of ``pgids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgid = fields[0], int(fields[2])
        if pgid in pgids and state != "Z":
            found.append(int(entry.name))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode("utf-8", "replace")


def _has_run_command() -> bool:
    try:
        out = subprocess.run([str(BIN / "daskgen"), "run", "--help"], capture_output=True, timeout=60, env=_env())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


# ---------------------------------------------------------------------------- dask.yaml
def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_dask_yaml_sets_only_known_keys():
    """Every setting in deploy/dask.yaml is a real distributed setting (a typo would be
    silently ignored by Dask), and the thresholds are ordered."""
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults)

    defaults = dask.config.merge(*dask.config.defaults)
    settings = yaml.safe_load(DASK_YAML.read_text())
    leaves = dict(_leaves(settings))
    assert leaves, "deploy/dask.yaml sets nothing"
    for path in leaves:
        dotted = ".".join(path)
        try:
            dask.config.get(dotted, config=defaults)
        except KeyError:
            pytest.fail(f"deploy/dask.yaml: unknown Dask setting {dotted}")
    memory = settings["distributed"]["worker"]["memory"]
    assert 0 < memory["target"] <= memory["spill"] < memory["pause"] < memory["terminate"] < 1
    assert settings["distributed"]["scheduler"]["allowed-failures"] >= 1
    for key in ("connect", "tcp"):
        assert settings["distributed"]["comm"]["timeouts"][key]


def test_dask_yaml_is_read_from_DASK_CONFIG(tmp_path):
    """DASK_CONFIG pointing at the file (not a directory) is how the scripts load it."""
    code = (
        "import dask, distributed;"
        "print(dask.config.get('distributed.scheduler.allowed-failures'),"
        " dask.config.get('distributed.worker.memory.pause'),"
        " dask.config.get('distributed.comm.timeouts.connect'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=_env(DASK_CONFIG=str(DASK_YAML)), cwd=tmp_path, check=True,
    )
    settings = yaml.safe_load(DASK_YAML.read_text())["distributed"]
    assert out.stdout.split() == [
        str(settings["scheduler"]["allowed-failures"]),
        str(settings["worker"]["memory"]["pause"]),
        settings["comm"]["timeouts"]["connect"],
    ]


# ---------------------------------------------------------------------------- scripts
def test_scripts_refuse_bad_usage(tmp_path):
    bad = _script("start-cluster.sh", "--nworkers", "0", "--state-dir", tmp_path)
    assert bad.returncode == 2 and "--nworkers must be a positive integer" in bad.stderr
    unknown = _script("start-cluster.sh", "--bogus")
    assert unknown.returncode == 2 and "unknown option --bogus" in unknown.stderr
    nothing = _script("run-job.sh", "--state-dir", tmp_path, "job.yaml")
    assert nothing.returncode == 2 and "no cluster running" in nothing.stderr
    # commands that take --scheduler-file need the cluster; plot (no such option) runs here
    evaluate = _script("run-job.sh", "--state-dir", tmp_path, "evaluate", "m.zarr", "x.csv")
    assert evaluate.returncode == 2 and "no cluster running" in evaluate.stderr
    plot = _script("run-job.sh", "--state-dir", tmp_path, "plot", "--help")
    assert plot.returncode == 0 and "Usage: daskgen plot" in plot.stdout
    stop = _script("stop-cluster.sh", "--state-dir", tmp_path)
    assert stop.returncode == 0 and "nothing to stop" in stop.stdout
    for name in ("start-cluster.sh", "run-job.sh", "stop-cluster.sh"):
        assert os.access(LOCAL / name, os.X_OK), f"{name} is not executable"
        usage = _script(name, "--help")
        assert usage.returncode == 0 and "deploy/local/" in usage.stdout


def test_stop_leaves_a_reused_pid_alone(tmp_path):
    """A recorded PID that now runs something unrelated is not signalled."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (tmp_path / "pids").mkdir()
        (tmp_path / "pids" / "scheduler.pid").write_text(f"{other.pid}\n")
        out = _script("stop-cluster.sh", "--state-dir", tmp_path, "--timeout", "2")
        assert out.returncode == 0, out.stderr
        assert "leaving it alone" in out.stderr
        assert other.poll() is None, "stop-cluster.sh killed a process it did not start"
    finally:
        other.kill()
        other.wait(timeout=10)


# ---------------------------------------------------------------------------- the real cluster
@pytest.mark.slow
def test_local_cluster_runs_a_job_and_stops_cleanly(tmp_path):
    pytest.importorskip("bokeh", reason="the dashboard needs bokeh")
    pytest.importorskip("prometheus_client", reason="/metrics needs prometheus_client")
    from daskgen.datasets import DIGITS_SCALE, load_digits_dataset, write_zarr_dataset
    from daskgen.io.store import read_model

    state = tmp_path / "cluster"
    port, dashboard_port = _free_ports(2)
    images, labels = load_digits_dataset()
    data = write_zarr_dataset(str(tmp_path / "digits.zarr"), images, labels, chunk_rows=300)
    model_path, samples_path = tmp_path / "out" / "model.zarr", tmp_path / "out" / "samples.zarr"

    pids: dict[str, int] = {}
    started = time.perf_counter()
    try:
        out = _script(
            "start-cluster.sh", "--state-dir", state, "--nworkers", 2, "--nthreads", 1,
            "--memory-limit", "1GiB", "--port", port, "--dashboard-port", dashboard_port, "--timeout", 60,
            timeout=120,
        )
        pids = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert out.returncode == 0, out.stdout + out.stderr
        assert sorted(pids) == ["scheduler", "worker-1", "worker-2"]
        info = json.loads((state / "scheduler.json").read_text())
        assert info["address"] == f"tcp://127.0.0.1:{port}"
        assert f"http://127.0.0.1:{dashboard_port}/status" in out.stdout

        # The scheduler and the workers run with deploy/dask.yaml, on 127.0.0.1 only.
        import dask
        from distributed import Client

        settings = yaml.safe_load(DASK_YAML.read_text())["distributed"]
        with Client(scheduler_file=str(state / "scheduler.json"), timeout=30) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2
            assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
            assert client.run_on_scheduler(dask.config.get, "distributed.scheduler.allowed-failures") == \
                settings["scheduler"]["allowed-failures"]
            assert set(client.run(dask.config.get, "distributed.worker.memory.pause").values()) == \
                {settings["worker"]["memory"]["pause"]}

        # A job on the cluster: `daskgen run` when it exists, else fit + sample.
        if _has_run_command():
            job = tmp_path / "job.yaml"
            job.write_text(_job_yaml(data, tmp_path / "out"))
            ran = _script("run-job.sh", "--state-dir", state, job, timeout=180)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            logs = ran.stderr
            model_path = _find_store(tmp_path / "out", "model")
            samples_path = _find_store(tmp_path / "out", "samples")
        else:
            fit = _script(
                "run-job.sh", "--state-dir", state, "fit", data, "--out", model_path,
                "--scale", str(DIGITS_SCALE), timeout=180,
            )
            assert fit.returncode == 0, fit.stdout + fit.stderr
            sample = _script(
                "run-job.sh", "--state-dir", state, "sample", model_path, "--n", 2000,
                "--out", samples_path, "--seed", 7, "--chunk-size", 500, timeout=180,
            )
            assert sample.returncode == 0, sample.stdout + sample.stderr
            assert "wrote 4 of 4 chunks" in sample.stderr
            logs = fit.stderr
        assert f"127.0.0.1:{dashboard_port}" in logs, logs  # the dashboard link is logged

        model = read_model(str(model_path))
        assert model.n_classes == 10 and int(model.counts.sum()) == len(labels)
        import zarr

        samples = zarr.open_group(str(samples_path), mode="r")
        assert samples.attrs["daskgen"]["complete"] is True
        assert samples["images"].shape[1:] == (8, 8)
        assert np.isin(np.asarray(samples["labels"][...]), model.classes).all()

        # The tasks ran on this cluster: its scheduler saw the job's stages.
        with Client(scheduler_file=str(state / "scheduler.json"), timeout=30) as client:
            # (a lambda travels by value: the workers cannot import this test module)
            prefixes = set(client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)))
        # (the digits are one block of exact 8-bit sums: no combine task is needed)
        assert {"chunk-stats", "generate", "write"} <= prefixes, prefixes

        # The dashboard answers, and Prometheus sees the scheduler.
        status, _ = _get(f"http://127.0.0.1:{dashboard_port}/status")
        assert status == 200
        status, metrics = _get(f"http://127.0.0.1:{dashboard_port}/metrics")
        assert status == 200
        workers_line = [line for line in metrics.splitlines() if line.startswith("dask_scheduler_workers")]
        assert workers_line, metrics[:500]
        assert any(line.endswith(" 2.0") for line in workers_line), workers_line
        assert "dask_scheduler_tasks" in metrics
    finally:
        stop = _script("stop-cluster.sh", "--state-dir", state, "--timeout", 20, timeout=60)
        if not pids and (state / "pids").exists():
            pids = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert pids, "start-cluster.sh recorded no PID"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(map(_pid_alive, pids.values())) or _group_members(set(pids.values()))):
        time.sleep(0.1)
    assert not [p for p in pids.values() if _pid_alive(p)], "a recorded process is still alive"
    assert not _group_members(set(pids.values())), "a child of a recorded process is still alive"
    assert not list((state / "pids").glob("*.pid"))
    assert time.perf_counter() - started < 60


def _job_yaml(data: str, out: Path) -> str:
    """A job file (see daskgen/job.py) for the digits Zarr written by the test."""
    return yaml.safe_dump({
        "inputs": [str(data)], "out": str(out), "scale": 0.0625,
        "sample": {"n": 2000, "seed": 7, "chunk_size": 500}, "plot": False,
    })


def _find_store(folder: Path, kind: str) -> Path:
    import zarr

    for path in sorted(folder.rglob("zarr.json")):
        try:
            meta = dict(zarr.open_group(str(path.parent), mode="r").attrs).get("daskgen", {})
        except Exception:
            continue
        if meta.get("kind") == kind:
            return path.parent
    raise AssertionError(f"no {kind} store under {folder}")
