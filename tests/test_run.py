"""`daskgen run`: job files, the whole run end to end, resumption, the run report; `daskgen plot`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import daskgen
from daskgen import plot
from daskgen.cli import main
from daskgen.datasets import DIGITS_SCALE, load_digits_dataset, write_csv_dataset
from daskgen.errors import InputError
from daskgen.job import DEFAULTS, default_job, load_job

JOBS = Path(__file__).resolve().parent.parent / "jobs"
#: (height, width) in pixels of the figures of an 8x8, 10-class model (see tests/test_plot.py).
PNG_SIZES = {
    "means-and-samples": (1630, 410),
    "samples-grid": (1900, 640),
    "spectrum": (round(plot.SPECTRUM_SIZE[1] * plot.DPI), round(plot.SPECTRUM_SIZE[0] * plot.DPI)),
}
REPORT_KEYS = {
    "daskgen_run_report", "status", "started", "finished", "versions", "config", "inputs", "model",
    "stages", "timings", "throughput", "outputs", "cluster",
}


def daskgen_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m daskgen.cli ARGS`` as a real process, without a configured scheduler."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return subprocess.run(
        [sys.executable, "-m", "daskgen.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def messages(stderr: str) -> list[str]:
    """daskgen's own lines on stderr (not distributed's warnings, e.g. of a busy dashboard port)."""
    return [line for line in stderr.splitlines() if line.startswith("daskgen:")]


def read_report(out: Path) -> dict:
    return json.loads((out / "run-report.json").read_text())


def kaggle_csv(path: Path, rows: int) -> Path:
    """The tutorial's layout (label,pixel0..pixel63) made from the first ``rows`` digits."""
    images, labels = load_digits_dataset()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_dataset(path, images[:rows], labels[:rows], overwrite=True)
    return path


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`daskgen run --quiet` in an empty folder, twice: (folder, first process, second process)."""
    folder = tmp_path_factory.mktemp("empty")
    first = daskgen_cli("run", "--quiet", "--n", "1000", "--chunk-size", "300", cwd=folder)
    assert first.returncode == 0, first.stderr
    report = read_report(folder / "daskgen-run")
    samples = (folder / "daskgen-run" / "samples.zarr" / "images" / "c")
    before = {p: p.read_bytes() for p in samples.rglob("*") if p.is_file()}
    second = daskgen_cli("run", "--n", "1000", "--chunk-size", "300", cwd=folder)  # not quiet: stage lines
    assert second.returncode == 0, second.stderr
    after = {p: p.read_bytes() for p in samples.rglob("*") if p.is_file()}
    return folder, first, second, report, before == after


def test_default_run_outputs_are_valid(default_run):
    folder, first, *_ = default_run
    out = folder / "daskgen-run"
    assert messages(first.stderr) == []  # --quiet
    assert sorted(p.name for p in out.iterdir()) == ["data", "figures", "model.zarr", "run-report.json", "samples.zarr"]
    # the bundled digits, written as a Zarr dataset that records their scale
    data = zarr.open_group(str(out / "data" / "digits.zarr"), mode="r")
    assert data["images"].shape == (1797, 8, 8) and dict(data.attrs)["daskgen"]["scale"] == DIGITS_SCALE

    model = daskgen.load_model(str(out / "model.zarr"))
    images, labels = load_digits_dataset()
    assert model.classes.tolist() == list(range(10))
    assert model.counts.tolist() == np.bincount(labels).tolist()
    assert model.scale == DIGITS_SCALE and model.image_shape == (8, 8)
    assert [f["path"] for f in model.inputs] == [str(out / "data" / "digits.zarr")]
    np.testing.assert_allclose(model.means[3], images[labels == 3].reshape(-1, 64).mean(axis=0) / 16)

    samples = zarr.open_group(str(out / "samples.zarr"), mode="r")
    assert samples["images"].shape == (1000, 8, 8) and samples["images"].dtype == np.float32
    assert samples["labels"].shape == (1000,)
    y = np.asarray(samples["labels"][...])
    assert set(y.tolist()) <= set(model.classes.tolist()) and len(set(y.tolist())) == 10
    meta = dict(samples.attrs)["daskgen"]
    assert meta["complete"] and meta["seed"] == 0 and meta["model_fingerprint"] == model.fingerprint

    for name, size in PNG_SIZES.items():
        pixels = mpimg.imread(out / "figures" / plot.FILES[name])
        assert pixels.shape[:2] == size, name
        assert pixels[..., :3].std() > 0.05, f"{name} looks blank"


def test_default_run_report(default_run):
    folder, _, _, report, _ = default_run
    out = folder / "daskgen-run"
    assert REPORT_KEYS <= set(report) and report["status"] == "done"
    assert set(report["versions"]) == {"daskgen", "dask", "distributed", "zarr", "numpy", "python"}
    assert report["versions"]["daskgen"] == daskgen.__version__
    assert report["config"]["dataset"]["name"] == "digits"
    assert report["config"]["sample"] == {"n": 1000, "seed": 0, "chunk_size": 300, "dtype": "float32", "class": None}
    assert report["config"]["fit"] == DEFAULTS["fit"]
    files = report["inputs"]["files"]
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    assert report["inputs"]["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert report["model"]["classes"] == list(range(10)) and sum(report["model"]["counts"]) == 1797
    assert report["model"]["class_counts"]["0"] == report["model"]["counts"][0]
    stages = report["stages"]
    assert stages["data"]["status"] == "done" and stages["fit"]["status"] == "done" and not stages["fit"]["skipped"]
    assert stages["fit"]["rows"] == 1797
    assert stages["sample"]["status"] == "done" and (stages["sample"]["chunks"], stages["sample"]["chunks_written"]) == (4, 4)
    assert stages["sample"]["samples_written"] == 1000
    for stage in ("read+fit", "sample", "plot", "total"):
        assert report["timings"][stage] > 0
    assert report["throughput"]["rows_per_s"] > 0 and report["throughput"]["samples_per_s"] > 0
    outputs = report["outputs"]
    assert outputs["model"] == str(out / "model.zarr") and outputs["samples"] == str(out / "samples.zarr")
    assert set(outputs["figures"]) == set(plot.FILES) and all(os.path.isfile(p) for p in outputs["figures"].values())
    assert outputs["report"] == str(out / "run-report.json")
    assert report["cluster"]["workers"] >= 1 and report["cluster"]["threads"] >= 1
    assert report["cluster"]["dashboard"].startswith("http://127.0.0.1:")


def test_rerun_resumes(default_run):
    folder, _, second, first_report, samples_unchanged = default_run
    report = read_report(folder / "daskgen-run")
    stages = report["stages"]
    assert stages["data"]["skipped"] and stages["fit"]["status"] == "skipped: up to date" and stages["fit"]["skipped"]
    assert stages["sample"]["resumed"] and stages["sample"]["chunks_written"] == 0
    assert stages["sample"]["status"] == "skipped: complete"
    assert stages["plot"]["status"] == "done"  # figures are redrawn
    assert report["throughput"] == {"rows_per_s": None, "samples_per_s": None}
    assert report["inputs"] == first_report["inputs"] and report["model"] == first_report["model"]
    assert samples_unchanged
    # one line per stage on stderr, and the dashboard link
    lines = messages(second.stderr)
    assert any(line.startswith("daskgen: dashboard http") for line in lines)
    for stage in ("data", "fit", "sample", "plot"):
        assert sum(line.startswith(f"daskgen: {stage}:") for line in lines) == 1, lines
    assert "daskgen: fit: skipped: up to date" in second.stderr
    assert "wrote 0 of 4 chunks" in second.stderr


def test_plot_command_on_a_run(default_run, tmp_path):
    out = default_run[0] / "daskgen-run"
    result = CliRunner().invoke(
        main, ["plot", str(out / "model.zarr"), "--samples", str(out / "samples.zarr"), "--out", str(tmp_path / "figs")]
    )
    assert result.exit_code == 0, result.output
    assert "means-and-samples.png" in result.stderr
    for name, size in PNG_SIZES.items():
        assert mpimg.imread(tmp_path / "figs" / plot.FILES[name]).shape[:2] == size
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no such model store" in result.stderr and not (tmp_path / "x").exists()


def test_tutorial_train_csv_is_used(tmp_path):
    csv = kaggle_csv(tmp_path / "data" / "train.csv", rows=600)
    proc = daskgen_cli("run", "--quiet", "--n", "200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "daskgen-run"
    assert not (out / "data").exists()  # no dataset converted: the CSV is read as it is
    model = daskgen.load_model(str(out / "model.zarr"))
    assert [f["path"] for f in model.inputs] == [str(csv)]
    assert model.inputs[0]["size"] == csv.stat().st_size
    assert int(model.counts.sum()) == 600 and model.image_shape == (8, 8)
    assert model.scale == pytest.approx(1 / 255)  # integer pixels, scale auto
    report = read_report(out)
    assert report["config"]["inputs"] == [str(csv)] and report["config"]["dataset"] is None
    assert zarr.open_group(str(out / "samples.zarr"), mode="r")["images"].shape == (200, 8, 8)


def test_changed_inputs_refit_and_old_samples_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kaggle_csv(tmp_path / "data" / "train.csv", rows=500)
    runner = CliRunner()
    args = ["run", "-q", "--n", "300", "--chunk-size", "100"]
    assert runner.invoke(main, args).exit_code == 0
    out = tmp_path / "daskgen-run"
    kaggle_csv(tmp_path / "data" / "train.csv", rows=700)  # the inputs change
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("daskgen: error: ") and "samples.zarr" in line and "refitted" in line and "--overwrite" in line
    assert int(daskgen.load_model(str(out / "model.zarr")).counts.sum()) == 700  # the model was replaced
    report = read_report(out)
    assert report["status"] == "failed" and "refitted" in report["error"]
    assert report["stages"]["fit"]["status"] == "refitted: its inputs changed"
    # again: the model is up to date now, the samples still are the old model's
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "another model" in result.stderr
    result = runner.invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.stderr
    report = read_report(out)
    assert report["status"] == "done" and report["stages"]["fit"]["status"] == "refitted: --overwrite"
    assert report["stages"]["sample"]["chunks_written"] == 3 and not report["stages"]["sample"]["resumed"]
    samples = zarr.open_group(str(out / "samples.zarr"), mode="r")
    assert dict(samples.attrs)["daskgen"]["model_fingerprint"] == report["model"]["fingerprint"]
    # other sample settings than the store's are refused as well
    result = runner.invoke(main, ["run", "-q", "--n", "301", "--chunk-size", "100"])
    assert result.exit_code == 2 and "n 300 -> 301" in result.stderr


# ---------------------------------------------------------------------------- job files
def write_job(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, words",
    [
        ("dataset: digits\nsampel: {n: 5}\n", ["unknown key 'sampel'", "did you mean 'sample'?"]),
        ("dataset: digits\nsample: {n: ten}\n", ["sample.n", "expected an integer", "'ten'"]),
        ("inputs: [data/missing.csv]\n", ["inputs", "missing.csv", "no such file"]),
    ],
    ids=["unknown-key", "wrong-type", "missing-input"],
)
def test_job_file_errors_exit_2_before_any_work(tmp_path, text, words):
    job = write_job(tmp_path / "jobs" / "bad.yaml", text)
    proc = daskgen_cli("run", str(job), "--out", "result", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"daskgen: error: {job}: ")
    for word in words:
        assert word in line
    if "missing" in text:
        assert str(tmp_path / "jobs" / "data" / "missing.csv") in line  # relative to the job file
    assert not (tmp_path / "result").exists()
    assert sorted(os.listdir(tmp_path)) == ["jobs"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("dataset: digits\nfit: {reg_covr: 1}\n", ["unknown key 'fit.reg_covr'", "did you mean 'fit.reg_covar'?"]),
        ("dataset: digits\nseed: 3\n", ["unknown key 'seed'", "'sample.seed'"]),
        ("dataset: digits\nplot: maybe\n", ["plot: expected true or false"]),
        ("dataset: digits\nsample: {n: 0}\n", ["sample.n: must be at least 1"]),
        ("dataset: digits\nsample: 5\n", ["sample: expected a mapping"]),
        ("dataset: digits\nfit: {covariance: diagonal}\n", ["fit.covariance: expected one of full, diag"]),
        ("dataset: digits\nfit: {reg_covar: -1}\n", ["fit.reg_covar: must be >= 0"]),
        ("dataset: digits\nscale: 0\n", ["scale: must be positive"]),
        ("dataset: digits\nblocksize: lots\n", ["blocksize: expected a positive size"]),
        ("dataset: digits\nimage_shape: 8by8\n", ["image_shape: expected HxW"]),
        ("dataset: digits\ncluster: {workers: two}\n", ["cluster.workers: expected an integer"]),
        ("dataset: cifar\n", ["dataset.name: expected one of"]),
        ("dataset: {name: digits, splitt: test}\n", ["unknown key 'dataset.splitt'", "'dataset.split'"]),
        ("dataset: {name: idx, source: a.gz}\n", ["dataset.source", "a.gz: no such file"]),
        ("inputs: job.yaml\ndataset: digits\n", ["not both"]),
        ("out: somewhere\n", ["no input"]),
        ("- a\n- b\n", ["a job file is a mapping"]),
        ("sample: {n: [1\n", ["not valid YAML", "line"]),
    ],
)
def test_job_validation_messages(tmp_path, text, words):
    job = write_job(tmp_path / "job.yaml", text)
    with pytest.raises(InputError) as exc:
        load_job(str(job))
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{job}: ")
    for word in words:
        assert word in message


def test_job_values_and_relative_paths(tmp_path):
    csv = kaggle_csv(tmp_path / "project" / "data" / "train.csv", rows=50)
    job = write_job(
        tmp_path / "project" / "jobs" / "j.yaml",
        "inputs: ../data/*.csv\nout: ../runs/j\nscale: 1/16\nimage_shape: [8, 8]\nreport: perf.html\n"
        "fit: {reg_covar: 1e-4, shrinkage: oas}\nsample: {n: 1_000, seed: null, class: 3}\n"
        "cluster: {workers: 2, memory_limit: 1GiB}\n",
    )
    loaded = load_job(str(job), cwd=str(tmp_path))
    assert loaded.inputs == [str(csv.parent / "*.csv")]
    assert loaded.out == str(tmp_path / "project" / "runs" / "j")
    assert loaded.report == str(tmp_path / "project" / "jobs" / "perf.html")
    assert loaded.scale == 1 / 16 and loaded.image_shape == [8, 8]
    assert loaded.fit == {"covariance": "full", "reg_covar": 1e-4, "shrinkage": "oas", "split_every": 8, "incremental": False,
                          "components": 1, "max_iter": 100, "tol": 1e-3, "init": "kmeans++", "seed": 0,
                          "prior_rows": 0.0, "init_sample": 10_000, "transform": "none", "logit_lambda": None,
                          "tiles": None, "rank": None, "oversampling": 10, "power_iterations": 2}
    assert loaded.sample == {"n": 1000, "seed": None, "chunk_size": 10_000, "dtype": "float32", "class": 3}
    assert loaded.cluster["workers"] == 2 and loaded.cluster["memory_limit"] == "1GiB"
    # flags override the file; their paths are relative to the current folder
    over = load_job(
        str(job), cwd=str(tmp_path),
        overrides={"out": "elsewhere", "sample": {"n": 7, "seed": None}, "fit": {"covariance": "diag"}, "cluster": {"workers": None}},
    )
    assert over.out == str(tmp_path / "elsewhere")
    assert over.sample["n"] == 7 and over.sample["class"] == 3 and over.sample["seed"] is None
    assert over.fit["covariance"] == "diag" and over.fit["shrinkage"] == "oas" and over.cluster["workers"] == 2


def test_shipped_job_files(tmp_path):
    default = load_job(str(JOBS / "default.yaml"), cwd=str(tmp_path))
    builtin = default_job(str(tmp_path))
    assert default.to_dict() | {"job_file": None} == builtin.to_dict() | {"job_file": None}
    assert default.out == str(tmp_path / "daskgen-run")
    fashion = load_job(str(JOBS / "fashion-mnist.yaml"), cwd=str(tmp_path))
    assert fashion.dataset["name"] == "fashion-mnist" and fashion.sample["dtype"] == "uint8"
    kaggle = JOBS.parent / "data" / "train.csv"
    if kaggle.exists():  # pragma: no cover - a developer's copy of the Kaggle file
        assert load_job(str(JOBS / "kaggle-train.yaml")).inputs == [str(kaggle)]
    else:
        with pytest.raises(InputError, match=r"kaggle-train.yaml: inputs: .*data/train.csv: no such file"):
            load_job(str(JOBS / "kaggle-train.yaml"))


def test_default_job_prefers_the_tutorial_csv(tmp_path):
    assert default_job(str(tmp_path)).dataset["name"] == "digits"
    csv = kaggle_csv(tmp_path / "data" / "train.csv", rows=20)
    job = default_job(str(tmp_path))
    assert job.inputs == [str(csv)] and job.dataset is None and job.out == str(tmp_path / "daskgen-run")


def test_flags_override_the_job_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = write_job(
        tmp_path / "jobs" / "digits.yaml",
        "dataset: digits\nout: from-job\nfit: {covariance: full}\n"
        "sample: {n: 5000, seed: 3, chunk_size: 1000, dtype: float32}\nplot: false\n",
    )
    result = CliRunner().invoke(main, [
        "run", str(job), "-q", "--out", "flags", "--n", "250", "--chunk-size", "100", "--seed", "7",
        "--dtype", "uint8", "--covariance", "diag", "--reg-covar", "0.01", "--shrinkage", "oas",
        "--threads-per-worker", "1", "--report", "perf.html",
    ])
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "jobs" / "from-job").exists()
    out = tmp_path / "flags"
    report = read_report(out)
    assert report["config"]["sample"] == {"n": 250, "seed": 7, "chunk_size": 100, "dtype": "uint8", "class": None}
    assert report["config"]["fit"] == {**DEFAULTS["fit"], "covariance": "diag", "reg_covar": 0.01, "shrinkage": "oas"}
    assert report["cluster"]["threads"] == report["cluster"]["workers"] == 1
    assert report["stages"]["plot"]["skipped"] and not (out / "figures").exists()  # plot: false in the job
    model = daskgen.load_model(str(out / "model.zarr"))
    assert model.covariance_type == "diag" and model.config["reg_covar"] == 0.01 and model.config["shrinkage"] == "oas"
    samples = zarr.open_group(str(out / "samples.zarr"), mode="r")
    assert samples["images"].shape == (250, 8, 8) and samples["images"].dtype == np.uint8
    assert dict(samples.attrs)["daskgen"]["seed"] == 7
    assert (tmp_path / "perf.html").stat().st_size > 0 and report["outputs"]["performance_report"] == str(tmp_path / "perf.html")
    # a changed fit option refits (the samples of the old model are then refused)
    result = CliRunner().invoke(main, ["run", str(job), "-q", "--out", "flags", "--n", "250", "--chunk-size", "100",
                                       "--seed", "7", "--dtype", "uint8", "--covariance", "full"])
    assert result.exit_code == 2 and "covariance 'diag' -> 'full'" in read_report(out)["stages"]["fit"]["status"]


def test_missing_job_file_and_bad_out(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml: no such job file" in result.stderr
    (tmp_path / "file").write_text("x")
    result = runner.invoke(main, ["run", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_incremental_job_over_a_growing_folder(tmp_path):
    """A nightly job with fit.incremental reads only the new files and equals a fit on all."""
    import daskgen
    from daskgen.job import load_job
    from daskgen.run import run_job

    images, labels = daskgen.datasets.load_digits_dataset()
    X = images.reshape(len(images), -1)
    folder = tmp_path / "incoming"
    folder.mkdir()
    daskgen.datasets.write_csv_dataset(str(folder / "a.csv"), X[:900], labels[:900])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "inputs: incoming\nout: out\nscale: 1/16\nimage_shape: 8x8\n"
        "fit: {incremental: true}\nsample: {n: 300, seed: 1, chunk_size: 100}\nplot: false\n"
    )
    first = run_job(load_job(str(job_file)), quiet=True)
    assert first["stages"]["fit"]["status"] == "done"
    daskgen.datasets.write_csv_dataset(str(folder / "b.csv"), X[900:], labels[900:])
    second = run_job(load_job(str(job_file)), quiet=True)
    assert second["stages"]["fit"]["status"] == "updated: new inputs folded in"
    assert second["stages"]["fit"]["rows"] == len(X) - 900
    assert second["stages"]["sample"]["chunks_written"] == 3  # samples of the old model redrawn
    model = daskgen.load_model(str(tmp_path / "out" / "model.zarr"))
    full = daskgen.fit(str(folder), scale=1 / 16)
    np.testing.assert_allclose(model.covariances, full.covariances, rtol=1e-11, atol=1e-13)
    third = run_job(load_job(str(job_file)), quiet=True)
    assert third["stages"]["fit"]["skipped"] and third["stages"]["sample"]["skipped"]


def test_shipped_mixture_job_file(tmp_path):
    job = load_job(str(JOBS / "fashion-mnist-mixture.yaml"), cwd=str(tmp_path))
    assert job.dataset["name"] == "fashion-mnist" and job.fit["components"] > 1
    assert set(job.fit) == set(DEFAULTS["fit"])


def test_mixture_job_end_to_end(tmp_path):
    """fit.components > 1 fits a mixture per class, as `daskgen fit --components` does; a rerun
    skips the fit, a changed EM option refits, and flags override the job file."""
    job_file = write_job(
        tmp_path / "mixture.yaml",
        "dataset: digits\nout: out\nfit: {components: 2, covariance: diag, max_iter: 3, tol: 0, seed: 1, "
        "init_sample: 200}\nsample: {n: 200, seed: 2, chunk_size: 100}\nplot: false\ncluster: {threads_per_worker: 1}\n",
    )
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(job_file)])
    assert result.exit_code == 0, result.stderr
    assert "daskgen: fit: EM iteration 3" in result.stderr
    model = daskgen.load_model(str(tmp_path / "out" / "model.zarr"))
    assert model.kind == "mixture" and model.n_components == 2 and model.covariance_type == "diag"
    assert model.config["max_iter"] == 3 and model.config["seed"] == 1
    assert model.config["reg_covar"] == pytest.approx(DIGITS_SCALE**2 / 12)  # auto on integer pixels
    by_fit = daskgen.fit_mixture(str(tmp_path / "out" / "data" / "digits.zarr"), 2, covariance="diag", max_iter=3,
                                 tol=0, seed=1, init_sample=200)
    np.testing.assert_allclose(model.means, by_fit.means, rtol=1e-10)
    rerun = runner.invoke(main, ["run", str(job_file), "-q"])
    assert rerun.exit_code == 0 and read_report(tmp_path / "out")["stages"]["fit"]["skipped"]
    # a flag overrides the job's EM option: refit (the samples of the old model are then refused)
    changed = runner.invoke(main, ["run", str(job_file), "-q", "--max-iter", "2"])
    assert changed.exit_code == 2, changed.stderr
    assert "max_iter 3 -> 2" in read_report(tmp_path / "out")["stages"]["fit"]["status"]
    bad = runner.invoke(main, ["run", str(job_file), "-q", "--shrinkage", "oas"])
    assert bad.exit_code == 2 and "fit.shrinkage applies to one Gaussian per class" in bad.stderr
