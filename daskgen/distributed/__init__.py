"""Dask wiring, in one place: :mod:`.reduction` (the one way daskgen runs a statistic per
block, merges the partials and finalizes them), :mod:`.fit` (the fit's statistics),
:mod:`.em` (the EM passes), :mod:`.generation` (seeded chunks into Zarr) and
:mod:`.cluster` (the client, and computing a graph with a span and progress).
``evaluate`` and ``evaluate-samples`` define their reductions beside their reports.
Nothing is imported here, so importing a submodule stays light.
"""
