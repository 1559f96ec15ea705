"""Frozen configuration objects. Each field has a default and says what it means."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding for one kind of layer."""

    theta: float = 10000.0
    """Base of the inverse frequencies."""
    linear_factor: float = 1.0
    """Position interpolation: positions are divided by this (HF rope_type 'linear')."""
    llama3: tuple[float, float, float, int] | None = None
    """(factor, low_freq_factor, high_freq_factor, original_max_position) for Llama 3.x scaling."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and wiring of a decoder-only transformer, whatever file it came from."""

    architecture: str
    """Registry name of the model family: llama, qwen2, qwen3, gemma3."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    context_length: int = 4096
    """Longest sequence the model was trained for (prompt plus generated tokens)."""
    rope: RopeConfig = field(default_factory=RopeConfig)
    """Rotary settings of global-attention layers."""
    rope_local: RopeConfig | None = None
    """Rotary settings of sliding-window layers, when they differ (Gemma 3)."""
    rope_interleaved: bool = False
    """True when rotary pairs are adjacent (GGUF llama's permuted Q/K), False for half-split."""
    rotary_dim: int | None = None
    """Dimensions rotated per head (None: all of head_dim)."""
    sliding_window: int | None = None
    """Keys visible to a sliding layer: those with query_pos - key_pos < sliding_window."""
    sliding_layers: tuple[bool, ...] = ()
    """Per layer, whether it uses the sliding window (empty: none do)."""
    attention_scale: float | None = None
    """Softmax scale of attention scores (None: head_dim ** -0.5)."""
    tie_word_embeddings: bool = False
    embedding_scale: float = 1.0
    """Token embeddings are multiplied by this (Gemma: sqrt(hidden_size))."""
    final_logit_softcap: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "context_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model config: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.sliding_layers and len(self.sliding_layers) != self.num_layers:
            raise ValueError("model config: sliding_layers must have one entry per layer")

    @property
    def scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_layers) and self.sliding_layers[layer]
