"""Dask wiring: :mod:`.reduction` is the one way daskgen runs a statistic per block,
merges the partials and finalizes them (the fit, every EM pass, the initial sample,
evaluate). Nothing is imported here, so importing a submodule stays light.
"""
