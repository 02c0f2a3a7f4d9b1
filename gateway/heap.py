"""The gateway process's heap: memory a request freed is kept for the next one, not given back to the kernel.

A gateway process allocates each request's body, its copies and its answer (megabytes for an image batch)
and frees them when the request ends. By default glibc's malloc hands blocks that large back to the kernel
(a block over its mmap threshold is unmapped when freed; a thread's heap is trimmed past its trim
threshold), so the next request gets fresh memory, every page of which faults in and is zeroed again: a
quarter of a gateway's CPU on 600 KiB requests (docs/performance.md, "The gateway's heap"). Raising both
thresholds makes such blocks come from the heap and be used again.

glibc only (``mallopt``); elsewhere :func:`keep_freed` does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest on 64-bit hosts: larger blocks are always mapped apart
KEEP_MAX = 1 << 30  # mallopt takes an int


def keep_freed(keep_bytes: int) -> bool:
    """Keep up to ``keep_bytes`` of freed memory at the top of each heap, and take blocks of up to 32 MiB
    from the heap; 0 leaves glibc's defaults. Return whether the settings took."""
    if keep_bytes <= 0:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        log.info("gateway: no glibc mallopt here; freed memory goes back to the kernel as the allocator does")
        return False
    keep_bytes = min(keep_bytes, KEEP_MAX)
    threshold = min(keep_bytes, MMAP_THRESHOLD_MAX)
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, keep_bytes))


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has no mallopt thresholds)
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
