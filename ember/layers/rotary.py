"""Rotary position embeddings (RoPE), half-split (NeoX) or interleaved pairs (GGUF llama)."""

from __future__ import annotations

import math

import torch

from ember.config import RopeConfig


def inverse_frequencies(
    rotary_dim: int, rope: RopeConfig, freq_factors: torch.Tensor | None = None
) -> torch.Tensor:
    """[rotary_dim / 2] float32 angular speeds, with Llama-3 scaling or GGUF freq factors."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if freq_factors is not None:
        # GGUF stores Llama-3 scaling as per-frequency divisors (rope_freqs.weight).
        inv_freq = inv_freq / freq_factors.float()
    elif rope.llama3 is not None:
        factor, low_factor, high_factor, original_max = rope.llama3
        low_wavelen = original_max / low_factor
        high_wavelen = original_max / high_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_max / wavelen - low_factor) / (high_factor - low_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding:
    def __init__(
        self,
        head_dim: int,
        rope: RopeConfig,
        *,
        interleaved: bool,
        rotary_dim: int | None = None,
        freq_factors: torch.Tensor | None = None,
    ) -> None:
        self.rotary_dim = rotary_dim or head_dim
        self.interleaved = interleaved
        self.linear_factor = rope.linear_factor
        self.inv_freq = inverse_frequencies(self.rotary_dim, rope, freq_factors)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] -> cos, sin: [T, 1, rotary_dim / 2]
        angles = (positions.float() / self.linear_factor)[:, None] * self.inv_freq[None, :]
        return angles.cos()[:, None, :], angles.sin()[:, None, :]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [T, heads, head_dim]
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        if self.interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            half = self.rotary_dim // 2
            x1, x2 = rot[..., :half], rot[..., half:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((out, rest), dim=-1) if rest.numel() else out
