"""NDB of a million generated samples: ``daskgen evaluate-samples`` timed as a whole process.

    python benchmarks/ndb.py [--n 1000000] [--bins 100]

Prepares, once, under benchmarks/work/: Fashion-MNIST train and test as Zarr, one
Gaussian per class fitted on train, and N uint8 samples of it (a Zarr samples store).
Then runs ``daskgen evaluate-samples SAMPLES --reference test --train train`` on the
default local cluster (one worker in the process, a thread per core) and records its
wall time, its peak RSS (the whole process, ``wait4``) and its NDB in
benchmarks/results/ndb.json; the table and the figure go to benchmarks/results/ndb-1e6/.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=100)
    args = ap.parse_args()
    paths = prepare(args.n)
    out = RESULTS / "ndb-1e6"
    cmd = [str(BIN / "daskgen"), "evaluate-samples", str(paths["samples"]), "--reference", str(paths["test"]),
           "--train", str(paths["train"]), "--bins", str(args.bins), "--out", str(out), "--overwrite", "--quiet"]
    seconds, rss = timed(cmd)
    doc = json.loads((out / "ndb.json").read_text())
    res = {"machine": machine(), "command": " ".join(cmd[1:]), "n": args.n, "seconds": round(seconds, 2),
           "peak_rss_bytes": rss, "ndb": doc["ndb"], "k": doc["k"], "kmeans": doc["kmeans"], "sets": doc["sets"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ndb.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("n", "seconds", "peak_rss_bytes", "ndb", "k")}, indent=2))


if __name__ == "__main__":
    main()
