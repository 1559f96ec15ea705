"""Prompt attention: the native prefill kernel vs its reference (fp32 SDPA on the same cache).

Prints milliseconds per call at the models' shapes: SmolLM2-135M (9 / 3 heads x 64) and
Gemma-3-270M (4 / 1 heads x 256, sliding window 512), T new queries at the end of S cached
positions, one contiguous cache read as a single block (the single-sequence path).

Usage: .venv/bin/python benchmarks/bench_prefill_attention.py [--threads 2]
       [--kv-dtype float16] [--repeats 10]
Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ember.kernels import fast_methods_available
from ember.kernels.fused import native_ops, reference_ops

# (label, T, S, q heads, kv heads, head dim, window)
CASES = [
    ("SmolLM2", 512, 512, 9, 3, 64, 0),
    ("SmolLM2", 256, 4096, 9, 3, 64, 0),
    ("Gemma 3", 512, 512, 4, 1, 256, 0),
    ("Gemma 3", 512, 4096, 4, 1, 256, 0),
    ("Gemma 3", 512, 4096, 4, 1, 256, 512),
]


def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-dtype", default="float16", choices=["float16", "bfloat16", "int8"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not fast_methods_available():
        raise SystemExit("the native kernels are not available on this machine")
    torch.set_num_threads(args.threads)
    native, reference = native_ops(), reference_ops()
    load = Path("/proc/loadavg").read_text()[:14]
    print(f"threads={args.threads} kv={args.kv_dtype} load average {load}")
    print("model    |    T |    S | window | native ms | reference ms | speed-up")
    for label, tokens, keys, q_heads, kv_heads, dim, window in CASES:
        k = torch.randn(1, keys, kv_heads, dim)
        v = torch.randn(1, keys, kv_heads, dim)
        scales: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if args.kv_dtype == "int8":
            k_scales = k.abs().amax(-1) / 127  # [1, S, Hk] -> the pages' [1, Hk, S] below
            v_scales = v.abs().amax(-1) / 127
            k = (k / k_scales.unsqueeze(-1)).round().to(torch.int8)
            v = (v / v_scales.unsqueeze(-1)).round().to(torch.int8)
            scales = (k_scales.transpose(1, 2).contiguous(), v_scales.transpose(1, 2).contiguous())
        else:
            dtype = getattr(torch, args.kv_dtype)
            k, v = k.to(dtype), v.to(dtype)
        q = torch.randn(tokens, q_heads, dim)
        table = torch.zeros(1, dtype=torch.int32)
        call = (q, k, v, table, keys, dim**-0.5, window, *scales)
        fast = per_call_ms(partial(native.prefill_attention, *call), args.repeats)
        slow = per_call_ms(partial(reference.prefill_attention, *call), max(3, args.repeats // 3))
        print(
            f"{label:8} | {tokens:4} | {keys:4} | {window:6} | {fast:9.2f} | {slow:12.2f} | "
            f"{slow / fast:7.2f}x"
        )


if __name__ == "__main__":
    main()
