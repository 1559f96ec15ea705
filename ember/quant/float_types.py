"""Unquantized GGML types: each "block" is one little-endian float."""

from __future__ import annotations

import torch

from ember.quant.base import QuantMethod


class _FloatMethod(QuantMethod):
    block_size = 1
    storage_dtype: torch.dtype

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        # [n, type_size] bytes -> [n, 1] floats; the copy keeps the result from aliasing raw.
        return blocks.contiguous().view(self.storage_dtype).to(torch.float32, copy=True)


class F32(_FloatMethod):
    name = "F32"
    type_size = 4
    storage_dtype = torch.float32

    def matmul(
        self,
        x: torch.Tensor,
        raw: torch.Tensor,
        cols: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        # The bytes already are the weights: no dequantized copy, no chunking.
        rows = self.check_raw(raw, cols)
        if x.shape[-1] != cols:
            raise ValueError(f"matmul input has {x.shape[-1]} features, weight has {cols}")
        weight = raw.contiguous().view(torch.float32)  # [rows, cols]
        out = x.reshape(-1, cols).to(torch.float32) @ weight.T
        return out.to(out_dtype).reshape(*x.shape[:-1], rows)


class F16(_FloatMethod):
    name = "F16"
    type_size = 2
    storage_dtype = torch.float16


class BF16(_FloatMethod):
    name = "BF16"
    type_size = 2
    storage_dtype = torch.bfloat16


METHODS: list[QuantMethod] = [F32(), F16(), BF16()]
