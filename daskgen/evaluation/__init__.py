"""Scoring what daskgen makes: a model on held-out data, and a generated set against real data.

:mod:`~daskgen.evaluation.heldout` (``daskgen evaluate``): held-out log-likelihood
(dequantized, in nats and bits per dimension) and the Bayes classifier's accuracy
and confusion matrix. :mod:`~daskgen.evaluation.ndb` (``daskgen evaluate-samples``):
NDB, the number of statistically different bins, on its numpy kernels in
:mod:`daskgen.kernels.ndb`. ``daskgen.evaluate`` and ``daskgen.ndb`` are the entry points.
"""
