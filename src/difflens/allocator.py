"""Keep a long streaming run's resident memory near what it holds (glibc only; a no-op elsewhere).

A statistics build keeps little (Gaussian sums), but under glibc's defaults its peak RSS grew far beyond
that: each reader thread gets its own malloc arena that keeps freed decode buffers, and the dynamic mmap
threshold rises after the first large free, so later activation tensors come from heaps that are never given
back. Measured (BENCHMARKS.md, reference-statistics memory; 300 images, batch 16): peak RSS 1679 MB with the
defaults, 1335 MB with at most 2 arenas and a fixed 1 MiB mmap threshold (what :func:`bound_heap_growth`
sets), no slower. A user's own ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` settings are left alone.

The bounds hold for the rest of the process and are not free for compute on large tensors: every allocation
over 1 MiB then comes fresh from the OS and is zero-filled on first touch (an elementwise loop over 10 MB
tensors ran 2-4x slower). So only ``difflens stats build`` (:func:`difflens.refsets.build_stats.
build_reference_stats`), a long streaming job that keeps only sums, sets them; generation, attention and
``difflens metrics`` keep glibc's defaults.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 1 << 20


@lru_cache(maxsize=1)
def _libc() -> Any | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@lru_cache(maxsize=1)
def bound_heap_growth() -> bool:
    """At most :data:`ARENAS` malloc arenas and allocations over :data:`MMAP_THRESHOLD` straight from (and
    back to) the OS, once per process, before the reader threads start. True when applied."""
    libc = _libc()
    if libc is None:
        return False
    done = False
    if "MALLOC_ARENA_MAX" not in os.environ:
        done = bool(libc.mallopt(_M_ARENA_MAX, ARENAS))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) or done
    return done


def release_freed_heap() -> None:
    """Give heap pages freed so far back to the OS (``malloc_trim``; after loading weights, which are read
    twice, ~2 x 95 MB for the Inception)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
