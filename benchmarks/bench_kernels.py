"""Quantized matmul kernels: every native path vs the reference vs torch's bf16 matmul.

Paths: auto (what models use: the gemv or the int8 GEMM up to 16 rows, the bf16 GEMM above),
the streaming int8 gemv, the int8 GEMM (weight panels unpacked to int8, vpdpbusd) and the bf16
tile GEMM (weight tiles dequantized to bf16, vdpbf16ps).
Prints microseconds per call, the auto path's GMAC/s (M * K * N multiply-adds per second) and
its weight-streaming rate (GB/s of quantized weight bytes per call), and the int8 GEMM's speed
over the bf16 GEMM and over torch's bf16 matmul on pre-dequantized weights.

Usage: .venv/bin/python benchmarks/bench_kernels.py [--threads 2] [--m 1,16,64,512]
       [--shapes 576x1536:Q4_1,...] [--reference]
A shape is K x N (in_features x out_features) and the GGUF type its model uses for it.
Weights are random blocks: speed does not depend on their values. Run it on an idle machine;
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from math import nan

import numpy as np
import torch

from ember.kernels import fast_method, fast_methods_available
from ember.kernels.methods import PATH_BF16, PATH_INTEGER, qmatmul
from ember.quant.base import QuantMethod

# qmatmul's path for the int8 GEMM (ops.cpp's kInt8Gemm).
PATH_INT8_GEMM = 3
# The streaming gemv re-reads the weights every 8 rows: pointless to time past this.
GEMV_MAX_M = 64

# K x N : the GGUF type that matrix has in the anchor models.
SMOLLM2_SHAPES = [
    "576x1536:Q4_1",  # ffn gate/up
    "1536x576:Q4_1",  # ffn down
    "576x576:Q4_1",  # attn q/output
    "576x192:Q4_1",  # attn k/v
]
GEMMA3_SHAPES = [
    "640x1024:Q5_0",  # attn q
    "640x256:Q5_0",  # attn k/v (half the v are Q8_0)
    "640x256:Q8_0",
    "1024x640:Q4_K",  # attn output
    "640x2048:Q5_0",  # ffn gate/up
    "2048x640:Q4_K",  # ffn down (half the layers; the rest Q6_K)
    "2048x640:Q6_K",
]
LLAMA_1B_SHAPES = [
    "2048x2048:Q4_K",  # attn q/output
    "2048x512:Q4_K",  # attn k/v
    "2048x8192:Q4_K",  # ffn gate/up
    "8192x2048:Q4_K",  # ffn down (half the layers; the rest Q6_K)
    "8192x2048:Q6_K",
]
DEFAULT_SHAPES = ",".join(SMOLLM2_SHAPES + GEMMA3_SHAPES + LLAMA_1B_SHAPES)
FP16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
               "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}  # fmt: skip


def random_raw(method: QuantMethod, rows: int, cols: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (rows, method.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(-1, method.type_size)
    for offset in FP16_FIELDS[method.name]:
        scales = rng.uniform(1e-4, 0.05, (blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return torch.from_numpy(raw)


def time_call(fn: Callable[[], object], budget_s: float) -> float:
    """Median seconds per call over repeats filling about `budget_s` (at least 3 calls)."""
    fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < budget_s and len(times) < 200):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--m", default="1,16,64,512", help="comma-separated batch sizes")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated KxN:TYPE")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timing per cell")
    parser.add_argument("--reference", action="store_true", help="also time the slow reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not fast_methods_available():
        raise SystemExit("native kernels unavailable: nothing to benchmark")

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"threads={args.threads}  torch {torch.__version__}  load average {load}")
    header = (
        f"{'K x N':>10} {'type':>5} {'M':>5} | {'auto us':>9} {'GMAC/s':>7} {'GB/s':>6} | "
        f"{'gemv us':>9} {'int8 us':>9} {'bf16 us':>9} | {'torch bf16':>10} | "
        f"{'int8/bf16':>9} {'int8/torch':>10} | {'ref us':>9}"
    )
    print(header)
    print("-" * len(header))
    for spec in args.shapes.split(","):
        bench_shape(spec, [int(v) for v in args.m.split(",")], args.budget, args.reference)


def bench_shape(spec: str, batch_sizes: list[int], budget: float, with_reference: bool) -> None:
    shape, name = spec.split(":")
    cols, rows = (int(v) for v in shape.split("x"))
    method = fast_method(name)
    assert method is not None
    reference: QuantMethod = method.reference  # type: ignore[attr-defined]
    raw = random_raw(method, rows, cols)
    weight_t = reference.dequantize(raw, cols).to(torch.bfloat16).T
    for m in batch_sizes:
        x = torch.randn(m, cols)
        auto = time_call(partial(method.matmul, x, raw, cols), budget)
        gemv = (
            time_call(partial(qmatmul, x, raw, cols, name, PATH_INTEGER), budget)
            if m <= GEMV_MAX_M
            else nan
        )
        int8 = time_call(partial(qmatmul, x, raw, cols, name, PATH_INT8_GEMM), budget)
        bf16 = time_call(partial(qmatmul, x, raw, cols, name, PATH_BF16), budget)
        torch_bf16 = time_call(partial(torch.matmul, x.to(torch.bfloat16), weight_t), budget)
        ref = time_call(partial(reference.matmul, x, raw, cols), budget) if with_reference else nan
        gmac = m * cols * rows / auto / 1e9
        print(
            f"{shape:>10} {name:>5} {m:>5} | {auto * 1e6:9.1f} {gmac:7.1f} "
            f"{raw.numel() / auto / 1e9:6.1f} | {gemv * 1e6:9.1f} {int8 * 1e6:9.1f} "
            f"{bf16 * 1e6:9.1f} | {torch_bf16 * 1e6:10.1f} | {bf16 / int8:8.2f}x "
            f"{torch_bf16 / int8:9.2f}x | {ref * 1e6:9.1f}"
        )


if __name__ == "__main__":
    main()
