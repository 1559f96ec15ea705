"""Gated MLP activations over [gate | up] halves: act(gate) * up."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ember.kernels.fused import select_ops

# act_and_mul(gate_up [T, 2F]) -> [T, F]: gate in the first half, up in the second.
ActAndMul = Callable[[torch.Tensor], torch.Tensor]


def silu_and_mul() -> ActAndMul:
    return select_ops().silu_mul


def gelu_tanh_and_mul() -> ActAndMul:
    # GeGLU with the tanh approximation, as Gemma is trained (gelu_pytorch_tanh).
    return select_ops().gelu_tanh_mul
