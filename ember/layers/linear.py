"""Linear layers and embeddings over weights kept in their storage (possibly quantized) format.

Layers are plain callables, not nn.Modules: a decode step calls a few hundred of them, and
nn.Module's hook machinery costs a microsecond or two per call for nothing we use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ember.loader.weights import RawTensor, WeightStore
from ember.quant.base import get_quant_method


class QuantLinear:
    """y = x @ W.T (+ b), with W held as raw blocks and multiplied by its quant method."""

    def __init__(self, weight: RawTensor, bias: torch.Tensor | None = None) -> None:
        if len(weight.shape) != 2:
            raise ValueError(f"{weight.name}: a linear weight must be 2-D, got {weight.shape}")
        self.method = get_quant_method(weight.qtype)
        self.out_features, self.in_features = weight.shape
        self.raw = weight.data  # uint8 [out_features, row_bytes]
        self.bias = bias

    @classmethod
    def from_store(cls, store: WeightStore, prefix: str) -> QuantLinear:
        bias = store.take_optional(f"{prefix}.bias")
        return cls(store.take(f"{prefix}.weight"), bias.to_float() if bias is not None else None)

    @classmethod
    def stacked(cls, store: WeightStore, prefixes: Sequence[str]) -> QuantLinear | None:
        """One linear computing several (e.g. Q, K and V) at once: their rows stacked.

        Only when every part has the same storage type and input width, and all or none have
        a bias; otherwise None and the caller keeps separate layers. Rows of a block format are
        independent, so stacking raw rows is exact. Saves kernel calls and re-quantizing the
        activations per part.
        """
        infos = [store.peek(f"{p}.weight") for p in prefixes]
        first = infos[0]
        if any(len(i.shape) != 2 or (i.qtype, i.cols) != (first.qtype, first.cols) for i in infos):
            return None
        biases = [f"{p}.bias" in store for p in prefixes]
        if any(biases) and not all(biases):
            return None
        weight = store.take_stacked([f"{p}.weight" for p in prefixes])
        bias = None
        if all(biases):
            bias = torch.cat([store.take(f"{p}.bias").to_float() for p in prefixes])
        return cls(weight, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in_features] -> [..., out_features]
        if x.dim() == 2:
            y = self.method.matmul(x, self.raw, self.in_features)
        else:
            lead = x.shape[:-1]
            y = self.method.matmul(x.reshape(-1, self.in_features), self.raw, self.in_features)
            y = y.reshape(*lead, self.out_features)
        if self.bias is not None:
            y += self.bias
        return y


class QuantEmbedding:
    """Token embedding table kept in storage format; only looked-up rows are dequantized."""

    def __init__(self, weight: RawTensor) -> None:
        self.method = get_quant_method(weight.qtype)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.raw = weight.data  # uint8 [num_embeddings, row_bytes]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [T] -> [T, embedding_dim]
        return self.method.embedding(self.raw, self.embedding_dim, ids)

    def as_linear(self) -> QuantLinear:
        """The same table used as an output projection (tied embeddings), sharing its storage."""
        shape = (self.num_embeddings, self.embedding_dim)
        return QuantLinear(RawTensor("tied_output", self.method.name, shape, self.raw))
