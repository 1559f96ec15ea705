"""How long torch's OpenMP threads spin after a region (GOMP_SPINCOUNT), measured on Ember.

Each round runs, for every spin count, a fresh process (the count is read when OpenMP loads)
that times tg128 and pp512 on the single-sequence path and a mixed batch through LLMEngine (16
requests of 200 prompt + 32 generated tokens arriving together: prompt chunks beside decodes).
Rounds alternate the settings so the machine's drift hits both alike.

Usage: .venv/bin/python benchmarks/bench_omp_spin.py [--model smollm2-135m-instruct]
       [--spins 30000,0] [--rounds 2] [--threads 2]
Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

PROBE = r"""
import random, sys, time
from ember.bench.speed import decode_speed, prefill_speed
from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.models.loader import load_model_path
from ember.registry.resolve import resolve_model
from ember.runtime import set_threads
from ember.sampling_params import SamplingParams

set_threads(int(sys.argv[2]))
loaded = load_model_path(resolve_model(sys.argv[1]).path)
tg = decode_speed(loaded, 128).tokens_per_second
pp = prefill_speed(loaded, 512).tokens_per_second
rng = random.Random(0)
engine = LLMEngine(loaded, EngineConfig(kv_cache_tokens=16384))
params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
for i in range(16):
    engine.add_request(str(i), [rng.randrange(1000, 20000) for _ in range(200)], params)
started = time.perf_counter()
while engine.has_unfinished_requests():
    engine.step()
mixed = 16 * 32 / (time.perf_counter() - started)
print(f"{tg:.1f} {pp:.0f} {mixed:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--spins", default="30000,0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.model}, {args.threads} threads")
    print("GOMP_SPINCOUNT | tg128 tok/s | pp512 tok/s | mixed batch output tok/s")
    for _ in range(args.rounds):
        for spin in args.spins.split(","):
            env = {**os.environ, "GOMP_SPINCOUNT": spin}
            out = subprocess.run(
                [sys.executable, "-c", PROBE, args.model, str(args.threads)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            print(f"{spin:>14} | {out[0]:>11} | {out[1]:>11} | {out[2]:>24}", flush=True)


if __name__ == "__main__":
    main()
