"""glibc malloc settings for batch jobs: keep freed large buffers for reuse.

By default glibc hands every buffer above a (dynamic, at most 32 MiB) threshold
back to the kernel when it is freed, and trims the heap top above twice that. A
generation chunk allocates ~30 MB buffers again and again (normals, the chunk, the
compressed bytes), so each comes back as fresh pages: ~13,000 page faults per chunk,
a quarter of the CPU time of ``daskgen sample`` on a small VM. With the thresholds
fixed high, freed buffers are reused; the cost is that the process keeps its
high-water mark of such buffers until it exits, which a batch job does soon.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest allowed mmap threshold on 64-bit systems.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
#: The same settings for processes started from here (glibc reads them at start).
ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


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
