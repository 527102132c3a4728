"""daskgen evaluate: held-out log-likelihood with dequantization, the Bayes classifier, outputs, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import daskgen
from daskgen.cli import main
from daskgen.datasets import load_digits_dataset, write_zarr_dataset
from daskgen.evaluate import BATCH, evaluate, format_table, write_outputs
from daskgen.kernels.class_stats import chunk_stats
from daskgen.kernels.transform import EVALUATE_STREAM, dequantization_noise
from daskgen.models.gaussian import GaussianClassModel
from daskgen.models.mixture_em import fit_em

S = 1 / 16  # the digits' pixels are 0..16


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Digits train / test split, in pixel units, and the test set as a Zarr store."""
    images, labels = load_digits_dataset()
    X = images.reshape(len(images), -1).astype(np.uint8)
    perm = np.random.default_rng(0).permutation(len(X))
    tr, te = perm[:1200], perm[1200:]
    path = tmp_path_factory.mktemp("eval") / "test.zarr"
    write_zarr_dataset(str(path), X[te].reshape(-1, 8, 8), labels[te], chunk_rows=100,
                       attrs={"daskgen": {"scale": S}})
    return X[tr], labels[tr], X[te], labels[te], str(path)


@pytest.fixture(scope="module")
def single(split):
    Xtr, ytr, *_ = split
    return GaussianClassModel.from_stats(chunk_stats(Xtr, ytr, scale=S), reg_covar=1e-2, image_shape=(8, 8), scale=S)


@pytest.fixture(scope="module")
def mixture(split):
    Xtr, ytr, *_ = split
    return fit_em(Xtr, ytr, 3, scale=S, image_shape=(8, 8), reg_covar=1e-2, seed=0)


@pytest.mark.parametrize("which", ["single", "mixture"])
def test_accuracy_and_log_likelihood_equal_in_memory_scores(split, which, request, sync_scheduler):
    from sklearn.metrics import confusion_matrix

    model = request.getfixturevalue(which)
    _, _, Xte, yte, path = split
    rep = evaluate(model, path, blocksize=100 * 64 * 8)
    joint = model.class_log_likelihood(Xte * S) + np.log(model.priors)  # sklearn-style argmax
    predicted = model.classes[np.argmax(joint, axis=1)]
    assert rep["classifier"]["accuracy"] == pytest.approx((predicted == yte).mean(), abs=0)
    np.testing.assert_array_equal(rep["classifier"]["confusion_matrix"], confusion_matrix(yte, predicted))
    assert rep["log_likelihood"]["raw_nats_per_image"] == pytest.approx(model.log_prob(Xte * S).mean(), rel=1e-12)
    assert rep["input"]["rows"] == len(yte) and rep["dequantization"]["all_rows"]
    assert rep["model"]["kind"] == ("mixture" if which == "mixture" else "gaussian")


def test_dequantized_log_likelihood_and_bits_per_dim(split, mixture, sync_scheduler):
    _, _, Xte, yte, path = split
    rep = evaluate(mixture, path, blocksize=10**9, seed=3)
    assert len(yte) < BATCH
    # the noise of a row depends on (seed, its values) only: the blocks do not matter
    blocks = evaluate(mixture, path, blocksize=100 * 64 * 8, seed=3)
    assert blocks["log_likelihood"]["nats_per_image"] == pytest.approx(rep["log_likelihood"]["nats_per_image"], rel=1e-12)
    noisy = (Xte + dequantization_noise(Xte, 3, EVALUATE_STREAM) - 0.5) * S
    ll = mixture.log_prob(noisy)
    D = 64
    out = rep["log_likelihood"]
    assert out["nats_per_image"] == pytest.approx(ll.mean(), rel=1e-12)
    assert out["stderr"] == pytest.approx(ll.std() / math.sqrt(len(ll)), rel=1e-6)
    # bits/dim of the discrete image: the density in pixel units is p_model * S^D
    assert out["bits_per_dim"] == pytest.approx(-(ll.mean() + D * math.log(S)) / (D * math.log(2)), rel=1e-12)
    assert out["pixel_nats_per_image"] == pytest.approx(ll.mean() + D * math.log(S), rel=1e-12)
    cond = mixture.class_log_likelihood(noisy)[np.arange(len(yte)), yte]
    assert out["conditional_nats_per_image"] == pytest.approx(cond.mean(), rel=1e-12)
    # a proper model of 17-level pixels: fewer bits than uniform (log2 17), more than 0
    assert 0 < out["bits_per_dim"] < math.log2(17)
    assert not rep["dequantization"]["mode"] == "no"
    plain = evaluate(mixture, path, dequantize="no")
    assert plain["log_likelihood"]["nats_per_image"] == pytest.approx(mixture.log_prob(Xte * S).mean(), rel=1e-12)
    assert plain["dequantization"]["rows"] == 0


def test_mixture_beats_single_gaussian_on_held_out_digits(split, single, mixture, sync_scheduler):
    path = split[4]
    one, three = evaluate(single, path), evaluate(mixture, path)
    assert three["log_likelihood"]["nats_per_image"] > one["log_likelihood"]["nats_per_image"] + 1.0
    assert three["log_likelihood"]["bits_per_dim"] < one["log_likelihood"]["bits_per_dim"]


def test_on_a_cluster_equals_synchronous(split, mixture, client):
    import dask

    path = split[4]
    on_cluster = evaluate(mixture, path, blocksize=100 * 64 * 8, split_every=2)
    with dask.config.set(scheduler="synchronous"):
        local = evaluate(mixture, path, blocksize=100 * 64 * 8)
    assert on_cluster["classifier"] == local["classifier"]
    assert on_cluster["log_likelihood"]["nats_per_image"] == pytest.approx(local["log_likelihood"]["nats_per_image"], rel=1e-12)


def test_outputs_table_json_and_figure(split, mixture, tmp_path, sync_scheduler):
    rep = evaluate(mixture, split[4])
    table = format_table(rep)
    assert "bits/dim" in table and "accuracy" in table and "recall" in table
    paths = write_outputs(rep, str(tmp_path / "out"))
    assert json.loads(open(paths["json"]).read())["classifier"]["accuracy"] == rep["classifier"]["accuracy"]
    from PIL import Image

    assert Image.open(paths["confusion"]).size[0] > 300


def test_cli_evaluate(split, single, tmp_path):
    single.save(str(tmp_path / "m.zarr"))
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.zarr"), split[4], "--out", str(tmp_path / "ev"), "-q"])
    assert result.exit_code == 0, result.output
    assert "nats/image" in result.output and "confusion" in result.output
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["model"]["path"] == str(tmp_path / "m.zarr") and rep["model"]["components"] == 1
    assert (tmp_path / "ev" / "confusion-matrix.png").exists()
    wrong = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.zarr"), str(tmp_path / "missing.zarr")])
    assert wrong.exit_code == 2


def test_singular_model_reports_minus_infinity_rows(split, sync_scheduler):
    Xtr, ytr, _, _, path = split
    singular = GaussianClassModel.from_stats(chunk_stats(Xtr, ytr, scale=S), scale=S)  # constant pixels: singular
    rep = evaluate(singular, path)
    assert rep["log_likelihood"]["neg_inf_rows"] == rep["input"]["rows"]
    assert rep["log_likelihood"]["nats_per_image"] is None
    assert "-inf" in format_table(rep) and json.dumps(rep)
    assert daskgen.load_model  # the package API still imports


def test_the_training_files_themselves_are_evaluated(split, sync_scheduler):
    path = split[4]  # fit on the files, then score the same files: nothing is skipped
    model = daskgen.fit(path, reg_covar=1e-2)
    assert model.inputs and model.inputs[0]["path"] == path
    rep = evaluate(model, path)
    assert rep["input"]["rows"] == len(split[3])
