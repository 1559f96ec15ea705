"""Linear layers and embeddings over weights kept in their storage (possibly quantized) format."""

from __future__ import annotations

import torch
from torch import nn

from ember.loader.weights import RawTensor, WeightStore
from ember.quant.base import get_quant_method


class QuantLinear(nn.Module):
    """y = x @ W.T (+ b), with W held as raw blocks and multiplied by its quant method."""

    raw: torch.Tensor  # uint8 [out_features, row_bytes]

    def __init__(self, weight: RawTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"{weight.name}: a linear weight must be 2-D, got {weight.shape}")
        self.method = get_quant_method(weight.qtype)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("raw", weight.data, persistent=False)
        self.bias = bias

    @classmethod
    def from_store(cls, store: WeightStore, prefix: str) -> QuantLinear:
        bias = store.take_optional(f"{prefix}.bias")
        return cls(store.take(f"{prefix}.weight"), bias.to_float() if bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in_features] -> [..., out_features]
        lead = x.shape[:-1]
        y = self.method.matmul(x.reshape(-1, self.in_features), self.raw, self.in_features)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class QuantEmbedding(nn.Module):
    """Token embedding table kept in storage format; only looked-up rows are dequantized."""

    raw: torch.Tensor  # uint8 [num_embeddings, row_bytes]

    def __init__(self, weight: RawTensor) -> None:
        super().__init__()
        self.method = get_quant_method(weight.qtype)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("raw", weight.data, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [T] -> [T, embedding_dim]
        return self.method.embedding(self.raw, self.embedding_dim, ids)

    def as_linear(self) -> QuantLinear:
        """The same table used as an output projection (tied embeddings), sharing its storage."""
        shape = (self.num_embeddings, self.embedding_dim)
        return QuantLinear(RawTensor("tied_output", self.method.name, shape, self.raw))
