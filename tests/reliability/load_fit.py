"""The fit under load: 6 million Fashion-MNIST rows (the training set tiled 100 times,
each copy with its own noise, 4.7 GB of uint8 in Zarr) fitted by ``daskgen fit`` on a
``dask scheduler`` and 2 ``dask worker`` processes limited to 2 GiB each.

Checks that the fit completes without a worker restart (the worker PIDs and their
number stay the same; no KilledWorker, no memory-limit restart in the logs) and
measures the peak RSS of each worker process (sampled every 0.5 s). Prints one JSON
summary on stdout; exits 1 when a check fails.

    python tests/reliability/load_fit.py [--rows 6000000] [--workdir DIR] [--keep]

Takes several minutes on 2 cores (run by tests/reliability/test_load.py only with
DASKGEN_LOAD_TEST=1). The data set is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import FASHION_DIR, ExternalCluster

CHUNK_ROWS = 10_000


def write_tiled_fashion(path: Path, rows: int, seed: int = 0) -> dict:
    """Fashion-MNIST train tiled to ``rows`` rows, each tile with uniform noise in -8..8."""
    import zarr
    from zarr.codecs import ZstdCodec

    from daskgen.datasets import load_idx_pair

    X, y = load_idx_pair(str(FASHION_DIR / "train-images-idx3-ubyte.gz"), str(FASHION_DIR / "train-labels-idx1-ubyte.gz"))
    start = time.perf_counter()
    g = zarr.open_group(str(path), mode="w")
    images = g.create_array("images", shape=(rows, 28, 28), dtype="uint8", chunks=(CHUNK_ROWS, 28, 28),
                            compressors=ZstdCodec(level=1), dimension_names=("sample", "y", "x"))
    labels = g.create_array("labels", shape=(rows,), dtype="int64", chunks=(CHUNK_ROWS,),
                            compressors=ZstdCodec(level=1), dimension_names=("sample",))
    rng = np.random.default_rng(seed)
    tile = len(X)
    for a in range(0, rows, tile):
        n = min(tile, rows - a)
        noisy = X[:n].astype(np.int16) + rng.integers(-8, 9, size=(n, 28, 28), dtype=np.int16)
        images[a : a + n] = np.clip(noisy, 0, 255).astype(np.uint8)
        labels[a : a + n] = y[:n]
    g.attrs["daskgen"] = {"kind": "dataset", "n": rows, "image_shape": [28, 28]}
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"rows": rows, "raw_bytes": rows * 784, "stored_bytes": size, "write_seconds": round(time.perf_counter() - start, 1)}


class MemorySampler(threading.Thread):
    """Every ``interval`` s: each worker's RSS (peak kept), the worker count and PIDs."""

    def __init__(self, cluster: ExternalCluster, interval: float = 0.5):
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, interval
        self.peak: dict[str, int] = {}
        self.counts: set[int] = set()
        self.pids: set[int] = set()
        self.samples = 0
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from distributed import Client

        def rss_and_pid():
            import os

            import psutil

            return psutil.Process().memory_info().rss, os.getpid()

        with Client(scheduler_file=self.cluster.scheduler_file, set_as_default=False, timeout=30) as client:
            while not self._halt.is_set():
                try:
                    found = client.run(rss_and_pid)
                except Exception:
                    self.errors += 1
                else:
                    self.samples += 1
                    self.counts.add(len(found))
                    for address, (rss, pid) in found.items():
                        self.peak[address] = max(self.peak.get(address, 0), rss)
                        self.pids.add(pid)
                self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--workdir", help="Folder for the data, model and cluster logs (default: a new temporary one).")
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--keep", action="store_true", help="Keep the data set and model.")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="daskgen-load-"))
    work.mkdir(parents=True, exist_ok=True)
    data, model_path = work / "tiled.zarr", work / "model.zarr"
    summary: dict = {"memory_limit": args.memory_limit}
    try:
        summary["data"] = write_tiled_fashion(data, args.rows)
        cluster = ExternalCluster(work / "cluster", n_workers=2, memory_limit=args.memory_limit, nanny=True).start()
        try:
            pids_before = set(cluster.worker_pids().values())
            sampler = MemorySampler(cluster)
            sampler.start()
            start = time.perf_counter()
            p = cluster.daskgen("fit", data, "--out", model_path, timeout=3600)
            took = time.perf_counter() - start
            sampler.stop()
            pids_after = set(cluster.worker_pids().values())
            logs = cluster.logs()
        finally:
            cluster.stop()
        import daskgen

        ok = p.returncode == 0
        model = daskgen.load_model(str(model_path)) if ok else None
        bad_log = [w for w in ("KilledWorker", "Restarting worker", "exceeded 95% memory", "Pausing worker", "spill")
                   if w.lower() in logs.lower() or w.lower() in p.stderr.lower()]
        summary.update({
            "returncode": p.returncode,
            "stderr": p.stderr.strip()[-2000:],
            "fit_seconds": round(took, 1),
            "rows_per_second": round(args.rows / took),
            "rows_fitted": int(model.counts.sum()) if model else None,
            "peak_worker_rss_bytes": sampler.peak,
            "peak_worker_rss_mib": {a: round(v / 2**20) for a, v in sampler.peak.items()},
            "worker_counts_seen": sorted(sampler.counts),
            "worker_pids_unchanged": pids_before == pids_after and sampler.pids == pids_before,
            "memory_samples": sampler.samples,
            "log_warnings": bad_log,
        })
        summary["passed"] = bool(
            ok and summary["rows_fitted"] == args.rows and summary["worker_counts_seen"] == [2]
            and summary["worker_pids_unchanged"] and not bad_log
        )
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(model_path, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
