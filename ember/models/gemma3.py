"""Gemma 3 (text): sandwich norms around attention and MLP, GeGLU, QK-norm, scaled embeddings,
five sliding-window layers for every global one, each kind with its own RoPE base.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ember.config import ModelConfig, RopeConfig
from ember.errors import ModelFileError
from ember.layers.activation import gelu_tanh_and_mul
from ember.layers.attention import AttentionContext, SelfAttention
from ember.layers.mlp import GatedMLP
from ember.layers.norm import RMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.loader.weights import WeightStore
from ember.models.common import HF_LAYER_NAMES, gguf_common, hf_common, hf_rope, rename_hf

ARCHITECTURE = "gemma3"
SLIDING_PATTERN = 6  # layer i is global when (i + 1) % 6 == 0
LOCAL_ROPE_THETA = 10000.0

_HF_NAMES = {
    **HF_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
# Gemma scales norms by (1 + w); GGUF files store 1 + w already, Hugging Face files store w.
NORM_OFFSET = {"gguf": 0.0, "safetensors": 1.0}


class Gemma3Block:
    def __init__(self, store: WeightStore, layer: int, config: ModelConfig) -> None:
        prefix, eps = f"blk.{layer}", config.rms_norm_eps
        offset = NORM_OFFSET[store.file_format]

        def norm(name: str) -> RMSNorm:
            return RMSNorm(store.take(f"{prefix}.{name}.weight").to_float() + offset, eps)

        self.attn_norm = norm("attn_norm")
        self.attn = SelfAttention(store, prefix, layer, config, norm_offset=offset)
        self.post_attn_norm = norm("post_attention_norm")
        self.ffn_norm = norm("ffn_norm")
        self.mlp = GatedMLP(store, prefix, gelu_tanh_and_mul())
        self.post_ffn_norm = norm("post_ffw_norm")

    def __call__(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        context: AttentionContext,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Sandwich norms: x + post_norm(sublayer(pre_norm(x))), for attention and the MLP.
        if residual is None:
            residual, hidden = hidden, self.attn_norm(hidden)
        else:
            hidden, residual = self.attn_norm.add_and_norm(hidden, residual)
        hidden = self.attn(hidden, context, rotary, positions)
        hidden, residual = self.ffn_norm.norm_add_and_norm(hidden, self.post_attn_norm, residual)
        return self.post_ffn_norm(self.mlp(hidden)), residual


def _sliding_layers(num_layers: int) -> tuple[bool, ...]:
    return tuple((i + 1) % SLIDING_PATTERN != 0 for i in range(num_layers))


def config_from_gguf(meta: dict[str, Any], vocab_rows: int) -> ModelConfig:
    fields = gguf_common(meta, vocab_rows)
    window = meta.get("gemma3.attention.sliding_window")
    if not window:
        raise ModelFileError("gemma3 GGUF lacks gemma3.attention.sliding_window")
    hidden, heads, layers = fields["hidden_size"], fields["num_heads"], fields["num_layers"]
    # The 27B model scales queries by hidden/heads instead of head_dim (query_pre_attn_scalar).
    scalar = hidden / heads if layers == 62 else fields["head_dim"]
    return ModelConfig(
        architecture=ARCHITECTURE,
        sliding_window=int(window),
        sliding_layers=_sliding_layers(layers),
        rope_local=RopeConfig(theta=LOCAL_ROPE_THETA),
        attention_scale=scalar**-0.5,
        embedding_scale=math.sqrt(hidden),
        tie_word_embeddings=True,
        **fields,
    )


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    if "text_config" in cfg:  # multimodal Gemma3ForConditionalGeneration: use its text part
        cfg = cfg["text_config"]
    fields = hf_common(cfg)
    layers = fields["num_layers"]
    layer_types = cfg.get("layer_types")
    if layer_types:
        sliding = tuple(kind == "sliding_attention" for kind in layer_types)
    else:
        pattern = int(cfg.get("sliding_window_pattern") or SLIDING_PATTERN)
        sliding = tuple((i + 1) % pattern != 0 for i in range(layers))
    fields["rope"] = hf_rope(cfg, "full_attention")
    if "rope_local_base_freq" in cfg:
        local = RopeConfig(theta=float(cfg["rope_local_base_freq"]))
    else:
        local = hf_rope(cfg, "sliding_attention")
    fields["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", True))
    softcap = cfg.get("final_logit_softcapping")
    return ModelConfig(
        architecture=ARCHITECTURE,
        sliding_window=int(cfg.get("sliding_window") or 4096),
        sliding_layers=sliding,
        rope_local=local,
        attention_scale=float(cfg.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5,
        embedding_scale=math.sqrt(fields["hidden_size"]),
        final_logit_softcap=float(softcap) if softcap else None,
        **fields,
    )


def rename(hf_name: str) -> str | None:
    return rename_hf(hf_name, _HF_NAMES)


make_block = Gemma3Block
