"""pp512 and tg128 for Ember and, when it is built, llama.cpp's llama-bench, in one run.

Usage: .venv/bin/python benchmarks/bench_speed.py [--threads 2] [--models a,b] [--llama-bin DIR]
llama.cpp comes from ../shared/tools/build-llama-cpp.sh (its bin folder is found automatically).
Run it on an otherwise idle machine: figures from a busy machine are noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

DEFAULT_MODELS = "smollm2-135m-instruct,gemma3-270m"
LLAMA_BIN = Path.home() / ".cache/llama-cpp-peer/0.3.36/src/vendor/llama.cpp/build/bin"


def llama_bench(bin_dir: Path, model: Path, threads: int, pp: int, tg: int) -> dict[str, float]:
    exe = bin_dir / "llama-bench"
    if not exe.is_file():
        return {}
    out = subprocess.run(
        [
            str(exe),
            "-m",
            str(model),
            "-t",
            str(threads),
            "-p",
            str(pp),
            "-n",
            str(tg),
            "-r",
            "3",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results = {}
    for row in json.loads(out):
        name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        results[name] = float(row["avg_ts"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument(
        "--llama-bin", type=Path, default=Path(os.environ.get("LLAMA_BIN", LLAMA_BIN))
    )
    args = parser.parse_args()

    from ember.bench.speed import decode_speed, prefill_speed
    from ember.llm import set_threads
    from ember.models.loader import load_model_path
    from ember.registry.resolve import resolve_model

    set_threads(args.threads)
    print(
        f"# {datetime.date.today()} {platform.processor() or platform.machine()}, "
        f"{args.threads} threads"
    )
    print("| model | test | Ember tok/s | llama.cpp tok/s | Ember / llama.cpp |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        source = resolve_model(name)
        loaded = load_model_path(source.path, with_tokenizer=False)
        ours = {
            r.test: r.tokens_per_second
            for r in (prefill_speed(loaded, args.pp), decode_speed(loaded, args.tg))
        }
        del loaded
        peer = llama_bench(args.llama_bin, source.path, args.threads, args.pp, args.tg)
        for test, value in ours.items():
            theirs = peer.get(test)
            ratio = f"{value / theirs:.2f}x" if theirs else "n/a"
            shown = f"{theirs:.1f}" if theirs else "not built"
            print(f"| {name} | {test} | {value:.1f} | {shown} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
