"""Fast twins of the GGUF quant methods: matmul and embedding run in the native kernels.

Each twin subclasses its reference method, so `dequantize` (and everything else) stays the
bit-exact pure-torch reference the kernels are tested against; `reference` names that method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ember.quant.base import QuantMethod

# ggml_type ids of the types with native kernels.
GGML_TYPE_IDS: dict[str, int] = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
}

# Values of qmatmul's `path` argument (auto picks by row count).
PATH_AUTO, PATH_INTEGER, PATH_BF16, PATH_INT8_GEMM = 0, 1, 2, 3

# Batches of up to this many rows take the int8 GEMM (set by integer_batches()).
_int8_gemm_rows = 0
# Every matmul takes the int8 GEMM, whatever its row count (set by batch_invariant()).
_invariant = False


@contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """Every matmul runs the int8 GEMM, whose per-row arithmetic (int8 activations with a scale
    per 32 values, exact int32 sums, one float update per scale block in a fixed order) does
    not depend on how many rows share the call: a row's output is then bit-identical alone or
    in any batch."""
    global _invariant
    previous, _invariant = _invariant, enabled
    try:
        yield
    finally:
        _invariant = previous


@contextmanager
def integer_batches(max_rows: int) -> Iterator[None]:
    """Matmuls of up to `max_rows` rows run in int8 (VNNI) instead of bf16 tiles.

    For batches of decode steps: 1.3-1.6x faster, with the int8 activations a single decode
    step already uses. Prompts keep the bf16 path, whose finer activations hold parity with
    llama.cpp on Gemma 3 (see ops.cpp).
    """
    global _int8_gemm_rows
    previous, _int8_gemm_rows = _int8_gemm_rows, max_rows
    try:
        yield
    finally:
        _int8_gemm_rows = previous


def qmatmul(
    x2d: torch.Tensor, raw: torch.Tensor, cols: int, name: str, path: int = PATH_AUTO
) -> torch.Tensor:
    """x2d [M, cols] @ W.T -> float32 [M, rows], W given as raw GGML blocks of type `name`."""
    result: torch.Tensor = torch.ops.ember.qmatmul(x2d, raw, cols, GGML_TYPE_IDS[name], path)
    return result


class _NativeKernels(QuantMethod):
    """Overrides matmul and embedding; placed before the reference class in the MRO.

    The op checks shapes itself; Python re-checks only when it fails, so a malformed weight
    still raises the reference's ModelFileError while a good call pays no Python checks.
    """

    ggml_type: int
    reference: QuantMethod
    # torch.ops.ember.* overloads, resolved when the twin is made (the library is loaded then).
    matmul_op: Callable[..., torch.Tensor]
    embedding_op: Callable[..., torch.Tensor]

    def matmul(
        self,
        x: torch.Tensor,
        raw: torch.Tensor,
        cols: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        if x.shape[-1] != cols:
            raise ValueError(f"matmul input has {x.shape[-1]} features, weight has {cols}")
        rows = x.numel() // cols if cols else 0
        path = PATH_INT8_GEMM if _invariant or 16 < rows <= _int8_gemm_rows else PATH_AUTO
        try:
            if x.dim() == 2:
                out = self.matmul_op(x, raw, cols, self.ggml_type, path)
            else:
                out = self.matmul_op(x.reshape(-1, cols), raw, cols, self.ggml_type, path)
                out = out.reshape(*x.shape[:-1], out.shape[-1])
        except RuntimeError:
            self.check_raw(raw, cols)
            raise
        return out if out_dtype == torch.float32 else out.to(out_dtype)

    def embedding(self, raw: torch.Tensor, cols: int, ids: torch.Tensor) -> torch.Tensor:
        self.check_raw(raw, cols)
        flat = ids.reshape(-1).to(torch.int64)
        out = self.embedding_op(raw, cols, flat, self.ggml_type)
        return out.reshape(*ids.shape, cols)


def fast_twin(method: QuantMethod) -> QuantMethod:
    """The native-kernel version of `method` (a type in GGML_TYPE_IDS; library loaded)."""
    reference_cls = type(method)
    twin_cls = type(
        f"Fast{reference_cls.__name__}",
        (_NativeKernels, reference_cls),
        {
            "ggml_type": GGML_TYPE_IDS[method.name],
            "reference": method,
            "matmul_op": torch.ops.ember.qmatmul.default,
            "embedding_op": torch.ops.ember.qembedding.default,
        },
    )
    twin: QuantMethod = twin_cls()
    return twin
