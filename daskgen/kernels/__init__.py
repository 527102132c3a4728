"""Numeric kernels: pure numpy functions on blocks of rows and on parameters.

Nothing here imports Dask or a model class, or asks which worker it runs on: a kernel
takes arrays (and small parameter objects) and returns arrays or statistics that merge.

* :mod:`.class_stats` — per-class counts, means and centered scatter; the Chan merge;
  exact 8-bit pixel sums; grouping rows by class.
* :mod:`.weighted` — responsibility-weighted statistics per (class, component) and their merge.
* :mod:`.estep` — E-step and hard-assignment passes over one block.
* :mod:`.init_sample` — the chunking-independent hashed sample of rows per class.
* :mod:`.kmeans` — k-means++ seeding and Lloyd iterations on a sample.
* :mod:`.linalg` — covariance factors, precision Cholesky, log-sum-exp.
* :mod:`.lowrank` — low-rank-plus-diagonal Gaussians: Woodbury log-density, sampling, O(D·q) per row.
* :mod:`.sampling` — drawing blocks of Gaussian rows from prepared factors.
* :mod:`.ndb` — NDB's nearest-centre assignment, Lloyd statistics, bin counts and z-test.
"""
