"""NDB (daskgen evaluate-samples): z-test and counts against scipy, k-means against scikit-learn,
chunking invariance, calibration, memory behaviour, outputs and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from _helpers import assert_one_line_error, run_cli

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.evaluate_samples import FILES, count_bins, fit_bins, format_table, ndb, open_sets, write_outputs
from daskgen.io.readers import open_inputs
from daskgen.kernels.kmeans import kmeans_plusplus
from daskgen.ndb_kernels import bin_counts, lloyd_block, merge_lloyd, ndb_test, two_proportion_z, update_centres

S = 1 / 16  # the digits' pixels are 0..16


@pytest.fixture(scope="module")
def digits_data(digits):
    """The digits in pixel units: X (1797, 64) uint8 in 0..16, y (1797,)."""
    return digits[0].astype(np.uint8), digits[1]


@pytest.fixture(scope="module")
def stores(digits_data, tmp_path_factory):
    """Digits as Zarr stores: all rows, two halves, the zeros only, and a 16-feature store."""
    X, y = digits_data
    root = tmp_path_factory.mktemp("ndb")
    perm = np.random.default_rng(0).permutation(len(X))
    a, b = np.sort(perm[: len(X) // 2]), np.sort(perm[len(X) // 2 :])
    out = {}
    for name, rows, chunk in (("all", slice(None), 100), ("half-a", a, 50), ("half-b", b, 200),
                              ("zeros", y == 0, 60)):
        out[name] = str(root / f"{name}.zarr")
        write_zarr_dataset(out[name], X[rows].reshape(-1, 8, 8), y[rows], chunk_rows=chunk,
                           attrs={"daskgen": {"scale": S}})
    out["narrow"] = str(root / "narrow.zarr")
    write_zarr_dataset(out["narrow"], X[:, :16].reshape(-1, 4, 4), y, chunk_rows=500, attrs={"daskgen": {"scale": S}})
    return out


def _brute_labels(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Nearest centre by explicit differences (no matrix-product shortcut)."""
    return np.argmin(((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2), axis=1)


# ---------------------------------------------------------------------------- the test statistics
def test_z_test_matches_pearson_chi2_of_the_2x2_table():
    """The pooled two-proportion z-test is Pearson's chi-square test of the 2x2 table: z^2 = chi2, same p."""
    from scipy.stats import chi2_contingency, norm

    rng = np.random.default_rng(1)
    c1, c2 = rng.integers(0, 300, size=40), rng.integers(0, 300, size=40)
    n1, n2 = int(c1.sum()), int(c2.sum())
    z, p = two_proportion_z(c1, n1, c2, n2)
    for j in range(40):
        chi2, pv, _, _ = chi2_contingency([[c1[j], n1 - c1[j]], [c2[j], n2 - c2[j]]], correction=False)
        assert z[j] ** 2 == pytest.approx(chi2, rel=1e-10)
        assert p[j] == pytest.approx(pv, rel=1e-9, abs=1e-300)
        assert p[j] == pytest.approx(2 * norm.sf(abs(z[j])), rel=1e-9, abs=1e-300)
    assert np.all(np.sign(z) == np.sign(c1 / n1 - c2 / n2))


def test_z_test_of_a_bin_empty_in_both_sets_is_no_difference():
    z, p = two_proportion_z(np.array([0, 5]), 5, np.array([0, 7]), 7)
    assert z[0] == 0 and p[0] == 1


def test_counts_and_ndb_with_fixed_centres_equal_a_direct_computation(digits_data):
    from scipy.stats import chi2_contingency

    X, _ = digits_data
    rng = np.random.default_rng(2)
    C = X[rng.choice(len(X), 12, replace=False)] * S + rng.normal(0, 1e-3, (12, 64))
    A, B = X[:700], X[700:]
    ca, cb = bin_counts(A, C, S).counts, bin_counts(B, C, S).counts
    np.testing.assert_array_equal(ca, np.bincount(_brute_labels(A * S, C), minlength=12))
    np.testing.assert_array_equal(cb, np.bincount(_brute_labels(B * S, C), minlength=12))
    t = ndb_test(ca, cb, alpha=0.05)
    p_ref = np.array([chi2_contingency([[ca[j], len(A) - ca[j]], [cb[j], len(B) - cb[j]]], correction=False)[1]
                      if ca[j] + cb[j] else 1.0 for j in range(12)])
    assert t.ndb == int((p_ref < 0.05).sum()) and t.ndb > 0
    assert t.ndb_over_k == t.ndb / 12 and t.expected_false_positives == pytest.approx(0.6)
    np.testing.assert_allclose(t.samples, ca / len(A)) and np.testing.assert_allclose(t.reference, cb / len(B))


def test_the_distributed_result_counts_like_numpy(stores, digits_data, sync_scheduler):
    X, _ = digits_data
    r = ndb(stores["zeros"], stores["all"], stores["all"], bins=15, seed=3, blocksize=64 * 8 * 100)
    labels = _brute_labels(X * S, r.centres)
    np.testing.assert_allclose(r.test.reference, np.bincount(labels, minlength=15) / len(X), rtol=0, atol=0)
    np.testing.assert_allclose(r.train, r.test.reference)
    assert r.sets["samples"]["rows"] == int((digits_data[1] == 0).sum())


# ---------------------------------------------------------------------------- k-means
def test_lloyd_on_dask_equals_scikit_learn_from_the_same_centres(stores, digits_data, sync_scheduler):
    from sklearn.cluster import KMeans

    X, _ = digits_data
    Xs = X * S
    C0 = kmeans_plusplus(Xs, 10, np.random.default_rng(0))
    km = KMeans(10, init=C0, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(Xs)
    train = open_inputs(stores["all"], blocksize=64 * 8 * 100)
    assert len(train.blocks) > 10
    C, rep = fit_bins(train, 10, centres=C0, tol=0.0, max_iter=300)
    assert rep["converged"] and not rep["reseeded_bins"]
    np.testing.assert_allclose(C, km.cluster_centers_, rtol=0, atol=1e-10)
    assert rep["inertia_per_row"] * len(X) == pytest.approx(km.inertia_, rel=1e-9)


def test_lloyd_kernel_merges_to_the_whole_statistic(digits_data):
    X, _ = digits_data
    C = X[:7] * S + 0.01
    whole = lloyd_block(X, C, S)
    parts = merge_lloyd([lloyd_block(X[a : a + 300], C, S) for a in range(0, len(X), 300)])
    np.testing.assert_array_equal(whole.counts, parts.counts)
    np.testing.assert_array_equal(whole.sums, parts.sums)  # exact integer sums
    np.testing.assert_array_equal(whole.far_x, parts.far_x)


def test_integer_and_float_blocks_merge(digits_data):
    X, _ = digits_data
    C = X[:5] * S + 0.01
    merged = merge_lloyd([lloyd_block(X[:900], C, S), lloyd_block(X[900:].astype(np.float32), C, S)])
    np.testing.assert_allclose(merged.sums, lloyd_block(X, C, S).sums, rtol=1e-12)


def test_an_empty_bin_moves_to_the_farthest_row(digits_data):
    X, _ = digits_data
    C = np.vstack([X[:3] * S, np.full((1, 64), 100.0)])  # the last centre attracts nothing
    st = lloyd_block(X, C, S)
    assert st.counts[3] == 0
    new, moved = update_centres(st, C, S)
    assert moved == [3]
    labels = _brute_labels(X * S, C)
    d2 = ((X * S - C[labels]) ** 2).sum(1)
    np.testing.assert_array_equal(new[3], X[np.argmax(d2)] * S)


@pytest.mark.parametrize("blocksize", [64 * 8 * 60, 64 * 8 * 400])
def test_result_does_not_depend_on_the_chunking(stores, blocksize, sync_scheduler):
    ref = ndb(stores["half-a"], stores["half-b"], stores["all"], bins=20, seed=5, blocksize=64 * 8 * 10**6)
    r = ndb(stores["half-a"], stores["half-b"], stores["all"], bins=20, seed=5, blocksize=blocksize)
    np.testing.assert_array_equal(r.centres, ref.centres)
    np.testing.assert_array_equal(r.test.z, ref.test.z)
    assert r.kmeans["iterations"] == ref.kmeans["iterations"]


def test_array_inputs_give_the_result_of_the_stores(stores, digits_data, sync_scheduler):
    """Datasets of in-memory arrays (daskgen.io.arrays) run the same tasks as Zarr stores."""
    from daskgen.io.arrays import from_arrays

    X, y = digits_data
    ref = ndb(stores["zeros"], stores["all"], stores["all"], bins=10, seed=1)
    zeros = y == 0
    r = ndb(from_arrays(X[zeros], y[zeros], scale=S, blocksize=70), from_arrays(X, y, scale=S, blocksize=500),
            from_arrays(X, y, scale=S, blocksize=300), bins=10, seed=1)
    np.testing.assert_array_equal(r.centres, ref.centres)
    np.testing.assert_array_equal(r.test.z, ref.test.z)


def test_result_on_a_cluster_equals_the_local_one(stores, client):
    import dask

    r = ndb(stores["half-a"], stores["half-b"], stores["all"], bins=20, seed=5, blocksize=64 * 8 * 60)
    with dask.config.set(scheduler="synchronous"):
        ref = ndb(stores["half-a"], stores["half-b"], stores["all"], bins=20, seed=5, blocksize=64 * 8 * 60)
    np.testing.assert_array_equal(r.centres, ref.centres)
    assert r.ndb == ref.ndb


# ---------------------------------------------------------------------------- the measure
def test_ndb_of_random_halves_of_one_set_is_near_alpha_k(stores, digits_data, sync_scheduler):
    """Calibration: over 10 random splits x 20 bins, the different bins are ~ Binomial(200, 0.05)."""
    from scipy.stats import binom

    X, _ = digits_data
    train = open_inputs(stores["all"])
    C, _ = fit_bins(train, 20, seed=0)
    total = 0
    for seed in range(10):
        perm = np.random.default_rng(100 + seed).permutation(len(X))
        a, b = X[perm[: len(X) // 2]], X[perm[len(X) // 2 :]]
        total += ndb_test(bin_counts(a, C, S).counts, bin_counts(b, C, S).counts, 0.05).ndb
    lo, hi = binom.ppf(0.0005, 200, 0.05), binom.isf(0.0005, 200, 0.05)
    assert lo <= total <= hi, (total, lo, hi)


def test_a_set_of_one_class_differs_in_most_bins(stores, sync_scheduler):
    r = ndb(stores["zeros"], stores["all"], stores["all"], bins=20, seed=0)
    assert r.ndb >= 15
    over, under = r.top_bins(5)
    # the over-represented bins are the zeros' bins: their centres look like a zero
    assert r.test.samples[over[0]] > 0.2 and len(under) == 5


def test_counting_reads_one_block_per_task_never_the_whole_store(stores, monkeypatch, sync_scheduler):
    """Memory: each counting task reads one block (one Zarr chunk here) and returns only k counts."""
    import daskgen.distributed.reduction as layer

    seen = []
    real = layer.read_block

    def spy(block, *args):
        seen.append(block.stop - block.start)
        return real(block, *args)

    monkeypatch.setattr(layer, "read_block", spy)  # each chunk task reads its own block
    sets = open_sets(stores["all"], stores["all"], stores["all"], blocksize=64 * 8)  # smallest: one chunk a task
    C = np.random.default_rng(0).random((9, 64))
    graph_tasks = len(sets["samples"].blocks)
    counts = count_bins({"samples": sets["samples"]}, C)
    assert graph_tasks == 18 and len(seen) == 18 and max(seen) == 100 and sum(seen) == 1797
    assert counts["samples"].counts.shape == (9,) and counts["samples"].rows == 1797


# ---------------------------------------------------------------------------- outputs and the CLI
@pytest.fixture(scope="module")
def samples_store(digits_data, tmp_path_factory):
    """2,000 uint8 samples of a digits model (the store records the scale 1/16)."""
    from daskgen.distributed.generation import generate
    from daskgen.kernels.class_stats import chunk_stats
    from daskgen.models.gaussian import GaussianClassModel

    X, y = digits_data
    model = GaussianClassModel.from_stats(chunk_stats(X, y, scale=S), reg_covar=1e-2, image_shape=(8, 8), scale=S)
    path = str(tmp_path_factory.mktemp("ndb-samples") / "samples.zarr")
    import dask

    with dask.config.set(scheduler="synchronous"):
        generate(model, 2000, path, seed=0, chunk_size=500, dtype="uint8")
    return path


def test_outputs_json_table_and_figure(stores, samples_store, tmp_path, sync_scheduler):
    r = daskgen.ndb(samples_store, stores["half-b"], stores["half-a"], bins=10, seed=0)
    assert isinstance(r, daskgen.NDBResult) and r.sets["samples"]["scale"] == pytest.approx(S)
    table = format_table(r)
    assert f"{r.ndb} of 10 bins differ" in table and "alpha * k = 0.5" in table
    paths = write_outputs(r, str(tmp_path / "out"))
    doc = json.loads(open(paths["json"]).read())
    assert doc["ndb"] == r.ndb and doc["k"] == 10 and doc["expected_false_positives"] == pytest.approx(0.5)
    assert len(doc["bins"]["z"]) == 10 and doc["sets"]["samples"]["rows"] == 2000
    from PIL import Image

    w, h = Image.open(paths["bins"]).size
    assert w > 300 and h > 200
    with pytest.raises(daskgen.OutputExistsError):
        write_outputs(r, str(tmp_path / "out"))


@pytest.mark.slow  # a local cluster of worker processes
def test_cli_table_outputs_and_overwrite(stores, samples_store, tmp_path):
    out = tmp_path / "ndb"
    args = ["evaluate-samples", samples_store, "--reference", stores["half-b"], "--train", stores["half-a"],
            "--bins", "10", "--out", out, "--workers", "1", "--threads-per-worker", "1"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "bins differ" in result.output and "over-represented" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    assert_one_line_error(run_cli(*args), "already exists", "--overwrite")
    assert run_cli(*args, "--overwrite").exit_code == 0


def test_cli_one_line_errors(stores, samples_store, tmp_path):
    base = ["--reference", stores["half-b"], "--train", stores["all"]]
    assert_one_line_error(run_cli("evaluate-samples", stores["narrow"], *base), "16 features", "64")
    assert_one_line_error(run_cli("evaluate-samples", stores["all"], *base, "--bins", "5000"), "5000 bins", "1797")
    incomplete = tmp_path / "incomplete.zarr"
    import shutil

    shutil.copytree(samples_store, incomplete)
    group = zarr.open_group(str(incomplete), mode="r+")
    group.attrs["daskgen"] = {**dict(group.attrs["daskgen"]), "complete": False}
    assert_one_line_error(run_cli("evaluate-samples", incomplete, *base), "incomplete")
    assert_one_line_error(run_cli("evaluate-samples", tmp_path / "missing.zarr", *base), "no such file")


@pytest.mark.slow  # a real process and its worker processes
def test_cli_in_a_subprocess(stores, samples_store, tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run(
        [sys.executable, "-m", "daskgen.cli", "evaluate-samples", samples_store, "--reference", stores["half-b"],
         "--train", stores["half-a"], "--bins", "8", "--out", str(out), "--workers", "1", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bins differ" in proc.stdout and (out / "ndb.json").exists()
