"""Causal (optionally sliding-window) attention and where its keys and values live.

A layer computes q, k, v and hands them to an `AttentionContext`, which stores k and v and
returns the attention output. `SequenceContext` serves one sequence with a contiguous cache (the
single-request path); ember.layers.paged_attention serves a batch of sequences from a paged
block pool (the serving engine).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ember.config import ModelConfig
from ember.kernels.fused import select_ops
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
        end = start + num_tokens
        return causal_attention(q, keys[:end], values[:end], start, attn.scale, attn.window)


def causal_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Attention of T new queries at positions [start, start+T) over keys at [0, start+T).

    q: [T, heads, head_dim]; keys/values: [S = start+T, kv_heads, head_dim] -> [T, heads, head_dim]
    Long prompts are cut into query chunks, so a sliding layer only sees the keys its window
    reaches and no [T, S] mask larger than a chunk's is ever built.
    """
    num_tokens = q.shape[0]
    if num_tokens <= QUERY_CHUNK or (start == 0 and sliding_window is None):
        # One call: SDPA's fused causal kernel never builds a [T, S] mask.
        return _attend(q, keys, values, start, scale, sliding_window)
    outputs = []
    for offset in range(0, num_tokens, QUERY_CHUNK):
        chunk = q[offset : offset + QUERY_CHUNK]
        end = start + offset + chunk.shape[0]
        outputs.append(
            _attend(chunk, keys[:end], values[:end], start + offset, scale, sliding_window)
        )
    return torch.cat(outputs)


QUERY_CHUNK = 512


def _attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    num_tokens, total = q.shape[0], keys.shape[0]
    first_key = 0
    if sliding_window is not None:
        # Keys older than the window of the first query are invisible to every query.
        first_key = max(0, start - sliding_window + 1)
    keys, values = keys[first_key:total], values[first_key:total]
    mask: torch.Tensor | None = None
    causal = False
    window_binds = (
        sliding_window is not None
        and num_tokens > 1
        and (start + num_tokens - 1 - first_key >= sliding_window)
    )
    if num_tokens == 1 and not window_binds:
        pass  # one query sees every key left after the window cut
    elif start == 0 and first_key == 0 and not window_binds:
        causal = True  # lets SDPA use its fused causal kernel
    else:
        q_pos = torch.arange(start, start + num_tokens)[:, None]
        k_pos = torch.arange(first_key, total)[None, :]
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= (q_pos - k_pos) < sliding_window
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, heads, T, head_dim]
        keys.transpose(0, 1).unsqueeze(0).to(q.dtype),
        values.transpose(0, 1).unsqueeze(0).to(q.dtype),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)


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
