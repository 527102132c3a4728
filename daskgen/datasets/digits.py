"""scikit-learn's handwritten digits, bundled with daskgen (``daskgen/data/digits.npz``)."""

from __future__ import annotations

import io

import numpy as np

#: Scale that maps the digits' pixel values 0..16 to 0..1.
DIGITS_SCALE = 1 / 16


def load_digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits, from the copy bundled with daskgen.

    Returns
    -------
    images : numpy.ndarray
        (1797, 8, 8) uint8, values 0..16 — scale with :data:`DIGITS_SCALE` (1/16).
    labels : numpy.ndarray
        (1797,) int64, digits 0..9.

    Notes
    -----
    Source: UCI ML hand-written digits (test set) via ``sklearn.datasets.load_digits``,
    CC BY 4.0; see ``daskgen/data/README.md``. scikit-learn is not needed.
    """
    from importlib import resources

    ref = resources.files("daskgen").joinpath("data/digits.npz")
    try:
        with ref.open("rb") as f:
            payload = io.BytesIO(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            "daskgen/data/digits.npz is missing from this installation of daskgen; reinstall it"
        ) from None
    with np.load(payload) as z:
        return np.asarray(z["images"], dtype=np.uint8), np.asarray(z["labels"], dtype=np.int64)

