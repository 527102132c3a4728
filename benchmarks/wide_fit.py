"""Full-covariance fit of wide images: time and peak RSS of every process.

Three measurements, interleaved ``--repeat`` times on the same input (a daskgen dataset
Zarr of 8-bit images, e.g. ``daskgen data fashion-mnist --size 64 --limit 30000``):

* ``numpy``: the rows in memory as float64, then ``np.cov`` per class (the baseline);
* ``stats``: the statistics stage alone on a local cluster of ``--workers`` processes
  (one thread each): ``compute_stats`` and ``GaussianClassModel.from_stats``;
* ``fit``: the whole ``daskgen fit ... --out`` command (statistics, model, store write).

Each process tree is watched while it runs: the peak RSS (``VmHWM``) of the client and of
every worker process is reported, with the ratio to one statistic (K·D²·8 bytes). Runs
use several GiB at D = 4,096: take a machine-wide lock around the script on shared
machines. Results go to ``benchmarks/results/wide_fit-<D>-w<workers>.json``.

    python benchmarks/wide_fit.py /work/data/fmnist64-train.zarr --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

NUMPY = textwrap.dedent(
    """
    import sys, time, numpy as np, zarr
    g = zarr.open_group(sys.argv[1], mode="r")
    X = np.asarray(g["images"][:]).reshape(g["labels"].shape[0], -1)
    y = np.asarray(g["labels"][:])
    t = time.perf_counter()
    F = X.astype(np.float64)
    covs = [np.cov(F[y == k], rowvar=False) for k in np.unique(y)]
    print(time.perf_counter() - t)
    """
)

STATS = textwrap.dedent(
    """
    import sys, time
    from daskgen.distributed.cluster import connect
    from daskgen.distributed.fit import compute_stats
    from daskgen.fitting import prepare
    from daskgen.models.gaussian import GaussianClassModel
    if __name__ == "__main__":  # worker processes re-import this file
        workers = int(sys.argv[2])
        cluster = dict(workers=workers, threads_per_worker=1) if workers else {}
        with connect(quiet=True, **cluster):
            t = time.perf_counter()
            stats = compute_stats(prepare(sys.argv[1]))
            took = time.perf_counter() - t
            model = GaussianClassModel.from_stats(stats, reg_covar=1 / 255**2 / 12)
            print(took, time.perf_counter() - t)
    """
)


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def watched(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time, stdout, and the peak RSS of the process and of each descendant."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[str, int]] = {}
    done = threading.Event()

    def watch():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in family:
                hwm = _hwm(p.pid)
                if hwm:
                    role = "client" if p.pid == proc.pid else (
                        "worker" if any("spawn" in a or "multiprocessing" in a for a in _cmdline(p)) else "other")
                    peaks[p.pid] = (role, max(hwm, peaks.get(p.pid, ("", 0))[1]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    took = time.perf_counter() - start
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return {"seconds": took, "stdout": out.strip(),
            "peak_rss": sorted(([role, rss] for role, rss in peaks.values()), key=lambda r: -r[1])}


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes of one thread each; 0: the default cluster (in-process threads)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["numpy", "stats", "fit"])
    args = ap.parse_args()
    import numpy as np
    import zarr

    g = zarr.open_group(args.data, mode="r")
    N = int(g["labels"].shape[0])
    D = int(np.prod(g["images"].shape[1:]))
    K = len(np.unique(np.asarray(g["labels"][:])))
    one_stat = K * D * D * 8
    tmp = Path(tempfile.mkdtemp(prefix="wide-fit-"))
    (tmp / "cov_baseline.py").write_text(NUMPY)
    (tmp / "stats_stage.py").write_text(STATS)
    cmds = {
        "numpy": [sys.executable, str(tmp / "cov_baseline.py"), args.data],
        "stats": [sys.executable, str(tmp / "stats_stage.py"), args.data, str(args.workers)],
        "fit": [str(BIN / "daskgen"), "fit", args.data, "--out", str(tmp / "model.zarr"), "--overwrite", "-q",
                *(["--workers", str(args.workers), "--threads-per-worker", "1"] if args.workers else [])],
    }
    cmds = {k: v for k, v in cmds.items() if k not in args.skip}
    runs: dict[str, list] = {k: [] for k in cmds}
    try:  # each fit writes K·D²·8 bytes twice (2.6 GB at D = 4,096): removed after the runs
        for _ in range(args.repeat):
            for name, cmd in cmds.items():
                r = watched(cmd)
                print(name, round(r["seconds"], 2), r["stdout"], [(a, round(b / 2**30, 2)) for a, b in r["peak_rss"]],
                      file=sys.stderr, flush=True)
                runs[name].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res: dict = {"data": args.data, "N": N, "D": D, "K": K, "one_statistic_bytes": one_stat,
                 "workers": args.workers, "loadavg_at_end": os.getloadavg(), "runs": runs}
    for name, rs in runs.items():
        peak_proc = max(max(b for _, b in r["peak_rss"]) for r in rs)
        res[name] = {"seconds": statistics.median(r["seconds"] for r in rs), "peak_rss_bytes": peak_proc,
                     "peak_rss_per_statistic": peak_proc / one_stat}
        if name == "numpy":
            res[name]["cov_seconds"] = statistics.median(float(r["stdout"]) for r in rs)
        if name == "stats":
            res[name]["stats_seconds"] = statistics.median(float(r["stdout"].split()[0]) for r in rs)
            res[name]["stats_and_model_seconds"] = statistics.median(float(r["stdout"].split()[1]) for r in rs)
    if "numpy" in res:
        base = res["numpy"]["cov_seconds"]
        for name, key in (("stats", "stats_seconds"), ("fit", "seconds")):
            if name in res:
                res[name]["vs_numpy_cov"] = res[name][key] / base
    out = HERE / "results" / f"wide_fit-{D}-w{args.workers}.json"
    out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1, default=float))


if __name__ == "__main__":
    main()
