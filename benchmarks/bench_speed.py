"""pp512, pp4096 and tg128 for Ember beside llama.cpp's llama-bench, in one run, per model.

Usage: .venv/bin/python benchmarks/bench_speed.py [--threads 2] [--models a,b,...] [--pp 512,4096]
Models are library names or .gguf paths (benchmarks/make_random_gguf.py makes the 1B shape).
llama.cpp comes from ../shared/tools/build-llama-cpp.sh. Run on an otherwise idle machine.
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
    parser.add_argument("--pp", default="512")
    parser.add_argument("--tg", type=int, default=128)
    args = parser.parse_args()

    from ember.bench.speed import default_llama_bin, speed_table
    from ember.models.loader import load_model_path
    from ember.registry.resolve import resolve_model
    from ember.runtime import set_threads

    set_threads(args.threads)
    sizes = [int(s) for s in args.pp.split(",")]
    print(
        f"# {datetime.datetime.now():%Y-%m-%d %H:%M} {platform.machine()}, {args.threads} threads"
    )
    for name in args.models.split(","):
        source = resolve_model(name)
        loaded = load_model_path(source.path, with_tokenizer=False)
        print(f"\n## {source.name}\n")
        speed_table(
            loaded,
            source.path,
            args.threads,
            sizes,
            args.tg,
            default_llama_bin(),
            lambda row: print(row, flush=True),
        )
        del loaded


if __name__ == "__main__":
    main()
