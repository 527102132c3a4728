"""daskgen: learn per-class Gaussian distributions on Dask and generate data from them.

The public names below are imported on first use (PEP 562), so ``import daskgen``
and the command line start fast: a fit never loads the mixture/EM code or SciPy.
"""

from importlib import import_module

from ._version import __version__

_EXPORTS = {
    "ClassModel": ".models.base",
    "ClassStats": ".kernels.class_stats",
    "DaskgenError": ".errors",
    "GaussianClassModel": ".models.gaussian",
    "GaussianMixtureClassModel": ".models.mixture",
    "GaussianClassifier": ".estimators",
    "GaussianMixtureClassifier": ".estimators",
    "GenerateResult": ".distributed.generation",
    "InputError": ".errors",
    "ModelError": ".errors",
    "NDBResult": ".evaluate_samples",
    "OutputExistsError": ".errors",
    "chunk_stats": ".kernels.class_stats",
    "fit": ".fitting",
    "fit_em": ".models.mixture_em",
    "fit_mixture": ".distributed.em",
    "generate": ".distributed.generation",
    "load_model": ".io.store",
    "merge": ".kernels.class_stats",
    "model_kind": ".models.registry",
    "ndb": ".evaluate_samples",
    "register_model_kind": ".models.registry",
    "save_model": ".io.store",
}
_RENAMED = {"load_model": "read_model", "model_kind": "get", "register_model_kind": "register", "save_model": "write_model"}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'daskgen' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
