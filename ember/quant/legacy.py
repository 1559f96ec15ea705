"""GGML's original 32-weight block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).

Every block starts with an fp16 scale `d`; the "_1" types add an fp16 offset `m`. Packed
4-bit codes put weights 0..15 in the low nibbles of the 16 code bytes and 16..31 in the
high nibbles; the 5-bit types keep the fifth bit of weight j in bit j of a 32-bit field `qh`.
Arithmetic follows GGML's order (scale, then add the offset) so results match it bit for bit.
"""

from __future__ import annotations

import torch

from ember.quant._bits import bits_le, f16_field, nibbles
from ember.quant.base import QuantMethod


class Q8_0(QuantMethod):
    """d: fp16 | qs: int8[32];  w = d * q."""

    name = "Q8_0"
    block_size = 32
    type_size = 34

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = blocks[:, 2:].view(torch.int8)
        return codes.to(torch.float32).mul_(f16_field(blocks, 0))


class Q4_0(QuantMethod):
    """d: fp16 | qs: u8[16] (nibbles);  w = d * (q - 8)."""

    name = "Q4_0"
    block_size = 32
    type_size = 18

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = nibbles(blocks[:, 2:]).view(torch.int8) - 8
        return codes.to(torch.float32).mul_(f16_field(blocks, 0))


class Q4_1(QuantMethod):
    """d: fp16 | m: fp16 | qs: u8[16] (nibbles);  w = d * q + m."""

    name = "Q4_1"
    block_size = 32
    type_size = 20

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = nibbles(blocks[:, 4:])
        return codes.to(torch.float32).mul_(f16_field(blocks, 0)).add_(f16_field(blocks, 2))


class Q5_0(QuantMethod):
    """d: fp16 | qh: u8[4] (fifth bits) | qs: u8[16] (nibbles);  w = d * (q - 16)."""

    name = "Q5_0"
    block_size = 32
    type_size = 22

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = nibbles(blocks[:, 6:]) | (bits_le(blocks[:, 2:6]) << 4)
        return (codes.view(torch.int8) - 16).to(torch.float32).mul_(f16_field(blocks, 0))


class Q5_1(QuantMethod):
    """d: fp16 | m: fp16 | qh: u8[4] (fifth bits) | qs: u8[16] (nibbles);  w = d * q + m."""

    name = "Q5_1"
    block_size = 32
    type_size = 24

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = nibbles(blocks[:, 8:]) | (bits_le(blocks[:, 4:8]) << 4)
        return codes.to(torch.float32).mul_(f16_field(blocks, 0)).add_(f16_field(blocks, 2))


METHODS: list[QuantMethod] = [Q8_0(), Q4_0(), Q4_1(), Q5_0(), Q5_1()]
