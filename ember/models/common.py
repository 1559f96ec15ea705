"""Config parsing and tensor renaming shared by the architecture modules."""

from __future__ import annotations

import re
from typing import Any

from ember.config import RopeConfig
from ember.errors import ModelFileError

# Hugging Face names outside the layers -> GGUF names (same for every architecture here).
_HF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Per-layer Hugging Face suffixes -> GGUF suffixes, common to llama-style blocks.
HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def rename_hf(name: str, layer_names: dict[str, str]) -> str | None:
    """Hugging Face tensor name -> GGUF name; None for tensors the model does not use."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    if name.startswith("model.language_model."):  # multimodal checkpoints nest the text model
        return rename_hf("model." + name.removeprefix("model.language_model."), layer_names)
    match = _HF_LAYER.match(name)
    if match and match.group(2) in layer_names:
        return f"blk.{match.group(1)}.{layer_names[match.group(2)]}"
    return None


def _need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ModelFileError(f"GGUF metadata lacks {key!r}")
    return meta[key]


def gguf_common(meta: dict[str, Any], vocab_rows: int) -> dict[str, Any]:
    """ModelConfig fields every GGUF architecture stores the same way."""
    arch = str(meta.get("general.architecture", ""))

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    hidden = int(_need(meta, f"{arch}.embedding_length"))
    heads = int(_need(meta, f"{arch}.attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts: only uniform ones are supported
        if len(set(kv_heads)) != 1:
            raise ModelFileError(f"{arch}: per-layer KV head counts are not supported")
        kv_heads = kv_heads[0]
    head_dim = int(key("attention.key_length", hidden // heads))
    rotary_dim = key("rope.dimension_count")
    return {
        "vocab_size": int(key("vocab_size", vocab_rows)),
        "hidden_size": hidden,
        "num_layers": int(_need(meta, f"{arch}.block_count")),
        "num_heads": heads,
        "num_kv_heads": int(kv_heads),
        "head_dim": head_dim,
        "intermediate_size": int(_need(meta, f"{arch}.feed_forward_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "context_length": int(key("context_length", 4096)),
        "rope": gguf_rope(meta, arch),
        "rotary_dim": int(rotary_dim) if rotary_dim and int(rotary_dim) != head_dim else None,
    }


def gguf_rope(meta: dict[str, Any], arch: str) -> RopeConfig:
    theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0)
    if scaling == "linear":
        return RopeConfig(theta=theta, linear_factor=factor)
    if scaling not in ("none", "", None) and factor != 1.0:
        raise ModelFileError(f"unsupported RoPE scaling {scaling!r} in GGUF metadata")
    return RopeConfig(theta=theta)


def hf_rope(cfg: dict[str, Any], layer_type: str = "full_attention") -> RopeConfig:
    """RoPE from config.json: old style (rope_theta, rope_scaling) or new (rope_parameters)."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    if not isinstance(params, dict):
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, linear_factor=float(params["factor"]))
    if kind == "llama3":
        llama3 = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
        return RopeConfig(theta=theta, llama3=llama3)
    raise ModelFileError(f"unsupported RoPE type {kind!r} in config.json")


def hf_common(cfg: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields every Hugging Face config.json states the same way."""
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return {
            "vocab_size": int(cfg["vocab_size"]),
            "hidden_size": hidden,
            "num_layers": int(cfg["num_hidden_layers"]),
            "num_heads": heads,
            "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "intermediate_size": int(cfg["intermediate_size"]),
            "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "context_length": int(cfg.get("max_position_embeddings", 4096)),
            "rope": hf_rope(cfg),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"config.json: missing or invalid field {exc}") from None
