"""One BLAS thread per task while any daskgen task runs in this process.

Dask already runs one task per core; BLAS threads on top of that oversubscribe
the cores, and a BLAS thread count that changes between calls can change the last
bits of a product. While at least one daskgen task is inside ``one_blas_thread``
the process's BLAS libraries use a single thread; the original setting comes back
when the last such task leaves. A counter (not a per-task set/restore) keeps one
task from restoring the thread count under another task's feet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_depth = 0
_limiter: Any = None
_controller: Any = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    global _depth, _limiter, _controller
    with _lock:
        if _depth == 0:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
