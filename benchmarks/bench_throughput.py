"""Serving-engine throughput beside llama.cpp's llama-batched-bench, in one run, per model.

Usage: .venv/bin/python benchmarks/bench_throughput.py [--threads 2] [--models a,b]
           [--workloads batch,prefill,prefix,soak] [--requests 32] [--soak-requests 10000]
- batch:   32 requests of 128 prompt + 128 generated tokens (llama-batched-bench -npl 32).
- prefill: 32 requests of 512 prompt tokens + 8 generated, prompt-phase speed (S_PP).
- prefix:  32 requests sharing a 1,024-token prefix: mean time to first token with and without
           the prefix cache, after one warm-up request.
- soak:    many requests of random length through one engine; resident memory over time.
- deterministic: the batch workload with and without batch invariance (what it costs).
Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import platform

DEFAULT_MODELS = "smollm2-135m-instruct,gemma3-270m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--workloads", default="batch,prefill,prefix")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--soak-requests", type=int, default=10_000)
    parser.add_argument("--soak-max-prompt", type=int, default=200)
    parser.add_argument("--soak-max-tokens", type=int, default=32)
    parser.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    args = parser.parse_args()

    from ember.bench.speed import default_llama_bin
    from ember.bench.throughput import (
        llama_batched_bench,
        run_batch,
        run_prefix,
        run_soak,
    )
    from ember.config import EngineConfig
    from ember.models.loader import load_model_path
    from ember.registry.resolve import resolve_model
    from ember.runtime import set_threads

    set_threads(args.threads)
    workloads = args.workloads.split(",")
    bin_dir = None if args.no_peer else default_llama_bin()
    n = args.requests
    now = datetime.datetime.now()
    print(f"# {now:%Y-%m-%d %H:%M} {platform.machine()}, {args.threads} threads")
    for name in args.models.split(","):
        source = resolve_model(name)
        loaded = load_model_path(source.path, with_tokenizer=False)
        print(f"\n## {source.name}\n", flush=True)
        config = EngineConfig(max_num_seqs=max(n, 8), max_num_batched_tokens=512)
        for workload, (prompt, generate) in (("batch", (128, 128)), ("prefill", (512, 8))):
            if workload not in workloads:
                continue
            ours = run_batch(loaded, n, prompt, generate, config)
            peer = (
                llama_batched_bench(bin_dir, source.path, args.threads, n, prompt, generate)
                if bin_dir is not None
                else None
            )
            print(f"{workload}: {n} x ({prompt} prompt + {generate} generated)")
            print("| | Ember | llama.cpp | Ember / llama.cpp |\n|---|---|---|---|")
            rows = [
                ("prompt phase tok/s", ours.prompt_speed, peer and peer["speed_pp"]),
                ("decode phase tok/s", ours.decode_speed, peer and peer["speed_tg"]),
                (
                    "output tok/s end to end",
                    ours.output_speed,
                    peer and n * generate / peer["t"],
                ),
                ("seconds", ours.seconds, peer and peer["t"]),
            ]
            for label, mine, theirs in rows:
                ratio = f"{mine / theirs:.2f}x" if theirs else "n/a"
                if label == "seconds" and theirs:
                    ratio = f"{theirs / mine:.2f}x faster"
                shown = f"{theirs:.1f}" if theirs else "n/a"
                print(f"| {label} | {mine:.1f} | {shown} | {ratio} |", flush=True)
            print()
        if "deterministic" in workloads:
            import dataclasses

            fast = run_batch(loaded, n, 128, 128, config)
            exact = run_batch(loaded, n, 128, 128, dataclasses.replace(config, deterministic=True))
            print(
                f"deterministic: {n} x (128 + 128): output tok/s end to end {fast.output_speed:.1f}"
                f" default vs {exact.output_speed:.1f} deterministic "
                f"({exact.output_speed / fast.output_speed:.2f}x); prompt phase "
                f"{fast.prompt_speed:.0f} vs {exact.prompt_speed:.0f} tok/s, decode phase "
                f"{fast.decode_speed:.0f} vs {exact.decode_speed:.0f} tok/s\n",
                flush=True,
            )
        if "prefix" in workloads:
            result = run_prefix(loaded, n, 1024, 32, 8, config)
            print(
                f"prefix: {n} requests sharing {result.prefix_tokens} tokens (+32 own): mean TTFT "
                f"{result.mean_ttft_cached * 1e3:.0f} ms cached vs "
                f"{result.mean_ttft_uncached * 1e3:.0f} ms uncached = "
                f"{result.speedup:.1f}x lower; hit rate {result.hit_rate:.1%}\n",
                flush=True,
            )
        if "soak" in workloads:
            soak_config = EngineConfig(
                max_num_seqs=max(n, 8), max_num_batched_tokens=512, kv_cache_tokens=n * 1024
            )
            soak = run_soak(
                loaded,
                args.soak_requests,
                soak_config,
                max_prompt=args.soak_max_prompt,
                max_generate=args.soak_max_tokens,
                on_progress=lambda done: print(f"  soak: {done} done", flush=True),
            )
            samples = ", ".join(f"{done}: {mib:.0f}" for done, mib in soak.rss_mib)
            print(
                f"soak: {soak.requests} requests, KV pool {soak.kv_cache_mib:.0f} MiB; RSS MiB "
                f"by requests done: {samples}; growth after the first quarter "
                f"{soak.growth_mib:+.1f} MiB\n",
                flush=True,
            )
        del loaded


if __name__ == "__main__":
    main()
