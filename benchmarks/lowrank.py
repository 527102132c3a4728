"""The low-rank kinds (``ppca``, ``fa``): exactness, quality, scale, and speed against the full kind.

    python benchmarks/lowrank.py exact     # D = 784: sketch vs numpy eigh; likelihoods vs scikit-learn; power iterations
    python benchmarks/lowrank.py quality   # Fashion-MNIST bits/dim and accuracy: q = 16, 64, 256, next to diag and full
    python benchmarks/lowrank.py scale     # PPCA q = 64 at D = 65,536 (256 x 256): time, peak RSS per process, GEMM limit
    python benchmarks/lowrank.py wide      # D = 4,096 (64 x 64): fit, sample 20,000, evaluate 2,000 vs the full kind

Results go to benchmarks/results/lowrank-<name>.json and a markdown table on stdout.
``exact`` and ``quality`` use Debian's Fashion-MNIST (fitted on the 60,000 training
images, scored on the first 2,000 test images, dequantized: bits/dim = -log2 p(x~)/D + 8
with x~ = (x + u)/256). ``scale`` and ``wide`` read the upsampled stand-ins that
``daskgen data fashion-mnist --size S --limit N`` writes (paths given by --data-dir;
default /work/data); ``wide`` times whole ``daskgen`` processes of both kinds in the
same run, alternating, median of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "lowrank"
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
FASHION = "/usr/share/datasets/fashion-mnist"


def fashion(split: str):
    from daskgen.datasets import load_idx_pair

    prefix = "train" if split == "train" else "t10k"
    X, y = load_idx_pair(f"{FASHION}/{prefix}-images-idx3-ubyte.gz", f"{FASHION}/{prefix}-labels-idx1-ubyte.gz")
    return X.reshape(len(X), -1), y


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()}


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"lowrank-{name}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"-> {path}")


def bits(report: dict) -> tuple[float, float]:
    return report["log_likelihood"]["bits_per_dim"], report["classifier"]["accuracy"]


# ---------------------------------------------------------------------------- exact
def exact(args) -> None:
    """Sketch vs eigh (top-16 eigenvalues, subspace), PPCA/FA scoring vs scikit-learn, and the
    held-out log-likelihood against power iterations next to exact PPCA."""
    import dask
    from sklearn.decomposition import PCA, FactorAnalysis

    from daskgen.evaluation.heldout import evaluate
    from daskgen.fitting import fit
    from daskgen.io.arrays import from_arrays
    from daskgen.models.lowrank import PPCAClassModel

    X, y = fashion("train")
    Xt, yt = fashion("test")
    train, test = from_arrays(X, y), from_arrays(Xt[:2000], yt[:2000])
    q = 16
    exact_eig = []
    for k in range(10):
        S = np.cov((X[y == k] / 255).T)
        w, V = np.linalg.eigh(S)
        exact_eig.append((w[::-1], V[:, ::-1]))
    out: dict = {"machine": machine(), "rank": q, "eigen": [], "heldout": []}
    with dask.config.set(scheduler="synchronous"):
        for over, p in [(10, 0), (10, 1), (10, 2), (10, 4), (10, 8), (20, 8), (20, 12), (20, 16)]:
            m = fit(train, covariance="ppca", rank=q, oversampling=over, power_iterations=p)
            ev, sub = [], []
            for k, (w, V) in enumerate(exact_eig):
                ev.append(float(np.max(np.abs(m.eigenvalues[k, :q] - w[:q]) / w[:q])))
                U = m.principal_directions()[0][k].T
                sv = np.linalg.svd(V[:, :q].T @ U, compute_uv=False)
                sub.append(float(np.sqrt(max(0.0, 1 - sv.min() ** 2))))
            row = {"oversampling": over, "power_iterations": p, "max_rel_eigenvalue_error": max(ev),
                   "max_subspace_sine": max(sub)}
            if over == 10 and p <= 4:
                row["bits_per_dim"], row["accuracy"] = bits(evaluate(m, test))
            out["eigen"].append(row)
            print(row, flush=True)
        # exact PPCA: the same parameters from numpy's eigh of every class covariance
        sk = fit(train, covariance="ppca", rank=q, oversampling=10, power_iterations=0)
        dof = sk.counts - 1.0
        theta = np.stack([w * n for (w, _), n in zip(exact_eig, dof)])
        from daskgen.kernels.class_stats import ClassStats

        stats = ClassStats(sk.classes, sk.counts, sk.means, sk.variances * dof[:, None], sk.minimum, sk.maximum)
        ref = PPCAClassModel.from_spectra(stats, theta, np.stack([V for _, V in exact_eig]), q,
                                          reg_covar=sk.config["reg_covar"], image_shape=sk.image_shape, scale=sk.scale)
        out["exact_ppca"] = dict(zip(("bits_per_dim", "accuracy"), bits(evaluate(ref, test))))
        print("exact PPCA", out["exact_ppca"], flush=True)
        # scoring against scikit-learn given the same parameters (model units, every test row)
        Z = Xt[:2000] / 255
        ppca = fit(train, covariance="ppca", rank=q, oversampling=20, power_iterations=16)
        fa = fit(train, covariance="fa", rank=q)
        lp, lf = ppca.class_log_likelihood(Z), fa.class_log_likelihood(Z)
        dp, df = [], []
        for k in range(10):
            pca = PCA(n_components=q)
            W = ppca.loadings[k]
            norms = np.sqrt((W * W).sum(0))
            pca.components_, pca.explained_variance_ = (W / norms).T, norms**2 + ppca.noise[k, 0]
            pca.noise_variance_, pca.mean_, pca.n_components_, pca.n_features_in_, pca.whiten = (
                ppca.noise[k, 0], ppca.means[k], q, 784, False)
            dp.append(float(np.max(np.abs(lp[:, k] - pca.score_samples(Z)) / np.abs(lp[:, k]))))
            f = FactorAnalysis(n_components=q)
            f.components_, f.noise_variance_, f.mean_, f.n_features_in_ = fa.loadings[k].T, fa.noise[k], fa.means[k], 784
            df.append(float(np.max(np.abs(lf[:, k] - f.score_samples(Z)) / np.abs(lf[:, k]))))
        out["sklearn_pca_score_samples_max_rel_diff"] = max(dp)
        out["sklearn_fa_score_samples_max_rel_diff"] = max(df)
        print("vs sklearn", max(dp), max(df))
    save("exact", out)


# ---------------------------------------------------------------------------- quality
def quality(args) -> None:
    import dask

    from daskgen.evaluation.heldout import evaluate
    from daskgen.fitting import fit
    from daskgen.io.arrays import from_arrays

    X, y = fashion("train")
    Xt, yt = fashion("test")
    train, test = from_arrays(X, y), from_arrays(Xt[:2000], yt[:2000])
    rows = []
    with dask.config.set(scheduler="synchronous"):
        runs = [("diag", None, "none"), ("full", None, "none")]
        runs += [(c, q, "none") for c in ("ppca", "fa") for q in (16, 64, 256)]
        runs += [("diag", None, "logit"), ("full", None, "logit"), ("ppca", 64, "logit"), ("fa", 64, "logit")]
        for cov, q, transform in runs:
            t = time.perf_counter()
            m = fit(train, covariance=cov, rank=q, transform=transform)
            took = time.perf_counter() - t
            b, acc = bits(evaluate(m, test))
            rows.append({"covariance": cov, "rank": q, "transform": transform, "bits_per_dim": b, "accuracy": acc,
                         "fit_seconds": took})
            print(rows[-1], flush=True)
    save("quality", {"machine": machine(), "train_rows": len(X), "test_rows": 2000, "rows": rows})
    print("\n| model | space | q | bits/dim | accuracy |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['covariance']} | {r['transform']} | {r['rank'] or '—'} | {r['bits_per_dim']:.3f} "
              f"| {r['accuracy']:.3f} |")


# ---------------------------------------------------------------------------- scale
def gemm_gflops(n: int, D: int, width: int) -> float:
    """This machine's single-thread GFLOP/s of the pass's product shape (n, D) @ (D, ℓ)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(n, D)), rng.normal(size=(D, width))
    with threadpool_limits(1):
        A @ B
        t = time.perf_counter()
        for _ in range(3):
            A @ B
        took = (time.perf_counter() - t) / 3
    return 2 * n * D * width / took / 1e9


def scale(args) -> None:
    """PPCA q = 64 at D = 65,536 on a local cluster of 2 single-threaded workers."""
    from distributed import Client, LocalCluster

    from daskgen.fitting import fit, prepare
    from daskgen.options import to_bytes

    path = os.path.join(args.data_dir, args.dataset)
    q, over = 64, 10
    width = q + over
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=args.memory_limit) as cluster, Client(cluster) as client:
        dataset = prepare([path], blocksize=to_bytes(args.blocksize))
        t = time.perf_counter()
        model = fit(dataset, covariance="ppca", rank=q, oversampling=over, power_iterations=args.power_iterations,
                    split_every=args.split_every)
        took = time.perf_counter() - t
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    N, D = int(model.counts.sum()), model.n_features
    passes = model.config["sketch"]["passes"]
    gflops = gemm_gflops(N // 10, D, width)
    # each pass: C·M then Cᵀ·(C·M) per class, 2 products of 2·n·D·ℓ flops each; 2 workers
    flops = 4 * N * D * width * passes
    limit = flops / (2 * gflops * 1e9)
    out = {"machine": machine(), "rows": N, "features": D, "rank": q, "width": width, "passes": passes,
           "power_iterations": args.power_iterations, "blocksize": args.blocksize, "split_every": args.split_every,
           "seconds": took, "pass_seconds": model.config["sketch"]["seconds"],
           "peak_rss_client": client_peak, "peak_rss_workers": list(workers.values()),
           "gemm_gflops_one_thread": gflops, "gemm_limit_seconds_2_workers": limit,
           "d_squared_bytes_per_class": D * D * 8}
    save("scale" if args.dataset == "fmnist256-train.zarr" else f"scale-{Path(args.dataset).stem}", out)
    gib = 2**30
    print(f"fit {took:.1f}s ({passes} passes; GEMM limit {limit:.1f}s at {gflops:.1f} GFLOP/s x 2 workers); "
          f"peak RSS client {client_peak / gib:.2f} GiB, workers "
          + ", ".join(f"{v / gib:.2f}" for v in workers.values()) + " GiB")


# ---------------------------------------------------------------------------- wide
def timed(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return took, usage.ru_maxrss * 1024


def wide(args) -> None:
    """D = 4,096: fit, sample 20,000 uint8 into Zarr, evaluate 2,000 rows — ppca q = 64 vs full."""
    daskgen = str(BIN / "daskgen")
    train = os.path.join(args.data_dir, "fmnist64-train.zarr")
    test = os.path.join(args.data_dir, "fmnist64-test.zarr")
    WORK.mkdir(parents=True, exist_ok=True)
    cluster = ["--workers", "2", "--threads-per-worker", "1", "--memory-limit", args.memory_limit, "-q"]
    kinds = {"full": ["--covariance", "full"], "ppca": ["--covariance", "ppca", "--rank", "64"]}
    times: dict = {k: {"fit": [], "sample": [], "sample-100": [], "evaluate": []} for k in kinds}
    for _ in range(args.repeat):
        for kind, opts in kinds.items():
            model = str(WORK / f"wide-{kind}.zarr")
            times[kind]["fit"].append(timed([daskgen, "fit", train, "--out", model, "--overwrite", *opts, *cluster]))
            times[kind]["sample"].append(timed([daskgen, "sample", model, "--n", "20000", "--dtype", "uint8",
                                                "--seed", "0", "--out", str(WORK / f"wide-{kind}-samples.zarr"),
                                                "--overwrite", *cluster]))
            # the same command for 100 samples: the process's fixed cost (start-up, cluster, store)
            times[kind]["sample-100"].append(timed([daskgen, "sample", model, "--n", "100", "--dtype", "uint8",
                                                    "--seed", "0", "--out", str(WORK / f"wide-{kind}-s100.zarr"),
                                                    "--overwrite", *cluster]))
            times[kind]["evaluate"].append(timed([daskgen, "evaluate", model, test, *cluster]))
            print(kind, {s: v[-1] for s, v in times[kind].items()}, flush=True)
    med = {k: {s: statistics.median(t for t, _ in v) for s, v in st.items()} for k, st in times.items()}
    peak = {k: {s: max(m for _, m in v) for s, v in st.items()} for k, st in times.items()}
    speedup = {s: med["full"][s] / med["ppca"][s] for s in ("fit", "sample", "evaluate")}
    marginal = {k: med[k]["sample"] - med[k]["sample-100"] for k in med}  # 19,900 samples beyond the fixed cost
    speedup["sample_beyond_fixed_cost"] = marginal["full"] / marginal["ppca"]
    out = {"machine": machine(), "repeat": args.repeat, "memory_limit": args.memory_limit, "seconds": med, "peak_rss_client": peak, "speedup": speedup,
           "samples_per_s": {k: 20000 / med[k]["sample"] for k in med},
           "samples_per_s_beyond_fixed_cost": {k: 19900 / marginal[k] for k in med},
           "rows_per_s": {k: 2000 / med[k]["evaluate"] for k in med},
           "main_commit": subprocess.run(["git", "rev-parse", "main"], capture_output=True, text=True,
                                         cwd=HERE).stdout.strip()}
    save("wide", out)
    print("\n| step | full (s) | ppca q=64 (s) | speed-up |\n|---|---|---|---|")
    for s in ("fit", "sample", "evaluate"):
        print(f"| {s} | {med['full'][s]:.1f} | {med['ppca'][s]:.1f} | {speedup[s]:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("exact", "quality", "scale", "wide"))
    parser.add_argument("--data-dir", default="/work/data")
    parser.add_argument("--dataset", default="fmnist256-train.zarr", help="scale: the training set under --data-dir")
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--blocksize", default="64MiB")
    parser.add_argument("--split-every", type=int, default=2)
    parser.add_argument("--power-iterations", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    {"exact": exact, "quality": quality, "scale": scale, "wide": wide}[args.what](args)


if __name__ == "__main__":
    main()
