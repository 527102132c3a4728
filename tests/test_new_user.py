"""What a new user meets first: defaults that give a sensible model, outputs that cannot be
written, results that are not silently replaced, a mixture that cannot be updated, and
local clusters that listen on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _helpers import assert_one_line_error, write_csv
from _helpers import run_cli as run

import daskgen
from daskgen.datasets import write_zarr_dataset


@pytest.fixture(scope="module")
def fashion_split(fashion, tmp_path_factory):
    """6,000 Fashion-MNIST training rows and 2,000 held-out rows, as `daskgen data` writes them."""
    images, labels = fashion
    where = tmp_path_factory.mktemp("fm")
    attrs = {"daskgen": {"scale": 1 / 255}}
    write_zarr_dataset(str(where / "train.zarr"), images[:6000], labels[:6000], chunk_rows=3000, attrs=attrs)
    write_zarr_dataset(str(where / "test.zarr"), images[50000:52000], labels[50000:52000], chunk_rows=1000, attrs=attrs)
    return where


def test_default_flags_give_a_sensible_evaluation(fashion_split, tmp_path):
    train, test = fashion_split / "train.zarr", fashion_split / "test.zarr"
    assert run("fit", train, "--out", tmp_path / "m.zarr").exit_code == 0
    r = run("evaluate", tmp_path / "m.zarr", test, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["model"]["reg_covar"] == pytest.approx((1 / 255) ** 2 / 12, rel=1e-12)
    assert rep["log_likelihood"]["neg_inf_rows"] == 0 and rep["classifier"]["neg_inf_rows"] == 0
    assert np.isfinite(rep["log_likelihood"]["conditional_nats_per_image"])
    assert rep["classifier"]["accuracy"] > 0.6, rep["classifier"]["accuracy"]
    assert "warning" not in r.output

    # explicitly unregularised: rows no class can explain are counted and said, not hidden
    assert run("fit", train, "--out", tmp_path / "m0.zarr", "--reg-covar", 0).exit_code == 0
    r = run("evaluate", tmp_path / "m0.zarr", test, "--out", tmp_path / "ev0")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev0" / "evaluation.json").read_text())
    model = daskgen.load_model(str(tmp_path / "m0.zarr"))
    X = np.asarray(__import__("zarr").open_group(str(test), mode="r")["images"][:]).reshape(2000, -1) / 255
    expected = int(np.isneginf(model.class_log_likelihood(X)).all(axis=1).sum())
    assert expected > 0 and rep["classifier"]["neg_inf_rows"] == expected
    assert f"accuracy counts {expected:,} rows" in r.output


def test_evaluate_refuses_pixels_a_fit_refuses(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, size=(60, 4)), rng.integers(0, 2, 60)
    assert run("fit", write_csv(tmp_path / "a.csv", X, y), "--out", tmp_path / "m.zarr").exit_code == 0
    X[5, 2] = 256
    bad = write_csv(tmp_path / "b.csv", X, y)
    assert_one_line_error(run("fit", bad, "--out", tmp_path / "x.zarr"), "256", "outside 0..255")
    assert_one_line_error(run("evaluate", tmp_path / "m.zarr", bad), "256", "outside 0..255")


def test_scale_as_a_fraction_on_the_command_line(tmp_path):
    rng = np.random.default_rng(1)
    path = write_csv(tmp_path / "a.csv", rng.integers(0, 17, size=(80, 4)), rng.integers(0, 2, 80))
    r = run("fit", path, "--out", tmp_path / "m.zarr", "--scale", "1/16")
    assert r.exit_code == 0, r.output
    assert daskgen.load_model(str(tmp_path / "m.zarr")).scale == 1 / 16
    assert_one_line_error(run("fit", path, "--out", tmp_path / "x.zarr", "--scale", "1/0"), "scale")


@pytest.fixture
def small_model(tmp_path):
    rng = np.random.default_rng(2)
    path = write_csv(tmp_path / "a.csv", rng.integers(0, 256, size=(90, 4)), rng.integers(0, 3, 90))
    assert run("fit", path, "--out", tmp_path / "m.zarr").exit_code == 0
    return path, tmp_path / "m.zarr"


def test_unwritable_outputs_fail_at_once_in_one_line(small_model, tmp_path):
    # A path whose parent is a regular file cannot be created, even by root (who
    # ignores permission bits): the check runs before any work, for every command.
    data, model = small_model
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "sub"
    assert_one_line_error(run("fit", data, "--out", out / "m.zarr"), "cannot write", "is not a folder")
    assert_one_line_error(run("sample", model, "--n", 5, "--out", out / "s.zarr"), "cannot write")
    assert_one_line_error(run("evaluate", model, data, "--out", out), "cannot write")
    assert_one_line_error(run("plot", model, "--out", out), "cannot write")
    assert_one_line_error(run("data", "digits", "--out", out / "d.zarr"), "cannot write")
    assert_one_line_error(run("run", "--out", out), "cannot write")
    assert_one_line_error(run("evaluate-samples", data, "--reference", data, "--train", data, "--bins", 5, "--out", out),
                          "cannot write")
    assert blocker.read_text() == "not a folder"


def test_evaluate_and_plot_outputs_follow_the_overwrite_rule(small_model, tmp_path):
    data, model = small_model
    assert run("evaluate", model, data, "--out", tmp_path / "ev").exit_code == 0
    before = (tmp_path / "ev" / "evaluation.json").read_bytes()
    assert_one_line_error(run("evaluate", model, data, "--out", tmp_path / "ev", "--seed", 3),
                          "evaluation.json", "--overwrite")
    assert (tmp_path / "ev" / "evaluation.json").read_bytes() == before
    assert run("evaluate", model, data, "--out", tmp_path / "ev", "--seed", 3, "--overwrite").exit_code == 0
    assert run("plot", model, "--out", tmp_path / "fig").exit_code == 0
    stamp = os.stat(tmp_path / "fig" / "spectrum.png").st_mtime_ns
    assert_one_line_error(run("plot", model, "--out", tmp_path / "fig"), "spectrum.png", "--overwrite")
    assert os.stat(tmp_path / "fig" / "spectrum.png").st_mtime_ns == stamp
    assert run("plot", model, "--out", tmp_path / "fig", "--overwrite").exit_code == 0


def test_update_onto_a_mixture_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    X, y = rng.integers(0, 256, size=(200, 4)), rng.integers(0, 2, 200)
    a = write_csv(tmp_path / "a.csv", X, y)
    b = write_csv(tmp_path / "b.csv", X[::-1], y)
    assert run("fit", a, "--out", tmp_path / "k2.zarr", "--components", 2, "--max-iter", 3).exit_code == 0
    line = assert_one_line_error(run("fit", b, "--update", tmp_path / "k2.zarr", "--out", tmp_path / "k2b.zarr"),
                                 "k2.zarr", "mixture", "fit the mixture again")
    assert "Traceback" not in line and not (tmp_path / "k2b.zarr").exists()


def test_sample_count_and_repr(small_model):
    model = daskgen.load_model(str(small_model[1]))
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(-5)
    text = repr(model)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("GaussianClassModel(classes=3, features=4, image_shape=(2, 2), covariance='full'"), text
    assert model.sample(0)[0].shape == (0, 4)


def test_a_mixture_factors_once_for_every_figure(tmp_path):
    from daskgen.models.mixture_em import fit_em

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    model = fit_em(X, y, 2, reg_covar=1e-3, max_iter=3, seed=0)
    first = model.cached_sampler()
    a = model.sample(5, seed=1)
    assert model.cached_sampler() is first  # built once, reused by every draw
    b = model.sample(5, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    # the cached sampler draws what a fresh one draws
    rng = np.random.default_rng(1)
    fresh = model.sampler()
    np.testing.assert_array_equal(a[0], fresh.draw(fresh.draw_classes(5, rng), rng))


LISTENERS = """
import sys, psutil
from daskgen.distributed.cluster import connect
workers = None if sys.argv[1] == "threads" else 2
with connect(workers=workers, threads_per_worker=1, quiet=sys.argv[2] == "quiet"):
    me = psutil.Process()
    pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
    found = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.pid in pids}
    print(sorted(found))
"""


@pytest.mark.slow  # a subprocess, and worker processes
@pytest.mark.parametrize("kind", ["threads", "processes"])
@pytest.mark.parametrize("quiet", ["quiet", "loud"])
def test_local_clusters_listen_on_loopback_only(kind, quiet):
    p = subprocess.run([sys.executable, "-c", LISTENERS, kind, quiet], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    found = eval(p.stdout.strip().splitlines()[-1])
    assert found, "the cluster listens somewhere (the check must see its sockets)"
    assert all(ip == "127.0.0.1" for ip, _ in found), found
    if quiet == "quiet":
        assert 8787 not in {port for _, port in found}, found


def test_update_after_touch_and_a_rerun_with_nothing_new(small_model, tmp_path):
    data, model = small_model
    r = run("fit", data, "--update", model)
    assert r.exit_code == 0, r.output
    os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns + 10**9))  # touch: same bytes
    assert_one_line_error(run("fit", data, "--update", model), "modified time changed; same size")


def test_nothing_new_read_is_said(small_model):
    from click.testing import CliRunner

    from daskgen.cli import main

    data, model = small_model
    r = CliRunner().invoke(main, ["fit", str(data), "--update", str(model), "--threads-per-worker", "1"])
    assert r.exit_code == 0, r.output
    assert "nothing new to read" in r.output and "rows/s" not in r.output


def test_help_texts_and_em_log(tmp_path):
    from click.testing import CliRunner

    from daskgen.cli import main

    fit_help = CliRunner().invoke(main, ["fit", "--help"]).output
    assert "diag: per-pixel variances" in fit_help
    run_help = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    for default in ("else 10,000", "else float32", "scale^2/12"):
        assert default in run_help, run_help
    rng = np.random.default_rng(5)
    path = write_csv(tmp_path / "a.csv", rng.integers(0, 256, size=(120, 4)), rng.integers(0, 2, 120))
    r = CliRunner().invoke(main, ["fit", str(path), "--out", str(tmp_path / "k.zarr"), "--components", "2",
                                  "--max-iter", "2", "--threads-per-worker", "1"])
    assert r.exit_code == 0, r.output
    first = [ln for ln in r.output.splitlines() if "EM iteration 1:" in ln]
    assert first and "inf" not in first[0], r.output


def test_every_store_opens_consolidated_in_xarray(small_model, tmp_path):
    import warnings

    xr = pytest.importorskip("xarray")
    _, model = small_model
    assert run("sample", model, "--n", 20, "--out", tmp_path / "s.zarr", "--seed", 1).exit_code == 0
    assert run("data", "digits", "--out", tmp_path / "d.zarr").exit_code == 0
    for store in (tmp_path / "s.zarr", tmp_path / "d.zarr"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            xr.open_zarr(str(store)).close()
    import zarr

    for store in (tmp_path / "s.zarr", tmp_path / "d.zarr", model):  # raises when not consolidated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert "daskgen" in zarr.open_group(str(store), mode="r", use_consolidated=True).attrs


def test_data_folder_is_documented_and_ignored():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "data", "README.md")).read()
    assert "daskgen data fashion-mnist" in text and "label,pixel0" in text
    ignored = subprocess.run(["git", "check-ignore", "data/train.csv", ".daskgen-cluster/scheduler.json"],
                             cwd=root, capture_output=True, text=True)
    assert ignored.stdout.split() == ["data/train.csv", ".daskgen-cluster/scheduler.json"]
    kept = subprocess.run(["git", "check-ignore", "data/README.md"], cwd=root, capture_output=True, text=True)
    assert kept.returncode == 1


def test_progress_is_a_line_per_tenth_when_not_a_terminal(tmp_path):
    from click.testing import CliRunner

    from daskgen.cli import main

    rng = np.random.default_rng(6)
    data = write_csv(tmp_path / "a.csv", rng.integers(0, 256, size=(3000, 16)), rng.integers(0, 3, 3000))
    cli = CliRunner()  # neither stdout nor stderr is a terminal
    fit = cli.invoke(main, ["fit", data, "--out", str(tmp_path / "m.zarr"), "--blocksize", "2000",
                            "--threads-per-worker", "1"])
    assert fit.exit_code == 0, fit.output
    ev = cli.invoke(main, ["evaluate", str(tmp_path / "m.zarr"), data, "--blocksize", "2000",
                           "--threads-per-worker", "1"])
    assert ev.exit_code == 0, ev.output
    for result in (fit, ev):
        assert "\r" not in result.output
        bars = [ln for ln in result.output.splitlines() if "Completed" in ln]
        assert 2 <= len(bars) <= 11, result.output  # 50+ blocks, at most one line per tenth
        assert bars[-1].split("]")[1].split()[0] == "100%", bars


@pytest.mark.slow  # a real process, interrupted
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_ctrl_c_while_sampling_prints_one_line(small_model, tmp_path, workers):
    import signal
    import time

    _, model = small_model
    exe = os.path.join(os.path.dirname(sys.executable), "daskgen")
    out = tmp_path / "s.zarr"
    # 4·10^8 four-pixel samples: chunks spread over every worker draw 10^8 of them in seconds,
    # so the run must be long enough to be interrupted after its first chunk is written.
    # A shell gives daskgen the default SIGINT, whatever this test process inherited (a child
    # started with SIGINT ignored keeps ignoring it: Python installs its handler only over
    # the default).
    p = subprocess.Popen([exe, "sample", str(model), "--n", "400000000", "--chunk-size", "100000", "--out", str(out),
                          "--quiet", *workers], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # interrupt once chunks are being written
        time.sleep(0.5)
        marks = out / "done" / "c"  # a chunk's "done" mark is its own file: no need to read them all
        if marks.is_dir() and next(marks.iterdir(), None) is not None:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.splitlines()[0] == "daskgen: interrupted", (p.returncode, err)
    assert "Traceback" not in err and "CancelledError" not in err and "WARNING" not in err, err


@pytest.mark.slow  # reads Fashion-MNIST's 10,000 test images
def test_fashion_mnist_class_names_are_stored_and_shown(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    if not os.path.exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"):
        pytest.skip("Fashion-MNIST is not installed")
    r = run("data", "fashion-mnist", "--split", "test", "--out", tmp_path / "t.zarr", "--chunk-rows", 5000)
    assert r.exit_code == 0, r.output
    import zarr

    names = zarr.open_group(str(tmp_path / "t.zarr"), mode="r").attrs["daskgen"]["class_names"]
    assert names["1"] == "Trouser" and names["9"] == "Ankle boot" and len(names) == 10
    assert run("fit", tmp_path / "t.zarr", "--out", tmp_path / "m.zarr", "--covariance", "diag").exit_code == 0
    model = daskgen.load_model(str(tmp_path / "m.zarr"))
    assert model.classes.tolist() == list(range(10))  # labels as stored
    assert model.class_names[1] == "Trouser" and model.class_names[9] == "Ankle boot"
    r = run("evaluate", tmp_path / "m.zarr", tmp_path / "t.zarr", "--out", tmp_path / "ev")
    assert r.exit_code == 0 and "1 Trouser" in r.output and "9 Ankle boot" in r.output, r.output
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["model"]["classes"] == list(range(10)) and rep["model"]["class_names"][0] == "T-shirt/top"
    # the figures' row labels are the names
    import daskgen.plot as plot

    shown = []
    real = plot._show
    monkeypatch.setattr(plot, "_show", lambda ax, image, style, title=None, ylabel=None: (
        shown.append((title, ylabel)), real(ax, image, style, title, ylabel))[1])
    plot.plot_means_and_samples(model, str(tmp_path / "f.png"))
    assert [y for _, y in shown if y is not None][:2] == ["T-shirt/top", "Trouser"]
