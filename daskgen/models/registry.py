"""Model kinds by name: what the model store reads a stored ``model_kind`` through.

A kind registers its class under its ``kind`` name (:func:`register`, usually as a
class decorator in the kind's module). The built-in kinds are registered lazily:
:func:`get` imports their module on first use, so loading a one-Gaussian model never
imports the mixture code (or SciPy's LAPACK wrappers).

This module imports no model class, so the store can depend on it without a cycle.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, TypeVar

from ..errors import ModelError

T = TypeVar("T", bound=type)

#: Built-in kinds: name -> the module that registers it when imported.
BUILTIN = {"gaussian": "daskgen.models.gaussian", "mixture": "daskgen.models.mixture",
           "ppca": "daskgen.models.lowrank", "fa": "daskgen.models.lowrank", "mfa": "daskgen.models.mfa"}
_KINDS: dict[str, Any] = {}


def register(cls: T) -> T:
    """Register the model class ``cls`` under ``cls.kind``; returns ``cls`` (a class decorator).

    Registering another class under a taken name replaces it (a re-imported module).
    """
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{cls.__name__} needs a non-empty string class attribute 'kind' to be registered")
    _KINDS[kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Forget ``kind`` (a kind defined for a while, e.g. in a test)."""
    _KINDS.pop(kind, None)


def get(kind: str) -> Any:
    """The model class registered as ``kind``; ``ModelError`` for an unknown name."""
    if kind not in _KINDS and kind in BUILTIN:
        import_module(BUILTIN[kind])
    try:
        return _KINDS[kind]
    except KeyError:
        raise ModelError(f"unknown model kind {kind!r} (known: {', '.join(kinds())})") from None


def kinds() -> list[str]:
    """The names of the known kinds (built-in and registered), sorted."""
    return sorted(set(BUILTIN) | set(_KINDS))


def stored_kind(meta: dict[str, Any]) -> str:
    """The kind of a model store from its ``daskgen`` attributes.

    Stores written before kinds were recorded have no ``model_kind``: a ``components``
    attribute meant a per-class mixture, its absence one Gaussian per class.
    """
    kind = meta.get("model_kind")
    if kind is not None:
        return str(kind)
    return "mixture" if meta.get("components") is not None else "gaussian"
