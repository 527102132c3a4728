"""Get real image datasets into the layouts daskgen reads.

Sources:

- **IDX files** (MNIST, Fashion-MNIST): :func:`read_idx`, :func:`load_idx_pair`,
  found locally with :func:`find_local` (Debian's ``dataset-fashion-mnist`` package
  installs Fashion-MNIST in :data:`FASHION_MNIST_DIRS`) or fetched and checksum-verified
  with :func:`download`.
- **scikit-learn's handwritten digits**, bundled as ``daskgen/data/digits.npz`` so no
  scikit-learn is needed: :func:`load_digits_dataset`. Their pixels are 0..16, so fit
  them with ``scale =`` :data:`DIGITS_SCALE`.
- **tutorial-style CSV files** (``label,pixel0,...``), read by :func:`convert`.

Modules: :mod:`~daskgen.datasets.idx` (reading and finding IDX files),
:mod:`~daskgen.datasets.downloads` (verified downloads), :mod:`~daskgen.datasets.digits`
(the bundled digits), :mod:`~daskgen.datasets.writers` (Zarr and CSV layouts) and
:mod:`~daskgen.datasets.catalogue` (the named datasets and :func:`convert`).

Layouts written:

- **Zarr v3 group** (:func:`write_zarr_dataset`): arrays ``images`` (N, H, W) or (N, D)
  and ``labels`` (N,), as :mod:`daskgen.io.zarr_input` expects.
- **CSV** (:func:`write_csv_dataset`): Kaggle digit-recognizer layout
  ``label,pixel0,...,pixel{D-1}``.

:func:`convert` strings these together for ``daskgen data NAME --out PATH``. Every
error that is the user's to fix raises :class:`~daskgen.errors.InputError` (or
:class:`~daskgen.errors.OutputExistsError`) with a one-line message naming the file.
"""

from .catalogue import CLASS_NAMES, DATASETS, convert
from .digits import DIGITS_SCALE, load_digits_dataset
from .downloads import CHECKSUMS, URLS, download
from .idx import FASHION_MNIST_DIRS, IDX_FILES, find_local, load_idx_pair, read_idx
from .writers import write_csv_dataset, write_zarr_dataset

__all__ = [
    "CHECKSUMS",
    "CLASS_NAMES",
    "DATASETS",
    "DIGITS_SCALE",
    "FASHION_MNIST_DIRS",
    "IDX_FILES",
    "URLS",
    "convert",
    "download",
    "find_local",
    "load_digits_dataset",
    "load_idx_pair",
    "read_idx",
    "write_csv_dataset",
    "write_zarr_dataset",
]
