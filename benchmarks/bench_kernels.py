"""Quantized matmul kernels: native (auto, int8-VNNI and bf16 paths) vs reference vs torch bf16.

Prints microseconds per call and the effective weight-streaming rate (GB/s of quantized weight
bytes read per call) for the real models' shapes at several batch sizes M.

Usage: .venv/bin/python benchmarks/bench_kernels.py [--threads 2] [--m 1,16,512]
       [--shapes 576x1536,...] [--no-reference]
A shape is K x N (in_features x out_features) and the GGUF type its model uses for it.
Weights are random blocks: speed does not depend on their values. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
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

# K x N : the GGUF type that matrix has in the anchor models.
DEFAULT_SHAPES = ",".join(
    [
        "576x1536:Q4_1",  # SmolLM2 ffn gate/up
        "1536x576:Q4_1",  # SmolLM2 ffn down
        "640x2048:Q5_0",  # Gemma-3-270M ffn gate/up
        "2048x640:Q6_K",  # Gemma-3-270M ffn down (half its layers; the rest Q4_K)
        "640x262144:Q8_0",  # Gemma-3-270M tied LM head
        "2048x8192:Q4_K",  # Llama-3.2-1B-shaped ffn gate/up (Q4_K_M)
    ]
)
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
    parser.add_argument("--m", default="1,16,512", help="comma-separated batch sizes")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated KxN:TYPE")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timing per cell")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not fast_methods_available():
        raise SystemExit("native kernels unavailable: nothing to benchmark")

    header = (
        f"{'K x N':>11} {'type':>5} {'M':>4} | {'fast us':>9} {'GB/s':>6} | {'int8 us':>9} "
        f"{'bf16 us':>9} | {'ref us':>10} | {'torch bf16 us':>13} | {'vs ref':>7} {'vs bf16':>7}"
    )
    print(f"threads={args.threads}  torch {torch.__version__}")
    print(header)
    print("-" * len(header))
    for spec in args.shapes.split(","):
        bench_shape(spec, [int(v) for v in args.m.split(",")], args.budget, args.no_reference)


def bench_shape(spec: str, batch_sizes: list[int], budget: float, no_reference: bool) -> None:
    shape, name = spec.split(":")
    cols, rows = (int(v) for v in shape.split("x"))
    method = fast_method(name)
    assert method is not None
    reference: QuantMethod = method.reference  # type: ignore[attr-defined]
    raw = random_raw(method, rows, cols)
    weight_t = reference.dequantize(raw, cols).to(torch.bfloat16).T
    for m in batch_sizes:
        x = torch.randn(m, cols)
        fast = time_call(partial(method.matmul, x, raw, cols), budget)
        integer = time_call(partial(qmatmul, x, raw, cols, name, PATH_INTEGER), budget)
        bf16 = time_call(partial(qmatmul, x, raw, cols, name, PATH_BF16), budget)
        ref = nan if no_reference else time_call(partial(reference.matmul, x, raw, cols), budget)
        torch_bf16 = time_call(partial(torch.matmul, x.to(torch.bfloat16), weight_t), budget)
        print(
            f"{shape:>11} {name:>5} {m:>4} | {fast * 1e6:9.1f} {raw.numel() / fast / 1e9:6.1f} | "
            f"{integer * 1e6:9.1f} {bf16 * 1e6:9.1f} | {ref * 1e6:10.1f} | "
            f"{torch_bf16 * 1e6:13.1f} | {ref / fast:6.1f}x {torch_bf16 / fast:6.2f}x"
        )


if __name__ == "__main__":
    main()
