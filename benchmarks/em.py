"""One EM iteration of per-class mixtures: daskgen vs scikit-learn, and at 10x the rows.

    python benchmarks/em.py                       # Fashion-MNIST train, K = 5 per class, then 10x rows
    python benchmarks/em.py --components 5 --iterations 3 --workers 2 --skip-x10

Both sides start from the same initial parameters: daskgen's own initialisation
(k-means++ and k-means on a sample of each class, then the M-step of hard
assignments of every row), computed once before the timers. Then, in the same run:

* daskgen: ``fit_mixture`` on the Zarr store with those parameters and
  ``--iterations`` EM iterations on a local cluster (default: one worker with a
  thread per core, as ``daskgen fit``; ``--workers N`` for N processes). The
  input is persisted in the cluster first; one iteration is an E-step pass over
  every block, the tree reduction of the weighted statistics and the M-step on
  the client, as recorded in ``config["em"]["iteration_seconds"]``.
* scikit-learn: per class, ``GaussianMixture(K, max_iter=1, tol=0)`` from the same
  weights, means and precisions (``init_params="random_from_data"``, the cheapest
  initialisation that the given parameters then replace). Reported: the whole
  ``fit`` per class (its initialisation, one E-step and M-step, and its final
  E-step) and, separately, one bare ``_e_step`` + ``_m_step`` per class (private
  methods, timed after the fit): the like-for-like iteration.
* 10x: the same daskgen iteration on Fashion-MNIST tiled ten times with noise
  (``benchmarks/work/train-x10.zarr``, the file ``benchmarks/run.py`` makes).

Results: ``benchmarks/results/em.json`` and a markdown table on stdout. Takes
several minutes on 2 cores; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _data import write_tiled

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"
FASHION = "/usr/share/datasets/fashion-mnist"


def prepare(tiles: int = 10, x10: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Fashion-MNIST train in memory, and as Zarr stores (1x and, with ``x10``, tiled with noise)."""
    from daskgen.datasets import load_idx_pair, write_zarr_dataset

    images, labels = load_idx_pair(f"{FASHION}/train-images-idx3-ubyte.gz", f"{FASHION}/train-labels-idx1-ubyte.gz")
    WORK.mkdir(parents=True, exist_ok=True)
    paths = {"zarr": WORK / "train.zarr", "zarr10": WORK / f"train-x{tiles}.zarr"}
    if not paths["zarr"].exists():
        write_zarr_dataset(str(paths["zarr"]), images, labels, chunk_rows=10_000)
    if x10 and not paths["zarr10"].exists():
        write_tiled(str(paths["zarr10"]), images, labels, tiles)
    return images.reshape(len(images), -1), labels, {k: str(v) for k, v in paths.items()}


def initial_params(X, y, M, reg, seed, scale):
    """daskgen's initialisation, in memory (it does not depend on the chunking)."""
    from daskgen.kernels.kmeans import init_centers
    from daskgen.models.mixture_em import m_step, memory_passes

    passes = memory_passes(X, y, scale, block_rows=10_000)
    sample = passes.sample(seed, 10_000)
    centers = init_centers(sample, M, "kmeans++", seed)
    params, _ = m_step(passes.hard(sample.classes, centers, False), reg)
    return sample.classes, params


def run_daskgen(path, classes, params, M, reg, iterations, workers, blocksize):
    from daskgen.distributed.cluster import connect
    from daskgen.distributed.em import fit_mixture

    init = {"weights": params.weights, "means": params.means, "covariances": params.covariances}
    start = time.perf_counter()
    with connect(workers=workers, quiet=True):
        connected = time.perf_counter()
        model = fit_mixture(path, M, reg_covar=reg, max_iter=iterations, tol=0.0, init_params=init, classes=classes,
                            blocksize=blocksize)
    em = model.config["em"]
    return model, {
        "iteration_seconds": em["iteration_seconds"],
        "first_iteration_seconds": em["iteration_seconds"][0],
        "median_iteration_seconds": float(np.median(em["iteration_seconds"])),
        "persist": em["persist"],
        "fit_seconds_with_read_and_persist": time.perf_counter() - connected,
        "cluster_start_seconds": connected - start,
        "rows": em["rows"],
    }


def run_sklearn(X, y, classes, params, M, reg, scale):
    from sklearn.mixture import GaussianMixture

    out = {"fit_max_iter_1_seconds": 0.0, "e_plus_m_step_seconds": 0.0, "per_class": []}
    fitted = []
    for k, c in enumerate(classes):
        Xk = X[y == c] * scale
        # the precisions daskgen itself uses (P P^T), symmetrized for scikit-learn's check
        Q = np.einsum("mij,mkj->mik", params.prec_chol[k], params.prec_chol[k])
        precisions = (Q + np.swapaxes(Q, 1, 2)) / 2
        g = GaussianMixture(M, covariance_type="full", reg_covar=reg, max_iter=1, tol=0.0,
                            weights_init=params.weights[k], means_init=params.means[k], precisions_init=precisions,
                            init_params="random_from_data", random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            g.fit(Xk)
            fit_s = time.perf_counter() - t
        fitted.append((g.weights_.copy(), g.means_.copy(), g.covariances_.copy(), g.lower_bounds_[0]))
        t = time.perf_counter()
        _, log_resp = g._e_step(Xk)
        g._m_step(Xk, log_resp)
        step_s = time.perf_counter() - t
        out["fit_max_iter_1_seconds"] += fit_s
        out["e_plus_m_step_seconds"] += step_s
        out["per_class"].append({"class": int(c), "rows": len(Xk), "fit_seconds": fit_s, "e_plus_m_seconds": step_s})
    return fitted, out


def machine() -> dict:
    import dask
    import distributed
    import sklearn
    from threadpoolctl import threadpool_info

    return {
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "scikit-learn": sklearn.__version__,
        "blas": [(i.get("internal_api"), i.get("architecture"), i.get("num_threads")) for i in threadpool_info()
                 if i.get("user_api") == "blas"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--reg-covar", type=float, default=1e-6)
    ap.add_argument("--iterations", type=int, default=2, help="daskgen EM iterations timed (each one pass)")
    ap.add_argument("--workers", type=int, default=None, help="local worker processes (default: one worker, a thread per core)")
    ap.add_argument("--blocksize", type=int, default=None, help="bytes per read task (default: daskgen's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-x10", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "em.json"))
    args = ap.parse_args(argv)
    M, reg, scale = args.components, args.reg_covar, 1 / 255

    X, y, paths = prepare(x10=not args.skip_x10)
    t = time.perf_counter()
    classes, params = initial_params(X, y, M, reg, args.seed, scale)
    res = {"machine": machine(), "components": M, "reg_covar": reg, "rows": len(y), "features": X.shape[1],
           "initialisation_seconds": time.perf_counter() - t, "cluster": f"{args.workers} processes" if args.workers
           else "one worker, a thread per core"}
    print(f"init: {res['initialisation_seconds']:.1f}s", file=sys.stderr)

    model, res["daskgen"] = run_daskgen(paths["zarr"], classes, params, M, reg, args.iterations, args.workers,
                                        args.blocksize)
    print(f"daskgen: {res['daskgen']['iteration_seconds']}", file=sys.stderr)
    if not args.skip_sklearn:
        fitted, res["sklearn"] = run_sklearn(X, y, classes, params, M, reg, scale)
        print(f"sklearn: fit {res['sklearn']['fit_max_iter_1_seconds']:.1f}s, E+M {res['sklearn']['e_plus_m_step_seconds']:.1f}s",
              file=sys.stderr)
        if args.iterations == 1:  # the same iteration: the same parameters
            res["agreement"] = {
                "means_max_abs_diff": max(float(np.abs(model.means[k] - f[1]).max()) for k, f in enumerate(fitted)),
                "covariances_max_abs_diff": max(float(np.abs(model.covariances[k] - f[2]).max()) for k, f in enumerate(fitted)),
                "weights_max_abs_diff": max(float(np.abs(model.weights[k] - f[0]).max()) for k, f in enumerate(fitted)),
            }
        first = res["daskgen"]["first_iteration_seconds"]
        res["ratios"] = {
            "daskgen_iteration_vs_sklearn_fit_max_iter_1": first / res["sklearn"]["fit_max_iter_1_seconds"],
            "daskgen_iteration_vs_sklearn_e_plus_m": first / res["sklearn"]["e_plus_m_step_seconds"],
        }
    if not args.skip_x10:
        _, res["daskgen_x10"] = run_daskgen(paths["zarr10"], classes, params, M, reg, args.iterations, args.workers,
                                            args.blocksize)
        res.setdefault("ratios", {})["x10_iteration_growth"] = (
            res["daskgen_x10"]["median_iteration_seconds"] / res["daskgen"]["median_iteration_seconds"])
        print(f"daskgen x10: {res['daskgen_x10']['iteration_seconds']}", file=sys.stderr)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    d = res["daskgen"]
    print(f"\n| one EM iteration, Fashion-MNIST train ({len(y):,} x {X.shape[1]}), K = {M} per class, full | seconds |")
    print("| --- | ---: |")
    print(f"| daskgen, first / median of {args.iterations} iterations ({res['cluster']}) | {d['first_iteration_seconds']:.2f} / {d['median_iteration_seconds']:.2f} |")
    if "sklearn" in res:
        print(f"| scikit-learn GaussianMixture.fit(max_iter=1), sum over classes | {res['sklearn']['fit_max_iter_1_seconds']:.2f} |")
        print(f"| scikit-learn one E-step + M-step, sum over classes | {res['sklearn']['e_plus_m_step_seconds']:.2f} |")
    if "daskgen_x10" in res:
        x = res["daskgen_x10"]
        print(f"| daskgen at 10x rows ({x['rows']:,}), median iteration | {x['median_iteration_seconds']:.2f} "
              f"({res['ratios']['x10_iteration_growth']:.2f}x) |")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
