"""Causal (optionally sliding-window) attention and where its keys and values live.

A layer computes q, k, v and hands them to an `AttentionContext`, which stores k and v and
returns the attention output. `SequenceContext` serves one sequence with a contiguous cache (the
single-request path); ember.layers.paged_attention serves a batch of sequences from a paged
block pool (the serving engine).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ember.config import ModelConfig
from ember.kernels.fused import prefill_attention_reference, select_ops
from ember.layers.norm import RMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.loader.weights import WeightStore


class SequenceKVCache:
    """Keys and values of one sequence for every layer: [capacity, kv_heads, head_dim] each."""

    def __init__(
        self,
        num_layers: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.capacity = capacity
        shape = (capacity, num_kv_heads, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype) for _ in range(num_layers)]
        self.length = 0
        """Positions [0, length) hold valid keys and values for every layer."""

    def fork(self) -> SequenceKVCache:
        """An independent copy (a second completion continuing from the same prompt)."""
        twin = SequenceKVCache.__new__(SequenceKVCache)
        twin.capacity, twin.length = self.capacity, self.length
        twin.keys = [k.clone() for k in self.keys]
        twin.values = [v.clone() for v in self.values]
        return twin


class AttentionContext(Protocol):
    def attend(
        self,
        attn: SelfAttention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """QK-norm and RoPE on q, k (in place), store k, v, attend.

        q: [T, Hq, Dh], k / v: [T, Hk, Dh] (views into the projection output), positions: [T]
        int64 -> [T, Hq, Dh].
        """
        ...


class SequenceContext:
    """One sequence's new tokens at positions [start, start + T) over its contiguous cache."""

    def __init__(self, cache: SequenceKVCache, start: int) -> None:
        self.cache = cache
        self.start = start

    def attend(
        self,
        attn: SelfAttention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        keys, values = self.cache.keys[attn.layer], self.cache.values[attn.layer]
        start, num_tokens = self.start, q.shape[0]
        if num_tokens <= FUSED_ATTENTION_MAX_TOKENS:
            # Decode: QK-norm, RoPE, cache write and attention in one native call.
            return attn.ops.cached_attention(
                q,
                k,
                v,
                keys,
                values,
                positions,
                rotary.inv_freq,
                rotary.rotary_dim,
                rotary.interleaved,
                rotary.linear_factor,
                start,
                attn.scale,
                attn.window or 0,
                *attn.qk_norm_args,
            )
        q, k = attn.norm_and_rotate(q, k, rotary, positions)
        attn.ops.write_kv_(keys, values, k, v, start)
        # The contiguous cache as one block of a paged pool: [1, capacity, kv_heads, head_dim].
        return attn.prefill_attention(
            q, keys.unsqueeze(0), values.unsqueeze(0), ONE_BLOCK, start + num_tokens
        )


ONE_BLOCK = torch.zeros(1, dtype=torch.int32)


class SelfAttention:
    """Q/K/V projections (+ optional biases and per-head QK-norm), RoPE, cache, attention, output.

    Optional parts are present exactly when the file has their tensors (Qwen2 biases, Qwen3 and
    Gemma 3 QK-norm), so one module serves every architecture here.
    """

    def __init__(
        self,
        store: WeightStore,
        prefix: str,
        layer: int,
        config: ModelConfig,
        norm_offset: float = 0.0,
    ) -> None:
        from ember.layers.linear import QuantLinear

        self.layer = layer
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        names = [f"{prefix}.attn_q", f"{prefix}.attn_k", f"{prefix}.attn_v"]
        self.qkv = QuantLinear.stacked(store, names)
        if self.qkv is None:  # parts stored in different formats (Gemma: V in Q8_0)
            self.q_proj, self.k_proj, self.v_proj = (
                QuantLinear.from_store(store, name) for name in names
            )
        self.o_proj = QuantLinear.from_store(store, f"{prefix}.attn_output")
        self.q_norm = self.k_norm = None
        if f"{prefix}.attn_q_norm.weight" in store:
            eps = config.rms_norm_eps
            q_weight = store.take(f"{prefix}.attn_q_norm.weight").to_float() + norm_offset
            k_weight = store.take(f"{prefix}.attn_k_norm.weight").to_float() + norm_offset
            self.q_norm, self.k_norm = RMSNorm(q_weight, eps), RMSNorm(k_weight, eps)
        # (q_norm weight, k_norm weight, eps) as the fused attention ops take them
        self.qk_norm_args: tuple[torch.Tensor | None, torch.Tensor | None, float] = (
            (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
            if self.q_norm is not None and self.k_norm is not None
            else (None, None, 1e-6)
        )
        self.ops = select_ops()
        self.sliding = config.is_sliding(layer)
        self.window = config.sliding_window if self.sliding else None
        self.scale = config.scale

    def prefill_attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        block_table: torch.Tensor,
        seq_len: int,
        k_scales: torch.Tensor | None = None,
        v_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One sequence's many new queries over its cached keys ([blocks, block_size, Hk, Dh])."""
        # The native kernel computes in bf16 dot products on whole 16-lane vectors, its inputs
        # split in bf16 parts: exact for bf16 and fp16 caches, ~16 bits for int8 ones. A float32
        # cache asks for float32 attention, which the reference gives.
        native = self.head_dim % 16 == 0 and keys.dtype != torch.float32
        attend = self.ops.prefill_attention if native else prefill_attention_reference
        window = self.window or 0
        return attend(q, keys, values, block_table, seq_len, self.scale, window, k_scales, v_scales)

    def norm_and_rotate(
        self, q: torch.Tensor, k: torch.Tensor, rotary: RotaryEmbedding, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head QK-norm (when the model has it), then RoPE in place."""
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        self.ops.rope_(
            q,
            k,
            positions,
            rotary.inv_freq,
            rotary.rotary_dim,
            rotary.interleaved,
            rotary.linear_factor,
        )
        return q, k

    def __call__(
        self,
        x: torch.Tensor,
        context: AttentionContext,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        # x: [T, hidden]; positions: [T] int64
        num_tokens = x.shape[0]
        if self.qkv is not None:
            q, k, v = self.qkv(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # Views into the projection's output (only the last dim need be contiguous).
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        out = context.attend(self, q, k, v, rotary, positions)
        return self.o_proj(out.reshape(num_tokens, self.q_size))


# Up to this many new tokens (decode, short verification) the fused native attention, which
# reads the cache once per query, beats SDPA; longer prompts go through SDPA's tiled kernels.
FUSED_ATTENTION_MAX_TOKENS = 16
