"""RMS normalisation (native fused op when available, else its torch twin)."""

from __future__ import annotations

import torch

from ember.kernels.fused import select_ops


class RMSNorm:
    """x / rms(x) * weight over the last dimension, computed in float32.

    Gemma's "(1 + w)" convention is folded into `weight` when the model is loaded.
    """

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        self.weight = weight.float().contiguous()  # [dim]
        self.eps = eps
        self.ops = select_ops()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add fused into the norm."""
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)

    def norm_add_and_norm(
        self, x: torch.Tensor, x_norm: RMSNorm, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sandwich norms (Gemma): h = residual + x_norm(x); returns (norm(h), h)."""
        return self.ops.norm_add_rms_norm(x, residual, x_norm.weight, self.weight, self.eps)
