"""GGML's K-quant types (Q4_K, Q5_K, Q6_K): 256-weight super-blocks of smaller sub-blocks.

Q4_K/Q5_K: eight 32-weight sub-blocks, each with a 6-bit scale and 6-bit min packed into 12
bytes, scaled by the super-block's fp16 `d` and `dmin`:  w = d*sc * q - dmin*mn.
Q6_K: sixteen 16-weight sub-blocks with int8 scales and one fp16 `d`:  w = d*sc * (q - 32).
The products d*sc, dmin*mn and d*sc*q all fit in float32's 24-bit mantissa, so only the final
subtraction rounds and results match GGML bit for bit.
"""

from __future__ import annotations

import torch

from ember.quant._bits import f16_field, nibbles
from ember.quant.base import QuantMethod

QK_K = 256

_SUB_BLOCK_SHIFTS = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
_Q6_HIGH_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)


def _scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 packed bytes per block -> (scales, mins), each uint8 [n_blocks, 8] of 6-bit values.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; sub-blocks 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the spare top
    bits of bytes 0-3 (scales) and 4-7 (mins).
    """
    low_scales, low_mins, extra = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat((low_scales & 0x3F, (extra & 0x0F) | ((low_scales >> 6) << 4)), dim=1)
    mins = torch.cat((low_mins & 0x3F, (extra >> 4) | ((low_mins >> 6) << 4)), dim=1)
    return scales, mins


def _apply_scale_min(blocks: torch.Tensor, codes: torch.Tensor, scales_offset: int) -> torch.Tensor:
    """codes uint8 [n, 8, 32] -> float32 [n, 256] as d*sc * q - dmin*mn per sub-block."""
    scales, mins = _scales_and_mins(blocks[:, scales_offset : scales_offset + 12])
    sub_scale = (f16_field(blocks, 0) * scales.to(torch.float32)).unsqueeze(-1)  # [n, 8, 1]
    sub_min = (f16_field(blocks, 2) * mins.to(torch.float32)).unsqueeze(-1)  # [n, 8, 1]
    return codes.to(torch.float32).mul_(sub_scale).sub_(sub_min).reshape(-1, QK_K)


class Q4_K(QuantMethod):
    """d: fp16 | dmin: fp16 | scales: u8[12] | qs: u8[128].

    qs is four 32-byte groups; group g's low nibbles are sub-block 2g, its high nibbles 2g+1.
    """

    name = "Q4_K"
    block_size = QK_K
    type_size = 144

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        codes = nibbles(blocks[:, 16:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
        return _apply_scale_min(blocks, codes, scales_offset=4)


class Q5_K(QuantMethod):
    """d: fp16 | dmin: fp16 | scales: u8[12] | qh: u8[32] | qs: u8[128].

    Low 4 bits as in Q4_K; the fifth bit of weight l in sub-block s is bit s of qh[l].
    """

    name = "Q5_K"
    block_size = QK_K
    type_size = 176

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        low = nibbles(blocks[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
        high = (blocks[:, 16:48].unsqueeze(1) >> _SUB_BLOCK_SHIFTS) & 1  # [n, 8, 32]
        return _apply_scale_min(blocks, low | (high << 4), scales_offset=4)


class Q6_K(QuantMethod):
    """ql: u8[128] | qh: u8[64] | scales: i8[16] | d: fp16.

    Two halves of 128 weights, each from 64 ql bytes and 32 qh bytes. Within a half, weights
    0-63 are the low nibbles of its ql bytes and 64-127 the high nibbles; weight 32*g + l
    (g < 4, l < 32) takes its top 2 bits from bits 2g..2g+1 of qh[l].
    """

    name = "Q6_K"
    block_size = QK_K
    type_size = 210

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        low = nibbles(blocks[:, :128].reshape(-1, 2, 64)).reshape(-1, 2, 4, 32)
        high = (blocks[:, 128:192].reshape(-1, 2, 1, 32) >> _Q6_HIGH_SHIFTS) & 3  # [n, 2, 4, 32]
        codes = (low | (high << 4)).view(torch.int8) - 32
        sub_scale = f16_field(blocks, 208) * blocks[:, 192:208].view(torch.int8).to(torch.float32)
        weights = codes.reshape(-1, 16, 16).to(torch.float32).mul_(sub_scale.unsqueeze(-1))
        return weights.reshape(-1, QK_K)


METHODS: list[QuantMethod] = [Q4_K(), Q5_K(), Q6_K()]
