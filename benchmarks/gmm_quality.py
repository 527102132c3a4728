"""Held-out quality of per-class mixtures on Fashion-MNIST: train -> test, K = 1, 2, 5, 10.

    python benchmarks/gmm_quality.py                                   # the README numbers
    python benchmarks/gmm_quality.py --components 1 2 5 --max-iter 10  # shorter

The last ``--validation-rows`` (10,000) training images are held out to choose, for
each K, ``reg_covar`` among ``--reg-grid`` and the mixture's ``prior_rows`` (the
weight, in rows, of the inverse-Wishart prior that shrinks every component's
covariance toward its class's) among ``--prior-grid``; every model is fitted on the other
training images (K = 1: ``daskgen.fit``, the closed-form single Gaussian per class;
K > 1: ``daskgen.fit_mixture``), and the one with the best validation
log-likelihood is evaluated on the 10,000 test images with ``daskgen.evaluate``
(uniform dequantization, bits/dim, Bayes classifier accuracy). The test set is
never used for a choice. For each K the chosen model's 10 x 4 sample grid is drawn
(``benchmarks/results/gmm-samples-K<K>.png``) and, for K > 1, its component means.

``reg_covar`` defaults to the variance of the dequantization noise, (1/255)^2 / 12 in
model units: among 1.3e-6 ... 1e-3 the best on validation for K = 1, 2 and 5 alike.
Mixture components, each estimated from a few thousand images in 784 dimensions,
underestimate their small variances: without the prior (``prior_rows`` 0, the plain
maximum-likelihood M-step) K = 5 is worse on held-out data than K = 1.

Results: ``benchmarks/results/gmm_quality.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"
FASHION = "/usr/share/datasets/fashion-mnist"
DEQUANTIZATION_VARIANCE = (1 / 255) ** 2 / 12


def prepare(train_rows: int | None, validation_rows: int) -> dict[str, str]:
    """Zarr stores: the training images used for fitting, the validation images, the test set."""
    from daskgen.datasets import load_idx_pair, write_zarr_dataset

    WORK.mkdir(parents=True, exist_ok=True)
    images, labels = load_idx_pair(f"{FASHION}/train-images-idx3-ubyte.gz", f"{FASHION}/train-labels-idx1-ubyte.gz")
    n_fit = (train_rows or len(labels)) - validation_rows
    if n_fit < 1:
        raise SystemExit("--train-rows must exceed --validation-rows")
    paths = {"fit": WORK / f"train-fit-{n_fit}.zarr", "validation": WORK / f"train-validation-{n_fit}-{validation_rows}.zarr",
             "test": WORK / "test.zarr"}
    if not paths["fit"].exists():
        write_zarr_dataset(str(paths["fit"]), images[:n_fit], labels[:n_fit], chunk_rows=10_000)
    if not paths["validation"].exists():
        sl = slice(len(labels) - validation_rows, len(labels))
        write_zarr_dataset(str(paths["validation"]), images[sl], labels[sl], chunk_rows=10_000)
    if not paths["test"].exists():
        images, labels = load_idx_pair(f"{FASHION}/t10k-images-idx3-ubyte.gz", f"{FASHION}/t10k-labels-idx1-ubyte.gz")
        write_zarr_dataset(str(paths["test"]), images, labels, chunk_rows=10_000)
    return {k: str(v) for k, v in paths.items()}


def fit_one(K, path, reg, prior, args, **options):
    """The model of K components per class (``options``: e.g. ``transform``), its EM summary and seconds."""
    import daskgen

    start = time.perf_counter()
    if K == 1:
        model = daskgen.fit(path, reg_covar=reg, seed=args.seed, **options)
        return model, {"n_iter": None, "converged": None}, time.perf_counter() - start
    model = daskgen.fit_mixture(
        path, K, reg_covar=reg, prior_rows=prior, max_iter=args.max_iter, tol=args.tol, seed=args.seed, **options,
        callback=lambda it: print(f"  K={K} reg={reg:.3g} prior={prior:g} iteration {it['iteration']}: {it['log_likelihood']:.2f} "
                                  f"({it['seconds']:.1f}s)", file=sys.stderr))
    em = model.config["em"]
    info = {"n_iter": em["n_iter"], "converged": em["converged"], "events": len(em["events"]),
            "persisted": em["persist"]["persisted"], "train_log_likelihood": em["log_likelihood"][-1],
            "iteration_seconds_median": float(np.median(em["iteration_seconds"]))}
    return model, info, time.perf_counter() - start


def save(args, rows) -> dict:
    res = {"fit_rows": (args.train_rows or 60_000) - args.validation_rows, "validation_rows": args.validation_rows,
           "test_rows": 10_000, "reg_grid": args.reg_grid, "prior_grid": args.prior_grid, "max_iter": args.max_iter,
           "tol": args.tol, "seed": args.seed, "results": rows}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--components", type=int, nargs="+", default=[1, 2, 5, 10])
    ap.add_argument("--train-rows", type=int, default=None, help="use the first N training rows (default: all 60,000)")
    ap.add_argument("--validation-rows", type=int, default=10_000, help="last training rows held out to choose reg_covar")
    ap.add_argument("--reg-grid", type=float, nargs="+", default=[DEQUANTIZATION_VARIANCE])
    ap.add_argument("--prior-grid", type=float, nargs="+", default=[0.0, 300.0, 1000.0, 3000.0])
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--tol", type=float, default=0.05, help="EM stops when the mean log-likelihood per image changes less")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="local worker processes (default: one worker, a thread per core)")
    ap.add_argument("--out", default=str(RESULTS / "gmm_quality.json"))
    args = ap.parse_args(argv)

    from daskgen.distributed.cluster import connect
    from daskgen.evaluate import evaluate, write_outputs
    from daskgen.plot import plot_component_means, plot_sample_grid

    paths = prepare(args.train_rows, args.validation_rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    with connect(workers=args.workers, quiet=True):
        for K in args.components:
            best, sweep = None, []
            grid = [(r, p) for r in args.reg_grid for p in (args.prior_grid if K > 1 else [0.0])]
            for reg, prior in grid:
                model, info, fit_s = fit_one(K, paths["fit"], reg, prior, args)
                val = evaluate(model, paths["validation"], seed=args.seed)["log_likelihood"]
                bits = val["bits_per_dim"] if val["bits_per_dim"] is not None else float("inf")
                sweep.append({"reg_covar": reg, "prior_rows": prior, "validation_bits_per_dim": bits,
                              "fit_seconds": fit_s, **info})
                print(f"K={K} reg={reg:.3g} prior={prior:g}: validation {bits:.4f} bits/dim, fit {fit_s:.0f}s",
                      file=sys.stderr)
                if best is None or bits < best[0]:
                    best = (bits, (reg, prior), model, info, fit_s)
            _, (reg, prior), model, info, fit_s = best
            start = time.perf_counter()
            rep = evaluate(model, paths["test"], seed=args.seed)
            eval_s = time.perf_counter() - start
            write_outputs(rep, str(RESULTS / f"gmm-evaluation-K{K}"))
            plot_sample_grid(model, str(RESULTS / f"gmm-samples-K{K}.png"), seed=args.seed)
            if K > 1:
                plot_component_means(model, str(RESULTS / f"gmm-component-means-K{K}.png"))
            ll = rep["log_likelihood"]
            row = {"components": K, "reg_covar": reg, "prior_rows": prior, "fit_seconds": fit_s, "evaluate_seconds": eval_s, **info,
                   "test_nats_per_image": ll["nats_per_image"], "test_stderr": ll["stderr"],
                   "test_bits_per_dim": ll["bits_per_dim"], "test_conditional_bits_per_dim": ll["conditional_bits_per_dim"],
                   "test_accuracy": rep["classifier"]["accuracy"], "neg_inf_rows": ll["neg_inf_rows"], "sweep": sweep}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), file=sys.stderr)
            save(args, rows)  # after every K: a long run that stops keeps what it measured
    res = save(args, rows)
    print(f"\nFashion-MNIST: fit on {res['fit_rows']:,} training images, reg_covar and prior_rows chosen on the other "
          f"{args.validation_rows:,}, scored on the 10,000 test images (dequantized); full covariances\n")
    print("| components per class | reg_covar | prior_rows | test log p(x), nats/image | bits/dim | accuracy | EM iterations | fit s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        it = "—" if r["n_iter"] is None else f"{r['n_iter']}{'' if r['converged'] else ' (max)'}"
        print(f"| {r['components']} | {r['reg_covar']:.2g} | {r['prior_rows']:g} | {r['test_nats_per_image']:,.1f} ± {r['test_stderr']:.1f} "
              f"| {r['test_bits_per_dim']:.4f} | {r['test_accuracy']:.4f} | {it} | {r['fit_seconds']:.0f} |")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
