"""Fused per-token ops: RMSNorm (+ residual add), gated activations, RoPE, KV writes, attention.

At decode sizes each eager torch op costs more in dispatch than in arithmetic, so each of these
replaces several of them with one native op (csrc/fused.cpp, registered as torch.ops.ember.*).
Every op has a pure-torch twin here (`*_reference`), the definition the native op is tested
against. `select_ops()` returns the native ops when ember.kernels.fast_methods_available(),
else the references; layers pick once when the model is built and call them directly.

Activations are float32. KV caches are [slots, kv_heads, head_dim] in float32, bfloat16 or
float16. q / k / v may be strided views (e.g. slices of a fused QKV output) as long as their
last dim is contiguous.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "FusedOps",
    "native_ops",
    "reference_ops",
    "select_ops",
]


# ---- pure-torch references -------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dim ([..., D] -> [..., D]), computed in float32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight).to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the sum is the next layer's residual."""
    total = x + residual
    return rms_norm_reference(total, weight, eps), total


def norm_add_rms_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor,
    x_weight: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma's sandwich norms: h = residual + rms_norm(x, x_weight); (rms_norm(h, weight), h)."""
    total = residual + rms_norm_reference(x, x_weight, eps)
    return rms_norm_reference(total, weight, eps), total


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2F] (gate | up) -> silu(gate) * up [..., F]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2F] (gate | up) -> gelu_tanh(gate) * up [..., F] (Gemma's GeGLU)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> None:
    # x: [T, heads, rotary_dim] view, rotated in place; cos, sin: [T, 1, rotary_dim / 2]
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x.copy_(rotated)


def rope_reference_(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
    position_scale: float,
) -> None:
    """Rotates the first rotary_dim dims of q [T, Hq, Dh] and k [T, Hk, Dh] in place.

    Angles are (positions / position_scale) * inv_freq in float32; pairs are (i, i + Dr/2)
    (NeoX half split) or (2i, 2i + 1) when interleaved.
    """
    angles = (positions.float() / position_scale)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    _rotate(q[..., :rotary_dim], cos, sin, interleaved)
    _rotate(k[..., :rotary_dim], cos, sin, interleaved)


def write_kv_reference_(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int
) -> None:
    """k_cache[start : start + T] = k and the same for v (converted to the cache's dtype)."""
    end = start + k.shape[0]
    if start < 0 or end > k_cache.shape[0]:
        raise ValueError(f"KV cache overflow: positions {start}..{end} in {k_cache.shape[0]} slots")
    k_cache[start:end] = k
    v_cache[start:end] = v


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: (codes, scales) with x ~ codes * scales[..., None];
    scale = max |x| / 127, codes = round-half-even(x * (127 / max |x|))."""
    amax = x.abs().amax(dim=-1)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.round(x * inv.unsqueeze(-1)).to(torch.int8)
    return codes, amax / 127.0


def write_kv_paged_reference_(
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_blocks: torch.Tensor,
    slot_offsets: torch.Tensor,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """pages [blocks, kv_heads, block_size, head_dim]: token t's k / v into block slot_blocks[t],
    row slot_offsets[t] (the indexed dims are split by a slice: the target is [T, heads, dim]).
    int8 pages also take each row's scale into k_scales / v_scales [blocks, kv_heads, size]."""
    if k_pages.dtype == torch.int8:
        if k_scales is None or v_scales is None:
            raise ValueError("int8 pages need k_scales and v_scales")
        for pages, scales, x in ((k_pages, k_scales, k), (v_pages, v_scales, v)):
            codes, row_scales = quantize_rows_int8(x.float())
            pages[slot_blocks, :, slot_offsets] = codes
            scales[slot_blocks, :, slot_offsets] = row_scales
        return
    k_pages[slot_blocks, :, slot_offsets] = k.to(k_pages.dtype)
    v_pages[slot_blocks, :, slot_offsets] = v.to(v_pages.dtype)


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    scale: float,
    window: int,
) -> torch.Tensor:
    """Attention of queries at positions start .. start+T-1 over the cache's keys.

    q: [T, Hq, Dh]; k_cache / v_cache: [S >= start + T, Hk, Dh] (Hq a multiple of Hk; query
    head h reads kv head h // (Hq / Hk)) -> [T, Hq, Dh]. Query t sees the keys at positions
    p <= start + t and, when window > 0, start + t - p < window.
    """
    num_tokens = q.shape[0]
    end = start + num_tokens
    first_key = max(0, start - window + 1) if window > 0 else 0
    keys, values = k_cache[first_key:end], v_cache[first_key:end]
    q_pos = torch.arange(start, end)[:, None]
    k_pos = torch.arange(first_key, end)[None, :]
    visible = k_pos <= q_pos
    if window > 0:
        visible &= (q_pos - k_pos) < window
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, Hq, T, Dh]
        keys.transpose(0, 1).unsqueeze(0).to(q.dtype),
        values.transpose(0, 1).unsqueeze(0).to(q.dtype),
        attn_mask=visible,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1).contiguous()


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int,
    fixed_chunk: int = 0,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of several sequences' new tokens over keys stored in blocks of a pool.

    q: [T, Hq, Dh] with sequence b's tokens at rows query_start[b] .. query_start[b+1]-1, the
    last of its seq_lens[b] positions; k_cache / v_cache: [blocks, block_size, Hk, Dh]; position
    p of sequence b sits in block block_tables[b][p // block_size] (int32 [B, max_blocks]).
    int8 caches come with k_scales / v_scales [blocks, Hk, block_size] (one per stored row).
    fixed_chunk only tells the native kernel how to split keys (its results then do not depend
    on the rest of the batch); the reference computes each sequence on its own anyway.
    """
    block_size = k_cache.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype)
    for b in range(seq_lens.shape[0]):
        first, last = int(query_start[b]), int(query_start[b + 1])
        length = int(seq_lens[b])
        if last == first:
            continue
        ids = block_tables[b, : (length + block_size - 1) // block_size].long()
        keys, values = k_cache[ids], v_cache[ids]  # [n, block_size, Hk, Dh]
        if k_scales is not None and v_scales is not None:  # int8 codes times row scales
            keys = keys.float() * k_scales[ids].transpose(1, 2).unsqueeze(-1)
            values = values.float() * v_scales[ids].transpose(1, 2).unsqueeze(-1)
        keys, values = keys.flatten(0, 1)[:length], values.flatten(0, 1)[:length]
        start = length - (last - first)
        out[first:last] = decode_attention_reference(
            q[first:last], keys, values, start, scale, window
        )
    return out


def prefill_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    window: int,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one sequence's last T positions [seq_len - T, seq_len) over its keys.

    q: [T, Hq, Dh]; k_cache / v_cache: [blocks, block_size, Hk, Dh], position p in block
    block_table[p // block_size] (int32 [n]; a contiguous cache is the one block [0]). int8
    caches come with k_scales / v_scales [blocks, Hk, block_size]. Computed in float32, in query
    chunks so no mask bigger than PREFILL_REFERENCE_CHUNK x seq_len is built.
    """
    block_size = k_cache.shape[1]
    ids = block_table[: (seq_len + block_size - 1) // block_size].long()
    keys, values = k_cache[ids], v_cache[ids]  # [n, block_size, Hk, Dh]
    if k_scales is not None and v_scales is not None:
        keys = keys.float() * k_scales[ids].transpose(1, 2).unsqueeze(-1)
        values = values.float() * v_scales[ids].transpose(1, 2).unsqueeze(-1)
    keys, values = keys.flatten(0, 1)[:seq_len], values.flatten(0, 1)[:seq_len]
    start = seq_len - q.shape[0]
    chunks = [
        decode_attention_reference(
            q[offset : offset + PREFILL_REFERENCE_CHUNK],
            keys,
            values,
            start + offset,
            scale,
            window,
        )
        for offset in range(0, q.shape[0], PREFILL_REFERENCE_CHUNK)
    ]
    return torch.cat(chunks) if chunks else torch.empty(q.shape, dtype=q.dtype)


PREFILL_REFERENCE_CHUNK = 512


def _norm_and_rope_reference_(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
    position_scale: float,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    norm_eps: float,
) -> None:
    """Optional per-head QK-norm, then RoPE, both in place on q and k."""
    if q_norm is not None and k_norm is not None:
        q.copy_(rms_norm_reference(q, q_norm, norm_eps))
        k.copy_(rms_norm_reference(k, k_norm, norm_eps))
    rope_reference_(q, k, positions, inv_freq, rotary_dim, interleaved, position_scale)


def cached_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
    position_scale: float,
    start: int,
    scale: float,
    window: int,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> torch.Tensor:
    """One layer's attention between the projections: [optional per-head QK-norm], RoPE (both
    in place on q and k), k / v into the caches at `start`, then decode_attention."""
    if (q_norm is None) != (k_norm is None):
        raise ValueError("give both q_norm and k_norm or neither")
    _norm_and_rope_reference_(
        q, k, positions, inv_freq, rotary_dim, interleaved, position_scale, q_norm, k_norm, norm_eps
    )
    write_kv_reference_(k_cache, v_cache, k, v, start)
    return decode_attention_reference(q, k_cache, v_cache, start, scale, window)


def paged_cached_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    slot_blocks: torch.Tensor,
    slot_offsets: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
    position_scale: float,
    block_tables: torch.Tensor,
    query_start: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int,
    fixed_chunk: int = 0,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> torch.Tensor:
    """[optional per-head QK-norm], RoPE (in place on q and k), k / v into their pages
    [blocks, kv_heads, block_size, head_dim], then paged_attention."""
    if (q_norm is None) != (k_norm is None):
        raise ValueError("give both q_norm and k_norm or neither")
    _norm_and_rope_reference_(
        q, k, positions, inv_freq, rotary_dim, interleaved, position_scale, q_norm, k_norm, norm_eps
    )
    write_kv_paged_reference_(k_pages, v_pages, k, v, slot_blocks, slot_offsets, k_scales, v_scales)
    return paged_attention_reference(
        q,
        k_pages.transpose(1, 2),
        v_pages.transpose(1, 2),
        block_tables,
        query_start,
        seq_lens,
        scale,
        window,
        fixed_chunk,
        k_scales,
        v_scales,
    )


# ---- one switch between the two ----------------------------------------------------------------


@dataclass(frozen=True)
class FusedOps:
    """One implementation of every fused op (native or reference), same signatures."""

    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
    ]
    norm_add_rms_norm: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
        tuple[torch.Tensor, torch.Tensor],
    ]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]
    gelu_tanh_mul: Callable[[torch.Tensor], torch.Tensor]
    rope_: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, bool, float], None
    ]
    write_kv_: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], None]
    # (k_pages, v_pages, k, v, slot_blocks, slot_offsets, k_scales=None, v_scales=None) -> None
    write_kv_paged_: Callable[..., None]
    decode_attention: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, int, float, int], torch.Tensor
    ]
    # (q, k_cache, v_cache, block_tables, query_start, seq_lens, scale, window,
    #  fixed_chunk=0, k_scales=None, v_scales=None) -> [T, Hq, Dh]
    paged_attention: Callable[..., torch.Tensor]
    # (q, k, v, k_pages, v_pages, slot_blocks, slot_offsets, positions, inv_freq, rotary_dim,
    #  interleaved, position_scale, block_tables, query_start, seq_lens, scale, window,
    #  fixed_chunk=0, k_scales=None, v_scales=None, q_norm=None, k_norm=None, norm_eps=1e-6)
    paged_cached_attention: Callable[..., torch.Tensor]
    # (q, k, v, k_cache, v_cache, positions, inv_freq, rotary_dim, interleaved, position_scale,
    #  start, scale, window, q_norm=None, k_norm=None, norm_eps=1e-6) -> [T, Hq, Dh]
    cached_attention: Callable[..., torch.Tensor]
    # (q, k_cache, v_cache, block_table, seq_len, scale, window, k_scales=None,
    #  v_scales=None) -> [T, Hq, Dh]: one sequence's prompt (chunk) in bf16 dot products
    prefill_attention: Callable[..., torch.Tensor]


def reference_ops() -> FusedOps:
    return FusedOps(
        rms_norm=rms_norm_reference,
        add_rms_norm=add_rms_norm_reference,
        norm_add_rms_norm=norm_add_rms_norm_reference,
        silu_mul=silu_mul_reference,
        gelu_tanh_mul=gelu_tanh_mul_reference,
        rope_=rope_reference_,
        write_kv_=write_kv_reference_,
        write_kv_paged_=write_kv_paged_reference_,
        decode_attention=decode_attention_reference,
        paged_attention=paged_attention_reference,
        cached_attention=cached_attention_reference,
        paged_cached_attention=paged_cached_attention_reference,
        prefill_attention=prefill_attention_reference,
    )


@functools.cache
def native_ops() -> FusedOps:
    """The torch.ops.ember overloads; only call when fast_methods_available() is True."""
    ops = torch.ops.ember
    # Bound overloads skip the per-call overload resolution of the packet.
    return FusedOps(
        rms_norm=ops.rms_norm.default,
        add_rms_norm=ops.add_rms_norm.default,
        norm_add_rms_norm=ops.norm_add_rms_norm.default,
        silu_mul=ops.silu_mul.default,
        gelu_tanh_mul=ops.gelu_tanh_mul.default,
        rope_=ops.rope_.default,
        write_kv_=ops.write_kv_.default,
        write_kv_paged_=ops.write_kv_paged_.default,
        decode_attention=ops.decode_attention.default,
        paged_attention=ops.paged_attention.default,
        cached_attention=ops.cached_attention.default,
        paged_cached_attention=ops.paged_cached_attention.default,
        prefill_attention=ops.prefill_attention.default,
    )


_REFERENCE = reference_ops()


def select_ops() -> FusedOps:
    """Native ops when the kernels are available (and EMBER_NO_KERNELS is unset), else reference."""
    from ember.kernels import fast_methods_available

    return native_ops() if fast_methods_available() else _REFERENCE
