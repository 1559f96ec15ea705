"""Qwen2: the llama block with biases on Q, K and V, and half-split RoPE."""

from __future__ import annotations

from typing import Any

from ember.config import ModelConfig
from ember.models.common import HF_LAYER_NAMES, gguf_common, hf_common, rename_hf
from ember.models.llama import LlamaBlock

ARCHITECTURE = "qwen2"


def config_from_gguf(meta: dict[str, Any], vocab_rows: int) -> ModelConfig:
    return ModelConfig(architecture=ARCHITECTURE, **gguf_common(meta, vocab_rows))


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    # Qwen2 configs carry sliding-window fields that are off (use_sliding_window: false) in
    # every released model; a model that turns them on is refused rather than run wrong.
    if cfg.get("use_sliding_window"):
        from ember.errors import ModelFileError

        raise ModelFileError("qwen2 with use_sliding_window=true is not supported")
    return ModelConfig(architecture=ARCHITECTURE, **hf_common(cfg))


def rename(hf_name: str) -> str | None:
    return rename_hf(hf_name, HF_LAYER_NAMES)


make_block = LlamaBlock
NORM_OFFSET = {"gguf": 0.0, "safetensors": 0.0}
