"""Fast twins of the GGUF quant methods: matmul and embedding run in the native kernels.

Each twin subclasses its reference method, so `dequantize` (and everything else) stays the
bit-exact pure-torch reference the kernels are tested against; `reference` names that method.
"""

from __future__ import annotations

from collections.abc import Callable

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
        try:
            if x.dim() == 2:
                out = self.matmul_op(x, raw, cols, self.ggml_type, PATH_AUTO)
            else:
                out = self.matmul_op(x.reshape(-1, cols), raw, cols, self.ggml_type, PATH_AUTO)
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
