"""glibc malloc settings for batch jobs: keep freed large buffers for reuse.

By default glibc hands every buffer above a (dynamic, at most 32 MiB) threshold
back to the kernel when it is freed, and trims the heap top above twice that. A
generation chunk allocates ~30 MB buffers again and again (normals, the chunk, the
compressed bytes), so each comes back as fresh pages: ~13,000 page faults per chunk,
a quarter of the CPU time of ``daskgen sample`` on a small VM. With the thresholds
fixed high, freed buffers are reused; the cost is that the process keeps up to
256 MiB of freed memory until it exits, which a batch job does soon. Only the
console script applies this, to its own process (with its in-process worker);
worker processes keep distributed's settings.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest allowed mmap threshold on 64-bit systems.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the heap top kept for reuse: a few chunks' buffers per thread, small
#: enough that a worker's memory limit (which counts it as unmanaged memory) is not
#: reached by memory nobody uses.
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Apply the settings to this process; False where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
