"""Keep freed memory in the process's heap, so that repeated encoder calls stop page-faulting.

Why: an encoder call allocates and frees tens of MB of activations. glibc's malloc serves
blocks above its mmap threshold with fresh mappings, unmapped again on free, and gives the
top of the heap back to the kernel once more than its trim threshold is free, so the next call
faults the same memory in again, page by page. On a 2-core AMD EPYC VM that was 10,000-20,000
minor page faults per ResNet-50-layer3 call of 4 patches (bf16), and the same encoder ran at
25 or 34 patches/s depending on the process: the heap's layout, not the work, decided how
many of its allocations went back to the kernel each call. With both thresholds raised, a
process that builds an encoder faults its working set in once and then reuses it: no more
memory at the peak, only less returned in between.

glibc only (Linux); elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX / 2): blocks up to it come
#: from the heap. Larger ones (a whole slide's features) are still mapped and unmapped.
MMAP_THRESHOLD = 32 << 20

#: Free memory the heap may keep at its top: room for the activations of a batch.
TRIM_THRESHOLD = 512 << 20

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether it applied."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, since setting it turns off
    # glibc's own adjustment of both thresholds
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
