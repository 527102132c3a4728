"""The figures: class means beside samples, a grid of samples, covariance spectra and priors.

Every figure is a :class:`matplotlib.figure.Figure` drawn by the Agg canvas — no
``pyplot`` and no global state, so the functions are thread-safe and need no display.
Figures are saved at :data:`DPI` (100) with their exact ``figsize``: a figure of
``(w, h)`` inches is a PNG of ``(w * DPI, h * DPI)`` pixels.

Images are drawn upright (row 0 at the top), in grey, without interpolation and
without ticks. Their shape is the model's ``image_shape``; without one, D features
are shown as a square when D is a perfect square, else as a 1 x D strip.

Display scale (``vmin``/``vmax``), one common scale per figure and per kind of image,
so panels can be compared and samples do not look washed out:

* float images (model units: class means, ``model.sample`` output, float sample
  stores) use ``model.display_range()`` (the range of the model's mean images: its
  class means, or a mixture's component means). Gaussian samples spill past
  the range of the data; values outside it are clipped to black / white rather than
  stretching the scale, which would turn the background grey.
* integer images (pixel units, e.g. a uint8 sample store) use the range of the
  integer images in the figure (within 0..255 for uint8).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError
from .models.base import ClassModel

#: Resolution of every saved figure, in dots per inch.
DPI = 100
#: Size of the longer side of one image panel, in inches.
PANEL = 1.6
#: Height added to a panel for its title, in inches.
TITLE = 0.3
#: Width of the row labels of :func:`plot_means_and_samples`, in inches.
ROW_LABEL = 0.9
#: Size of the spectrum / priors figure, in inches.
SPECTRUM_SIZE = (13.0, 5.0)
#: Variance fractions whose number of directions :func:`plot_spectrum` reports.
FRACTIONS = (0.90, 0.99)
#: File names written by :func:`plot_all`.
FILES = {
    "means-and-samples": "means-and-samples.png",
    "samples-grid": "samples-grid.png",
    "spectrum": "spectrum.png",
}
#: The extra figure :func:`plot_all` writes for a per-class mixture.
MIXTURE_FILES = {"component-means": "component-means.png"}
#: The extra figure :func:`plot_all` writes for a low-rank kind (``ppca``, ``fa``).
LOW_RANK_FILES = {"directions": "directions.png"}
#: Eigen-images per class :func:`plot_directions` draws.
DIRECTIONS = 8

FONT = 9  # points; 12.5 px at DPI 100
_GAP = 0.1  # inches between image panels
_MAX_LABEL = 18  # characters of a class label shown in a title


@dataclass(frozen=True)
class _Style:
    """How to draw one kind of image: reshape, panel box and grey scale."""

    shape: tuple[int, int]
    aspect: str
    vmin: float
    vmax: float
    panel: tuple[float, float]  # (width, height) in inches


# ---------------------------------------------------------------------------- samples
def load_samples(url: str, n: int = 40, storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of a samples store (a Zarr v3 group with ``images`` and ``labels``).

    ``images`` may have shape (N, H, W) or (N, D), in uint8 pixel units or float model
    units; ``labels`` has shape (N,) (integers, floats or strings).

    Returns ``(X, y)``: X of shape (min(n, N), D) with the stored dtype (so the plots
    can tell pixel units from model units), y of shape (min(n, N),).
    """
    from .io.fs import open_zarr_group
    from .io.labels import as_labels

    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    try:
        group = open_zarr_group(url, storage_options)
    except (OSError, ValueError) as exc:  # zarr's GroupNotFoundError is both
        raise InputError(f"{url}: not a Zarr group: {type(exc).__name__}: {exc}") from None
    names = set(group.array_keys())
    for need in ("images", "labels"):
        if need not in names:
            raise InputError(f"{url}: no array {need!r} in the group (arrays: {sorted(names)})")
    images, labels = group["images"], group["labels"]
    if images.ndim not in (2, 3) or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(
            f"{url}: need 'images' (N, H, W) or (N, D) and 'labels' (N,), got {images.shape} and {labels.shape}"
        )
    X = np.asarray(images[:n])
    return X.reshape(len(X), -1), as_labels(labels[:n])


def _as_str(values: np.ndarray) -> np.ndarray:
    """Labels in their string form, to match a store's "3" with a model's 3.

    Via object: numpy 2.4 cannot cast zarr's StringDType straight to "U".
    """
    from .io.labels import as_labels

    return as_labels(np.asarray(values, dtype=object))


def _check_samples(
    model: ClassModel, samples: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    X, y = (np.asarray(a) for a in samples)
    if X.ndim == 3:
        X = X.reshape(len(X), -1)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"samples must be (X (n, D), y (n,)), got shapes {X.shape} and {y.shape}")
    if X.shape[1] != model.n_features:
        raise InputError(f"samples have {X.shape[1]} features, the model {model.n_features}")
    return X, y


def _one_per_class(model: ClassModel, samples, seed: int | None) -> np.ndarray:
    """The first sample of each class (K, D); classes without one are drawn from the model.

    Labels match by their string form (a store's "3" is the model's class 3). When
    integer samples must be completed by float draws, the integer ones are converted
    to model units (times ``model.scale``) so the column shares one scale.
    """
    X, y = _check_samples(model, samples) if samples is not None else (None, np.zeros(0))
    ys = _as_str(y)
    rows = []
    for c in model.classes.tolist():
        hits = np.flatnonzero(ys == str(c))
        rows.append(X[hits[0]] if len(hits) else model.sample(1, seed=seed, label=c)[0][0])
    kinds = {r.dtype.kind for r in rows}
    return np.stack(rows) if len(kinds) == 1 else np.stack([_to_model_units(model, r) for r in rows])


def _to_model_units(model: ClassModel, x: np.ndarray) -> np.ndarray:
    return x * model.scale if x.dtype.kind in "iub" else x.astype(np.float64)


# ---------------------------------------------------------------------------- drawing
def display_shape(n_features: int, image_shape: tuple[int, ...] | None) -> tuple[int, int]:
    """(H, W) to draw rows of ``n_features`` as: ``image_shape`` when it is 2-D and fits,
    else a square when ``n_features`` is one, else a 1 x D strip."""
    D = int(n_features)
    if image_shape is not None and len(image_shape) == 2 and math.prod(image_shape) == D:
        return tuple(int(s) for s in image_shape)
    side = math.isqrt(D)
    return (side, side) if side * side == D else (1, D)


def _style(model: ClassModel, images: np.ndarray) -> _Style:
    """How to draw ``images`` (one figure's panels of one kind): shape, panel box, common scale.

    Panels keep the image's aspect up to 4:1 with the short side at least 0.5 inch;
    beyond that (a 1 x D strip) the image is stretched to fill its panel.
    """
    H, W = display_shape(model.n_features, model.image_shape)
    ratio = max(H / W, W / H)
    long = PANEL * min(ratio, 4.0)
    short = max(long / ratio, 0.5)
    aspect = "equal" if math.isclose(long / short, ratio) else "auto"
    panel = (long, short) if W >= H else (short, long)
    if images.dtype.kind in "iub":
        lo, hi = float(images.min()), float(images.max())
    elif not model.transform.identity:
        lo, hi = 0.0, 1.0  # x~, the data space of a logit model
    else:
        lo, hi = model.display_range()
    return _Style((H, W), aspect, lo, hi if hi > lo else lo + 1.0, panel)


def display_label(c: Any) -> str:
    """A class label for display; long ones lose their middle (their ends tell them apart)."""
    text = str(c)
    if len(text) <= _MAX_LABEL:
        return text
    head = (_MAX_LABEL - 1) // 2
    return text[:head] + "…" + text[len(text) - (_MAX_LABEL - 1 - head) :]


def _row_label_width(labels: list[str]) -> float:
    """Inches for row labels: ``ROW_LABEL``, or more for labels longer than 7 characters."""
    return max(ROW_LABEL, 0.3 + 0.085 * max(map(len, labels)))


def _show(ax, image: np.ndarray, style: _Style, title: str | None = None, ylabel: str | None = None) -> None:
    """Draw one image: upright, grey, uninterpolated, on ``style``'s scale, no ticks."""
    ax.imshow(
        np.asarray(image).reshape(style.shape),
        cmap="gray",
        interpolation="none",
        vmin=style.vmin,
        vmax=style.vmax,
        aspect=style.aspect,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=FONT, pad=3)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=FONT + 1, rotation=0, ha="right", va="center", labelpad=6)


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A figure of ``width`` x ``height`` inches at :data:`DPI`, drawn by Agg (no GUI backend)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _panels(
    fig: Figure, rows: int, cols: int, panel: tuple[float, float], left: float, top: float, title: float
) -> np.ndarray:
    """A (rows, cols) array of image axes placed in inches, without a layout engine.

    Cell (r, c) is ``panel`` inches plus ``title`` inches above it for its title; the
    grid starts ``left`` inches from the left edge and ``top`` inches below the top.
    Fixed placement keeps the gaps even and is much faster than constrained layout
    for dozens of axes.
    """
    W, H = fig.get_size_inches()
    (pw, ph), m = panel, _GAP / 2
    axes = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        bottom = H - top - (r + 1) * (ph + title)
        for c in range(cols):
            x = left + c * pw
            axes[r, c] = fig.add_axes(((x + m) / W, (bottom + m) / H, (pw - 2 * m) / W, (ph - 2 * m) / H))
    return axes


def save_figure(fig: Figure, path: str, storage_options: dict | None = None) -> str:
    """Write ``fig`` as PNG to a local path or fsspec URL, creating the parent folder."""
    from .io.fs import url_to_fs

    fs, where = url_to_fs(str(path), storage_options)
    parent = posixpath.dirname(where)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(where, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return str(path)


# ---------------------------------------------------------------------------- figures
def plot_means_and_samples(
    model: ClassModel,
    path: str,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int | None = 0,
) -> str:
    """One row per class: its mean image beside one sample of that class.

    Parameters
    ----------
    model : ClassModel
    path : str
        PNG to write (local path or fsspec URL).
    samples : (X, y), optional
        X of shape (n, D) or (n, H, W), in model units (float) or pixel units
        (integers); y of shape (n,). The first sample of each class is shown; a class
        with none is drawn with ``model.sample(1, seed, label=c)``.
    seed : int, optional
        Seed of those draws.

    The figure is ``(2 * PANEL + label width, K * PANEL + TITLE)`` inches for square
    images, the label width being ``ROW_LABEL`` for labels of up to 7 characters and
    growing with longer ones. Returns ``path``.
    """
    picked = _one_per_class(model, samples, seed)
    means = model.transform.inverse(model.class_means)  # a mixture's: sum_m w_m mu_m; logit: sigmoid
    means_style, sample_style = _style(model, means), _style(model, picked)
    (pw, ph), K = means_style.panel, model.n_classes
    labels = [display_label(c) for c in model.class_names]
    label_width = _row_label_width(labels)
    fig = new_figure(2 * pw + label_width, K * ph + TITLE)
    axes = _panels(fig, K, 2, (pw, ph), left=label_width, top=TITLE, title=0.0)
    for k, label in enumerate(labels):
        first = k == 0
        _show(axes[k, 0], means[k], means_style, "mean" if first else None, label)
        _show(axes[k, 1], picked[k], sample_style, "sample" if first else None)
    return save_figure(fig, path)


def plot_sample_grid(
    model: ClassModel,
    path: str,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    rows: int = 10,
    cols: int = 4,
    seed: int | None = 0,
) -> str:
    """A ``rows`` x ``cols`` grid of samples, each panel titled with its class.

    ``samples`` (X, y) as in :func:`plot_means_and_samples`; the first ``rows * cols``
    are shown (fewer rows when there are fewer samples). Without them,
    ``model.sample(rows * cols, seed)`` draws classes from the prior.

    The figure is ``(cols * PANEL, rows * (PANEL + TITLE))`` inches for square images.
    Returns ``path``.
    """
    if rows < 1 or cols < 1:
        raise InputError(f"rows and cols must be >= 1, got {rows} and {cols}")
    X, y = _check_samples(model, samples) if samples is not None else model.sample(rows * cols, seed=seed)
    if len(X) == 0:
        raise InputError("no samples to plot")
    X, y = X[: rows * cols], y[: rows * cols]
    rows = math.ceil(len(X) / cols)
    style = _style(model, X)
    pw, ph = style.panel
    fig = new_figure(cols * pw, rows * (ph + TITLE))
    axes = _panels(fig, rows, cols, (pw, ph), left=0.0, top=0.0, title=TITLE).ravel()
    names = {str(c): name for c, name in zip(model.classes.tolist(), model.class_names)}
    for ax, x, c in zip(axes, X, y.tolist()):
        _show(ax, x, style, display_label(names.get(str(c), c)))
    for ax in axes[len(X) :]:
        ax.set_axis_off()
    return save_figure(fig, path)


def _directions(eigvals: np.ndarray, fraction: float) -> int:
    """Fewest leading eigen-directions whose variance is at least ``fraction`` of the total."""
    total = eigvals.sum()
    if not total > 0:
        return 0
    return int(np.searchsorted(np.cumsum(eigvals) / total, fraction - 1e-12)) + 1


def plot_spectrum(model: ClassModel, path: str) -> str:
    """Left: each class's covariance eigenvalues, descending, on a log axis; right: the priors.

    The legend gives, per class, how many directions carry 90% and 99% of its
    variance. Eigenvalues below the model's rank tolerance are not drawn. For a
    diagonal model the "eigenvalues" are the per-pixel variances. The figure is
    ``SPECTRUM_SIZE`` inches. Returns ``path``.
    """
    K = model.n_classes
    labels = [display_label(c) for c in model.class_names]
    cmap = colormaps["tab10" if K <= 10 else "tab20" if K <= 20 else "viridis"]
    colors = [cmap(k) if K <= 20 else cmap(k / max(K - 1, 1)) for k in range(K)]
    fig = new_figure(*SPECTRUM_SIZE, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    for k, eigvals in enumerate(model.spectra()):
        counts = " / ".join(str(_directions(eigvals, q)) for q in FRACTIONS)
        left.plot(
            np.arange(1, len(eigvals) + 1), eigvals, color=colors[k], lw=1.5, label=f"{labels[k]}: {counts}"
        )
    left.set_yscale("log")
    left.set_xlabel("direction (eigenvalue rank)", fontsize=FONT + 1)
    left.set_ylabel("variance (model units²)", fontsize=FONT + 1)
    kind = "per-pixel variances (diagonal model)" if model.covariance_type == "diag" else "eigenvalues"
    left.set_title(f"Covariance {kind} per class{model.spectrum_scope}, D = {model.n_features}", fontsize=FONT + 2)
    left.tick_params(labelsize=FONT)
    left.grid(True, which="major", alpha=0.3)
    pct = " / ".join(f"{q:.0%}" for q in FRACTIONS)
    left.legend(  # beside the axes: the curves fill every corner in general
        title=f"class: directions\nfor {pct} of variance",
        fontsize=FONT - 1,
        title_fontsize=FONT,
        ncols=math.ceil(K / 20),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
    right.bar(np.arange(K), model.priors, color=colors)
    right.set_xticks(
        np.arange(K), labels, fontsize=FONT, rotation=90 if K > 12 or max(map(len, labels)) > 3 else 0
    )
    right.set_ylabel("prior p(y)", fontsize=FONT + 1)
    right.set_xlabel("class", fontsize=FONT + 1)
    right.set_title(f"Class priors ({int(model.counts.sum()):,} training rows)", fontsize=FONT + 2)
    right.tick_params(axis="y", labelsize=FONT)
    return save_figure(fig, path)


def plot_component_means(model: ClassModel, path: str) -> str:
    """For a model with several components per class (:meth:`ClassModel.component_means`):
    one row per class, its component means by decreasing weight.

    Each panel is titled with the component's weight; dropped components (weight 0)
    are left out. The figure is ``(M * PANEL + label width, K * (PANEL + TITLE))``
    inches for square images. Returns ``path``.
    """
    parts = model.component_means()
    if parts is None:
        raise InputError(f"a {model.kind} model has one density per class, no component means to draw")
    means, weights = parts
    means = model.transform.inverse(means)  # logit means: through the sigmoid, in [0, 1]
    style = _style(model, means)
    (pw, ph), K, M = style.panel, model.n_classes, weights.shape[1]
    labels = [display_label(c) for c in model.class_names]
    label_width = _row_label_width(labels)
    fig = new_figure(M * pw + label_width, K * (ph + TITLE))
    axes = _panels(fig, K, M, (pw, ph), left=label_width, top=0.0, title=TITLE)
    for k, label in enumerate(labels):
        order = [m for m in np.argsort(-weights[k], kind="stable") if weights[k, m] > 0]
        for j in range(M):
            if j < len(order):
                m = order[j]
                _show(axes[k, j], means[k, m], style, f"w = {weights[k, m]:.2f}", label if j == 0 else None)
            else:
                axes[k, j].set_axis_off()
    return save_figure(fig, path)


def plot_directions(model: ClassModel, path: str, n: int = DIRECTIONS) -> str:
    """For a low-rank kind (:meth:`ClassModel.principal_directions`): one row per class, its
    first ``n`` principal directions (eigen-images), titled with the variance along each.

    Directions are signed: each panel is drawn on a diverging scale symmetric about 0
    (grey 0, dark and light the two signs). Returns ``path``.
    """
    parts = model.principal_directions()
    if parts is None:
        raise InputError(f"a {model.kind} model has no low-rank part whose directions could be drawn")
    directions, variances = parts
    style = _style(model, directions)
    (pw, ph), K, M = style.panel, model.n_classes, min(n, directions.shape[1])
    labels = [display_label(c) for c in model.class_names]
    label_width = _row_label_width(labels)
    fig = new_figure(M * pw + label_width, K * (ph + TITLE))
    axes = _panels(fig, K, M, (pw, ph), left=label_width, top=0.0, title=TITLE)
    for k, label in enumerate(labels):
        for j in range(M):
            v = directions[k, j]
            top = float(np.abs(v).max()) or 1.0
            _show(axes[k, j], v, _Style(style.shape, style.aspect, -top, top, style.panel), f"{variances[k, j]:.3g}",
                  label if j == 0 else None)
    return save_figure(fig, path)


def plot_all(
    model: ClassModel,
    out_dir: str,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int | None = 0,
) -> dict[str, str]:
    """Write the three figures into ``out_dir`` (created if missing; a path or fsspec URL).

    Returns ``{"means-and-samples": path, "samples-grid": path, "spectrum": path}``
    with the file names of :data:`FILES`; for a model with components (a per-class
    mixture) also ``"component-means"`` (:data:`MIXTURE_FILES`, :func:`plot_component_means`);
    for a low-rank kind ``"directions"`` (:data:`LOW_RANK_FILES`, :func:`plot_directions`).
    """
    mixture = model.component_means() is not None
    low_rank = model.principal_directions() is not None
    files = {**FILES, **(MIXTURE_FILES if mixture else {}), **(LOW_RANK_FILES if low_rank else {})}
    out = {name: posixpath.join(str(out_dir), file) for name, file in files.items()}
    plot_means_and_samples(model, out["means-and-samples"], samples=samples, seed=seed)
    plot_sample_grid(model, out["samples-grid"], samples=samples, seed=seed)
    plot_spectrum(model, out["spectrum"])
    if mixture:
        plot_component_means(model, out["component-means"])
    if low_rank:
        plot_directions(model, out["directions"])
    return out


__all__ = [
    "DIRECTIONS",
    "DPI",
    "FILES",
    "FRACTIONS",
    "LOW_RANK_FILES",
    "MIXTURE_FILES",
    "PANEL",
    "ROW_LABEL",
    "SPECTRUM_SIZE",
    "TITLE",
    "load_samples",
    "plot_all",
    "plot_component_means",
    "plot_directions",
    "plot_means_and_samples",
    "plot_sample_grid",
    "plot_spectrum",
]
