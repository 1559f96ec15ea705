"""Qwen3: the llama block with per-head RMS QK-norm (no biases), half-split RoPE."""

from __future__ import annotations

from typing import Any

from ember.config import ModelConfig
from ember.models.common import HF_LAYER_NAMES, gguf_common, hf_common, rename_hf
from ember.models.llama import LlamaBlock

ARCHITECTURE = "qwen3"


def config_from_gguf(meta: dict[str, Any], vocab_rows: int) -> ModelConfig:
    return ModelConfig(architecture=ARCHITECTURE, **gguf_common(meta, vocab_rows))


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    return ModelConfig(architecture=ARCHITECTURE, **hf_common(cfg))


def rename(hf_name: str) -> str | None:
    return rename_hf(hf_name, HF_LAYER_NAMES)


make_block = LlamaBlock
NORM_OFFSET = {"gguf": 0.0, "safetensors": 0.0}
