"""Process-wide settings a run makes once (threads; see also ember/__init__.py)."""

from __future__ import annotations

import os

import torch

from ember.errors import RequestError


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
    return count
