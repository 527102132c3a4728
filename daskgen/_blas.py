"""One BLAS thread per task while any daskgen task runs in this process; and whether
the task's process runs other tasks in other threads (:func:`shares_threads`).

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
from contextvars import ContextVar
from typing import Any

_lock = threading.Lock()
_depth = 0
_limiter: Any = None
_controller: Any = None
_shared: ContextVar[bool] = ContextVar("daskgen_threads_shared", default=False)


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


@contextmanager
def shares_threads(shared: bool) -> Iterator[None]:
    """Declare, for the code run inside (this thread only), whether other tasks run in
    other threads of this process. The caller knows (the Dask layer asks its worker);
    kernels read :func:`threads_shared` and never ask a scheduler themselves."""
    token = _shared.set(bool(shared))
    try:
        yield
    finally:
        _shared.reset(token)


def threads_shared() -> bool:
    """Whether the running task declared that other tasks share its process's threads
    (then a BLAS call that holds the GIL would serialise them)."""
    return _shared.get()
