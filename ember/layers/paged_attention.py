"""Attention for a batch of sequences whose keys and values live in a paged block pool.

The serving engine's KV cache: fixed-size blocks of `block_size` positions handed out by the
tensor-free core (ember.core). Layers are split into KV groups of equal size (Gemma 3: every
sliding-window layer group and every global one gets its own block table, so a sliding group
can drop the blocks behind its window). A block id names one page in every layer of a group,
so the physical storage is one tensor per *slot within a group*:
keys[slot]: [num_blocks, kv_heads, block_size, head_dim], shared by the slot's layer of every
group (their block ids never collide, they come from one pool). Head-major pages keep the rows
one attention task reads (one kv head of one block) contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ember.config import ModelConfig
from ember.layers.attention import FUSED_ATTENTION_MAX_TOKENS, SelfAttention
from ember.layers.rotary import RotaryEmbedding


@dataclass(frozen=True)
class LayerGroup:
    """Layers that share one block table, and the window they attend over (None: all keys)."""

    layers: tuple[int, ...]
    sliding_window: int | None


def kv_groups(config: ModelConfig) -> list[LayerGroup]:
    """Equal-size groups of same-kind layers: one group for a model without sliding layers,
    else groups of gcd(#sliding, #global) layers, consecutive within each kind."""
    sliding = [i for i in range(config.num_layers) if config.is_sliding(i)]
    full = [i for i in range(config.num_layers) if not config.is_sliding(i)]
    size = math.gcd(len(sliding), len(full)) or config.num_layers
    groups = [LayerGroup(tuple(full[i : i + size]), None) for i in range(0, len(full), size)]
    groups += [
        LayerGroup(tuple(sliding[i : i + size]), config.sliding_window)
        for i in range(0, len(sliding), size)
    ]
    return groups


def kv_bytes_per_block(
    config: ModelConfig, block_size: int, dtype: torch.dtype, groups: Sequence[LayerGroup]
) -> int:
    """Bytes one pool block occupies (keys and values of every slot)."""
    slots = max(len(g.layers) for g in groups)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_row = config.head_dim * itemsize + (4 if dtype == torch.int8 else 0)  # + int8 row scale
    return 2 * slots * block_size * config.num_kv_heads * per_row


class PagedKVCache:
    """The block pool's storage, and where each layer's pages are found."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.bfloat16,
        groups: Sequence[LayerGroup] | None = None,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of one slot, got {num_blocks} x {block_size}"
            )
        self.groups = list(groups) if groups is not None else kv_groups(config)
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        slots = max(len(g.layers) for g in self.groups)
        shape = (num_blocks, config.num_kv_heads, block_size, config.head_dim)
        # Uninitialised: no kernel reads a position before it is written, and untouched pages
        # cost no resident memory until a block is first used.
        self.keys = [torch.empty(shape, dtype=dtype) for _ in range(slots)]
        self.values = [torch.empty(shape, dtype=dtype) for _ in range(slots)]
        # int8 pages: one float32 scale per stored row, [blocks, kv_heads, block_size].
        scale_shape = shape[:3]
        self.key_scales: list[torch.Tensor] | None = None
        self.value_scales: list[torch.Tensor] | None = None
        if dtype == torch.int8:
            self.key_scales = [torch.empty(scale_shape) for _ in range(slots)]
            self.value_scales = [torch.empty(scale_shape) for _ in range(slots)]
        # layer -> (group index, storage slot)
        self.place: dict[int, tuple[int, int]] = {}
        for group_index, group in enumerate(self.groups):
            for slot, layer in enumerate(group.layers):
                self.place[layer] = (group_index, slot)
        if sorted(self.place) != list(range(config.num_layers)):
            raise ValueError("KV groups must cover every layer exactly once")

    @property
    def nbytes(self) -> int:
        scales = [*(self.key_scales or []), *(self.value_scales or [])]
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *scales))

    def scales(self, slot: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.key_scales is None or self.value_scales is None:
            return None, None
        return self.key_scales[slot], self.value_scales[slot]


class BatchContext:
    """Several sequences' new tokens, flattened in sequence order, over a PagedKVCache.

    Sequence i brings query_lens[i] new tokens, the last ones of its seq_lens[i] positions;
    block_tables[g][i] lists its blocks in group g (position p in block p // block_size).
    """

    def __init__(
        self,
        kv: PagedKVCache,
        query_lens: Sequence[int],
        seq_lens: Sequence[int],
        block_tables: Sequence[Sequence[Sequence[int]]],
        deterministic: bool = False,
    ) -> None:
        if not len(query_lens) == len(seq_lens):
            raise ValueError("query_lens and seq_lens differ in length")
        if len(block_tables) != len(kv.groups):
            raise ValueError(f"need {len(kv.groups)} block tables, got {len(block_tables)}")
        self.kv = kv
        self.query_lens = list(query_lens)
        self.seq_lens = list(seq_lens)
        bs = kv.block_size
        self.query_start = torch.tensor([0, *_cumsum(self.query_lens)], dtype=torch.int64)
        self.seq_lens_t = torch.tensor(self.seq_lens, dtype=torch.int64)
        self.positions = torch.tensor(
            [p for q, s in zip(query_lens, seq_lens, strict=True) for p in range(s - q, s)],
            dtype=torch.int64,
        )
        self.tables: list[torch.Tensor] = []
        self.slot_blocks: list[torch.Tensor] = []  # per group: [T] block of each new token

        for group_tables in block_tables:
            if len(group_tables) != len(self.seq_lens):
                raise ValueError("every group needs one block table per sequence")
            width = max((len(t) for t in group_tables), default=0) or 1
            table = torch.zeros(len(group_tables), width, dtype=torch.int32)
            slot_blocks: list[int] = []
            for i, (blocks, q, s) in enumerate(
                zip(group_tables, query_lens, seq_lens, strict=True)
            ):
                if len(blocks) * bs < s:
                    raise ValueError(
                        f"sequence {i}: {len(blocks)} blocks cannot hold {s} positions"
                    )
                table[i, : len(blocks)] = torch.tensor(list(blocks), dtype=torch.int32)
                slot_blocks += [blocks[p // bs] for p in range(s - q, s)]
            self.tables.append(table)
            self.slot_blocks.append(torch.tensor(slot_blocks, dtype=torch.int64))
        self.slot_offsets = self.positions % bs  # [T] each new token's row in its block
        # Sequences whose queries go through the prefill kernel (long chunks), not the paged one.
        # Deterministic: everything through the paged kernel with a fixed key split, so that
        # neither the batch nor the way a prompt was cut into chunks changes a result.
        self.fixed_chunk = INVARIANT_KEY_CHUNK if deterministic else 0
        self.long_sequences = [
            i
            for i, q in enumerate(self.query_lens)
            if q > FUSED_ATTENTION_MAX_TOKENS and not deterministic
        ]

    def attend(
        self,
        attn: SelfAttention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        group, slot = self.kv.place[attn.layer]
        pages_k, pages_v = self.kv.keys[slot], self.kv.values[slot]
        k_scales, v_scales = self.kv.scales(slot)
        window = attn.window or 0
        if not self.long_sequences:
            # Decode steps and short chunks: QK-norm, RoPE, page writes and attention in one call.
            return attn.ops.paged_cached_attention(
                q,
                k,
                v,
                pages_k,
                pages_v,
                self.slot_blocks[group],
                self.slot_offsets,
                positions,
                rotary.inv_freq,
                rotary.rotary_dim,
                rotary.interleaved,
                rotary.linear_factor,
                self.tables[group],
                self.query_start,
                self.seq_lens_t,
                attn.scale,
                window,
                self.fixed_chunk,
                k_scales,
                v_scales,
                *attn.qk_norm_args,
            )
        q, k = attn.norm_and_rotate(q, k, rotary, positions)
        attn.ops.write_kv_paged_(
            pages_k, pages_v, k, v, self.slot_blocks[group], self.slot_offsets, k_scales, v_scales
        )
        # [blocks, block_size, kv_heads, head_dim] views for the attention
        keys, values = pages_k.transpose(1, 2), pages_v.transpose(1, 2)
        return self._attend_mixed(attn, q, keys, values, group, window, k_scales, v_scales)

    def _attend_mixed(
        self,
        attn: SelfAttention,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        group: int,
        window: int,
        k_scales: torch.Tensor | None,
        v_scales: torch.Tensor | None,
    ) -> torch.Tensor:
        """Long prompt chunks through the prefill kernel; the rest through the paged kernel."""
        short = [i for i, n in enumerate(self.query_lens) if n <= FUSED_ATTENTION_MAX_TOKENS]
        if not short and len(self.long_sequences) == 1:
            # One prompt chunk alone (a prefill step): its output is the whole output, no copy.
            [i] = self.long_sequences
            return attn.prefill_attention(
                q, keys, values, self.tables[group][i], self.seq_lens[i], k_scales, v_scales
            )
        out = torch.empty(q.shape, dtype=torch.float32)
        if short:
            rows = torch.cat(
                [
                    torch.arange(int(self.query_start[i]), int(self.query_start[i + 1]))
                    for i in short
                ]
            )
            lens = [self.query_lens[i] for i in short]
            starts = torch.tensor([0, *_cumsum(lens)], dtype=torch.int64)
            out[rows] = attn.ops.paged_attention(
                q[rows],
                keys,
                values,
                self.tables[group][short],
                starts,
                self.seq_lens_t[short],
                attn.scale,
                window,
                0,
                k_scales,
                v_scales,
            )
        for i in self.long_sequences:
            first, last = int(self.query_start[i]), int(self.query_start[i + 1])
            out[first:last] = attn.prefill_attention(
                q[first:last], keys, values, self.tables[group][i], self.seq_lens[i],
                k_scales, v_scales,
            )  # fmt: skip
        return out


INVARIANT_KEY_CHUNK = 256
"""Keys per attention task in deterministic mode (whole blocks)."""


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out
