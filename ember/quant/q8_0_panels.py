"""Q8_0 weights repacked at load into panels for the int8 GEMM: the layout's reference.

Not a GGUF type: the fast Q8_0 method (ember.kernels) turns a Q8_0 matrix into this layout in
place when its kernels can use it, so a decode batch multiplies weights where they lie instead
of unpacking 64 rows at a time for every call. Each panel of 64 rows keeps the bytes those rows
held (64 * 34 * cols / 32): first the codes, q ^ 0x80 (unsigned, as vpdpbusd wants them), in
the GEMM's order [cols / 4][64 rows][4 values], then GGUF's fp16 scales [cols / 32][64 rows].
The values are those of the Q8_0 rows (w = d * q), bit for bit.
"""

from __future__ import annotations

import torch

from ember.errors import ModelFileError
from ember.quant.base import QuantMethod

PANEL_ROWS = 64


def can_repack(raw: torch.Tensor, cols: int) -> bool:
    """Whether a Q8_0 matrix fits the layout: whole panels, K a multiple of 64, contiguous and
    64-byte aligned (the kernels load whole vectors)."""
    return (
        raw.dim() == 2
        and raw.shape[0] % PANEL_ROWS == 0
        and cols % 64 == 0
        and raw.is_contiguous()
        and raw.data_ptr() % 64 == 0
    )


class Q8_0Panels(QuantMethod):
    name = "Q8_0_PANELS"
    block_size = 32
    type_size = 34

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        raise ModelFileError("Q8_0 panels hold whole 64-row panels, not independent blocks")

    def dequantize(self, raw: torch.Tensor, cols: int) -> torch.Tensor:
        rows = self.check_raw(raw, cols)
        if rows % PANEL_ROWS:
            raise ModelFileError(f"Q8_0 panels hold whole {PANEL_ROWS}-row panels, got {rows}")
        panels = rows // PANEL_ROWS
        flat = raw.reshape(panels, -1)
        codes = flat[:, : PANEL_ROWS * cols].reshape(panels, cols // 4, PANEL_ROWS, 4)
        codes = codes.permute(0, 2, 1, 3).reshape(rows, cols) ^ 0x80
        scales = flat[:, PANEL_ROWS * cols :].contiguous().view(torch.float16)
        scales = scales.reshape(panels, cols // 32, PANEL_ROWS).permute(0, 2, 1)
        values = codes.view(torch.int8).to(torch.float32).reshape(rows, cols // 32, 32)
        return values.mul_(scales.reshape(rows, cols // 32, 1).to(torch.float32)).reshape(
            rows, cols
        )

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
        x2d = x.reshape(-1, cols).to(torch.float32)
        out = torch.empty((x2d.shape[0], rows), dtype=out_dtype)
        step = PANEL_ROWS * 256  # rows per dequantized chunk: whole panels
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            out[:, start:stop] = x2d @ self.dequantize(raw[start:stop], cols).T
        return out.reshape(*x.shape[:-1], rows)

    def embedding(self, raw: torch.Tensor, cols: int, ids: torch.Tensor) -> torch.Tensor:
        self.check_raw(raw, cols)
        flat_ids = ids.reshape(-1).to(torch.int64)
        panels = torch.unique(flat_ids // PANEL_ROWS)
        out = torch.empty((flat_ids.numel(), cols), dtype=torch.float32)
        for panel in panels.tolist():
            start = panel * PANEL_ROWS
            values = self.dequantize(raw[start : start + PANEL_ROWS], cols)
            here = (flat_ids // PANEL_ROWS) == panel
            out[here] = values[flat_ids[here] - start]
        return out.reshape(*ids.shape, cols)


def repack_reference(raw: torch.Tensor, cols: int) -> torch.Tensor:
    """Q8_0 rows -> a new tensor in the panel layout (the kernels do this in place)."""
    rows = raw.shape[0]
    panels = rows // PANEL_ROWS
    blocks = raw.reshape(panels, PANEL_ROWS, cols // 32, 34)
    codes = blocks[..., 2:].reshape(panels, PANEL_ROWS, cols // 4, 4).permute(0, 2, 1, 3) ^ 0x80
    scales = blocks[..., :2].permute(0, 2, 1, 3)  # [panels, cols / 32, 64, 2 bytes]
    packed = torch.cat([codes.reshape(panels, -1), scales.reshape(panels, -1)], dim=1)
    return packed.reshape(rows, -1).contiguous()
