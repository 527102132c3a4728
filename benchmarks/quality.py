"""Quality on Fashion-MNIST test under the likelihood protocol: pixel vs logit space x one
Gaussian vs a mixture per class (full covariances, or factor analysers).

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

Each family has a criterion: ``bits`` families choose on validation bits/dim; ``ndb``
families (``*-ndb``) on the validation NDB of 100,000 samples of each candidate (bins of
the fitting images, the validation images as reference), ties to the lower bits/dim —
the sample rows of the README table, whose logit lambda is chosen for the samples, not
the likelihood. Candidates are (components, reg_covar, prior_rows[, lambda[, rank[,
max_iter]]]); a rank makes the family's components low-rank (``logit-mfa``: mixtures of
factor analysers, ``--covariance fa --rank q``, reg_covar the floor on psi). NDB needs the
``daskgen`` command on PATH (the virtualenv's bin directory).
Mixture fits need more than 2 GiB (run them alone); ``--memory-limit`` caps a single
local worker instead of the default cluster.
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
N_SAMPLES = 100_000
LAM0 = 1e-6  # --logit-lambda's default
#: Per family: the transform, the criterion that chooses among its candidates on the
#: validation split (``bits``: lowest bits/dim; ``ndb``: fewest bins that differ, ties to
#: the lower bits/dim) and the candidates (components, reg_covar, prior_rows[, lambda]).
FAMILIES: dict[str, dict] = {
    "pixel-gaussian": {"transform": "none", "criterion": "bits", "grid": [(1, DEQUANTIZATION_VARIANCE, 0.0)]},
    "logit-gaussian": {"transform": "logit", "criterion": "bits",
                       "grid": [*((1, r, 0.0) for r in (0.01, 0.03, 0.1, 0.3, 1.0)),
                                (1, 0.1, 0.0, 1e-4), (1, 0.1, 0.0, 1e-3), (1, 0.03, 0.0, 1e-3), (1, 0.03, 0.0, 3e-4),
                                (1, 0.1, 0.0, 3e-4), (1, 0.01, 0.0, 1e-3), (1, 0.3, 0.0, 3e-4)]},
    # --logit-lambda's default, reg_covar chosen on validation at that lambda (the default's row)
    "logit-gaussian-default": {"transform": "logit", "criterion": "bits", "grid": [(1, 0.1, 0.0)]},
    "pixel-mixture": {"transform": "none", "criterion": "bits", "grid": [(5, DEQUANTIZATION_VARIANCE, 1000.0)]},
    "logit-mixture": {"transform": "logit", "criterion": "bits",
                      "grid": [(2, 0.1, 1000.0), (5, 0.1, 300.0), (5, 0.1, 1000.0), (5, 0.1, 100.0), (5, 0.1, 3000.0),
                               (5, 0.1, 3000.0, 1e-3)]},
    # The same kinds with lambda (and reg_covar, which must follow lambda's scale) chosen by
    # validation NDB: the samples' criterion, not the likelihood's.
    "logit-gaussian-ndb": {"transform": "logit", "criterion": "ndb",
                           "grid": [(1, 0.1, 0.0), (1, 0.01, 0.0, 0.01), (1, 0.001, 0.0, 0.05), (1, 0.001, 0.0, 0.1),
                                    (1, 0.001, 0.0, 0.2)]},
    "logit-mixture-ndb": {"transform": "logit", "criterion": "ndb", "grid": [(5, 0.001, 1000.0, 0.1)]},
    # Mixtures of factor analysers (--covariance fa --rank q): candidates (components, reg_covar
    # = the floor on psi, prior_rows, lambda, rank).
    "logit-mfa": {"transform": "logit", "criterion": "bits", "covariance": "fa",
                  "grid": [(5, 0.03, 0.0, 1e-3, 32), (10, 0.03, 0.0, 1e-3, 32), (5, 0.03, 0.0, 1e-3, 64),
                           (20, 0.03, 0.0, 1e-3, 32), (10, 0.03, 0.0, 1e-3, 64), (10, 0.01, 0.0, 1e-3, 32),
                           (20, 0.03, 0.0, 1e-3, 64), (10, 0.03, 0.0, 1e-4, 32), (10, 0.01, 0.0, 1e-3, 16),
                           (10, 0.003, 0.0, 1e-3, 32), (15, 0.01, 0.0, 1e-3, 24), (10, 0.01, 0.0, 3e-4, 32),
                           (10, 0.01, 300.0, 3e-4, 32), (10, 0.01, 1000.0, 3e-4, 32), (15, 0.01, 1000.0, 3e-4, 32),
                           (10, 0.01, 1000.0, 3e-4, 48), (8, 0.01, 0.0, 3e-4, 32), (12, 0.01, 0.0, 3e-4, 32),
                           (10, 0.01, 0.0, 3e-4, 40), (10, 0.003, 0.0, 3e-4, 32), (10, 0.01, 0.0, 3e-4, 40, 20),
                           (8, 0.01, 0.0, 3e-4, 48), (10, 0.01, 0.0, 3e-4, 48), (8, 0.01, 0.0, 3e-4, 48, 20),
                           (6, 0.01, 0.0, 3e-4, 64), (8, 0.01, 0.0, 3e-4, 64), (6, 0.01, 0.0, 3e-4, 48),
                           (6, 0.01, 0.0, 3e-4, 64, 20), (5, 0.01, 0.0, 3e-4, 64), (4, 0.01, 0.0, 3e-4, 64),
                           (5, 0.01, 0.0, 3e-4, 96)]},
    # The same kind in pixel space (reg_covar: the floor on psi; the dequantization noise's
    # variance, as the pixel-space full covariances).
    "pixel-mfa": {"transform": "none", "criterion": "bits", "covariance": "fa",
                  "grid": [(5, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 16), (5, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 32),
                           (5, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 64), (5, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 128),
                           (10, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 64), (20, DEQUANTIZATION_VARIANCE, 0.0, LAM0, 64)]},
    "pixel-gaussian-ndb": {"transform": "none", "criterion": "ndb",
                           "grid": [(1, DEQUANTIZATION_VARIANCE, 0.0), (1, 1e-3, 0.0)]},
}
#: Published anchors (same protocol), for the table.
ANCHORS = [("Glow (Nalisnick et al. 2019)", "Fashion-MNIST", 2.96),
           ("per-class Gaussian (MAF paper)", "MNIST", 1.97), ("RealNVP (MAF paper)", "MNIST", 1.06)]


class Args:  # what gmm_quality.fit_one reads
    max_iter, tol, seed = MAX_ITER, TOL, SEED


def _args(max_iter: int) -> type:
    return type("Args", (Args,), {"max_iter": max_iter})


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _cand(cand: tuple) -> tuple[int, float, float, float, int | None, int]:
    """(components, reg_covar, prior_rows, lambda, rank, max_iter): lambda defaulting to
    --logit-lambda's default, rank to None (full covariances), max_iter to MAX_ITER."""
    full = (*cand, LAM0) if len(cand) == 3 else cand
    return (*full, None, MAX_ITER)[:6] if len(full) == 4 else (*full, MAX_ITER)[:6]


def _key(family: str, cand: tuple) -> str:
    K, reg, prior, lam, rank, max_iter = _cand(cand)
    tail = "" if lam == LAM0 else f":lam{lam:g}"  # keys of the default lambda as before
    tail += "" if rank is None else f":q{rank}"
    tail += "" if max_iter == MAX_ITER else f":it{max_iter}"
    return f"{family}:K{K}:reg{reg:.3g}:prior{prior:g}{tail}"


def _store(key: str) -> str:
    return str(WORK / "quality-models" / (key.replace(":", "-") + ".zarr"))


def _cluster(memory_limit: str | None) -> dict:
    """``connect``'s options: one worker capped at ``memory_limit``, or the default local cluster."""
    return {"workers": 1, "memory_limit": memory_limit} if memory_limit else {}


def sweep(family: str, only: int | None, memory_limit: str | None = None) -> None:
    from daskgen.distributed.cluster import connect
    from daskgen.evaluation.heldout import evaluate

    paths = prepare(None, 10_000)
    done = _load(SWEEP)
    spec = FAMILIES[family]
    with connect(quiet=True, **_cluster(memory_limit)):
        for i, cand in enumerate(spec["grid"]):
            key = _key(family, cand)
            if (only is not None and i != only) or key in done:
                continue
            K, reg, prior, lam, rank, max_iter = _cand(cand)
            logit = {"logit_lambda": lam} if spec["transform"] == "logit" else {}
            kind = {"covariance": spec["covariance"], "rank": rank} if rank is not None else {}
            model, info, fit_s = fit_one(K, paths["fit"], reg, prior, _args(max_iter), transform=spec["transform"], **logit, **kind)
            model.save(_store(key), overwrite=True)
            start = time.perf_counter()
            val = evaluate(model, paths["validation"], seed=SEED)
            entry = {"family": family, "components": K, "reg_covar": reg, "prior_rows": prior,
                     "transform": spec["transform"], **({"logit_lambda": lam} if logit else {}), **kind,
                     "fit_seconds": round(fit_s, 1), "validation_seconds": round(time.perf_counter() - start, 1),
                     "validation_bits_per_dim": val["log_likelihood"]["bits_per_dim"],
                     "validation_accuracy": val["classifier"]["accuracy"], **info}
            if spec["criterion"] == "ndb":
                entry["validation_ndb"] = sample_ndb(model, paths["validation"], paths["fit"],
                                                     WORK / f"quality-ndb-{key.replace(':', '-')}")["ndb"]
            done = _load(SWEEP)
            done[key] = entry
            SWEEP.write_text(json.dumps(done, indent=2) + "\n")
            print(key, json.dumps(done[key]), file=sys.stderr)


def chosen(family: str, done: dict) -> tuple[str, dict] | None:
    """The family's candidate with the best validation score under its criterion."""
    by_ndb = FAMILIES[family]["criterion"] == "ndb"
    rows = [(k, v) for k, v in done.items() if v["family"] == family and v["validation_bits_per_dim"] is not None
            and (not by_ndb or v.get("validation_ndb") is not None)]
    if not rows:
        return None
    return min(rows, key=lambda kv: ((kv[1]["validation_ndb"],) if by_ndb else ()) + (kv[1]["validation_bits_per_dim"],))


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


def sample_ndb(model, reference: str, train: str, out: Path) -> dict:
    """NDB of ``N_SAMPLES`` uint8 samples of ``model`` against ``reference`` (bins on ``train``)."""
    import daskgen

    samples = str(WORK / "quality-samples-tmp.zarr")
    daskgen.generate(model, N_SAMPLES, samples, seed=SEED, dtype="uint8", overwrite=True)
    return run_ndb(samples, reference, train, out)


def test(with_ndb: bool, families: list[str], memory_limit: str | None = None) -> None:
    import daskgen
    from daskgen.distributed.cluster import connect
    from daskgen.evaluation.heldout import evaluate, write_outputs
    from daskgen.io.store import read_model
    from daskgen.plot import plot_sample_grid

    paths = prepare(None, 10_000)
    done = _load(SWEEP)
    ndb = with_ndb and ndb_available()
    previous = _load(OUT)
    rows = [r for r in previous.get("results", []) if r["family"] not in families]
    with connect(quiet=True, **_cluster(memory_limit)):
        for family in families:
            pick = chosen(family, done)
            if pick is None:
                print(f"{family}: no candidate measured; run `sweep {family}` first", file=sys.stderr)
                continue
            key, val = pick
            if not Path(_store(key)).exists():
                print(f"{family}: the model of {key} is not in {WORK}; run `sweep {family}` again", file=sys.stderr)
                rows += [r for r in previous.get("results", []) if r["family"] == family and r["chosen"] == key]
                continue
            model = read_model(_store(key))
            start = time.perf_counter()
            rep = evaluate(model, paths["test"], seed=SEED)
            write_outputs(rep, str(RESULTS / f"quality-evaluation-{family}"))
            grid = RESULTS / f"quality-samples-{family}.png"
            plot_sample_grid(model, str(grid), seed=SEED)
            ll = rep["log_likelihood"]
            row = {"family": family, "chosen": key, "criterion": FAMILIES[family]["criterion"],
                   **{k: val[k] for k in ("components", "reg_covar", "prior_rows", "transform", "validation_bits_per_dim")},
                   **{k: val[k] for k in ("logit_lambda", "validation_ndb", "covariance", "rank") if k in val},
                   "candidates": sum(v["family"] == family for v in done.values()),
                   "test_bits_per_dim": ll["bits_per_dim"], "test_stderr_nats": ll["stderr"],
                   "test_accuracy": rep["classifier"]["accuracy"], "evaluate_seconds": round(time.perf_counter() - start, 1),
                   "sample_grid": grid.name}
            if ndb:
                samples = str(WORK / f"quality-samples-{family}.zarr")
                daskgen.generate(model, N_SAMPLES, samples, seed=SEED, dtype="uint8", overwrite=True)
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
    print("\n| model | chosen by | space | components | reg_covar | prior_rows | bits/dim (test) | accuracy (test) "
          "| NDB (validation) | NDB (test) | samples |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        space = f"logit (λ = {r.get('logit_lambda', LAM0):g})" if r["transform"] == "logit" else "pixel"
        kind = f" ({r['covariance']}, q = {r['rank']})" if r.get("rank") else ""
        print(f"| {r['family']} | validation {r.get('criterion', 'bits')} | {space} | {r['components']}{kind} "
              f"| {r['reg_covar']:.3g} | {r['prior_rows']:g} | {r['test_bits_per_dim']:.3f} | {r['test_accuracy']:.4f} "
              f"| {r.get('validation_ndb', '')} | {r.get('ndb', {}).get('ndb', '')} "
              f"| [grid](benchmarks/results/{r['sample_grid']}) |")
    for name, data, bits in ANCHORS:
        print(f"| {name} | | {data} | | | | {bits:.2f} | | | | |")
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
    for p in (s, t):
        p.add_argument("--memory-limit", help="one local worker of this memory limit (e.g. 1.5GiB) instead of the default")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.command == "sweep":
        sweep(args.family, args.candidate, args.memory_limit)
    else:
        test(args.ndb, args.families or list(FAMILIES), args.memory_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
