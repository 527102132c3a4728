"""Mixtures of low-rank Gaussians per class on Fashion-MNIST: one EM iteration against the
full-covariance mixture's, in the same run, and held-out quality.

    python benchmarks/mfa.py speed                 # K = 5, q = 16: full vs fa vs ppca, one cluster
    python benchmarks/mfa.py quality               # fa and ppca, K = 5, q = 16: validation and test

``speed``: on Fashion-MNIST train (60,000 x 784, Zarr blocks of 10,000 rows), one local
cluster (default: one worker, a thread per core, as ``daskgen fit``), the blocks persisted,
``fit_mixture`` with ``--iterations`` EM iterations (tol 0) of each of: full covariances,
``--covariance fa --rank q``, ``--covariance ppca --rank q``, in ``--rounds`` alternating
rounds so that load drifts hit every kind alike. One iteration (``config["em"]
["iteration_seconds"]``) is an E-step pass over every block, the tree reduction of the
statistics and the M-step on the client. Reported: the median iteration of each kind and
the ratio full / low-rank. The initialisation (sample, k-means, hard pass) is not in it.

``quality``: the protocol of ``benchmarks/quality.py`` — fitted on the first 50,000
training images, ``prior_rows`` chosen on the other 10,000 (validation), scored by
``daskgen.evaluate`` on the 10,000 test images (x~ = (x + u)/256, bits/dim = -log2 p(x~)/D
+ 8; Bayes accuracy at the bin centres); ``reg_covar`` = the dequantization variance,
10 EM iterations at most.

Results: ``benchmarks/results/mfa-speed.json``, ``mfa-quality.json`` and markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from em import machine
from em import prepare as prepare_train
from gmm_quality import DEQUANTIZATION_VARIANCE, RESULTS, fit_one
from gmm_quality import prepare as prepare_splits

KINDS = ("full", "fa", "ppca")


def load() -> float:
    return os.getloadavg()[0]


def speed(args) -> dict:
    import daskgen
    from daskgen.distributed.cluster import connect

    _, _, paths = prepare_train(x10=False)
    runs: dict[str, list[float]] = {k: [] for k in KINDS}
    loads = []
    with connect(workers=args.workers, quiet=True):
        for r in range(args.rounds):
            for kind in KINDS:
                extra = {} if kind == "full" else {"rank": args.rank}
                loads.append(load())
                model = daskgen.fit_mixture(paths["zarr"], args.components, covariance=kind, reg_covar=args.reg_covar,
                                            max_iter=args.iterations, tol=0.0, seed=args.seed, **extra)
                sec = model.config["em"]["iteration_seconds"]
                runs[kind] += sec
                print(f"round {r}: {kind}: iterations {[round(s, 2) for s in sec]} s (load {loads[-1]:.1f})",
                      file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    return {"machine": machine(), "rows": 60_000, "features": 784, "components": args.components, "rank": args.rank,
            "reg_covar": args.reg_covar, "iterations_per_fit": args.iterations, "rounds": args.rounds,
            "cluster": f"{args.workers} processes" if args.workers else "one worker, a thread per core",
            "iteration_seconds": runs, "median_iteration_seconds": med,
            "speedup_vs_full": {k: med["full"] / med[k] for k in ("fa", "ppca")},
            "load_average_1min": loads}


def quality(args) -> dict:
    from daskgen.distributed.cluster import connect
    from daskgen.evaluation.heldout import evaluate

    paths = prepare_splits(None, 10_000)
    rows = []

    class Opts:
        max_iter, tol, seed = args.max_iter, args.tol, args.seed

    with connect(workers=args.workers, quiet=True):
        for kind in args.kinds:
            best = None
            for prior in args.priors:
                model, info, took = fit_one(args.components, paths["fit"], DEQUANTIZATION_VARIANCE, prior, Opts,
                                            covariance=kind, rank=args.rank)
                val = evaluate(model, paths["validation"], seed=args.seed)
                row = {"covariance": kind, "components": args.components, "rank": args.rank,
                       "reg_covar": DEQUANTIZATION_VARIANCE, "prior_rows": prior, "fit_seconds": round(took, 1),
                       "validation_bits_per_dim": val["log_likelihood"]["bits_per_dim"],
                       "validation_accuracy": val["classifier"]["accuracy"], **info}
                print(json.dumps(row), file=sys.stderr)
                if best is None or row["validation_bits_per_dim"] < best[0]["validation_bits_per_dim"]:
                    best = (row, model)
            row, model = best
            test = evaluate(model, paths["test"], seed=args.seed)
            row.update(test_bits_per_dim=test["log_likelihood"]["bits_per_dim"],
                       test_accuracy=test["classifier"]["accuracy"])
            rows.append(row)
    return {"machine": machine(), "max_iter": args.max_iter, "tol": args.tol, "chosen": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("speed", "quality"))
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reg-covar", type=float, default=DEQUANTIZATION_VARIANCE)
    ap.add_argument("--iterations", type=int, default=2, help="speed: EM iterations per fit")
    ap.add_argument("--rounds", type=int, default=2, help="speed: alternating rounds of the three kinds")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=10, help="quality: EM iterations at most")
    ap.add_argument("--tol", type=float, default=0.05, help="quality: EM tolerance (nats per image)")
    ap.add_argument("--priors", type=float, nargs="+", default=[0.0, 1000.0], help="quality: prior_rows candidates")
    ap.add_argument("--kinds", nargs="+", default=["fa", "ppca"], choices=("fa", "ppca"))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    res = speed(args) if args.what == "speed" else quality(args)
    res["seconds"] = time.perf_counter() - start
    out = RESULTS / f"mfa-{args.what}.json"
    Path(out).write_text(json.dumps(res, indent=2) + "\n")
    if args.what == "speed":
        med = res["median_iteration_seconds"]
        print(f"\n| one EM iteration, Fashion-MNIST train (60,000 x 784), K = {args.components} per class | median seconds "
              "| full / this |")
        print("| --- | ---: | ---: |")
        print(f"| full covariances | {med['full']:.2f} | 1 |")
        for k in ("fa", "ppca"):
            print(f"| {k}, q = {args.rank} | {med[k]:.2f} | {res['speedup_vs_full'][k]:.1f}x |")
    else:
        print("\n| components | covariance | rank | prior rows | bits/dim (test) | accuracy (test) |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for r in res["chosen"]:
            print(f"| {r['components']} | {r['covariance']} | {r['rank']} | {r['prior_rows']:g} "
                  f"| {r['test_bits_per_dim']:.3f} | {r['test_accuracy']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
