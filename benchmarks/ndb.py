"""NDB of a million generated samples: ``daskgen evaluate-samples`` timed as a whole process.

    python benchmarks/ndb.py [--n 1000000] [--bins 100] [--calibration]

Prepares, once, under benchmarks/work/: Fashion-MNIST train and test as Zarr, one
Gaussian per class fitted on train, and N uint8 samples of it (a Zarr samples store).
Then runs ``daskgen evaluate-samples SAMPLES --reference test --train train`` on the
default local cluster (one worker in the process, a thread per core) and records its
wall time, its peak RSS (the whole process, ``wait4``) and its NDB in
benchmarks/results/ndb.json; the table and the figure go to benchmarks/results/ndb-1e6/.

``--calibration`` also measures the measure itself: bins from the first 50,000
training images, NDB of the last 10,000 (held out, real images) against the test set,
which should be near alpha * k (results/ndb-calibration/, "calibration" in ndb.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from run import BIN, RESULTS, WORK, machine, timed


def prepare(n: int) -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    daskgen = str(BIN / "daskgen")
    paths = {"train": WORK / "fashion-train.zarr", "test": WORK / "fashion-test.zarr",
             "model": WORK / "fashion-gaussian.zarr", "samples": WORK / f"fashion-samples-{n}.zarr"}
    for split in ("train", "test"):
        if not paths[split].exists():
            subprocess.run([daskgen, "data", "fashion-mnist", "--split", split, "--out", str(paths[split]),
                            "--quiet"], check=True)
    if not paths["model"].exists():
        subprocess.run([daskgen, "fit", str(paths["train"]), "--out", str(paths["model"]), "--quiet"], check=True)
    # resumes an interrupted store; a complete one is left as it is
    subprocess.run([daskgen, "sample", str(paths["model"]), "--n", str(n), "--seed", "0", "--dtype", "uint8",
                    "--out", str(paths["samples"]), "--quiet"], check=True)
    return paths


def calibration(paths: dict[str, Path], bins: int) -> dict:
    import numpy as np
    import zarr

    from daskgen.datasets import write_zarr_dataset

    split = {"fit": (WORK / "fashion-train-50k.zarr", slice(0, 50_000)),
             "heldout": (WORK / "fashion-heldout-10k.zarr", slice(50_000, 60_000))}
    group = zarr.open_group(str(paths["train"]))
    for path, rows in split.values():
        if not path.exists():
            write_zarr_dataset(str(path), np.asarray(group["images"][rows]), np.asarray(group["labels"][rows]),
                               chunk_rows=10_000)
    out = RESULTS / "ndb-calibration"
    cmd = [str(BIN / "daskgen"), "evaluate-samples", str(split["heldout"][0]), "--reference", str(paths["test"]),
           "--train", str(split["fit"][0]), "--bins", str(bins), "--out", str(out), "--overwrite", "--quiet"]
    seconds, rss = timed(cmd)
    doc = json.loads((out / "ndb.json").read_text())
    return {"command": " ".join(cmd[1:]), "seconds": round(seconds, 2), "peak_rss_bytes": rss, "ndb": doc["ndb"],
            "k": doc["k"], "expected_false_positives": doc["expected_false_positives"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--calibration", action="store_true", help="also NDB of held-out training images vs test")
    args = ap.parse_args()
    paths = prepare(args.n)
    out = RESULTS / "ndb-1e6"
    cmd = [str(BIN / "daskgen"), "evaluate-samples", str(paths["samples"]), "--reference", str(paths["test"]),
           "--train", str(paths["train"]), "--bins", str(args.bins), "--out", str(out), "--overwrite", "--quiet"]
    seconds, rss = timed(cmd)
    doc = json.loads((out / "ndb.json").read_text())
    res = {"machine": machine(), "command": " ".join(cmd[1:]), "n": args.n, "seconds": round(seconds, 2),
           "peak_rss_bytes": rss, "ndb": doc["ndb"], "k": doc["k"], "kmeans": doc["kmeans"], "sets": doc["sets"]}
    if args.calibration:
        res["calibration"] = calibration(paths, args.bins)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ndb.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("n", "seconds", "peak_rss_bytes", "ndb", "k", "calibration") if k in res},
                     indent=2))


if __name__ == "__main__":
    main()
