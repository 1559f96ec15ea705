"""Gated MLP activations: act(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # GeGLU with the tanh approximation, as Gemma is trained (gelu_pytorch_tanh).
    return F.gelu(gate, approximate="tanh") * up
