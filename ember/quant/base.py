"""The quant-method interface: one object per GGML tensor type, and the registry that finds it.

Weights stay in their on-disk block form (uint8 bytes, one row of blocks per weight row).
Each method knows its block layout and has a pure-torch reference dequantizer; matmul and
embedding are built on it. Fast kernels subclass a method and override `matmul` / `embedding`,
keeping `dequantize` as the slow twin their tests compare against.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import torch

from ember.errors import ModelFileError

# Cap on the fp32 weights materialised at once by the default matmul: a 262144 x 640 LM head
# would be 640 MB dequantized whole.
MATMUL_CHUNK_BYTES = 64 * 1024 * 1024

SUPPORTED_TYPES: list[str] = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q4_K",
    "Q5_K",
    "Q6_K",
]


class QuantMethod(ABC):
    """How one GGML type stores a 2-D weight: `raw` is uint8 [rows, row_bytes(cols)].

    Methods are stateless; one shared instance per type serves every tensor of that type.
    """

    name: str  # GGML type name, e.g. "Q4_K"
    block_size: int  # weights per block (1 for F32/F16/BF16)
    type_size: int  # bytes per block

    @abstractmethod
    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """uint8 [n_blocks, type_size] -> new float32 [n_blocks, block_size]."""

    def row_bytes(self, cols: int) -> int:
        if cols <= 0 or cols % self.block_size != 0:
            raise ModelFileError(
                f"{self.name} tensor rows must hold a positive multiple of {self.block_size} "
                f"weights, got {cols}"
            )
        return cols // self.block_size * self.type_size

    def check_raw(self, raw: torch.Tensor, cols: int) -> int:
        """Validate `raw` against `cols` and return the row count."""
        expected = self.row_bytes(cols)
        if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] != expected:
            raise ModelFileError(
                f"{self.name} tensor data is {raw.dtype} {tuple(raw.shape)}, expected uint8 "
                f"[rows, {expected}] for rows of {cols} weights"
            )
        return int(raw.shape[0])

    def dequantize(self, raw: torch.Tensor, cols: int) -> torch.Tensor:
        """uint8 [rows, row_bytes] -> new float32 [rows, cols] (never aliases `raw`)."""
        rows = self.check_raw(raw, cols)
        blocks = raw.reshape(-1, self.type_size)
        return self.dequantize_blocks(blocks).reshape(rows, cols)

    def matmul(
        self,
        x: torch.Tensor,
        raw: torch.Tensor,
        cols: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """x [..., cols] @ W.T -> [..., rows], computed in float32 one row chunk of W at a time."""
        rows = self.check_raw(raw, cols)
        if x.shape[-1] != cols:
            raise ValueError(f"matmul input has {x.shape[-1]} features, weight has {cols}")
        lead = x.shape[:-1]
        x2d = x.reshape(-1, cols).to(torch.float32)
        chunk_rows = max(1, MATMUL_CHUNK_BYTES // (cols * 4))
        if rows <= chunk_rows:
            out = (x2d @ self.dequantize(raw, cols).T).to(out_dtype)
        else:
            out = torch.empty((x2d.shape[0], rows), dtype=out_dtype)
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                out[:, start:stop] = x2d @ self.dequantize(raw[start:stop], cols).T
        return out.reshape(*lead, rows)

    def embedding(self, raw: torch.Tensor, cols: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (any shape) of W -> float32 [*ids.shape, cols], decoding only those rows."""
        self.check_raw(raw, cols)
        picked = raw.index_select(0, ids.reshape(-1))
        return self.dequantize(picked, cols).reshape(*ids.shape, cols)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


@functools.cache
def _methods_by_name() -> dict[str, QuantMethod]:
    # Imported here because the implementations import this module.
    from ember.quant import float_types, k_quants, legacy

    methods = [*float_types.METHODS, *legacy.METHODS, *k_quants.METHODS]
    return {method.name: method for method in methods}


def get_quant_method(name: str) -> QuantMethod:
    """The shared method for GGML type `name`; ModelFileError if Ember cannot read that type."""
    method = _methods_by_name().get(name)
    if method is None:
        raise ModelFileError(
            f"unsupported tensor type {name} (supported: {', '.join(SUPPORTED_TYPES)})"
        )
    # The native kernels' twin when they are available (imported here: ember.kernels imports
    # this module); EMBER_NO_KERNELS=1 keeps the pure-torch reference.
    from ember.kernels import accelerated

    return accelerated(method)
