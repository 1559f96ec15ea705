"""Byte-unpacking helpers shared by the block dequantizers (all vectorised over blocks)."""

from __future__ import annotations

import torch

_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte `offset` of each block -> float32 [n_blocks, 1]."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).to(torch.float32)


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., k] -> [..., 2k]: the k low nibbles, then the k high nibbles (GGML's order)."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


def bits_le(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., k] -> 0/1 uint8 [..., 8k]; element j is bit j of the little-endian bytes."""
    return ((packed.unsqueeze(-1) >> _BIT_SHIFTS) & 1).flatten(-2)
