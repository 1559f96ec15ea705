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


KV_CACHE_DTYPES = ("bf16", "fp16", "fp32", "int8")


@dataclass(frozen=True)
class EngineConfig:
    """How the serving engine sizes and schedules its work (ember.engine.llm_engine)."""

    max_model_len: int | None = None
    """Longest prompt + output per request (None: the model's context, at most 8192)."""
    block_size: int = 16
    """Positions per KV-cache block."""
    kv_cache_tokens: int | None = None
    """KV-cache budget in token positions across all requests (None: kv_cache_memory_fraction)."""
    kv_cache_memory_fraction: float = 0.1
    """When kv_cache_tokens is None: this share of the memory available at start-up."""
    kv_cache_dtype: str = "fp16"
    """Storage type of cached keys and values: bf16, fp16, fp32, or int8 (one scale per row)."""
    max_num_seqs: int = 64
    """Most requests in one step's batch."""
    max_num_batched_tokens: int = 512
    """Token budget of one step (decodes plus prefill chunks)."""
    max_waiting: int = 1024
    """Waiting requests beyond this are refused."""
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    """fcfs, or priority (lower value first, then arrival)."""
    deterministic: bool = False
    """Batch invariance: a request's output is bit-identical alone or in any batch (slower)."""

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 1:
            raise ValueError(f"kv_cache_tokens must be positive, got {self.kv_cache_tokens}")
        if not 0.0 < self.kv_cache_memory_fraction <= 0.9:
            raise ValueError(
                f"kv_cache_memory_fraction must be in (0, 0.9], got {self.kv_cache_memory_fraction}"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}): every running request needs a token a step"
            )
