"""Sampling and scoring a wide full-covariance model against numpy in memory, same model, same run.

    python benchmarks/wide_factor.py --train /path/fmnist64-train.zarr --test /path/fmnist64-test.zarr

Fits the model once (``daskgen fit``, its store holds the Cholesky factors), then, in
turns (``--repeat`` rounds, medians):

* ``daskgen sample MODEL --n N --dtype uint8`` (the whole process, into Zarr) against
  numpy in memory: per class ``np.linalg.cholesky`` and ``mean + z @ L.T`` for its share
  of the N draws (timed inside its process, after loading the covariances);
* ``daskgen evaluate MODEL TEST`` (the whole process) against numpy in memory: per class
  ``np.linalg.cholesky`` and a triangular solve of the test rows (``scipy.linalg.solve_triangular``).

Bars (issue: factor once, and cheaply): each daskgen time <= 2x its baseline. Results go
to benchmarks/results/wide_factor.json. At D = 4,096 a K x D x D copy is 1.34 GB: run
it alone on the machine (the project runs it under a lock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent

NUMPY_SAMPLE = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import daskgen
    model = daskgen.load_model(sys.argv[1])
    n = int(sys.argv[2])
    covs = model.covariances  # loaded before the clock starts
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    counts = rng.multinomial(n, model.priors)
    for k in range(model.n_classes):
        L = np.linalg.cholesky(covs[k])
        X = model.means[k] + rng.standard_normal((counts[k], L.shape[0])) @ L.T
    print(time.perf_counter() - t)
    """
)

NUMPY_SCORE = textwrap.dedent(
    """
    import sys, time
    import numpy as np, zarr
    from scipy.linalg import solve_triangular
    import daskgen
    model = daskgen.load_model(sys.argv[1])
    covs = model.covariances  # loaded before the clock starts
    g = zarr.open_group(sys.argv[2], mode="r")
    X = g["images"][...].reshape(g["labels"].shape[0], -1) * model.scale
    t = time.perf_counter()
    ll = np.empty((len(X), model.n_classes))
    for k in range(model.n_classes):
        L = np.linalg.cholesky(covs[k])
        z = solve_triangular(L, (X - model.means[k]).T, lower=True, check_finite=False)
        ll[:, k] = -0.5 * (L.shape[0] * np.log(2 * np.pi) + 2 * np.log(np.diagonal(L)).sum() + (z * z).sum(axis=0))
    print(time.perf_counter() - t)
    """
)


def run_peak(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    out = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return took, usage.ru_maxrss * 1024, out


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--model", help="an existing model store (default: fit one from --train)")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the model and samples (default: a temporary one)")
    ap.add_argument("--memory-limit", default="8GiB", help="the worker's memory limit")
    ap.add_argument("--out", default=str(RESULTS / "wide_factor.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="wide-factor-"))
    work.mkdir(parents=True, exist_ok=True)
    daskgen = str(BIN / "daskgen")
    cluster = ["-q", "--memory-limit", args.memory_limit]
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "load_before": os.getloadavg()}}
    model = args.model
    if model is None:
        model = str(work / "model.zarr")
        took, peak, _ = run_peak([daskgen, "fit", args.train, "--out", model, "--overwrite", *cluster])
        res["fit"] = {"seconds": took, "peak_rss_bytes": peak}
    samples = str(work / "samples.zarr")
    runs: dict[str, list] = {"daskgen_sample": [], "numpy_sample": [], "daskgen_evaluate": [], "numpy_score": []}
    for _ in range(args.repeat):
        subprocess.run(["sync"], check=False)
        runs["daskgen_sample"].append(run_peak([daskgen, "sample", model, "--n", str(args.n), "--dtype", "uint8",
                                                "--out", samples, "--overwrite", *cluster]))
        runs["numpy_sample"].append(run_peak([sys.executable, "-c", NUMPY_SAMPLE, model, str(args.n)]))
        runs["daskgen_evaluate"].append(run_peak([daskgen, "evaluate", model, args.test, *cluster]))
        runs["numpy_score"].append(run_peak([sys.executable, "-c", NUMPY_SCORE, model, args.test]))
    for name, rs in runs.items():
        inner = name.startswith("numpy")
        seconds = [float(out.strip().splitlines()[-1]) if inner else took for took, _, out in rs]
        res[name] = {"seconds": median(seconds), "runs": [round(s, 3) for s in seconds],
                     "peak_rss_bytes": max(p for _, p, _ in rs),
                     **({"process_seconds": [round(t, 3) for t, _, _ in rs]} if inner else {})}
    res["sample_ratio"] = res["daskgen_sample"]["seconds"] / res["numpy_sample"]["seconds"]
    res["evaluate_ratio"] = res["daskgen_evaluate"]["seconds"] / res["numpy_score"]["seconds"]
    res["bars"] = {"sample_ratio": 2.0, "evaluate_ratio": 2.0}
    res["machine"]["load_after"] = os.getloadavg()
    res["command"] = " ".join(["python", "benchmarks/wide_factor.py", *sys.argv[1:]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
