"""Fused per-token ops (ember.kernels.fused): native op vs its eager torch twin (the reference).

Prints microseconds per call at the decode shapes of SmolLM2-135M (d 576, 9/3 heads x 64,
ffn 1536) and Gemma-3-270M (d 640, 4/1 heads x 256, ffn 2048), attention at several cache
lengths, and the per-layer sum of the non-matmul work (eager, native ops one by one, and native
with rope + cache write + attention in the single cached_attention call).

Usage: .venv/bin/python benchmarks/bench_fused.py [--threads 2] [--tokens 1]
       [--cache 128,1024,4096] [--kv-dtype float32] [--budget 0.2]
Run it on an idle machine: the per-call figures are a few microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ember.kernels import fast_methods_available
from ember.kernels.fused import FusedOps, native_ops, reference_ops


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gelu: bool
    qk_norm: bool


SHAPES = [
    Shape("SmolLM2-135M", 576, 9, 3, 64, 1536, gelu=False, qk_norm=False),
    Shape("Gemma-3-270M", 640, 4, 1, 256, 2048, gelu=True, qk_norm=True),
]


def per_call_us(fn: Callable[[], object], budget_s: float) -> float:
    """Median microseconds per call over batches of calls filling about `budget_s`."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(2e-3 / once))  # batches of ~2 ms so the timer's cost vanishes
    samples: list[float] = []
    spent = 0.0
    while len(samples) < 5 or (spent < budget_s and len(samples) < 100):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed / inner)
        spent += elapsed
    return statistics.median(samples) * 1e6


class Layer:
    """Random inputs of one decoder layer at `tokens` new tokens after `cached` cached ones."""

    def __init__(self, shape: Shape, tokens: int, cached: int, kv_dtype: torch.dtype) -> None:
        s, self.shape, self.tokens = shape, shape, tokens
        self.start = cached
        self.x = torch.randn(tokens, s.hidden)
        self.residual = torch.randn(tokens, s.hidden)
        self.norm = torch.rand(s.hidden) + 0.5
        self.gate_up = torch.randn(tokens, 2 * s.ffn)
        width = (s.q_heads + 2 * s.kv_heads) * s.head_dim
        self.qkv = torch.randn(tokens, width)
        slots = cached + tokens
        self.k_cache = torch.randn(slots, s.kv_heads, s.head_dim).to(kv_dtype)
        self.v_cache = torch.randn(slots, s.kv_heads, s.head_dim).to(kv_dtype)
        self.positions = torch.arange(cached, cached + tokens)
        self.inv_freq = 1.0 / (10000.0 ** (torch.arange(0, s.head_dim, 2).float() / s.head_dim))
        self.head_norm = torch.rand(s.head_dim) + 0.5
        self.scale = s.head_dim**-0.5

    def qkv_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, t = self.shape, self.tokens
        q_end, k_end = s.q_heads * s.head_dim, (s.q_heads + s.kv_heads) * s.head_dim
        return (
            self.qkv[:, :q_end].view(t, s.q_heads, s.head_dim),
            self.qkv[:, q_end:k_end].view(t, s.kv_heads, s.head_dim),
            self.qkv[:, k_end:].view(t, s.kv_heads, s.head_dim),
        )

    def calls(self, ops: FusedOps) -> dict[str, Callable[[], object]]:
        q, k, v = self.qkv_views()
        act = ops.gelu_tanh_mul if self.shape.gelu else ops.silu_mul
        qn, kn = (self.head_norm, self.head_norm) if self.shape.qk_norm else (None, None)
        return {
            "rms_norm": lambda: ops.rms_norm(self.x, self.norm, 1e-6),
            "add_rms_norm": lambda: ops.add_rms_norm(self.x, self.residual, self.norm, 1e-6),
            "norm_add_rms_norm": lambda: ops.norm_add_rms_norm(
                self.x, self.residual, self.norm, self.norm, 1e-6
            ),
            "qk rms_norm (x2)": lambda: (
                ops.rms_norm(q, self.head_norm, 1e-6),
                ops.rms_norm(k, self.head_norm, 1e-6),
            ),
            "gelu_tanh_mul" if self.shape.gelu else "silu_mul": lambda: act(self.gate_up),
            "rope_": lambda: ops.rope_(
                q, k, self.positions, self.inv_freq, self.shape.head_dim, False, 1.0
            ),  # fmt: skip
            "write_kv_": lambda: ops.write_kv_(self.k_cache, self.v_cache, k, v, self.start),
            "decode_attention": lambda: ops.decode_attention(
                q, self.k_cache, self.v_cache, self.start, self.scale, 0
            ),
            "cached_attention": lambda: ops.cached_attention(
                q,
                k,
                v,
                self.k_cache,
                self.v_cache,
                self.positions,
                self.inv_freq,
                self.shape.head_dim,
                False,
                1.0,
                self.start,
                self.scale,
                0,
                qn,
                kn,
                1e-6,
            ),  # fmt: skip
        }


def layer_totals(times: dict[str, float], shape: Shape) -> tuple[float, float]:
    """(sum of the separate ops, same with cached_attention) for one layer's non-matmul work."""
    act = "gelu_tanh_mul" if shape.gelu else "silu_mul"
    norms = 2 * times["norm_add_rms_norm"] if shape.qk_norm else 2 * times["add_rms_norm"]
    qk = times["qk rms_norm (x2)"] if shape.qk_norm else 0.0
    separate = norms + qk + times["rope_"] + times["write_kv_"] + times["decode_attention"]
    return separate + times[act], norms + times["cached_attention"] + times[act]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1, help="new tokens per step (T)")
    parser.add_argument("--cache", default="128,1024,4096", help="cached positions per case")
    parser.add_argument("--kv-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timing per cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not fast_methods_available():
        raise SystemExit("native kernels unavailable: nothing to benchmark")
    native, eager = native_ops(), reference_ops()
    kv_dtype = getattr(torch, args.kv_dtype)
    print(f"threads={args.threads} T={args.tokens} kv={args.kv_dtype} torch {torch.__version__}")
    for shape in SHAPES:
        for cached in (int(v) for v in args.cache.split(",")):
            layer = Layer(shape, args.tokens, cached, kv_dtype)
            native_calls, eager_calls = layer.calls(native), layer.calls(eager)
            print(f"\n{shape.name}, {cached} cached positions")
            print(f"{'op':>20} | {'native us':>9} | {'eager us':>9} | {'speed-up':>8}")
            fast: dict[str, float] = {}
            slow: dict[str, float] = {}
            for name in native_calls:
                fast[name] = per_call_us(native_calls[name], args.budget)
                slow[name] = per_call_us(eager_calls[name], args.budget)
                print(f"{name:>20} | {fast[name]:9.1f} | {slow[name]:9.1f} | "
                      f"{slow[name] / fast[name]:7.1f}x")  # fmt: skip
            separate, combined = layer_totals(fast, shape)
            eager_total, _ = layer_totals(slow, shape)
            print(
                f"{'layer (no matmuls)':>20} | native ops {separate:.1f} us, with "
                f"cached_attention {combined:.1f} us; eager {eager_total:.1f} us"
            )


if __name__ == "__main__":
    main()
