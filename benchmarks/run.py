"""Benchmarks of daskgen against baselines measured in the same run, on this machine.

    python benchmarks/run.py fit      # fit: tutorial (pandas + np.cov) vs daskgen from CSV and Zarr; 10x rows
    python benchmarks/run.py sample   # sample: daskgen vs scikit-learn GaussianMixture.sample and machine limits
    python benchmarks/run.py all

Every timing is a whole process (interpreter start, imports, cluster start, I/O),
the median of --repeat runs. Results go to benchmarks/results/<name>.json and a
markdown table on stdout. Data is prepared once under benchmarks/work/ from
Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from _data import write_tiled

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
FASHION = "/usr/share/datasets/fashion-mnist"

TUTORIAL = textwrap.dedent(
    """
    import sys
    import numpy as np, pandas as pd
    df = pd.read_csv(sys.argv[1])
    data = df.to_numpy()               # the tutorial's df.as_matrix(), gone from pandas
    X = data[:, 1:] / 255.0
    Y = data[:, 0]
    gaussians = []
    for k in range(len(set(Y))):
        Xk = X[Y == k]
        gaussians.append({"m": Xk.mean(axis=0), "c": np.cov(Xk.T)})
    """
)


SKLEARN_SAMPLE = textwrap.dedent(
    """
    import sys, time
    import daskgen
    from sklearn.mixture import GaussianMixture
    model = daskgen.load_model(sys.argv[1])
    gm = GaussianMixture(n_components=model.n_classes, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = model.priors, model.means, model.covariances
    gm.random_state = 0
    t = time.perf_counter()
    gm.sample(int(sys.argv[2]))  # in memory
    print(time.perf_counter() - t)
    """
)


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak RSS (bytes) of a whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return took, usage.ru_maxrss * 1024


def summary(runs: list[tuple[float, int]]) -> dict:
    return {"seconds": statistics.median(t for t, _ in runs), "runs": [round(t, 3) for t, _ in runs],
            "peak_rss_bytes": max(m for _, m in runs), "peak_rss_runs": [m for _, m in runs]}


def interleaved(cmds: dict[str, list[str]], repeat: int) -> dict[str, dict]:
    """Run the commands in turn, ``repeat`` rounds: a machine that drifts (shared
    cores, writeback of the last run's output) affects every command alike."""
    runs: dict[str, list] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            subprocess.run(["sync"], check=False)
            runs[name].append(timed(cmd))
    return {name: summary(r) for name, r in runs.items()}


def prepare(tiles: int = 10) -> dict[str, str]:
    from daskgen.datasets import load_idx_pair, write_csv_dataset, write_zarr_dataset

    WORK.mkdir(parents=True, exist_ok=True)
    paths = {"csv": WORK / "train.csv", "zarr": WORK / "train.zarr", "zarr10": WORK / f"train-x{tiles}.zarr"}
    if all(p.exists() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    images, labels = load_idx_pair(f"{FASHION}/train-images-idx3-ubyte.gz", f"{FASHION}/train-labels-idx1-ubyte.gz")
    if not paths["csv"].exists():
        write_csv_dataset(str(paths["csv"]), images, labels)
    if not paths["zarr"].exists():
        write_zarr_dataset(str(paths["zarr"]), images, labels, chunk_rows=10_000)
    if not paths["zarr10"].exists():
        write_tiled(str(paths["zarr10"]), images, labels, tiles)
    return {k: str(v) for k, v in paths.items()}


def machine() -> dict:
    import dask
    import distributed
    import zarr
    from threadpoolctl import threadpool_info

    return {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "dask": dask.__version__, "distributed": distributed.__version__, "zarr": zarr.__version__,
        "blas": [(i.get("internal_api"), i.get("architecture"), i.get("num_threads")) for i in threadpool_info()],
    }


def bench_fit(repeat: int) -> dict:
    paths = prepare()
    tutorial = WORK / "tutorial_fit.py"
    tutorial.write_text(TUTORIAL)
    daskgen = str(BIN / "daskgen")
    out = str(WORK / "fit-out.zarr")
    fit = [daskgen, "fit", "--out", out, "--overwrite", "--quiet"]
    res = interleaved({
        "tutorial_csv": [sys.executable, str(tutorial), paths["csv"]],
        "daskgen_csv": [*fit, paths["csv"]],
        "daskgen_zarr": [*fit, paths["zarr"]],
        "daskgen_zarr_x10": [*fit, paths["zarr10"]],
    }, repeat)
    base = res["tutorial_csv"]["seconds"]
    res["ratios"] = {
        "csv_vs_tutorial": res["daskgen_csv"]["seconds"] / base,
        "zarr_vs_tutorial": res["daskgen_zarr"]["seconds"] / base,
        "x10_time_growth": res["daskgen_zarr_x10"]["seconds"] / res["daskgen_zarr"]["seconds"],
        "x10_memory_growth": res["daskgen_zarr_x10"]["peak_rss_bytes"] / res["daskgen_zarr"]["peak_rss_bytes"],
    }
    return res


def bench_sample(repeat: int, n: int = 1_000_000) -> dict:
    import daskgen

    paths = prepare()
    model_path = WORK / "fashion-model.zarr"  # Fashion-MNIST train, as fitted by daskgen
    if not model_path.exists():
        subprocess.run([str(BIN / "daskgen"), "fit", paths["zarr"], "--out", str(model_path), "--quiet"], check=True)
    model = daskgen.load_model(str(model_path))
    out = str(WORK / "samples.zarr")
    cmd = [str(BIN / "daskgen"), "sample", str(model_path), "--n", str(n), "--out", out, "--seed", "1",
           "--dtype", "float32", "--overwrite", "--quiet"]
    sklearn = WORK / "sklearn_sample.py"
    sklearn.write_text(SKLEARN_SAMPLE)
    # Interleaved, so drift of the machine affects both alike; scikit-learn takes
    # ~50 s a run here, so it runs in every other round. It runs in its own process:
    # its 6 GB of samples would otherwise stay in this one, and a child forked from
    # it reports that as its own peak memory.
    runs, times = [], []
    for i in range(repeat):
        subprocess.run(["sync"], check=False)
        runs.append(timed(cmd))
        if i % 2 == 0:
            out_s = subprocess.run([sys.executable, str(sklearn), str(model_path), str(n)],
                                   check=True, capture_output=True, text=True).stdout
            times.append(float(out_s.split()[-1]))
    shutil.rmtree(out, ignore_errors=True)
    res: dict = {"n": n, "daskgen_sample": summary(runs)}
    res["daskgen_sample"]["samples_per_s"] = n / res["daskgen_sample"]["seconds"]
    res["sklearn_gmm_sample_in_memory"] = {"seconds": statistics.median(times), "runs": [round(t, 3) for t in times],
                                           "samples_per_s": n / statistics.median(times)}

    # The tutorial: one multivariate_normal call (a fresh factorization) per sample.
    k = 8
    t = time.perf_counter()
    for i in range(k):
        np.random.multivariate_normal(model.means[i % model.n_classes], model.covariances[i % model.n_classes], tol=1e-12)
    res["tutorial_one_at_a_time"] = {"samples_per_s": k / (time.perf_counter() - t)}

    # The machine's own limits, measured now.
    rng = np.random.default_rng(0)
    m = 2_000_000
    t = time.perf_counter()
    rng.standard_normal(m * 10, dtype=np.float32)
    normals = m * 10 / (time.perf_counter() - t)
    A = rng.standard_normal((784, 784), dtype=np.float32)
    Z = rng.standard_normal((20_000, 784), dtype=np.float32)
    Z @ A
    t = time.perf_counter()
    for _ in range(5):
        Z @ A
    flops = 5 * 2 * 20_000 * 784 * 784 / (time.perf_counter() - t)
    sampler = model.sampler(np.float32)
    r = float(np.dot(model.priors, [f.rank for f in model.factors]))
    D = model.n_features
    # flops per sample: the full product (2 D r) and the panelled triangular one daskgen runs
    full = 2 * D * r
    panelled = float(np.dot(model.priors, [sum(2 * used * (hi - lo) for lo, hi, used in spans) for spans in sampler.spans]))
    cores = os.cpu_count() or 1
    res["machine"] = {
        "normal_draws_per_s_one_core": normals,
        "sgemm_flops_all_cores": flops,
        "mean_rank": r,
        "flops_per_sample_full": full,
        "flops_per_sample_panelled": panelled,
        # normals on every core, then the product: no I/O, no compression
        "bound_samples_per_s_full_product": 1 / (r / (normals * cores) + full / flops),
        "bound_samples_per_s": 1 / (r / (normals * cores) + panelled / flops),
    }
    res["ratios"] = {
        "daskgen_vs_sklearn": res["daskgen_sample"]["samples_per_s"] / res["sklearn_gmm_sample_in_memory"]["samples_per_s"],
        "daskgen_vs_tutorial": res["daskgen_sample"]["samples_per_s"] / res["tutorial_one_at_a_time"]["samples_per_s"],
        "daskgen_vs_machine_bound": res["daskgen_sample"]["samples_per_s"] / res["machine"]["bound_samples_per_s"],
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fit", "sample", "all"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for name in (["fit", "sample"] if args.what == "all" else [args.what]):
        res = {"machine": machine(), **(bench_fit if name == "fit" else bench_sample)(args.repeat)}
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=float))
        print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
