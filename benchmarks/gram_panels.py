"""The Gram matrix of a wide block: numpy's ``A.T @ A`` (BLAS syrk) against
:func:`daskgen.kernels.class_stats.add_gram`'s panels of gemm, on one and two BLAS threads.

    python benchmarks/gram_panels.py [--features 4096] [--rows 1000]

Shifted 8-bit rows in float32, as :func:`~daskgen.kernels.class_stats.pixel_sums` folds
them into a float64 total; best of 3 per case. Results: ``benchmarks/results/gram_panels.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
from threadpoolctl import threadpool_limits

from daskgen.kernels import class_stats

OUT = Path(__file__).resolve().parent / "results" / "gram_panels.json"


def best(f, repeat: int = 3) -> float:
    f()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    D, n = args.features, args.rows
    C = np.random.default_rng(0).integers(0, 256, (n, D)).astype(np.float32) - np.float32(128)
    G = np.zeros((D, D))
    res: dict = {"features": D, "rows": n, "seconds": {}}
    for threads in (1, 2):
        with threadpool_limits(threads):
            row = {"syrk (A.T @ A)": best(lambda: np.add(G, C.T @ C, out=G))}
            for panel in (256, 512, 1024):
                with patch.multiple(class_stats, GRAM_PANEL=panel, GRAM_PANEL_FROM=1):
                    row[f"panels of {panel}"] = best(lambda: class_stats.add_gram(G, C))
        res["seconds"][f"{threads} thread(s)"] = row
        print(threads, {k: round(v, 3) for k, v in row.items()}, flush=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
