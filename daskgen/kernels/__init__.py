"""Numeric kernels: pure numpy functions on blocks of rows (no Dask, no model classes)."""
