"""Architecture registry: names -> modules, imported lazily.

An architecture module provides ARCHITECTURE, config_from_gguf(meta, vocab_rows),
config_from_hf(config_json), rename(hf_name) -> gguf_name | None, make_block and NORM_OFFSET.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ember.errors import ModelFileError

# GGUF general.architecture -> module
_GGUF_ARCHITECTURES = {
    "llama": "ember.models.llama",
    "mistral": "ember.models.llama",
    "qwen2": "ember.models.qwen2",
    "qwen3": "ember.models.qwen3",
    "gemma3": "ember.models.gemma3",
}
# Hugging Face config.json model_type -> module
_HF_MODEL_TYPES = {
    "llama": "ember.models.llama",
    "mistral": "ember.models.llama",
    "qwen2": "ember.models.qwen2",
    "qwen3": "ember.models.qwen3",
    "gemma3_text": "ember.models.gemma3",
    "gemma3": "ember.models.gemma3",
}


def supported_architectures() -> list[str]:
    return sorted(_GGUF_ARCHITECTURES)


def _load(table: dict[str, str], name: str, where: str) -> ModuleType:
    if name not in table:
        supported = ", ".join(sorted(table))
        raise ModelFileError(
            f"unsupported architecture {name!r} in {where} (supported: {supported})"
        )
    return importlib.import_module(table[name])


def architecture_for_gguf(name: str) -> ModuleType:
    return _load(_GGUF_ARCHITECTURES, name, "GGUF metadata")


def architecture_for_hf(model_type: str) -> ModuleType:
    return _load(_HF_MODEL_TYPES, model_type, "config.json")
