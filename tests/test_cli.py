"""The command line: fit and sample through click, one real subprocess, and every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from _helpers import assert_one_line_error, write_csv
from _helpers import run_cli as run

import daskgen
from daskgen.datasets import write_zarr_dataset


@pytest.fixture
def good_csv(tmp_path):
    rng = np.random.default_rng(0)
    return write_csv(tmp_path / "good.csv", rng.integers(0, 256, size=(300, 16)), rng.integers(0, 3, 300))


def test_fit_then_sample(tmp_path, good_csv):
    r = run("fit", good_csv, "--out", tmp_path / "m.zarr")
    assert r.exit_code == 0, r.output
    m = daskgen.load_model(str(tmp_path / "m.zarr"))
    assert m.image_shape == (4, 4) and m.scale == pytest.approx(1 / 255)
    r = run("sample", tmp_path / "m.zarr", "--n", 1000, "--out", tmp_path / "s.zarr", "--seed", 4, "--dtype", "uint8")
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert g["images"].shape == (1000, 4, 4) and g["images"].dtype == np.uint8
    assert set(np.unique(g["labels"][:])) <= {0, 1, 2}


@pytest.mark.slow
def test_fit_as_a_real_process(tmp_path, good_csv):
    exe = os.path.join(os.path.dirname(sys.executable), "daskgen")
    p = subprocess.run([exe, "fit", good_csv, "--out", str(tmp_path / "m.zarr"), "--workers", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "dashboard http://127.0.0.1:" in p.stderr and "fitted 3 classes, 300 rows" in p.stderr
    p = subprocess.run([exe, "fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.zarr")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "missing.csv" in p.stderr
    # bad values are found by a task on a worker: still one line, not the worker's report too
    bad = tmp_path / "bad.csv"
    bad.write_text("label,p0,p1\n0,1,2\n0,300,3\n1,2,2\n1,3,3\n")
    p = subprocess.run([exe, "fit", str(bad), "--out", str(tmp_path / "x.zarr"), "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "feature 'p0' has value 300 outside 0..255" in p.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_existing_model_is_not_overwritten(tmp_path, good_csv):
    out = tmp_path / "m.zarr"
    assert run("fit", good_csv, "--out", out).exit_code == 0
    before = daskgen.load_model(str(out)).fingerprint
    other = write_csv(tmp_path / "other.csv", np.random.default_rng(1).integers(0, 256, (100, 16)), np.arange(100) % 2)
    assert_one_line_error(run("fit", other, "--out", out), "already exists", "--overwrite")
    assert daskgen.load_model(str(out)).fingerprint == before
    assert run("fit", other, "--out", out, "--overwrite").exit_code == 0
    assert daskgen.load_model(str(out)).fingerprint != before


def test_update_through_the_cli(tmp_path):
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(600, 3)) + 50, rng.integers(0, 2, 600)
    a, b = write_csv(tmp_path / "a.csv", X[:250], y[:250]), write_csv(tmp_path / "b.csv", X[250:], y[250:])
    assert run("fit", a, "--out", tmp_path / "m.zarr").exit_code == 0
    assert run("fit", b, "--update", tmp_path / "m.zarr").exit_code == 0
    assert run("fit", a, b, "--out", tmp_path / "all.zarr").exit_code == 0
    up, full = daskgen.load_model(str(tmp_path / "m.zarr")), daskgen.load_model(str(tmp_path / "all.zarr"))
    np.testing.assert_allclose(up.covariances, full.covariances, rtol=1e-12, atol=1e-14)
    assert len(up.inputs) == 2


# --------------------------------------------------------------------------- bad input
def _csv_text(path, text):
    path.write_text(text)
    return str(path)


BAD_CSV = {
    "missing label column": ("a,b,c\n1,2,3\n4,5,6\n", ["no label column 'label'", "bad.csv"]),
    "non-numeric feature": ("label,p0,p1\n1,2,3\n1,x,3\n2,1,1\n2,3,3\n", ["column 'p0'", "non-numeric", "'x'"]),
    "NaN feature": ("label,p0,p1\n1,2,3\n1,nan,3\n2,1,1\n2,3,3\n", ["feature 'p0'", "NaN"]),
    "inf feature": ("label,p0,p1\n1,2,3\n1,2,inf\n2,1,1\n2,3,3\n", ["feature 'p1'", "infinite"]),
    "truncated row": ("label,p0,p1\n1,2,3\n1,2\n2,1,1\n", ["2 fields, expected 3"]),
    "empty file": ("", ["empty"]),
    "header only": ("label,p0,p1\n", ["no rows"]),
    "one-row class": ("label,p0,p1\n1,2,3\n1,2,4\n7,1,1\n", ["class 7 has 1 row"]),
    "missing label": ("label,p0,p1\n1,2,3\n,2,4\n1,1,1\n", ["missing label"]),
    "wrong delimiter": ("label;p0;p1\n1;2;3\n1;2;4\n", ["no label column 'label'", "label;p0;p1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    text, needles = BAD_CSV[case]
    path = _csv_text(tmp_path / "bad.csv", text)
    r = run("fit", path, "--out", tmp_path / "out.zarr")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "out.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_missing_file_and_different_columns(tmp_path):
    assert_one_line_error(run("fit", tmp_path / "nope.csv", "--out", tmp_path / "o.zarr"), "nope.csv", "no such file")
    a = _csv_text(tmp_path / "a.csv", "label,p0,p1\n1,2,3\n1,2,4\n")
    b = _csv_text(tmp_path / "b.csv", "label,p0,q1\n1,2,3\n1,2,4\n")
    assert_one_line_error(run("fit", a, b, "--out", tmp_path / "o.zarr"), "b.csv", "columns differ", "'q1' vs 'p1'")
    assert not (tmp_path / "o.zarr").exists()


def test_out_of_range_integer_pixels_with_auto_scale(tmp_path):
    path = _csv_text(tmp_path / "px.csv", "label,p0,p1\n1,2,3\n1,300,4\n2,1,1\n2,0,0\n")
    assert_one_line_error(run("fit", path, "--out", tmp_path / "o.zarr"), "feature 'p0'", "300", "--scale")
    assert run("fit", path, "--out", tmp_path / "o.zarr", "--scale", "1").exit_code == 0


def test_zarr_length_mismatch_and_wrong_rank(tmp_path):
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("images", shape=(10, 2, 2), dtype="uint8")[...] = 1
    g.create_array("labels", shape=(9,), dtype="int64")[...] = 0
    assert_one_line_error(run("fit", tmp_path / "d.zarr", "--out", tmp_path / "o.zarr"), "d.zarr", "10 rows", "9")
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="w")
    g.create_array("images", shape=(10,), dtype="uint8")
    g.create_array("labels", shape=(10,), dtype="int64")
    assert_one_line_error(run("fit", tmp_path / "r.zarr", "--out", tmp_path / "o.zarr"), "r.zarr", "(N, H, W)")
    assert not (tmp_path / "o.zarr").exists()


def test_sample_refusals(tmp_path):
    rng = np.random.default_rng(3)
    write_zarr_dataset(str(tmp_path / "d.zarr"), rng.integers(0, 256, (200, 3, 3), dtype=np.uint8), rng.integers(0, 2, 200))
    assert run("fit", tmp_path / "d.zarr", "--out", tmp_path / "m.zarr").exit_code == 0
    args = ["sample", tmp_path / "m.zarr", "--n", 500, "--out", tmp_path / "s.zarr", "--chunk-size", 100]
    assert run(*args, "--seed", 1).exit_code == 0
    assert_one_line_error(run(*args, "--seed", 2), "seed 1 -> 2", "--overwrite")
    assert_one_line_error(run(*args[:-1], 50, "--seed", 1), "chunk_size 100 -> 50")
    assert_one_line_error(run(*args, "--seed", 1, "--class", "9"), "class '9' is not in the model")
    assert run(*args, "--seed", 2, "--overwrite").exit_code == 0
    (tmp_path / "user.zarr").mkdir()
    (tmp_path / "user.zarr" / "precious.txt").write_text("keep me")
    assert_one_line_error(run("sample", tmp_path / "m.zarr", "--n", 10, "--out", tmp_path / "user.zarr"), "not a daskgen samples store")
    assert (tmp_path / "user.zarr" / "precious.txt").read_text() == "keep me"
    assert_one_line_error(run("sample", tmp_path / "nothing.zarr", "--n", 10, "--out", tmp_path / "x.zarr"), "no such model store")


def test_update_folds_only_unseen_inputs_and_refuses_changed_ones(tmp_path):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(900, 3)) * 5 + 1e3, rng.integers(0, 3, 900)
    folder = tmp_path / "in"
    folder.mkdir()
    write_csv(folder / "day1.csv", X[:300], y[:300])
    model = tmp_path / "m.zarr"
    assert run("fit", folder, "--out", model).exit_code == 0
    write_csv(folder / "day2.csv", X[300:600], y[300:600])
    write_csv(folder / "day3.csv", X[600:], y[600:])
    assert run("fit", folder, "--update", model).exit_code == 0  # day1 is not read again
    up = daskgen.load_model(str(model))
    assert [f["path"].rsplit("/", 1)[1] for f in up.inputs] == ["day1.csv", "day2.csv", "day3.csv"]
    assert up.counts.sum() == 900
    assert run("fit", folder, "--out", tmp_path / "all.zarr").exit_code == 0
    full = daskgen.load_model(str(tmp_path / "all.zarr"))
    np.testing.assert_allclose(up.covariances, full.covariances, rtol=1e-11, atol=1e-12)
    assert run("fit", folder, "--update", model).exit_code == 0  # nothing new: the same model
    assert daskgen.load_model(str(model)).fingerprint == up.fingerprint
    write_csv(folder / "day2.csv", X[300:500], y[300:500])  # a file that was folded in changed
    assert_one_line_error(run("fit", folder, "--update", model), "day2.csv", "changed since it was folded")
    assert daskgen.load_model(str(model)).fingerprint == up.fingerprint
