"""RMS normalisation."""

from __future__ import annotations

import torch

from ember.layers import ops as fused


class RMSNorm:
    """x / rms(x) * weight over the last dimension, computed in float32.

    Gemma's "(1 + w)" convention is folded into `weight` when the model is loaded.
    """

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        self.weight = weight.float().contiguous()  # [dim]
        self.eps = eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return fused.rms_norm(x, self.weight, self.eps)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add fused into the norm."""
        return fused.add_rms_norm(x, residual, self.weight, self.eps)
