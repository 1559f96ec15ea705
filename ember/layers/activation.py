"""Gated MLP activations over [gate | up] halves: act(gate) * up."""

from __future__ import annotations

import torch

from ember.layers import ops as fused


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    return fused.silu_mul(gate_up)


def gelu_tanh_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    # GeGLU with the tanh approximation, as Gemma is trained (gelu_pytorch_tanh).
    return fused.gelu_tanh_mul(gate_up)
