"""Real models for parity tests: pulled through Ember's own library (cached between runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
# llama.cpp reference keys -> Ember library aliases
MODELS = {
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct",
    "gemma-3-270m-q4_k_m": "gemma3-270m",
}


def reference_file(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"llama.cpp reference {path} is not available")
    return path


def load_reference(name: str) -> dict:
    return json.loads(reference_file(name).read_text())


_loaded: dict[str, object] = {}


def loaded_model(alias: str):
    """LoadedModel for a library alias, loaded once per test session."""
    if alias not in _loaded:
        from ember.models.loader import load_model_path
        from ember.registry.resolve import resolve_model

        _loaded[alias] = load_model_path(resolve_model(alias).path)
    return _loaded[alias]


@pytest.fixture(scope="session", params=sorted(MODELS))
def reference_model(request: pytest.FixtureRequest):
    """(reference key, LoadedModel) for each real model."""
    return request.param, loaded_model(MODELS[request.param])
