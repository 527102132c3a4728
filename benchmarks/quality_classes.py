"""Per class, in plain numpy: how much a MAP mixture gains over one Gaussian in logit space, by lambda.

    python benchmarks/quality_classes.py --lam 1e-6 1e-3 --classes 0 5 9
    python benchmarks/quality_classes.py --lam 1e-3 --configs 1,0.03,0 5,0.03,1000 5,0.1,3000

A cheap check beside ``benchmarks/quality.py`` (which fits with daskgen on the whole
split): for each Fashion-MNIST class, fit on that class's rows among the first 50,000
training images and score the class's rows among the other 10,000 (validation; never
the test set). Bits/dim are class-conditional, -log2 p(x~ | y)/D + 8 under the protocol
(x~ = (x + u)/256 with daskgen's noise), not the marginal p(x~) that ``daskgen evaluate``
reports. Mixtures: k-means++ and 30 Lloyd iterations, then EM with the MAP M-step of
``--prior-rows`` (Sigma = (S + nu C_y)/(W + nu) + reg), a fixed number of iterations.
One line of JSON per (lambda, class, configuration) appended to ``--out``
(``benchmarks/results/quality-classes.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.linalg import cholesky, solve_triangular

FASHION = "/usr/share/datasets/fashion-mnist"
OUT = Path(__file__).resolve().parent / "results" / "quality-classes.jsonl"


def logit(xt, lam):
    p = lam + (1 - 2 * lam) * xt
    return np.log(p) - np.log1p(-p), (np.log1p(-2 * lam) - np.log(p) - np.log1p(-p)).sum(1)


def gauss_logpdf(Y, mu, cov):
    L = cholesky(cov, lower=True)
    Z = solve_triangular(L, (Y - mu).T, lower=True)
    return -0.5 * (Z * Z).sum(0) - np.log(np.diag(L)).sum() - 0.5 * Y.shape[1] * np.log(2 * np.pi)


def mixture_logpdf(Y, w, mus, covs):
    comp = np.stack([np.log(w[m]) + gauss_logpdf(Y, mus[m], covs[m]) for m in range(len(w))], 1)
    top = comp.max(1, keepdims=True)
    return top[:, 0] + np.log(np.exp(comp - top).sum(1)), comp


def em(Y, M, reg, prior, iters, rng):
    n, D = Y.shape
    class_cov = np.cov(Y, rowvar=False, bias=True)
    idx = [rng.integers(n)]
    d2 = ((Y - Y[idx[0]]) ** 2).sum(1)
    for _ in range(M - 1):  # k-means++, then Lloyd
        idx.append(rng.choice(n, p=d2 / d2.sum()))
        d2 = np.minimum(d2, ((Y - Y[idx[-1]]) ** 2).sum(1))
    C = Y[idx].copy()
    for _ in range(30):
        a = (-2 * Y @ C.T + (C ** 2).sum(1)).argmin(1)
        C = np.stack([Y[a == m].mean(0) if (a == m).any() else C[m] for m in range(M)])
    R = np.eye(M)[a]
    for it in range(iters + 1):
        W = R.sum(0) + 1e-10
        mus = (R.T @ Y) / W[:, None]
        covs = [((Y - mus[m]) * R[:, m:m + 1]).T @ (Y - mus[m]) for m in range(M)]
        covs = [(S + prior * class_cov) / (W[m] + prior) + reg * np.eye(D) for m, S in enumerate(covs)]
        if it < iters:
            ll, comp = mixture_logpdf(Y, W / n, mus, covs)
            R = np.exp(comp - ll[:, None])
    return W / n, mus, covs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", type=float, nargs="+", default=[1e-6, 1e-3])
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--configs", nargs="+", default=["1,0.1,0", "5,0.1,3000", "5,0.03,1000", "10,0.1,3000"],
                    help="components,reg_covar,prior_rows")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--out", default=str(OUT), help="appended to")
    args = ap.parse_args(argv)

    from daskgen.datasets import load_idx_pair
    from daskgen.kernels.transform import EVALUATE_STREAM, FIT_STREAM, to_unit

    X, y = load_idx_pair(f"{FASHION}/train-images-idx3-ubyte.gz", f"{FASHION}/train-labels-idx1-ubyte.gz")
    X = X.reshape(len(X), -1)
    fit, val = slice(0, 50_000), slice(50_000, 60_000)
    U_fit = to_unit(X[fit], True, 1 / 255, 0, FIT_STREAM)
    U_val = to_unit(X[val], True, 1 / 255, 0, EVALUATE_STREAM)
    for lam in args.lam:
        for c in args.classes:
            Yf, _ = logit(U_fit[y[fit] == c], lam)
            Yv, log_det = logit(U_val[y[val] == c], lam)
            for config in args.configs:
                M, reg, prior = (float(v) for v in config.split(","))
                start = time.perf_counter()
                if M == 1:
                    lp = gauss_logpdf(Yv, Yf.mean(0), np.cov(Yf, rowvar=False) + reg * np.eye(Yf.shape[1]))
                else:
                    lp = mixture_logpdf(Yv, *em(Yf, int(M), reg, prior, args.iterations, np.random.default_rng(0)))[0]
                bits = -(lp + log_det).mean() / (Yv.shape[1] * np.log(2)) + 8
                rec = {"lam": lam, "class": c, "components": int(M), "reg_covar": reg, "prior_rows": prior,
                       "iterations": args.iterations, "validation_conditional_bits_per_dim": bits,
                       "seconds": round(time.perf_counter() - start, 1)}
                print(json.dumps(rec), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
