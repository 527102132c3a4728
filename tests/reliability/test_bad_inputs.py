"""The bad-input corpus (the cases tests/test_cli.py does not cover) and a fuzz of CSV content.

Every bad input: exit code 2, one line on stderr naming what is wrong and where, no
output written and nothing that existed touched (the folder is snapshotted before and
after, bytes and modification times). The fuzz mutates a small valid CSV and accepts
only two outcomes: exit 0 with the model numpy computes from pandas' reading of the
same text, or exit 2 with one line — never a traceback, never exit 1, never a model
from a CSV that pandas does not read cleanly.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import zarr
from _cluster import snapshot
from _helpers import assert_one_line_error
from _helpers import run_cli as run
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskgen
from daskgen.cli import main
from daskgen.kernels.class_stats import chunk_stats
from daskgen.models.gaussian import GaussianClassModel


@pytest.fixture
def folder(tmp_path):
    """A working folder holding a previous model (``model.zarr``) and its samples (``samples.zarr``)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)) * 10 + 100, np.repeat([0, 1, 2], 20)
    GaussianClassModel.from_stats(chunk_stats(X, y)).save(str(tmp_path / "model.zarr"))
    assert run("sample", tmp_path / "model.zarr", "--n", 50, "--out", tmp_path / "samples.zarr", "--seed", 1).exit_code == 0
    return tmp_path


def zarr_input(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    g = zarr.open_group(str(path), mode="w")
    g.create_array("images", shape=images.shape, dtype=images.dtype)[...] = images
    g.create_array("labels", shape=labels.shape, dtype=labels.dtype)[...] = labels
    return str(path)


def _pixels(dtype="int16", shape=(40, 3, 3)) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 200).reshape(shape).astype(dtype)


def _labels(n=40, dtype="int64") -> np.ndarray:
    return (np.arange(n) % 2).astype(dtype)


def _bad_zarr(case: str, path: Path) -> str:
    if case == "negative int16 pixel":
        X = _pixels()
        X[17, 1, 2] = -3
        return zarr_input(path, X, _labels())
    if case == "int16 pixel above 255":
        X = _pixels()
        X[33, 0, 0] = 4000
        return zarr_input(path, X, _labels())
    if case == "NaN label":
        y = _labels(dtype="float64")
        y[5] = np.nan
        return zarr_input(path, _pixels("uint8"), y)
    if case == "images of rank 4":
        return zarr_input(path, _pixels("uint8", (40, 2, 2, 2)), _labels())
    if case == "labels of rank 2":
        return zarr_input(path, _pixels("uint8"), _labels(80).reshape(40, 2))
    if case == "more labels than images":
        return zarr_input(path, _pixels("uint8"), _labels(41))
    if case == "no labels array":
        g = zarr.open_group(str(path), mode="w")
        g.create_array("images", shape=(40, 3, 3), dtype="uint8")[...] = _pixels("uint8")
        return str(path)
    if case == "string images":
        return zarr_input(path, np.array([["a", "b"]] * 40), _labels())
    raise AssertionError(case)


BAD_ZARR = {
    "negative int16 pixel": ["bad.zarr", "rows 0-40", "pixel5", "-3", "outside 0..255", "--scale"],
    "int16 pixel above 255": ["bad.zarr", "rows 0-40", "pixel0", "4000", "outside 0..255"],
    "NaN label": ["bad.zarr", "rows 0-40", "'labels'", "NaN"],
    "images of rank 4": ["bad.zarr", "'images' must have shape", "(40, 2, 2, 2)"],
    "labels of rank 2": ["bad.zarr", "'labels' must have shape (N,)", "(40, 2)"],
    "more labels than images": ["bad.zarr", "'images' has 40 rows but 'labels' has 41"],
    "no labels array": ["bad.zarr", "no array 'labels'"],
    "string images": ["bad.zarr", "'images'", "non-numeric"],
}


@pytest.mark.filterwarnings("ignore::UserWarning:zarr.*")  # fixed-width strings have no Zarr v3 spec yet
@pytest.mark.parametrize("case", sorted(BAD_ZARR))
def test_bad_zarr_input(folder, case):
    bad = _bad_zarr(case, folder / "bad.zarr")
    before = snapshot(folder)
    # the worst place to fail: an existing model that --overwrite would replace
    assert_one_line_error(run("fit", bad, "--out", folder / "model.zarr", "--overwrite"), *BAD_ZARR[case])
    assert snapshot(folder) == before


BAD_CSV = {
    # (text, needles); >255 pixels, NaN/inf features, missing labels, truncated rows,
    # wrong delimiters, empty files, header only and one-row classes are in tests/test_cli.py
    "negative pixel": ("label,p0,p1\n0,1,2\n0,3,-1\n1,4,4\n1,5,5\n", ["bad.csv", "bytes 0-", "feature 'p1'", "-1", "outside 0..255"]),
    # Arrow reads 0x1F as 31, pandas as text: refused rather than read differently
    "hexadecimal pixel": ("label,p0,p1\n0,1,2\n0,3,0x1F\n1,4,4\n1,5,5\n", ["bad.csv", "column 'p1'", "'0x1F'", "hexadecimal"]),
    "hexadecimal float feature": ("label,p0,p1\n0,1.5,2\n0,3,0X1f\n1,4,4\n1,5,5\n", ["bad.csv", "column 'p1'", "'0X1f'"]),
    "hexadecimal after a quoted comma": ('label,p0,p1\n"a,b",1,2\n"a,b",3,0x1\n"c",4,4\n"c",5,5\n', ["bad.csv", "column 'p1'", "'0x1'"]),
    "NaN in a float label column": ("label,p0,p1\n0.5,1,2\nnan,3,4\n0.5,4,4\n1.5,5,5\n1.5,5,6\n", ["bad.csv", "column 'label'", "NaN"]),
    "inf in a float label column": ("label,p0,p1\n0.5,1,2\ninf,3,4\n0.5,4,4\n", ["bad.csv", "column 'label'", "infinite"]),
    "NaN in an integer label column": ("label,p0,p1\n0,1,2\n0,3,4\n1,4,4\n1,5,5\n" + "2,6,6\n" * 200_000 + "nan,1,1\n",
                                       ["bad.csv", "bytes 0-", "column 'label'", "missing label"]),
    "extra field in a row": ("label,p0,p1\n0,1,2\n0,3,4,5\n1,4,4\n", ["bad.csv", "4 fields, expected 3"]),
    "duplicate column": ("label,p0,p0\n0,1,2\n0,3,4\n", ["bad.csv", "duplicate column", "p0"]),
    "label column only": ("label\n0\n0\n1\n1\n", ["bad.csv", "no feature columns"]),
    "not UTF-8": (b"label,p\xe9\n0,1\n0,2\n".decode("latin-1"), ["bad.csv", "UTF-8"]),
    "carriage return inside the header": ("label,p0\r,p1\n0,1,2\n0,2,3\n", ["bad.csv", "header line"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_input(folder, case):
    text, needles = BAD_CSV[case]
    path = folder / "bad.csv"
    path.write_bytes(text.encode("latin-1" if case == "not UTF-8" else "utf-8"))
    before = snapshot(folder)
    assert_one_line_error(run("fit", path, "--out", folder / "model.zarr", "--overwrite"), *needles)
    assert snapshot(folder) == before
    assert_one_line_error(run("fit", path, "--out", folder / "new.zarr"), *needles)
    assert snapshot(folder) == before


def _damage_model(case: str, path: Path) -> None:
    g = zarr.open_group(str(path), mode="r+")
    meta = dict(g.attrs["daskgen"])
    if case == "another format":
        g.attrs["daskgen"] = {**meta, "format": 99, "version": "9.0.0"}
    elif case == "interrupted (not complete)":
        g.attrs["daskgen"] = {**meta, "complete": False}
    elif case == "a missing array":
        shutil.rmtree(path / "scatter")
    elif case == "garbage chunk bytes":
        (path / "means" / "c" / "0" / "0").write_bytes(b"not zstd at all")
    elif case == "truncated chunk":
        chunk = path / "cholesky" / "c" / "1" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:10])
    elif case == "garbage group metadata":
        (path / "zarr.json").write_text("{ not json")
    elif case == "NaN in the Cholesky factors":
        L = g["cholesky"][...]
        L[0, 0, 0] = np.nan
        g["cholesky"][...] = L
    elif case == "NaN in the statistics":
        scatter = g["scatter"][...]
        scatter[1, 0, 0] = np.nan
        g["scatter"][...] = scatter
    elif case == "not a model":
        g.attrs["daskgen"] = {"kind": "samples"}
    elif case == "an empty folder":
        shutil.rmtree(path)
        path.mkdir()
    else:
        raise AssertionError(case)


BAD_MODELS = {
    "another format": ["format 99", "daskgen 9.0.0", "refit"],
    "interrupted (not complete)": ["incomplete", "refit"],
    "a missing array": ["corrupted"],
    "garbage chunk bytes": ["corrupted"],
    "truncated chunk": ["corrupted"],
    "garbage group metadata": ["not a daskgen model store"],
    "NaN in the Cholesky factors": ["corrupted"],
    "NaN in the statistics": ["corrupted"],
    "not a model": ["not a daskgen model store"],
    "an empty folder": ["not a daskgen model store"],
}


#: Damage to one large array is found where that array is read: sample reads the
#: Cholesky factors, not the statistics; fit --update reads the statistics and computes
#: new factors from them (repairing damaged ones).
NOT_READ_BY = {"NaN in the Cholesky factors": "update", "truncated chunk": "update", "NaN in the statistics": "sample"}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_store(folder, case):
    """``daskgen sample`` (and ``fit --update``) on a broken model: exit 2, one line naming the store."""
    bad = folder / "bad-model.zarr"
    shutil.copytree(folder / "model.zarr", bad)
    _damage_model(case, bad)
    if NOT_READ_BY.get(case) != "sample":
        before = snapshot(folder)
        assert_one_line_error(run("sample", bad, "--n", 10, "--out", folder / "new-samples.zarr"), str(bad),
                              *BAD_MODELS[case])
        # resuming the existing samples store with a broken model touches nothing either
        assert_one_line_error(run("sample", bad, "--n", 50, "--out", folder / "samples.zarr", "--seed", 1), str(bad))
        assert snapshot(folder) == before
    else:
        assert run("sample", bad, "--n", 10, "--out", folder / "new-samples.zarr").exit_code == 0
    csv_in = folder / "more.csv"
    csv_in.write_text("label,p0,p1,p2,p3\n0,1,2,3,4\n0,2,2,3,3\n")
    if NOT_READ_BY.get(case) != "update":
        before = snapshot(folder)
        assert_one_line_error(run("fit", csv_in, "--update", bad), str(bad), *BAD_MODELS[case])
        assert snapshot(folder) == before
    else:
        assert run("fit", csv_in, "--update", bad).exit_code == 0
        repaired = zarr.open_group(str(bad), mode="r")
        assert np.isfinite(repaired["cholesky"][...]).all()


@pytest.mark.parametrize(
    "text, needles",
    [
        ("inputs: data.csv\nsample: {n: 5, chunks: 2}\n", ["unknown key 'sample.chunks'"]),
        ("inputs: data.csv\ncluster: {scheduler_adress: tcp://127.0.0.1:1}\n", ["unknown key 'cluster.scheduler_adress'", "did you mean"]),
        ("inputs: data.csv\nworkers: 4\n", ["unknown key 'workers'", "'cluster.workers'"]),
    ],
    ids=["sample-key", "cluster-key", "top-level-key"],
)
def test_job_file_with_unknown_keys_touches_no_earlier_run(folder, text, needles):
    """An earlier run's outputs in ``out`` stay as they are when the job file is refused."""
    (folder / "data.csv").write_text("label,p0,p1\n0,1,2\n0,2,2\n1,3,3\n1,4,3\n")
    run_dir = folder / "run"
    run_dir.mkdir()
    shutil.copytree(folder / "model.zarr", run_dir / "model.zarr")
    (run_dir / "run-report.json").write_text('{"status": "done"}')
    job = folder / "job.yaml"
    job.write_text(text + "out: run\n")
    before = snapshot(folder)
    line = assert_one_line_error(run("run", job), *needles)
    assert line.startswith(f"daskgen: error: {job}: ")
    assert snapshot(folder) == before


def test_overflowing_values_are_an_input_error_not_an_unloadable_model(folder):
    """Finite values whose statistics overflow float64 (1e308): a model whose means or
    covariances are not finite cannot be loaded or sampled, so the fit must refuse it."""
    path = folder / "huge.csv"
    path.write_text("label,p0,p1\n1,1e308,2.5\n1,-1e308,3.5\n1,1,1\n2,1,2\n2,3,4.5\n")
    before = snapshot(folder)
    assert_one_line_error(run("fit", path, "--out", folder / "huge.zarr"), "class 1", "overflow")
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------- fuzz
_ROWS = [(k, *np.random.default_rng(k).integers(0, 256, 4)) for k in (0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 0, 2)]
VALID_CSV = "label,p0,p1,p2,p3\n" + "".join(",".join(str(int(v)) for v in row) + "\n" for row in _ROWS)
JUNK = [",", ";", "\t", "\n", "\r\n", " ", "x", "-", ".", "e", '"', "nan", "NaN", "inf", "-inf", "", "1e308",
        "-1e308", "999", "-7", "3.5", "1e-320", "label", ",,", "0x1F", "1_000", "true", "#", "\x00", "é"]
FIELDS = ["nan", "NaN", "inf", "-inf", "", "1e308", "-1", "256", "3.5", "x", "1e-320", " 7", "7 ", "+3", "0003",
          "1.0", "NA", "null", '"5"', "true", "2e2", "9223372036854775808"]

_where = st.integers(0, 9999).map(lambda i: i / 10_000)  # a position, as a fraction of the text
mutation = st.one_of(
    st.tuples(st.just("delete"), _where, st.integers(1, 6)),
    st.tuples(st.just("insert"), _where, st.sampled_from(JUNK)),
    st.tuples(st.just("truncate"), _where),
    st.tuples(st.just("delimiter"), st.sampled_from([";", "\t", " ", "|", ",,"]), st.integers(-1, 12)),
    st.tuples(st.just("field"), st.integers(0, 12), st.integers(0, 4), st.sampled_from(FIELDS)),
    st.tuples(st.just("extra column"), st.sampled_from(["header", "rows", "all", "one row"])),
    st.tuples(st.just("duplicate row"), st.integers(1, 12)),
    st.tuples(st.just("drop row"), st.integers(0, 12)),
    st.tuples(st.just("crlf")),
)


def mutate(text: str, ops) -> str:
    for op in ops:
        kind = op[0]
        lines = text.split("\n")
        if kind == "delete":
            i = int(op[1] * len(text))
            text = text[:i] + text[i + op[2]:]
        elif kind == "insert":
            i = int(op[1] * (len(text) + 1))
            text = text[:i] + op[2] + text[i:]
        elif kind == "truncate":
            text = text[: int(op[1] * len(text))]
        elif kind == "delimiter":
            if op[2] < 0:
                text = text.replace(",", op[1])
            elif op[2] < len(lines):
                lines[op[2]] = lines[op[2]].replace(",", op[1])
                text = "\n".join(lines)
        elif kind == "field":
            if op[1] < len(lines):
                cells = lines[op[1]].split(",")
                if op[2] < len(cells):
                    cells[op[2]] = op[3]
                lines[op[1]] = ",".join(cells)
                text = "\n".join(lines)
        elif kind == "extra column":
            where = op[1]
            for i, line in enumerate(lines):
                if not line:
                    continue
                if (where == "header" and i == 0) or (where == "rows" and i > 0) or where == "all" or (where == "one row" and i == 3):
                    lines[i] = line + (",extra" if i == 0 else ",7")
            text = "\n".join(lines)
        elif kind == "duplicate row":
            if op[1] < len(lines):
                lines.insert(op[1], lines[op[1]])
                text = "\n".join(lines)
        elif kind == "drop row":
            if op[1] < len(lines):
                del lines[op[1]]
                text = "\n".join(lines)
        elif kind == "crlf":
            text = text.replace("\n", "\r\n")
    return text


def pandas_reference(data: bytes):
    """(X, y, integer_pixels) as pandas reads ``data`` when it reads it cleanly, else None.

    Cleanly: UTF-8, the header names are unique and hold 'label' and at least one
    feature, every feature column is numbers (not booleans) and finite, no label is
    missing or NaN, and every class has at least 2 rows.
    """
    try:
        text = data.decode("utf-8")
        header = next(csv.reader([text.split("\n", 1)[0].rstrip("\r")]))
        df = pd.read_csv(io.StringIO(text))
    except Exception:
        return None
    named = [c or f"Unnamed: {i}" for i, c in enumerate(header)]  # pandas' name for an empty one
    if len(set(header)) != len(header) or list(df.columns) != named or "label" not in header or len(header) < 2:
        return None
    features = [c for c in named if c != "label"]
    for c in features:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            return None
    X = df[features].to_numpy(dtype=np.float64)
    y = df["label"]
    if not np.isfinite(X).all() or y.isna().any() or len(df) == 0:
        return None
    if pd.api.types.is_float_dtype(y) and not np.isfinite(y.to_numpy()).all():
        return None
    if pd.api.types.is_bool_dtype(y) or (y.value_counts() < 2).any():
        return None
    integer = all(pd.api.types.is_integer_dtype(df[c]) for c in features)
    return X, y.to_numpy(), integer


@contextlib.contextmanager
def no_cluster():
    """Dask's synchronous scheduler instead of a cluster per example: this fuzz is about
    reading and validating text (the cluster paths are covered by the corpus above)."""
    import dask

    with mock.patch("daskgen.distributed.cluster.connect", lambda **kw: contextlib.nullcontext()), \
            dask.config.set(scheduler="synchronous"):
        yield


@settings(max_examples=int(os.environ.get('FUZZ_EXAMPLES', 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(mutation, min_size=1, max_size=3), blocksize=st.sampled_from(["32MiB", "64B", "150B"]))
def test_fuzzed_csv_is_a_correct_model_or_a_one_line_error(ops, blocksize):
    text = mutate(VALID_CSV, ops)
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp, no_cluster():
        path, out = Path(tmp) / "in.csv", Path(tmp) / "m.zarr"
        path.write_bytes(data)
        result = CliRunner().invoke(main, ["fit", str(path), "--out", str(out), "--blocksize", blocksize, "--reg-covar", "0", "--quiet"])
        assert result.exit_code in (0, 2), (text, result.output, result.exc_info)
        assert "Traceback" not in result.output, result.output
        reference = pandas_reference(data)
        if result.exit_code == 2:
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("daskgen: error: "), (text, result.output)
            assert not out.exists()
            return
        assert reference is not None, f"daskgen fitted a CSV that pandas does not read cleanly: {text!r}"
        X, y, integer = reference
        model = daskgen.load_model(str(out))
        # auto scale: 1/255 when pyarrow reads every feature as integers. pyarrow reads a
        # few integers pandas accepts ('+3', 2**63) as floats, and then the scale is 1; the
        # statistics are compared in the model's own units either way.
        assert model.scale == 1.0 or (model.scale == 1 / 255 and integer), (text, model.scale)
        X = X * model.scale
        if model.classes.dtype.kind in "iuf" and y.dtype.kind in "iuf":  # '+3' makes pyarrow's labels floats
            np.testing.assert_array_equal(model.classes.astype(float), np.unique(y).astype(float), err_msg=text)
        else:
            assert [str(c) for c in model.classes] == [str(c) for c in np.unique(y)], (text, model.classes)
        assert model.counts.tolist() == [int((y == c).sum()) for c in np.unique(y)]
        for k, c in enumerate(np.unique(y)):
            Xk = X[y == c]
            tol = 1e-12 * max(1.0, float(np.abs(Xk).max()))
            np.testing.assert_allclose(model.means[k], Xk.mean(axis=0), rtol=1e-12, atol=tol, err_msg=text)
            np.testing.assert_allclose(model.covariances[k], np.atleast_2d(np.cov(Xk.T)), rtol=1e-9, atol=tol * tol * len(Xk) + 1e-300, err_msg=text)
        assert math.isclose(model.priors.sum(), 1.0)


def test_hexadecimal_looking_text_inside_a_string_label_is_fine(tmp_path):
    """Only numbers written in hexadecimal are refused: a quoted label such as "x,0x1" is text."""
    path = tmp_path / "labels.csv"
    path.write_text('label,p0,p1\n"x,0x1",1,2\n"x,0x1",3,1\n"c",4,4\n"c",5,5\n')
    result = run("fit", path, "--out", tmp_path / "m.zarr")
    assert result.exit_code == 0, result.output
    assert list(daskgen.load_model(str(tmp_path / "m.zarr")).classes) == ["c", "x,0x1"]


def test_true_in_a_pixel_column_of_a_small_block_is_text(tmp_path):
    """Arrow infers "true" as a boolean in a block with no numbers in that column; pandas
    (and every other block) sees text: refused, naming the column."""
    path = tmp_path / "b.csv"
    path.write_text("label,p0,p1\n0,1,2\n0,3,4\n1,5,6\n1,7,8\n2,true,3\n")
    result = run("fit", path, "--out", tmp_path / "m.zarr", "--blocksize", "20B")
    assert result.exit_code == 2 and "column 'p0': non-numeric feature value 'true'" in result.output
    assert not (tmp_path / "m.zarr").exists()
