"""Quality on Fashion-MNIST test under the likelihood protocol: pixel vs logit space x one
Gaussian vs a mixture per class.

    python benchmarks/quality.py sweep logit-gaussian          # fit + validation score of each candidate
    python benchmarks/quality.py sweep logit-mixture --candidate 2
    python benchmarks/quality.py test --ndb                    # the chosen models on test: the README table

Every model is fitted on the first 50,000 training images; the last 10,000 training
images are the validation split on which each family's hyper-parameters are chosen
(lowest validation bits/dim). The test set is never used for a choice. ``sweep`` runs
the candidates of a family that are not measured yet (or only ``--candidate I``), one
fit and one validation score each, and keeps the model stores in ``benchmarks/work``
and the scores in ``benchmarks/results/quality-sweep.json``, so each invocation stays
short. ``test`` scores each family's chosen model on the test images with
``daskgen.evaluate`` (bits/dim = -log2 p(x~)/D + 8 with x~ = (x + u)/256, as
RealNVP/Glow/MAF; Bayes accuracy at the pixels' bin centres), draws its 10 x 4 sample
grid (``benchmarks/results/quality-samples-<family>.png``) and writes
``benchmarks/results/quality.json`` and a markdown table.

NDB (Richardson & Weiss 2018): ``test --ndb`` also draws 100,000 uint8 samples of every
model and measures, with ``daskgen evaluate-samples`` (100 k-means bins of the 50,000
fitting images), their NDB against the test set, and that of the held-out training rows
against the test set (the measure's calibration: near the z-test's false-positive rate,
alpha * k = 5). Tables and figures of each go to ``benchmarks/results/quality-ndb-*/``.

Pixel-space candidates: the choices ``benchmarks/gmm_quality.py`` made on the same
validation split (reg_covar = the dequantization noise's variance; K = 5 with prior_rows
1,000), re-measured here under the protocol.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gmm_quality import DEQUANTIZATION_VARIANCE, RESULTS, WORK, fit_one, prepare

SWEEP = RESULTS / "quality-sweep.json"
OUT = RESULTS / "quality.json"
MAX_ITER, TOL, SEED = 10, 0.05, 0
#: Per family: the transform and the candidates (components, reg_covar, prior_rows).
FAMILIES: dict[str, dict] = {
    "pixel-gaussian": {"transform": "none", "grid": [(1, DEQUANTIZATION_VARIANCE, 0.0)]},
    "logit-gaussian": {"transform": "logit", "grid": [(1, r, 0.0) for r in (0.01, 0.03, 0.1, 0.3, 1.0)]},
    "pixel-mixture": {"transform": "none", "grid": [(5, DEQUANTIZATION_VARIANCE, 1000.0)]},
    "logit-mixture": {"transform": "logit", "grid": [(2, 0.1, 1000.0), (5, 0.1, 300.0), (5, 0.1, 1000.0),
                                                     (5, 0.1, 100.0), (5, 0.1, 3000.0)]},
}
#: Published anchors (same protocol), for the table.
ANCHORS = [("Glow (Nalisnick et al. 2019)", "Fashion-MNIST", 2.96),
           ("per-class Gaussian (MAF paper)", "MNIST", 1.97), ("RealNVP (MAF paper)", "MNIST", 1.06)]


class Args:  # what gmm_quality.fit_one reads
    max_iter, tol, seed = MAX_ITER, TOL, SEED


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _key(family: str, cand: tuple) -> str:
    K, reg, prior = cand
    return f"{family}:K{K}:reg{reg:.3g}:prior{prior:g}"


def _store(key: str) -> str:
    return str(WORK / "quality-models" / (key.replace(":", "-") + ".zarr"))


def sweep(family: str, only: int | None) -> None:
    from daskgen.distributed.cluster import connect
    from daskgen.evaluate import evaluate

    paths = prepare(None, 10_000)
    done = _load(SWEEP)
    spec = FAMILIES[family]
    with connect(quiet=True):
        for i, cand in enumerate(spec["grid"]):
            key = _key(family, cand)
            if (only is not None and i != only) or key in done:
                continue
            K, reg, prior = cand
            model, info, fit_s = fit_one(K, paths["fit"], reg, prior, Args, transform=spec["transform"])
            model.save(_store(key), overwrite=True)
            start = time.perf_counter()
            val = evaluate(model, paths["validation"], seed=SEED)
            done = _load(SWEEP)
            done[key] = {"family": family, "components": K, "reg_covar": reg, "prior_rows": prior,
                         "transform": spec["transform"], "fit_seconds": round(fit_s, 1),
                         "validation_seconds": round(time.perf_counter() - start, 1),
                         "validation_bits_per_dim": val["log_likelihood"]["bits_per_dim"],
                         "validation_accuracy": val["classifier"]["accuracy"], **info}
            SWEEP.write_text(json.dumps(done, indent=2) + "\n")
            print(key, json.dumps(done[key]), file=sys.stderr)


def chosen(family: str, done: dict) -> tuple[str, dict] | None:
    rows = [(k, v) for k, v in done.items() if v["family"] == family and v["validation_bits_per_dim"] is not None]
    return min(rows, key=lambda kv: kv[1]["validation_bits_per_dim"]) if rows else None


def ndb_available() -> bool:
    exe = shutil.which("daskgen")
    if exe is None:
        return False
    return subprocess.run([exe, "evaluate-samples", "--help"], capture_output=True).returncode == 0


def run_ndb(samples: str, reference: str, train: str, out: Path) -> dict:
    """``daskgen evaluate-samples`` of ``samples`` against ``reference`` (bins on ``train``): NDB, k, alpha."""
    subprocess.run(["daskgen", "evaluate-samples", samples, "--reference", reference, "--train", train,
                    "--out", str(out), "--overwrite", "--quiet"], check=True)
    result = json.loads((out / "ndb.json").read_text())
    return {k: result[k] for k in ("ndb", "k", "ndb_over_k", "alpha", "expected_false_positives")}


def test(with_ndb: bool, families: list[str]) -> None:
    import daskgen
    from daskgen.distributed.cluster import connect
    from daskgen.evaluate import evaluate, write_outputs
    from daskgen.io.store import read_model
    from daskgen.plot import plot_sample_grid

    paths = prepare(None, 10_000)
    done = _load(SWEEP)
    ndb = with_ndb and ndb_available()
    previous = _load(OUT)
    rows = [r for r in previous.get("results", []) if r["family"] not in families]
    with connect(quiet=True):
        for family in families:
            pick = chosen(family, done)
            if pick is None:
                print(f"{family}: no candidate measured; run `sweep {family}` first", file=sys.stderr)
                continue
            key, val = pick
            model = read_model(_store(key))
            start = time.perf_counter()
            rep = evaluate(model, paths["test"], seed=SEED)
            write_outputs(rep, str(RESULTS / f"quality-evaluation-{family}"))
            grid = RESULTS / f"quality-samples-{family}.png"
            plot_sample_grid(model, str(grid), seed=SEED)
            ll = rep["log_likelihood"]
            row = {"family": family, "chosen": key, **{k: val[k] for k in ("components", "reg_covar", "prior_rows",
                                                                          "transform", "validation_bits_per_dim")},
                   "candidates": sum(v["family"] == family for v in done.values()),
                   "test_bits_per_dim": ll["bits_per_dim"], "test_stderr_nats": ll["stderr"],
                   "test_accuracy": rep["classifier"]["accuracy"], "evaluate_seconds": round(time.perf_counter() - start, 1),
                   "sample_grid": grid.name}
            if ndb:
                samples = str(WORK / f"quality-samples-{family}.zarr")
                daskgen.generate(model, 100_000, samples, seed=SEED, dtype="uint8", overwrite=True)
                row["ndb"] = run_ndb(samples, paths["test"], paths["fit"], RESULTS / f"quality-ndb-{family}")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    rows.sort(key=lambda r: list(FAMILIES).index(r["family"]))
    res = {"protocol": rep["log_likelihood"]["protocol"], "fit_rows": 50_000, "validation_rows": 10_000,
           "test_rows": 10_000, "max_iter": MAX_ITER, "tol": TOL, "seed": SEED, "anchors": ANCHORS, "results": rows}
    if ndb:
        res["ndb_calibration"] = previous.get("ndb_calibration") or run_ndb(
            paths["validation"], paths["test"], paths["fit"], RESULTS / "quality-ndb-heldout")
    else:
        res["ndb"] = "not measured: `daskgen evaluate-samples` is not available" if with_ndb else "not requested"
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print("\n| model | space | components | reg_covar | prior_rows | bits/dim (test) | accuracy (test) | samples |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['family']} | {'logit' if r['transform'] == 'logit' else 'pixel'} | {r['components']} "
              f"| {r['reg_covar']:.3g} | {r['prior_rows']:g} | {r['test_bits_per_dim']:.3f} | {r['test_accuracy']:.4f} "
              f"| [grid](benchmarks/results/{r['sample_grid']}) |")
    for name, data, bits in ANCHORS:
        print(f"| {name} | {data} | | | | {bits:.2f} | | |")
    print(f"\nwritten {OUT}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("family", choices=list(FAMILIES))
    s.add_argument("--candidate", type=int, help="only this candidate (index in the family's grid)")
    t = sub.add_parser("test")
    t.add_argument("--ndb", action="store_true", help="also NDB of 100,000 samples per model (daskgen evaluate-samples)")
    t.add_argument("families", nargs="*", choices=[[], *FAMILIES], default=list(FAMILIES),
                   help="only these families (their rows replace those in quality.json)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.command == "sweep":
        sweep(args.family, args.candidate)
    else:
        test(args.ndb, args.families or list(FAMILIES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
