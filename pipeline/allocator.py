"""Keep freed heap memory in the process (glibc only), so that a training step's large tensors
reuse pages that are already mapped instead of faulting fresh ones in.

Why: glibc hands a freed block over its mmap threshold (at most 32 MB, and lower ones as the
threshold adapts) back to the kernel, and trims the heap's free top; the next step's tensor of
that size then takes a page fault on every 4 KB page it first writes. On an ExtremeC3Net
training step (batch 32, 224 px, 2 threads) that was about 100,000 faults and 0.2-0.3 s of
system time per step; with mmap and trimming off there are none, for about 5% more peak memory
(``benchmarks/train_step.py --default-allocator`` measures it). Elsewhere (musl, macOS,
Windows) this does nothing. It changes the whole process, so only the train stage calls it.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
KEEP_UP_TO_BYTES = 2**31 - 1  # mallopt takes an int: free top of the heap kept up to 2 GiB


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # not glibc (musl's mallopt is a stub)
    return libc


def retain_freed_memory() -> bool:
    """Turn off mmap for large blocks and heap trimming; True when glibc took both settings."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES) == 1
