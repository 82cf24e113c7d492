"""Keep freed CPU memory for reuse while peak response maps are computed (glibc only).

Every peak's backward pass allocates and frees the same few hundred MiB of
gradient buffers. With glibc's default settings, buffers above its (adaptive)
mmap threshold are returned to the kernel when freed and the memory freed at the
top of the heap is trimmed, so the next pass page-faults all of it in again:
on the 2-core development machine that was a third of each PRM's time
(docs/benchmarks.md). :func:`reuse_freed_memory` raises both thresholds, so
freed buffers stay in the process while peaks are back-propagated, and gives the
free memory back with ``malloc_trim`` when the block ends.

The thresholds are process-wide and glibc cannot return to its adaptive default,
so they stay raised once set; each block's closing ``malloc_trim`` keeps the
process from holding on to freed memory afterwards. Set the environment variable
``NAPARI_PRM_MALLOC_TUNING=0`` to leave the allocator alone. On other C libraries
and platforms the block does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers up to this size come from the heap; freed memory up to this size stays at its top.
_MMAP_THRESHOLD = 512 * 2**20
_TRIM_THRESHOLD = 2**31 - 1

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_state = {"tuned": False, "checked": False}


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if not _state["checked"]:
        _state["checked"] = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _ = libc.gnu_get_libc_version  # glibc only (not musl): AttributeError elsewhere
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
    return _libc


def tuning_enabled() -> bool:
    """Whether :func:`reuse_freed_memory` changes anything in this process."""
    return os.environ.get("NAPARI_PRM_MALLOC_TUNING", "1") != "0" and _glibc() is not None


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside the block, freed CPU buffers are kept for reuse; on exit free memory is trimmed.

    A no-op unless the process runs on glibc and ``NAPARI_PRM_MALLOC_TUNING`` is not ``0``.
    """
    if not tuning_enabled():
        yield
        return
    libc = _glibc()
    with _lock:
        if not _state["tuned"]:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            _state["tuned"] = True
    try:
        yield
    finally:
        libc.malloc_trim(0)
