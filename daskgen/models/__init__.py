"""Model kinds: the interface (:mod:`.base`), the registry (:mod:`.registry`), and one
module per kind — :mod:`.gaussian` (one Gaussian per class) and :mod:`.mixture` (a
Gaussian mixture per class, fitted by :mod:`.mixture_em`).

Pure numpy. Nothing is imported here, so ``daskgen.models.registry`` stays light.
"""
