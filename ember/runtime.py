"""Process-wide settings a run makes once: torch threads and the C allocator's thresholds."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch

from ember.errors import RequestError

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def default_threads() -> int:
    from ember.envs import num_threads

    configured = num_threads()
    if configured:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    count = threads or default_threads()
    if count < 1:
        raise RequestError(f"threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    tune_allocator()
    return count


@functools.cache
def tune_allocator() -> None:
    """Serve activation-sized buffers (>= 64 KiB) by mmap and return freed memory promptly.

    glibc otherwise raises its mmap threshold after the first large free and keeps freed
    activation buffers in the heap, which shows as resident memory the model never needs
    (~15 MB on Gemma-3-270M's prefill).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
