"""Gated feed-forward block: down(act(gate(x)) * up(x))."""

from __future__ import annotations

import torch

from ember.layers.activation import ActAndMul
from ember.layers.linear import QuantLinear
from ember.loader.weights import WeightStore


class GatedMLP:
    def __init__(self, store: WeightStore, prefix: str, act_and_mul: ActAndMul) -> None:
        gate, up = f"{prefix}.ffn_gate", f"{prefix}.ffn_up"
        self.gate_up = QuantLinear.stacked(store, [gate, up])
        if self.gate_up is None:  # gate and up stored differently: two calls, then join
            self.gate = QuantLinear.from_store(store, gate)
            self.up = QuantLinear.from_store(store, up)
        self.down = QuantLinear.from_store(store, f"{prefix}.ffn_down")
        self.act_and_mul = act_and_mul

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One expression, so [T, 2F] gate_up is freed before down() allocates its output.
        if self.gate_up is not None:
            return self.down(self.act_and_mul(self.gate_up(x)))
        return self.down(self.act_and_mul(torch.cat((self.gate(x), self.up(x)), dim=-1)))
