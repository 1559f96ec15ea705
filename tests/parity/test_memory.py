"""Weights stay quantized in memory: a loaded model holds at most 1.5x its GGUF file."""

from __future__ import annotations

import pytest

from ember.bench.memory import model_memory
from tests.conftest import real_model_path

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("key", ["smollm2", "gemma3"])
def test_memory_held_for_model_is_at_most_1_5x_file_size(key: str) -> None:
    result = model_memory(real_model_path(key))
    assert result.ratio <= 1.5, (
        f"{key}: holds {result.held / 2**20:.1f} MiB for a {result.file_bytes / 2**20:.1f} MiB "
        f"file ({result.ratio:.2f}x)"
    )
