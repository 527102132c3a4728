"""daskgen: learn per-class Gaussian distributions on Dask and generate data from them."""

from ._version import __version__
from .em import fit_mixture
from .errors import DaskgenError, InputError, ModelError, OutputExistsError
from .fitting import fit
from .generation import GenerateResult, generate
from .io.store import read_model as load_model
from .mixture import GaussianMixtureClassModel
from .model import GaussianClassModel
from .stats import ClassStats, chunk_stats, merge

__all__ = [
    "ClassStats",
    "DaskgenError",
    "GaussianClassModel",
    "GaussianMixtureClassModel",
    "GenerateResult",
    "InputError",
    "ModelError",
    "OutputExistsError",
    "__version__",
    "chunk_stats",
    "fit",
    "fit_mixture",
    "generate",
    "load_model",
    "merge",
]
