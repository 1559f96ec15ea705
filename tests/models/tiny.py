"""Tiny random-weight Hugging Face models, saved as safetensors and as GGUF, for parity tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

VOCAB = 160


@dataclass(frozen=True)
class TinySpec:
    architecture: str  # GGUF architecture name
    config: dict[str, Any]


def _common(**extra: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    base.update(extra)
    return base


SPECS = {
    "llama": TinySpec(
        "llama", _common(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ),
    "llama3-scaled": TinySpec(
        "llama",
        _common(
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "qwen2": TinySpec(
        "qwen2", _common(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    ),
    "qwen3": TinySpec(
        "qwen3",
        _common(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    ),
    "gemma3": TinySpec(
        "gemma3",
        _common(
            num_hidden_layers=7,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=8,
            tie_word_embeddings=True,
        ),
    ),
}


def build_hf_model(name: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    import transformers

    spec = SPECS[name]
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma3": transformers.Gemma3TextConfig,
    }[spec.architecture]
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
        "gemma3": transformers.Gemma3ForCausalLM,
    }[spec.architecture]
    config = config_cls(**{**spec.config, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                # Norm weights near their neutral value (1, or 0 for Gemma's 1 + w).
                neutral = 0.0 if spec.architecture == "gemma3" else 1.0
                param.copy_(neutral + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))
    return model


def save_hf(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def _permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    # GGUF llama stores Q/K with rotary pairs adjacent (what llama.cpp's converter does).
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_name(hf_name: str, architecture: str) -> str | None:
    from ember.models import architecture_for_gguf

    return architecture_for_gguf(architecture).rename(hf_name)


def save_gguf(model: torch.nn.Module, path: Path, qtype: str = "F32") -> Path:
    """Write `model` as a GGUF file the way llama.cpp's converter lays it out (no tokenizer)."""
    import gguf

    config = model.config
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}[
        config.model_type
    ]
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = config.rope_parameters
    if arch == "gemma3":
        writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        writer.add_sliding_window(config.sliding_window)
    else:
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_rope_dimension_count(head_dim)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    if arch == "llama" and rope.get("rope_type") == "llama3":
        from ember.config import RopeConfig
        from ember.layers.rotary import inverse_frequencies

        plain = inverse_frequencies(head_dim, RopeConfig(theta=rope["rope_theta"]))
        llama3 = RopeConfig(
            theta=rope["rope_theta"],
            llama3=(
                rope["factor"],
                rope["low_freq_factor"],
                rope["high_freq_factor"],
                rope["original_max_position_embeddings"],
            ),
        )
        factors = plain / inverse_frequencies(head_dim, llama3)
        writer.add_tensor("rope_freqs.weight", factors.numpy().astype(np.float32))
    for hf_name, array in state.items():
        name = _gguf_name(hf_name, arch)
        if name is None:
            continue
        if arch == "llama" and name.endswith("attn_q.weight"):
            array = _permute_rows(array, config.num_attention_heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            array = _permute_rows(array, config.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            array = array + 1.0
        if array.ndim == 2 and qtype != "F32":
            ggml_type = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(name, gguf.quants.quantize(array, ggml_type), raw_dtype=ggml_type)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- a tiny tokenizer for Hugging Face folders -------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "Ünïcödé text: café, naïve, 日本語, emoji 😀 and more 😀!",
    "def f(x):\n    return x * 2\n",
] * 20
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def write_byte_level_tokenizer(tmp_path: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE tokenizer.json (+ config with a chat template) trained on CORPUS."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tokenizer = RustTokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    write_json(
        tmp_path / "tokenizer_config.json",
        {
            "bos_token": "<|im_start|>",
            "eos_token": {"content": "<|endoftext|>", "special": True},
            "add_bos_token": False,
            "chat_template": TEMPLATE,
        },
    )
    write_json(tmp_path / "generation_config.json", {"eos_token_id": [0, 2]})
    return tmp_path
