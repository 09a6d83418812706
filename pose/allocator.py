"""Keep freed memory in the process instead of returning it to the system (glibc).

By default glibc serves every allocation above a threshold with a fresh ``mmap`` and gives it
back with ``munmap`` when freed, so a training step pays page faults for all its big tensors
again, every step; on some VMs that cost dominates a CPU step (README, Performance). Two
``mallopt`` settings make glibc serve big blocks from the heap and keep freed memory there
for reuse: what PyTorch's CPU performance guides get with jemalloc or tcmalloc, without a
preloaded library. The cost is memory: the process keeps its peak heap.

Called once at start-up by the tools (``pose.cli``), the grid's cells and the benchmarks.
Off with ``runtime.keep_freed_memory: false`` or the environment variable
``POSE_KEEP_FREED_MEMORY=0``; a no-op where the C library has no ``mallopt``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

ENVIRONMENT = "POSE_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Apply the settings; True where they took effect (glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows
        return False
    # No mmap for big blocks, and free memory at the heap's top kept up to 1 GiB.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


def configure(enabled: bool = True) -> bool:
    """keep_freed_memory() unless ``enabled`` is False or the environment turns it off."""
    if not enabled or os.environ.get(ENVIRONMENT, "1") == "0":
        return False
    return keep_freed_memory()
