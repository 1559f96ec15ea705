"""Offline throughput of the serving engine, beside llama.cpp's llama-batched-bench.

Workloads (all greedy, ignore_eos, random token prompts):
- batch: B requests of P prompt + G generated tokens, all arriving at once. Reported like
  llama-batched-bench: prompt phase (until every request has its first token), decode phase
  (the rest) and end-to-end output tokens per second.
- prefix: one request warms the prefix cache with a shared prefix, then B requests (shared
  prefix + a short unique suffix) arrive together; mean time to first token with and without the
  prefix cache, and the hit rate.
- soak: many requests of random length through one engine; resident memory every so often.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.envs import peer_environment
from ember.errors import EmberError
from ember.models.loader import LoadedModel
from ember.sampling_params import SamplingParams


@dataclass(frozen=True)
class BatchResult:
    requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    prompt_phase_seconds: float

    @property
    def prompt_speed(self) -> float:
        """Prompt tokens per second until every request had its first token."""
        return self.requests * self.prompt_tokens / self.prompt_phase_seconds

    @property
    def decode_speed(self) -> float:
        """Generated tokens per second after that (llama-batched-bench's S_TG)."""
        decode_seconds = self.seconds - self.prompt_phase_seconds
        return self.requests * (self.output_tokens - 1) / decode_seconds

    @property
    def output_speed(self) -> float:
        """Generated tokens per second over the whole run."""
        return self.requests * self.output_tokens / self.seconds


def _random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    # Skip the lowest ids: special tokens live there in most vocabularies.
    return [rng.randrange(min(1000, vocab // 2), vocab) for _ in range(length)]


def _greedy(tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)


def run_batch(
    loaded: LoadedModel, requests: int, prompt: int, generate: int, config: EngineConfig
) -> BatchResult:
    engine = LLMEngine(loaded, config)
    rng = random.Random(0)
    vocab = loaded.config.vocab_size
    for index in range(requests):
        engine.add_request(str(index), _random_prompt(rng, prompt, vocab), _greedy(generate))
    started = time.perf_counter()
    seen: set[str] = set()
    prompt_done = None
    while engine.has_unfinished_requests():
        for delta in engine.step():
            seen.add(delta.request_id)
        if prompt_done is None and len(seen) == requests:
            prompt_done = time.perf_counter()
    ended = time.perf_counter()
    return BatchResult(
        requests, prompt, generate, ended - started, (prompt_done or ended) - started
    )


@dataclass(frozen=True)
class PrefixResult:
    requests: int
    prefix_tokens: int
    mean_ttft_cached: float
    mean_ttft_uncached: float
    hit_rate: float
    """Prefix-cache hit rate of the requests after the warm-up one."""

    @property
    def speedup(self) -> float:
        return self.mean_ttft_uncached / self.mean_ttft_cached


def _ttfts(engine: LLMEngine, prompts: list[list[int]], generate: int) -> list[float]:
    arrived = time.perf_counter()
    for index, ids in enumerate(prompts):
        engine.add_request(f"r{index}", ids, _greedy(generate))
    first: dict[str, float] = {}
    while engine.has_unfinished_requests():
        for delta in engine.step():
            first.setdefault(delta.request_id, time.perf_counter() - arrived)
    return [first[f"r{index}"] for index in range(len(prompts))]


def run_prefix(
    loaded: LoadedModel,
    requests: int,
    prefix: int,
    suffix: int,
    generate: int,
    config: EngineConfig,
) -> PrefixResult:
    rng = random.Random(1)
    vocab = loaded.config.vocab_size
    shared = _random_prompt(rng, prefix, vocab)
    prompts = [shared + _random_prompt(rng, suffix, vocab) for _ in range(requests)]
    warm = shared + _random_prompt(rng, suffix, vocab)
    means = {}
    hit_rate = 0.0
    for caching in (True, False):
        engine = LLMEngine(loaded, _with(config, enable_prefix_caching=caching))
        _ttfts(engine, [warm], 1)
        stats = engine.scheduler.kv.prefix_cache_stats
        looked_before, hit_before = stats.query_tokens, stats.hit_tokens
        means[caching] = statistics.mean(_ttfts(engine, prompts, generate))
        if caching:
            stats = engine.scheduler.kv.prefix_cache_stats
            looked = stats.query_tokens - looked_before
            hit_rate = (stats.hit_tokens - hit_before) / looked if looked else 0.0
    return PrefixResult(requests, prefix, means[True], means[False], hit_rate)


def _with(config: EngineConfig, **changes: object) -> EngineConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SoakResult:
    requests: int
    rss_mib: list[tuple[int, float]]
    """(requests finished, resident MiB) samples."""
    kv_cache_mib: float

    @property
    def growth_mib(self) -> float:
        """Resident growth from the first sample after warm-up (a quarter in) to the end."""
        warm = self.rss_mib[len(self.rss_mib) // 4][1]
        return self.rss_mib[-1][1] - warm


def run_soak(
    loaded: LoadedModel,
    requests: int,
    config: EngineConfig,
    max_prompt: int = 200,
    max_generate: int = 32,
    samples: int = 20,
    on_progress: Callable[[int], None] | None = None,
) -> SoakResult:
    engine = LLMEngine(loaded, config)
    rng = random.Random(2)
    vocab = loaded.config.vocab_size
    process = psutil.Process()
    every = max(1, requests // samples)
    rss: list[tuple[int, float]] = []
    submitted = finished = 0
    in_flight_cap = config.max_num_seqs * 2
    while finished < requests:
        while submitted < requests and engine.num_requests < in_flight_cap:
            ids = _random_prompt(rng, rng.randint(1, max_prompt), vocab)
            engine.add_request(str(submitted), ids, _greedy(rng.randint(1, max_generate)))
            submitted += 1
        for delta in engine.step():
            if delta.finished:
                finished += 1
                if finished % every == 0:
                    rss.append((finished, process.memory_info().rss / 2**20))
                    if on_progress is not None:
                        on_progress(finished)
    return SoakResult(requests, rss, engine.kv.nbytes / 2**20)


def llama_batched_bench(
    bin_dir: Path, model: Path, threads: int, requests: int, prompt: int, generate: int
) -> dict[str, float] | None:
    """llama-batched-bench on the same file: {"speed_pp", "speed_tg", "t", ...}; None if absent."""
    exe = bin_dir / "llama-batched-bench"
    if not exe.is_file():
        return None
    context = requests * (prompt + generate) + 256
    command = [
        str(exe), "-m", str(model), "-t", str(threads), "-c", str(context), "-b", "2048",
        "-ub", "512", "-npp", str(prompt), "-ntg", str(generate), "-npl", str(requests),
        "--output-format", "jsonl",
    ]  # fmt: skip
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env=peer_environment()
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmberError(f"llama-batched-bench failed: {exc}") from None
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not rows:
        raise EmberError("llama-batched-bench printed no result")
    row: dict[str, float] = rows[-1]
    return row
