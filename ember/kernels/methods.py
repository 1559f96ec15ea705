"""Fast twins of the GGUF quant methods: matmul and embedding run in the native kernels.

Each twin subclasses its reference method, so `dequantize` (and everything else) stays the
bit-exact pure-torch reference the kernels are tested against; `reference` names that method.
"""

from __future__ import annotations

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
PATH_AUTO, PATH_INTEGER, PATH_BF16 = 0, 1, 2


def qmatmul(
    x2d: torch.Tensor, raw: torch.Tensor, cols: int, name: str, path: int = PATH_AUTO
) -> torch.Tensor:
    """x2d [M, cols] @ W.T -> float32 [M, rows], W given as raw GGML blocks of type `name`."""
    result: torch.Tensor = torch.ops.ember.qmatmul(x2d, raw, cols, GGML_TYPE_IDS[name], path)
    return result


class _NativeKernels(QuantMethod):
    """Overrides matmul and embedding; placed before the reference class in the MRO."""

    ggml_type: int
    reference: QuantMethod

    def matmul(
        self,
        x: torch.Tensor,
        raw: torch.Tensor,
        cols: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        rows = self.check_raw(raw, cols)
        if x.shape[-1] != cols:
            raise ValueError(f"matmul input has {x.shape[-1]} features, weight has {cols}")
        out = torch.ops.ember.qmatmul(x.reshape(-1, cols), raw, cols, self.ggml_type, PATH_AUTO)
        if out_dtype != torch.float32:
            out = out.to(out_dtype)
        return out.reshape(*x.shape[:-1], rows)

    def embedding(self, raw: torch.Tensor, cols: int, ids: torch.Tensor) -> torch.Tensor:
        self.check_raw(raw, cols)
        flat = ids.reshape(-1).to(torch.int64)
        out = torch.ops.ember.qembedding(raw, cols, flat, self.ggml_type)
        return out.reshape(*ids.shape, cols)


def fast_twin(method: QuantMethod) -> QuantMethod:
    """The native-kernel version of `method` (a type listed in GGML_TYPE_IDS)."""
    reference_cls = type(method)
    twin_cls = type(
        f"Fast{reference_cls.__name__}",
        (_NativeKernels, reference_cls),
        {"ggml_type": GGML_TYPE_IDS[method.name], "reference": method},
    )
    twin: QuantMethod = twin_cls()
    return twin
