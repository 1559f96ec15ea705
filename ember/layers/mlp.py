"""Gated feed-forward block: down(act(gate(x)) * up(x))."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ember.layers.linear import QuantLinear
from ember.loader.weights import WeightStore


class GatedMLP(nn.Module):
    def __init__(
        self,
        store: WeightStore,
        prefix: str,
        act_and_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.gate = QuantLinear.from_store(store, f"{prefix}.ffn_gate")
        self.up = QuantLinear.from_store(store, f"{prefix}.ffn_up")
        self.down = QuantLinear.from_store(store, f"{prefix}.ffn_down")
        self.act_and_mul = act_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act_and_mul(self.gate(x), self.up(x)))
