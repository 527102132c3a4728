"""The figures of daskgen.plot, on a model of scikit-learn's 8x8 digits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import matplotlib.image as mpimg
import numpy as np
import pytest
import zarr
from sklearn.datasets import load_digits

import daskgen
from daskgen import plot
from daskgen.errors import InputError

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data / 16.0, d.target, d.images


def _model(X, y, **kw):
    stats = daskgen.chunk_stats(X, y)
    return daskgen.GaussianClassModel.from_stats(stats, image_shape=(8, 8), scale=1 / 16, **kw)


@pytest.fixture(scope="module")
def model(digits):
    X, y, _ = digits
    return _model(X, y)


def _expected_inches(K: int, rows: int = 10, cols: int = 4) -> dict[str, tuple[float, float]]:
    """(width, height) of the figures for 8x8 images and labels of up to 7 characters."""
    return {
        "means-and-samples": (2 * plot.PANEL + plot.ROW_LABEL, K * plot.PANEL + plot.TITLE),
        "samples-grid": (cols * plot.PANEL, rows * (plot.PANEL + plot.TITLE)),
        "spectrum": plot.SPECTRUM_SIZE,
    }


def _check_png(path: str, inches: tuple[float, float]) -> np.ndarray:
    pixels = mpimg.imread(path)
    w, h = inches
    assert pixels.shape[:2] == (round(h * plot.DPI), round(w * plot.DPI)), path
    assert pixels[..., :3].std() > 0.05, f"{path} looks blank"
    return pixels


def _check_all(paths: dict[str, str], K: int) -> None:
    assert set(paths) == set(plot.FILES)
    for name, inches in _expected_inches(K).items():
        assert paths[name].endswith(plot.FILES[name])
        _check_png(paths[name], inches)


def test_plot_all_digits(model, tmp_path):
    paths = plot.plot_all(model, tmp_path / "figs")
    _check_all(paths, K=10)
    # The sizes the tutorial's figures scale to: 10 rows of 8x8 images at 100 dpi.
    assert mpimg.imread(paths["samples-grid"]).shape[:2] == (1900, 640)
    assert mpimg.imread(paths["means-and-samples"]).shape[:2] == (1630, 410)


def test_string_labels(digits, tmp_path):
    X, y, _ = digits
    named = _model(X, NAMES[y])
    assert named.classes.dtype.kind == "U"
    _check_all(plot.plot_all(named, tmp_path), K=10)


def test_samples_store_uint8_and_string_labels(digits, model, tmp_path):
    _, y, images = digits
    url = str(tmp_path / "samples.zarr")
    group = zarr.open_group(url, mode="w")
    group.create_array("images", data=images[:60].astype(np.uint8))  # pixel units 0..16
    labels = group.create_array("labels", shape=(60,), dtype=str)  # variable-length strings
    labels[:] = y[:60].astype(str)

    X, ys = plot.load_samples(url, n=40)
    assert X.shape == (40, 64) and X.dtype == np.uint8
    assert ys.dtype.kind == "U" and ys.tolist() == y[:40].astype(str).tolist()
    np.testing.assert_array_equal(X, images[:40].reshape(40, 64))

    # The model's class 3 is the store's "3": the first "3" of the store is picked.
    picked = plot._one_per_class(model, (X, ys), seed=0)
    np.testing.assert_array_equal(picked, X[[list(ys).index(str(c)) for c in range(10)]])
    # Integer images show on their own data range, not 0..255 (which would be nearly black).
    style = plot._style(model, X)
    assert (style.vmin, style.vmax) == (0.0, float(X.max()))

    _check_all(plot.plot_all(model, tmp_path / "figs", samples=(X, ys)), K=10)


def test_missing_class_is_drawn_from_the_model(digits, model, tmp_path):
    _, y, images = digits
    keep = y < 5
    X, ys = images[keep][:30].astype(np.uint8), y[keep][:30]
    picked = plot._one_per_class(model, (X, ys), seed=0)
    assert picked.dtype == np.float64  # uint8 rows converted to model units to join the draws
    np.testing.assert_allclose(picked[0], X[list(ys).index(0)].ravel() * model.scale)
    out = plot.plot_means_and_samples(model, tmp_path / "m.png", samples=(X, ys))
    _check_png(out, _expected_inches(10)["means-and-samples"])


def test_float_samples_share_the_means_scale(model, tmp_path):
    X, y = model.sample(12, seed=1)
    style = plot._style(model, X)
    assert (style.vmin, style.vmax) == (model.means.min(), model.means.max())
    # 12 samples in 4 columns: the grid shrinks to 3 rows.
    out = plot.plot_sample_grid(model, tmp_path / "g.png", samples=(X, y))
    _check_png(out, _expected_inches(10, rows=3)["samples-grid"])


@pytest.mark.parametrize(
    ("D", "image_shape", "shape"),
    [(64, (8, 8), (8, 8)), (72, (6, 12), (6, 12)), (49, None, (7, 7)), (30, None, (1, 30))],
)
def test_image_shape(D, image_shape, shape, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((40, D)), np.repeat([0, 1], 20)
    m = daskgen.GaussianClassModel.from_stats(daskgen.chunk_stats(X, y), image_shape=image_shape)
    assert plot.display_shape(m.n_features, m.image_shape) == shape
    out = plot.plot_means_and_samples(m, tmp_path / "m.png")
    assert mpimg.imread(out)[..., :3].std() > 0


def test_diagonal_model_spectrum(digits, tmp_path):
    X, y, _ = digits
    diag = daskgen.GaussianClassModel.from_stats(
        daskgen.chunk_stats(X, y, diagonal=True), covariance="diag", image_shape=(8, 8)
    )
    _check_png(plot.plot_spectrum(diag, tmp_path / "s.png"), plot.SPECTRUM_SIZE)


def test_directions():
    eig = np.array([8.0, 1.0, 0.9, 0.1])
    assert plot._directions(eig, 0.8) == 1
    assert plot._directions(eig, 0.9) == 2
    assert plot._directions(eig, 0.99) == 3
    assert plot._directions(np.zeros(0), 0.9) == 0


def test_long_labels_are_shortened_in_the_middle():
    label = plot.display_label("a rather long class name 10")
    assert len(label) == 18 and label.startswith("a rather") and label.endswith("name 10")
    assert plot.display_label(3) == "3"


def test_threads(model, tmp_path):
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: plot.plot_spectrum(model, tmp_path / f"s{i}.png"), range(2)))
    first = mpimg.imread(outs[0])
    for out in outs[1:]:
        np.testing.assert_array_equal(mpimg.imread(out), first)


def test_load_samples_errors(tmp_path):
    url = str(tmp_path / "bad.zarr")
    zarr.open_group(url, mode="w").create_array("images", data=np.zeros((3, 4), np.uint8))
    with pytest.raises(InputError, match="labels"):
        plot.load_samples(url)
    with pytest.raises(InputError, match="not a Zarr group"):
        plot.load_samples(str(tmp_path / "missing.zarr"))


def test_samples_must_match_the_model(model, tmp_path):
    with pytest.raises(InputError, match="features"):
        plot.plot_sample_grid(model, tmp_path / "g.png", samples=(np.zeros((4, 10)), np.zeros(4)))
