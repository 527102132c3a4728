"""``daskgen evaluate``: held-out log-likelihood and the Bayes classifier, computed distributed.

Per block, a task reads the rows, scores them under the model and returns sums and a
confusion matrix (:class:`EvalStats`); a fixed tree of combine tasks adds them up
(:data:`EVALUATE`, a :class:`~daskgen.distributed.reduction.Reduction`). The scorer
travels inside the graph (one key), so evaluate survives losing every worker. Works for every model kind through its
:meth:`~daskgen.models.base.ClassModel.scorer` (what a task needs to score rows) and
its :meth:`~daskgen.models.base.ClassModel.summary`.

Conventions
-----------
Let ``s`` be the model's scale (pixel units -> model units, 1/255 for 8-bit images
fitted with ``--scale auto``) and ``D`` the number of features.

* Integer pixels (a block whose values are all integers) are *dequantized* as
  RealNVP, Glow and MAF do: ``x~ = (x + u) / 256``, ``u ~ U[0, 1)^D``, the noise of a
  row a function of (``seed``, the row's values) only
  (:func:`daskgen.kernels.transform.dequantization_noise`), so the result does not
  depend on the blocks. ``bits_per_dim`` is the protocol's number::

      bits/dim = -log2 p(x~) / D + 8  =  -log2 p_pixel(x + u) / D

  (``p_pixel`` the density in pixel units, bins of one pixel unit; 8 for a uniform
  model of 8-bit pixels). For every model kind and transform:

  - ``logit`` models are densities of x~ in [0, 1]^D (log-Jacobian included):
    ``log p_pixel(x + u) = log p(x~) - D log 256`` (pixels of L levels other than
    256, e.g. the digits' 0..16: ``x~ = (x + u) / L``, ``- D log L``);
  - ``none`` (pixel-space) models are densities of ``z = (x + u - 1/2) * s``:
    ``log p_pixel(x + u) = log p_model(z) + D log s``, i.e. ``log p(x~) = log p_model(z)
    + D log(256 s)`` — the number reported before, with the noise of a bin centred on
    each integer (u - 1/2), which is the same distribution.

  ``nats_per_image`` is the mean log-density in the model's data units (model units
  ``z`` for ``none``, x~ for ``logit``); ``pixel_nats_per_image`` the mean of
  ``log p_pixel(x + u)`` (the discrete bound of Theis et al. 2016, nats per image).
* Non-integer data are not dequantized (a ``logit`` model's inputs, times the scale,
  must lie in [0, 1]); bits/dim is then ``-ll / (D ln 2)`` of the density in data
  units (a differential quantity, comparable only between models of the same data),
  not the protocol's.
* The Bayes classifier ``argmax_k log p(y=k) + log p(x | y=k)`` is evaluated at each
  pixel's bin centre, no noise: ``x * s`` for ``none`` models (u = 1/2),
  ``(x + 1/2) / 256`` for ``logit``. ``raw_nats_per_image`` is ``log p`` there.
"""

from __future__ import annotations

import itertools
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.base import tokenize

from .._blas import one_blas_thread
from ..distributed.factors import scorer_node
from ..distributed.reduction import DEFAULT_SPLIT_EVERY, Reduction, reduce_blocks
from ..errors import InputError
from ..io.inputs import Dataset
from ..kernels.linalg import logsumexp_rows
from ..kernels.transform import EVALUATE_STREAM, NONE, Transform, dequantization_noise, pixel_levels, to_unit

FILES = {"json": "evaluation.json", "confusion": "confusion-matrix.png"}
#: Rows scored at once inside a block task (bounds the task's memory).
BATCH = 4096
#: How ``bits_per_dim`` is defined, as the report states it.
PROTOCOL = ("RealNVP/Glow/MAF: x~ = (x + u)/256, u ~ U[0,1)^D, bits/dim = -log2 p(x~)/D + 8 "
            "(= -log2 p_pixel(x + u)/D for integer pixels)")


@dataclass
class EvalStats:
    """Sums over rows, mergeable by addition."""

    n_classes: int
    rows: int = 0
    labelled: int = 0
    dequantized: int = 0
    sum_ll: float = 0.0  # log p(x~), dequantized where integer
    sum_ll2: float = 0.0
    sum_cond: float = 0.0  # log p(x~ | y), labelled rows
    sum_raw: float = 0.0  # log p(x), no noise
    neg_inf: int = 0  # rows with log p(x~) = -inf
    unscored: int = 0  # labelled rows every class gives log p(x | y) = -inf: no prediction
    confusion: np.ndarray = field(default=None)  # (K, K) int64, rows: true class, columns: predicted
    unknown: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)


def merge_eval(parts: list[EvalStats]) -> EvalStats:
    parts = list(parts)
    out = EvalStats(parts[0].n_classes)
    for p in parts:
        out.rows += p.rows
        out.labelled += p.labelled
        out.dequantized += p.dequantized
        out.sum_ll += p.sum_ll
        out.sum_ll2 += p.sum_ll2
        out.sum_cond += p.sum_cond
        out.sum_raw += p.sum_raw
        out.neg_inf += p.neg_inf
        out.unscored += p.unscored
        out.confusion += p.confusion
        for k, v in p.unknown.items():
            out.unknown[k] = out.unknown.get(k, 0) + v
    return out


def _is_integer(X: np.ndarray) -> bool:
    if X.dtype.kind in "iub":
        return True
    return bool(X.size) and bool(np.all(X == np.rint(X)))


def score_points(X: np.ndarray, dequantized: bool, transform: Transform, scale: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """Where rows ``X`` (n, D, pixel units) are scored: ``(noisy, centre, to_pixel)``.

    ``noisy`` are the dequantized points in the model's data units (``(x + u - 1/2) s``
    for ``none``, ``(x + u) / 256`` for ``logit``; the rows scaled when not
    ``dequantized``), ``centre`` the bin centres the classifier scores, and
    ``to_pixel`` the constant turning a log-density there into one in pixel units
    (``D log s``, or ``-D log L`` with L = 256 levels for 8-bit pixels). Raises ``ValueError`` for values a logit model
    cannot score (outside 0..255 for pixels, [0, 1] otherwise).
    """
    D = X.shape[1]
    if transform.identity:
        centre = X * scale
        if not dequantized:
            return centre, centre, 0.0
        u = dequantization_noise(X, seed, EVALUATE_STREAM)
        return (X + u - 0.5) * scale, centre, D * math.log(scale)
    if not dequantized:
        unit = to_unit(X, False, scale)
        return unit, unit, 0.0
    levels = pixel_levels(scale)  # 256 for 8-bit pixels
    noisy = to_unit(X, True, scale, seed, EVALUATE_STREAM)
    return noisy, to_unit(X + 0.5, False, 1 / levels), -D * math.log(levels)


def evaluate_block(X: np.ndarray, y: np.ndarray, index: int, scorer, scale: float, dequantize: str,
                   seed: int, transform: Transform = NONE) -> EvalStats:
    """Scores of block ``index``, rows ``X`` (n, D) in pixel units and labels ``y`` (n,):
    sums of log-likelihoods (nats, the model's data units) and the confusion matrix.

    ``scorer`` scores rows in the model's data units (:meth:`ClassModel.data_scorer`);
    the noise does not depend on ``index`` (it names the block in errors).
    """
    K = len(scorer.classes)
    out = EvalStats(K)
    if len(y) == 0:
        return out
    lookup = {str(c): i for i, c in enumerate(scorer.classes.tolist())}
    labels, inverse = np.unique(np.asarray(y), return_inverse=True)
    codes = np.array([lookup.get(str(v), -1) for v in labels.tolist()], dtype=np.intp)[inverse]
    for v, n in zip(*np.unique(np.asarray(y)[codes < 0], return_counts=True)):
        out.unknown[str(v)] = int(n)
    deq = dequantize == "yes" or (dequantize == "auto" and _is_integer(X))
    log_priors = np.log(scorer.priors)
    with one_blas_thread():
        for a in range(0, len(y), BATCH):
            Xb = np.asarray(X[a : a + BATCH], dtype=np.float64)
            cb = codes[a : a + BATCH]
            try:
                noisy, centre, _ = score_points(Xb, deq, transform, scale, seed)
            except ValueError as exc:
                raise InputError(f"block {index}: {exc}") from None
            joint = scorer.class_log_likelihood(centre) + log_priors
            predicted = np.argmax(joint, axis=1)
            ll = raw_ll = logsumexp_rows(joint)
            out.sum_raw += float(ll.sum())
            if noisy is not centre:
                joint = scorer.class_log_likelihood(noisy) + log_priors
                ll = logsumexp_rows(joint)
            out.sum_ll += float(ll.sum())
            out.sum_ll2 += float((ll * ll).sum())
            out.neg_inf += int(np.isneginf(ll).sum())
            known = cb >= 0
            out.unscored += int((np.isneginf(raw_ll) & known).sum())
            out.sum_cond += float((joint[known, cb[known]] - log_priors[cb[known]]).sum())
            np.add.at(out.confusion, (cb[known], predicted[known]), 1)
    out.rows = len(y)
    out.labelled = int((codes >= 0).sum())
    out.dequantized = len(y) if deq else 0
    return out


#: Scores per block (the block's index seeds its dequantization noise), float sums: a fixed tree.
EVALUATE = Reduction("evaluate", evaluate_block, merge_eval, indexed=True)


def open_for_model(
    model,
    inputs: list[str] | str,
    *,
    label_column: str | None = None,
    blocksize: int | None = None,
    fmt: str | None = None,
    storage_options: dict | None = None,
) -> Dataset:
    """Open held-out inputs with the model's scale and image shape; their features must match.

    Unlike ``fitting.prepare(update=model)``, files the model was fitted on are kept.
    Integer pixels of a model fitted on 8-bit pixels are checked to lie in 0..255,
    as the fit checked them.
    """
    from ..fitting import check_compatible, pixels_8bit
    from ..io.inputs import open_inputs

    dataset = open_inputs(inputs, label_column=label_column or model.label_column, blocksize=blocksize,
                          image_shape=model.image_shape, scale=model.scale, fmt=fmt,
                          storage_options=storage_options, pixels_8bit=pixels_8bit(model))
    check_compatible(model, dataset)
    return dataset


#: Flops of scoring one block (rows x classes x components x D^2) above which a block of
#: a Zarr input is split in rows, so that a few wide rows are scored by every core.
BLOCK_FLOPS = 2.5e10
#: ... but no block of fewer rows than this.
MIN_BLOCK_ROWS = 256


def rows_per_block(model) -> int:
    """Rows scored in one task: about :data:`BLOCK_FLOPS` of work under a full covariance
    per class and component (at D = 4,096, K = 10: 256 rows), at least :data:`MIN_BLOCK_ROWS`."""
    per_row = model.n_classes * model.n_components * model.n_features ** 2
    return max(MIN_BLOCK_ROWS, int(BLOCK_FLOPS // max(per_row, 1)))


def split_blocks(dataset: Dataset, rows: int) -> Dataset:
    """``dataset`` with its Zarr blocks cut into blocks of at most ``rows`` rows (a task
    reads its rows of the chunk): 2,000 rows of one Zarr chunk become tasks for every
    core. Other formats' blocks are kept (their blocks are byte ranges or row groups)."""
    from dataclasses import replace

    blocks = []
    for block in dataset.blocks:
        n = block.stop - block.start
        if block.fmt != "zarr" or n <= rows or dataset.parts is not None:
            blocks.append(block)
            continue
        pieces = -(-n // rows)
        edges = np.linspace(block.start, block.stop, pieces + 1).round().astype(int)
        blocks.extend(replace(block, start=int(a), stop=int(b)) for a, b in itertools.pairwise(edges))
    return dataset if len(blocks) == len(dataset.blocks) else replace(dataset, blocks=blocks)


def evaluate(
    model,
    inputs: list[str] | str | Dataset,
    *,
    label_column: str | None = None,
    blocksize: int | None = None,
    fmt: str | None = None,
    dequantize: str = "auto",
    seed: int = 0,
    split_every: int = DEFAULT_SPLIT_EVERY,
    storage_options: dict | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on labelled held-out ``inputs``; returns the report (JSON-able dict).

    The inputs are read with the model's scale and must have its features. See the
    module docstring for the conventions.
    """
    from ..options import EVALUATE as OPTIONS  # EVALUATE here is the reduction

    OPTIONS.check(dequantize=dequantize, seed=seed, split_every=split_every)
    dataset = inputs if isinstance(inputs, Dataset) else open_for_model(
        model, inputs, label_column=label_column, blocksize=blocksize, fmt=fmt, storage_options=storage_options)
    dataset = split_blocks(dataset, rows_per_block(model))
    token = tokenize(dataset.blocks, model.fingerprint, dequantize, seed)
    # the scorer is one key of the graph, its classes factored one task each on the workers
    stats = reduce_blocks(EVALUATE, dataset, (scorer_node(model, token), float(model.scale), dequantize, int(seed),
                                              model.transform),
                          split_every=int(split_every), token=token, progress=progress)
    return report(model, dataset, stats, dequantize=dequantize, seed=seed)


def report(model, dataset: Dataset, s: EvalStats, dequantize: str = "auto", seed: int = 0) -> dict[str, Any]:
    """The evaluation as a JSON-able dict."""
    if s.rows == 0:
        raise InputError("the input has no rows")
    D, scale, n = model.n_features, float(model.scale), s.rows
    mean = s.sum_ll / n
    var = max(s.sum_ll2 / n - mean * mean, 0.0) if np.isfinite(mean) else math.nan
    deq_all = s.dequantized == n
    offset = 0.0  # data units -> pixel units (see score_points)
    if s.dequantized:
        offset = D * math.log(scale) if model.transform.identity else -D * math.log(pixel_levels(scale))
    bits = -(mean + offset) / (D * math.log(2))
    cond = s.sum_cond / s.labelled if s.labelled else math.nan
    K = model.n_classes
    correct = int(np.trace(s.confusion))
    per_true = s.confusion.sum(axis=1)
    return {
        "model": model.summary(),
        "input": {"rows": n, "labelled_rows": s.labelled, "files": [f["path"] for f in dataset.files],
                  "unknown_labels": s.unknown},
        "dequantization": {
            "rows": s.dequantized,
            "all_rows": deq_all,
            "mode": dequantize,
            "seed": int(seed),
            "convention": ("integer pixels: x~ = (x + u)/256, u ~ U[0,1)^D from (seed, the row's values); "
                           "a pixel-space model scores z = (x + u - 1/2) * scale"),
        },
        "log_likelihood": {
            "protocol": PROTOCOL if s.dequantized else "not dequantized: -log2 p(x)/D in data units",
            "nats_per_image": _num(mean),
            "stderr": _num(math.sqrt(var / n)) if np.isfinite(var) else None,
            "bits_per_dim": _num(bits),
            "pixel_nats_per_image": _num(mean + offset),
            "conditional_nats_per_image": _num(cond),
            "conditional_bits_per_dim": _num(-(cond + offset) / (D * math.log(2))),
            "raw_nats_per_image": _num(s.sum_raw / n),
            "neg_inf_rows": s.neg_inf,
        },
        "classifier": {
            "accuracy": correct / s.labelled if s.labelled else None,
            "correct": correct,
            # rows no class can explain (log p(x | y) = -inf for every y): argmax picks the
            # first class, so they count in the accuracy as that guess
            "neg_inf_rows": s.unscored,
            "recall": [_num(c / t) if t else None for c, t in zip(np.diagonal(s.confusion).tolist(), per_true.tolist())],
            "confusion_matrix": s.confusion.tolist(),
            "confusion_axes": "rows: true class, columns: predicted class, in model class order",
        },
        "n_classes": K,
    }


def _num(x: float | None) -> float | None:
    """A finite float, else None (JSON has no infinities; ``neg_inf_rows`` tells why)."""
    return float(x) if x is not None and np.isfinite(x) else None


def format_table(rep: dict[str, Any]) -> str:
    """The report as a text table (what the command prints)."""
    m, ll, cl, dq = rep["model"], rep["log_likelihood"], rep["classifier"], rep["dequantization"]
    kind = f"{m['components']} components per class" if m["kind"] == "mixture" else "one Gaussian per class"

    def num(x, fmt="{:,.3f}"):
        return "n/a" if x is None else fmt.format(x)

    deq = ("dequantized: x~ = (x + u)/256, u ~ U[0,1)" if dq["all_rows"]
           else "not dequantized (non-integer data)" if not dq["rows"]
           else f"dequantized on {dq['rows']:,} of {rep['input']['rows']:,} rows")
    transform = m.get("transform") or {"name": "none"}
    space = "pixel space" if transform["name"] == "none" else f"{transform['name']} space (lambda {transform['lambda']:g})"
    lines = [
        f"model       {len(m['classes'])} classes, {kind}, {m['covariance']} covariances, {space}, D = {m['features']}",
        f"input       {rep['input']['rows']:,} rows ({deq})",
        f"bits/dim    {num(ll['bits_per_dim'], '{:.4f}')}   "
        + ("-log2 p(x~)/D + 8, as RealNVP/Glow/MAF" if dq["rows"] else "-log2 p(x)/D in data units (not the protocol)"),
        f"log p(x)    {num(ll['nats_per_image'])} nats/image ({'model units' if transform['name'] == 'none' else 'x~ in [0,1]'})"
        + (f" ± {ll['stderr']:.3f}" if ll["stderr"] is not None else ""),
        f"log p(x|y)  {num(ll['conditional_nats_per_image'])} nats/image   {num(ll['conditional_bits_per_dim'], '{:.4f}')} bits/dim",
        f"accuracy    {num(cl['accuracy'], '{:.4f}')} ({cl['correct']:,} of {rep['input']['labelled_rows']:,})",
    ]
    if ll["neg_inf_rows"]:
        lines.append(f"warning     {ll['neg_inf_rows']:,} rows have log p(x) = -inf (a singular covariance: refit with --reg-covar)")
    if cl.get("neg_inf_rows"):
        lines.append(f"warning     accuracy counts {cl['neg_inf_rows']:,} rows that every class gives log p(x|y) = -inf "
                     "(predicted as the first class: refit with --reg-covar)")
    if rep["input"]["unknown_labels"]:
        lines.append(f"warning     labels not in the model: {rep['input']['unknown_labels']}")
    labels = [str(c) for c in m["classes"]]
    names = m.get("class_names") or labels
    rows = [label if name == label else f"{label} {name}" for label, name in zip(labels, names)]
    width = max(5, *(len(x) for x in labels), *(len(str(v)) for row in cl["confusion_matrix"] for v in row)) + 1
    first = max(width, max(map(len, rows)) + 1)
    lines.append("")
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(" " * first + "".join(x[:width - 1].rjust(width) for x in labels) + "  recall".rjust(width + 2))
    for label, row, rec in zip(rows, cl["confusion_matrix"], cl["recall"]):
        lines.append(label.rjust(first) + "".join(str(v).rjust(width) for v in row)
                     + ("" if rec is None else f"{rec:.3f}".rjust(width + 2)))
    return "\n".join(lines)


def plot_confusion(rep: dict[str, Any], path: str) -> str:
    """The confusion matrix as a PNG: shares of each true class, counts written in the cells."""
    from ..plot import FONT, display_label, new_figure, save_figure

    C = np.asarray(rep["classifier"]["confusion_matrix"], dtype=np.float64)
    K = len(C)
    labels = [display_label(c) for c in rep["model"].get("class_names") or rep["model"]["classes"]]
    side = min(max(4.0, 0.55 * K + 2.0), 16.0)
    fig = new_figure(side + 1.0, side, layout="constrained")
    ax = fig.subplots()
    share = C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="none")
    if K <= 30:
        for i in range(K):
            for j in range(K):
                if C[i, j]:
                    ax.text(j, i, f"{int(C[i, j])}", ha="center", va="center", fontsize=FONT - 1,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(np.arange(K), labels, fontsize=FONT, rotation=90 if K > 12 or max(map(len, labels)) > 3 else 0)
    ax.set_yticks(np.arange(K), labels, fontsize=FONT)
    ax.set_xlabel("predicted class", fontsize=FONT + 1)
    ax.set_ylabel("true class", fontsize=FONT + 1)
    acc = rep["classifier"]["accuracy"]
    m = rep["model"]
    kind = f"K = {m['components']} per class" if m["kind"] == "mixture" else "one Gaussian per class"
    ax.set_title(f"Bayes classifier, {kind}: accuracy {acc:.4f}" if acc is not None else "Bayes classifier",
                 fontsize=FONT + 2)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("share of the true class", fontsize=FONT)
    cb.ax.tick_params(labelsize=FONT)
    return save_figure(fig, path)


def write_outputs(rep: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``evaluation.json`` and ``confusion-matrix.png`` into ``out_dir``."""
    from ..io.fs import write_json

    paths = {k: posixpath.join(str(out_dir), v) for k, v in FILES.items()}
    write_json(paths["json"], rep)
    plot_confusion(rep, paths["confusion"])
    return paths
