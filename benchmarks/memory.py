"""The memory plan against measured peaks: each stage of fit, sample and evaluate.

    python benchmarks/memory.py --data DIR [--sizes 32 64] [--work DIR]
    python benchmarks/memory.py --data DIR --work DIR --replan   # the stored runs against today's plan
    python benchmarks/memory.py --data DIR --kinds ppca64 ppca256 tiled32 tiled64 mfa28  # other kinds

For each size S (Fashion-MNIST upsampled to S x S: ``DIR/fmnistS-train.zarr``, and
``DIR/fmnistS-test.zarr`` when there is one), every command runs in a process of its
own on daskgen's default local cluster (one worker of a thread per core, in the
client's process), stage by stage as the command line runs them; the process's peak
resident memory (VmHWM, reset before each stage through /proc/self/clear_refs) is
recorded per stage next to the plan's estimate of that stage (worker and client
together: they share the process). The whole command line's peak (``wait4``) is
recorded too. Results: benchmarks/results/memory.json and a markdown table.

``--kinds``: whole ``daskgen fit`` command lines of the kinds whose plan is counted in
other units (low-rank sketches, mixtures of low-rank Gaussians, tiles; :data:`KINDS`),
each process's peak polled every 20 ms (the client, and the largest worker process when
there are some), next to the plan of the same options: its largest stage per worker and
on the client. Results: the ``kinds`` entries of memory.json (other entries are kept).

Run it alone on the machine: peaks at D = 4,096 reach ~7 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

def hwm() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def first_rows(dataset, rows: int):
    """``dataset`` cut to its first ``rows`` rows (Zarr blocks)."""
    keep, n = [], 0
    for b in dataset.blocks:
        if n < rows:
            keep.append(replace(b, stop=min(b.stop, b.start + rows - n)))
            n += keep[-1].stop - keep[-1].start
    return replace(dataset, blocks=keep)


def stages(command: str, data: str, model_path: str, out: str, rows: int) -> dict:
    """Run ``command`` stage by stage as the command line does, on the default local
    cluster; the process's peak per stage. (Runs in a process of its own.) Sampling and
    scoring factor each class on the cluster, inside their stage."""
    from daskgen._malloc import keep_freed_memory
    from daskgen.distributed.cluster import connect
    from daskgen.fitting import prepare
    from daskgen.io.store import read_model, read_model_header

    keep_freed_memory()  # as the console script does
    peaks, seconds = {}, {}

    def stage(name, fn):
        reset_hwm()
        t = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - t, 2)
        peaks[name] = hwm()
        return value

    with connect(quiet=True):
        if command == "fit":
            from daskgen.distributed.fit import stats_reduction
            from daskgen.distributed.reduction import reduce_blocks
            from daskgen.fitting import default_reg_covar
            from daskgen.models.gaussian import GaussianClassModel

            dataset = prepare([data])
            red = stats_reduction(dataset)
            total = stage("statistics", lambda: reduce_blocks(replace(red, finalize=None), dataset))
            stats = stage("to_class_stats", lambda: red.finalize(total))
            del total
            model = stage("finalize", lambda: GaussianClassModel.from_stats(
                stats, reg_covar=default_reg_covar(dataset), image_shape=dataset.image_shape, scale=dataset.scale))
            del stats
            stage("write", lambda: model.save(out, overwrite=True))
        elif command == "sample":
            from daskgen.distributed.generation import generate

            model = stage("load", lambda: read_model(model_path))
            stage("draw", lambda: generate(model, rows, out, seed=0, overwrite=True))
        else:
            from daskgen.evaluation.heldout import evaluate, open_for_model

            dataset = first_rows(open_for_model(read_model_header(model_path), [data]), rows)
            model = stage("load", lambda: read_model(model_path))
            stage("score", lambda: evaluate(model, dataset))
    return {"peaks": peaks, "seconds": seconds}


def plan_of(command: str, data: str, model: str, rows: int) -> dict:
    """The plan's estimate of each stage (worker and client together, baselines included)
    and what dominates, for the default local cluster."""
    from daskgen import planning
    from daskgen.evaluation.heldout import open_for_model
    from daskgen.fitting import prepare
    from daskgen.io.store import read_model_header

    if command == "fit":
        plan = planning.plan_fit(prepare([data]), cluster={})
    elif command == "sample":
        plan = planning.plan_model(read_model_header(model), planning.sample_workload(rows, 10_000, "float32"), {})
    else:
        dataset = first_rows(open_for_model(read_model_header(model), [data]), rows)
        plan = planning.plan_model(read_model_header(model), planning.evaluate_workload(dataset), {})
    return {"plan": {n.split("/", 1)[1]: plan.client_peak(s) for n, s in plan.stages.items()},
            "dominant": {n.split("/", 1)[1]: s.dominant for n, s in plan.stages.items()}}


def run(cmd: list[str]) -> tuple[str, int, float]:
    """stdout, peak RSS (bytes) and wall time of a whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return out, usage.ru_maxrss * 1024, time.perf_counter() - start


def tree_peaks(cmd: list[str], interval: float = 0.02) -> tuple[int, int]:
    """Peak resident memory of a command's own process and of its largest descendant
    (a worker process), polled every ``interval`` seconds."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(interval)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    client = peaks.pop(proc.pid, 0)
    return client, max(peaks.values(), default=0)


def plan_workers(data: str, workers: int) -> dict:
    """The plan of a fit on ``workers`` local worker processes of one thread."""
    from daskgen import planning
    from daskgen.fitting import prepare

    plan = planning.plan_fit(prepare([data]), cluster={"workers": workers, "threads_per_worker": 1})
    return {"plan_worker": max(plan.worker_peak(s) for s in plan.stages.values()),
            "plan_client": max(plan.stages[n].client for n in plan.stages) + planning.CLIENT_BASELINE}


#: ``--kinds`` runs: (data file in --data, fit options, local cluster options). ``mfa28``
#: reads ``fmnist28-train.zarr`` (``daskgen data fashion-mnist --out DIR/fmnist28-train.zarr``).
TWO_WORKERS = {"workers": 2, "threads_per_worker": 1}
KINDS: dict[str, tuple[str, dict, dict]] = {
    "ppca64": ("fmnist64-train.zarr", {"covariance": "ppca", "rank": 64}, {}),
    "ppca64-workers": ("fmnist64-train.zarr", {"covariance": "ppca", "rank": 64}, TWO_WORKERS),
    "fa64": ("fmnist64-train.zarr", {"covariance": "fa", "rank": 64}, {}),
    "ppca256": ("fmnist256-train.zarr", {"covariance": "ppca", "rank": 64, "blocksize": "64MiB", "split_every": 2},
                {**TWO_WORKERS, "memory_limit": "5GiB"}),
    "tiled32": ("fmnist32-train.zarr", {"tiles": 256, "reg_covar": 0.01}, {}),
    "tiled64": ("fmnist64-train.zarr", {"tiles": 1024, "reg_covar": 0.01}, TWO_WORKERS),
    "mfa28": ("fmnist28-train.zarr", {"covariance": "ppca", "rank": 16, "components": 4, "max_iter": 10}, {}),
}


def flags(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def plan_kind(data: str, options: dict, cluster: dict) -> dict:
    """The plan of ``daskgen fit`` with ``options`` on ``cluster``: its largest stage per
    worker process (None: the worker runs in the client's process) and on the client."""
    from daskgen import planning
    from daskgen.fitting import prepare

    dataset = prepare([data], **({"blocksize": options["blocksize"]} if "blocksize" in options else {}))
    plan = planning.plan_fit(dataset, covariance=options.get("covariance", "full"),
                             components=int(options.get("components", 1)),
                             split_every=int(options.get("split_every", 8)), cluster=cluster,
                             rank=options.get("rank"), tiles=options.get("tiles"))
    worker, worker_stage = (None, None) if plan.resources.in_process else plan.worker_need
    need, where = plan.worker_need if plan.resources.in_process else (
        max((plan.client_peak(s), n) for n, s in plan.stages.items()))
    return {"kind": plan.kind, "K": plan.n_classes, "D": plan.n_features, "plan_worker": worker,
            "plan_client": need, "plan_stage": where, "dominant": plan.stages[where].dominant,
            "worker_stage": worker_stage, "worker_dominant": plan.stages[worker_stage].dominant if worker_stage else None,
            "stages": {n: [s.worker, s.client] for n, s in plan.stages.items()}}


def measure_kinds(names: list[str], data_dir: str, work: str) -> list[dict]:
    os.makedirs(work, exist_ok=True)
    out = []
    for name in names:
        data, options, cluster = KINDS[name]
        data = f"{data_dir}/{data}"
        cmd = [str(Path(sys.executable).parent / "daskgen"), "fit", data, "--out", f"{work}/{name}.zarr",
               "--overwrite", "--quiet", *flags(options), *flags(cluster)]
        start = time.perf_counter()
        client, worker = tree_peaks(cmd)
        entry = {"run": name, "data": Path(data).name, "options": options, "cluster": cluster or "default",
                 "seconds": round(time.perf_counter() - start, 1), "client_peak": client,
                 "worker_peak": worker or None, "load_average": os.getloadavg(), **plan_kind(data, options, cluster)}
        out.append(entry)
        print(json.dumps(entry), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="folder of fmnistS-train.zarr (and fmnistS-test.zarr), as `daskgen data "
                    "fashion-mnist --size S` writes them")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--work", default="/tmp/daskgen-memory-bench")
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--eval-rows", type=int, default=2_000)
    ap.add_argument("--stages", nargs=5, metavar=("COMMAND", "DATA", "MODEL", "OUT", "ROWS"), help=argparse.SUPPRESS)
    ap.add_argument("--replan", action="store_true", help="recompute the plan of the stored runs (no measurement)")
    ap.add_argument("--kinds", nargs="+", choices=sorted(KINDS), help="measure these fits of other kinds (only)")
    args = ap.parse_args()
    if args.stages:
        command, data, model, out, rows = args.stages
        print(json.dumps(stages(command, data, model, out, int(rows))))
        return
    if not args.data:
        ap.error("--data is required")
    if args.kinds:
        results = json.loads((RESULTS / "memory.json").read_text())
        kept = [e for e in results.get("kinds", []) if e["run"] not in args.kinds]
        results["kinds"] = kept + measure_kinds(args.kinds, args.data, args.work)
        report(results)
        return
    if args.replan:
        results = json.loads((RESULTS / "memory.json").read_text())
        for e in results.get("kinds", []):
            e.update(plan_kind(f"{args.data}/{e['data']}", e["options"],
                               {} if e["cluster"] == "default" else e["cluster"]))
        for e in results["runs"]:
            e.update(plan_of(e["command"], f"{args.data}/{e['data']}", f"{args.work}/{e['model']}", e["rows"]))
        for e in results.get("workers", []):
            e.update(plan_workers(f"{args.data}/{e['data']}", 2))
        report(results)
        return
    os.makedirs(args.work, exist_ok=True)
    results: dict = {"python": sys.version.split()[0], "cpu_count": os.cpu_count(), "runs": []}
    for size in args.sizes:
        train = f"{args.data}/fmnist{size}-train.zarr"
        test = f"{args.data}/fmnist{size}-test.zarr"
        test = test if os.path.exists(test) else train
        model = f"{args.work}/model{size}.zarr"
        jobs = [("fit", train, args.samples), ("sample", train, args.samples), ("evaluate", test, args.eval_rows)]
        for command, data, rows in jobs:
            out = f"{args.work}/{command}{size}.zarr" if command != "fit" else model
            text, _, wall = run([sys.executable, __file__, "--stages", command, data, model, out, str(rows)])
            doc = json.loads(text.strip().splitlines()[-1])
            entry = {"size": size, "D": size * size, "command": command, "rows": rows, "data": Path(data).name,
                     "model": Path(model).name,
                     "seconds": round(wall, 1), **doc, **plan_of(command, data, model, rows)}
            if command == "fit":  # the command line itself, whole process
                cli = [str(Path(sys.executable).parent / "daskgen"), "fit", train, "--out", f"{args.work}/cli{size}.zarr",
                       "--overwrite", "--quiet"]
                _, entry["cli_peak"], entry["cli_seconds"] = run(cli)
            results["runs"].append(entry)
            print(json.dumps(entry), flush=True)
        # the fit on 2 worker processes of one thread: each worker's peak, and the client's
        cli = [str(Path(sys.executable).parent / "daskgen"), "fit", train, "--out", f"{args.work}/w{size}.zarr",
               "--overwrite", "--quiet", "--workers", "2", "--threads-per-worker", "1"]
        client, worker = tree_peaks(cli)
        entry = {"size": size, "D": size * size, "command": "fit --workers 2", "data": Path(train).name,
                 "client_peak": client, "worker_peak": worker, **plan_workers(train, 2)}
        results.setdefault("workers", []).append(entry)
        print(json.dumps(entry), flush=True)
    report(results)


def report(results: dict) -> None:
    """Write memory.json and print the markdown table of plan against measured peaks."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| D | `fit --workers 2` | plan (GiB) | measured peak (GiB) | plan / measured |")
    print("|---|---|---|---|---|")
    for e in results.get("workers", []):
        for role in ("worker", "client"):
            plan, measured = e[f"plan_{role}"], e[f"{role}_peak"]
            print(f"| {e['D']:,} | {role} | {plan / 2**30:.2f} | {measured / 2**30:.2f} | {plan / measured:.2f} |")
    if results.get("kinds"):
        print("\n| run | kind, D | process | plan (GiB) | measured peak (GiB) | plan / measured | plan's peak |")
        print("|---|---|---|---|---|---|---|")
    for e in results.get("kinds", []):
        roles = [("client", "client")] if e["plan_worker"] is None else [("worker", "worker"), ("client", "client")]
        for role, key in roles:
            plan, measured = e[f"plan_{key}"], e[f"{key}_peak"]
            what = f"{e['plan_stage']}: {e['dominant']}" if role == "client" else \
                f"{e['worker_stage']}: {e['worker_dominant']}"
            print(f"| {e['run']} | {e['kind']}, {e['D']:,} | {role if e['plan_worker'] else 'the process'} | "
                  f"{plan / 2**30:.2f} | {measured / 2**30:.2f} | {plan / measured:.2f} | {what} |")
    print("\n| D | command | stage | plan (GiB) | measured peak (GiB) | plan / measured |")
    print("|---|---|---|---|---|---|")
    for e in results["runs"]:
        for name, measured in e["peaks"].items():
            plan = e["plan"].get(name)
            print(f"| {e['D']:,} | {e['command']} | {name} | {plan / 2**30:.2f} | {measured / 2**30:.2f} | "
                  f"{plan / measured:.2f} |")
        if "cli_peak" in e:  # the whole command line against the plan's largest stage
            plan = max(e["plan"].values())
            print(f"| {e['D']:,} | {e['command']} | whole `daskgen {e['command']}` | {plan / 2**30:.2f} | "
                  f"{e['cli_peak'] / 2**30:.2f} | {plan / e['cli_peak']:.2f} |")


if __name__ == "__main__":
    main()
