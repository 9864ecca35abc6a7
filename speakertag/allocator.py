"""The C allocator tuned for what speakertag does: large arrays made and freed many times a second.

glibc's malloc gives every array of more than a few hundred kB fresh pages from the kernel
(mmap) and hands them back when it is freed, so that the next batch of spectra or encoder
activations faults every page in again. `reuse_freed_memory` keeps such arrays in the heap
and freed memory in the process for the next one: faster training and tagging where page faults
cost most, a loaded host (docs/experiments.md#kept-the-log-mel-in-cache-sized-pieces-and-freed-memory-kept-for-reuse).
Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD_BYTES = 2 ** 30  # free memory at the top of the heap kept for reuse, up to this


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc for the whole process (the command line does this once, at start);
    returns whether it was done: False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
