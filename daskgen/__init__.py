"""daskgen: learn per-class Gaussian distributions on Dask and generate data from them."""

from ._version import __version__
from .errors import DaskgenError, InputError, ModelError, OutputExistsError
from .fitting import fit
from .generation import GenerateResult, generate
from .io.store import read_model as load_model
from .model import GaussianClassModel
from .stats import ClassStats, chunk_stats, merge

__all__ = [
    "ClassStats",
    "DaskgenError",
    "GaussianClassModel",
    "GenerateResult",
    "InputError",
    "ModelError",
    "OutputExistsError",
    "__version__",
    "chunk_stats",
    "fit",
    "generate",
    "load_model",
    "merge",
]
