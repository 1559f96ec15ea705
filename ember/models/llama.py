"""Llama-style decoder (Llama 2/3.x, SmolLM2, Mistral): pre-norm attention and SwiGLU MLP.

Qwen2 (QKV biases) and Qwen3 (per-head QK-norm) use this block too: those parts are present
exactly when their tensors are (see layers/attention.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ember.config import ModelConfig
from ember.layers.activation import silu_and_mul
from ember.layers.attention import AttentionContext, SelfAttention
from ember.layers.mlp import GatedMLP
from ember.layers.norm import RMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.loader.weights import WeightStore
from ember.models.common import HF_LAYER_NAMES, gguf_common, hf_common, rename_hf

ARCHITECTURE = "llama"


class LlamaBlock:
    def __init__(self, store: WeightStore, layer: int, config: ModelConfig) -> None:
        prefix = f"blk.{layer}"
        eps = config.rms_norm_eps
        self.attn_norm = RMSNorm(store.take(f"{prefix}.attn_norm.weight").to_float(), eps)
        self.attn = SelfAttention(store, prefix, layer, config)
        self.ffn_norm = RMSNorm(store.take(f"{prefix}.ffn_norm.weight").to_float(), eps)
        self.mlp = GatedMLP(store, prefix, silu_and_mul())

    def __call__(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        context: AttentionContext,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sub-block output, residual stream) in and out: each norm also adds the previous
        sub-block's output to the residual stream, in one pass."""
        if residual is None:
            residual, hidden = hidden, self.attn_norm(hidden)
        else:
            hidden, residual = self.attn_norm.add_and_norm(hidden, residual)
        hidden = self.attn(hidden, context, rotary, positions)
        hidden, residual = self.ffn_norm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


def config_from_gguf(meta: dict[str, Any], vocab_rows: int) -> ModelConfig:
    fields = gguf_common(meta, vocab_rows)
    # convert_hf_to_gguf permutes llama Q/K rows so rotary pairs are adjacent.
    return ModelConfig(architecture=ARCHITECTURE, rope_interleaved=True, **fields)


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    fields = hf_common(cfg)
    window = cfg.get("sliding_window")
    if window:
        fields["sliding_window"] = int(window)
        fields["sliding_layers"] = (True,) * fields["num_layers"]
    return ModelConfig(architecture=ARCHITECTURE, **fields)


def rename(hf_name: str) -> str | None:
    return rename_hf(hf_name, HF_LAYER_NAMES)


make_block = LlamaBlock
NORM_OFFSET = {"gguf": 0.0, "safetensors": 0.0}
