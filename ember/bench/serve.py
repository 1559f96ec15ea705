"""`ember bench serve`: load-test any OpenAI-compatible server (Ember, llama-server, vLLM).

Load control:
- closed loop (--concurrency N): N workers, each sends its next conversation's turns one after
  the other, so N requests are in flight at all times;
- open loop (--request-rate R): conversations start at Poisson arrivals, R per second
  (one-turn shapes: R requests per second); with --concurrency too, at most N run at once;
- --concurrency-sweep 1,2,4,8: one closed-loop level per value, same shape and size. Level i
  uses seed + i, so that no level finds the previous level's prompts in the prefix cache.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ember.bench.serve_client import (
    ENDPOINTS,
    RequestResult,
    ServeBenchError,
    Target,
    auth_headers,
    list_models,
    normalize_base_url,
    send_request,
)
from ember.bench.serve_stats import LevelSummary, Slo, summarize
from ember.bench.server_metrics import prefix_cache_hit_rate, scrape_metrics
from ember.bench.traffic import SHAPES, Conversation, TrafficOptions, build_workload

# Warm-up requests come from another seed, so they never pre-fill the cache for measured ones.
_WARMUP_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class LoadLevel:
    concurrency: int | None = None
    """Most requests in flight (closed loop without a rate); None: no limit."""
    request_rate: float | None = None
    """Poisson arrivals per second (open loop); None: closed loop."""

    def __post_init__(self) -> None:
        if self.concurrency is None and self.request_rate is None:
            raise ValueError("a load level needs a concurrency, a request rate or both")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"request rate must be positive, got {self.request_rate}")

    @property
    def label(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"c={self.concurrency}")
        if self.request_rate is not None:
            parts.append(f"rate={self.request_rate:g}/s")
        return " ".join(parts)


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    levels: list[LoadLevel]
    shape: str = "diverse"
    num_requests: int = 32
    seed: int = 0
    model: str | None = None
    api_key: str | None = None
    endpoint: str = "chat"
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False
    traffic: TrafficOptions = field(default_factory=TrafficOptions)
    slo: Slo = field(default_factory=Slo)
    warmup: int = 0
    timeout: float = 600.0
    progress: bool = True


@dataclass(frozen=True)
class LevelResult:
    level: LoadLevel
    seed: int
    summary: LevelSummary
    results: list[RequestResult]
    """In workload order: conversation by conversation, turn by turn."""


@dataclass(frozen=True)
class BenchResult:
    root: str
    model: str
    config: BenchConfig
    levels: list[LevelResult]


def run_bench(config: BenchConfig) -> BenchResult:
    return asyncio.run(_run_bench(config))


async def _run_bench(config: BenchConfig) -> BenchResult:
    root = normalize_base_url(config.base_url)
    in_flight = [level.concurrency or 256 for level in config.levels]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(in_flight))
    timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0))
    # trust_env=False: a proxy from the environment would be measured along with the server.
    async with httpx.AsyncClient(
        headers=auth_headers(config.api_key), limits=limits, timeout=timeout, trust_env=False
    ) as client:
        models = await list_models(client, root)
        model = config.model or _first_model(models, root)
        target = Target(
            root, model, config.endpoint, config.max_tokens, config.temperature, config.ignore_eos
        )
        levels = []
        for index, level in enumerate(config.levels):
            seed = config.seed + index
            if config.warmup:
                warm = build_workload(
                    config.shape, config.warmup, seed + _WARMUP_SEED_OFFSET, config.traffic
                )
                await _run_level(client, target, warm, level, seed, None)
            workload = build_workload(config.shape, config.num_requests, seed, config.traffic)
            before = await scrape_metrics(client, root)
            with _progress(config, level) as bar:
                results, seconds = await _run_level(
                    client, target, workload, level, seed, lambda: bar.update(1)
                )
            after = await scrape_metrics(client, root)
            summary = summarize(results, seconds, config.slo, prefix_cache_hit_rate(before, after))
            levels.append(LevelResult(level, seed, summary, results))
    return BenchResult(root, model, config, levels)


def _first_model(models: list[str] | None, root: str) -> str:
    if not models:
        where = "lists no models" if models is not None else "has no GET /v1/models"
        raise ServeBenchError(f"{root} {where}; pass --model")
    return models[0]


def _progress(config: BenchConfig, level: LoadLevel) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=config.num_requests,
        desc=level.label,
        unit="req",
        file=sys.stderr,
        disable=not config.progress,
        leave=False,
    )


async def _run_level(
    client: httpx.AsyncClient,
    target: Target,
    workload: list[Conversation],
    level: LoadLevel,
    seed: int,
    on_done: Callable[[], None] | None,
) -> tuple[list[RequestResult], float]:
    """Every turn of the workload sent under this load; results in workload order."""
    slots: list[list[RequestResult]] = [[] for _ in workload]
    clock_zero = time.perf_counter()

    async def converse(index: int) -> None:
        # The turns of one conversation depend on each other: one at a time.
        for turn in workload[index].turns:
            slots[index].append(await send_request(client, target, turn, clock_zero))
            if on_done is not None:
                on_done()

    if level.request_rate is None:
        pending = iter(range(len(workload)))

        async def worker() -> None:
            for index in pending:
                await converse(index)

        workers = min(level.concurrency or len(workload), len(workload))
        await asyncio.gather(*(worker() for _ in range(workers)))
    else:
        arrivals = random.Random(f"ember-bench-serve:arrivals:{seed}")
        gate = asyncio.Semaphore(level.concurrency) if level.concurrency else None

        async def arrive(index: int) -> None:
            if gate is None:
                await converse(index)
                return
            async with gate:
                await converse(index)

        tasks = []
        for index in range(len(workload)):
            tasks.append(asyncio.create_task(arrive(index)))
            if index + 1 < len(workload):
                await asyncio.sleep(arrivals.expovariate(level.request_rate))
        await asyncio.gather(*tasks)
    seconds = time.perf_counter() - clock_zero
    return [result for slot in slots for result in slot], seconds


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="server root or its /v1 URL (default http://127.0.0.1:8000)",
    )
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    parser.add_argument("--model", default=None, help="model id (default: first of /v1/models)")
    parser.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default="chat",
        help="chat: /v1/chat/completions (default); completions: /v1/completions with the "
        "conversation flattened to text",
    )
    parser.add_argument("--shape", choices=SHAPES, default="diverse", help="traffic shape")
    parser.add_argument("--num-requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--ignore-eos", action="store_true", help="ask for exactly --max-tokens tokens (extension)"
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same requests")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=None, help="requests in flight")
    load.add_argument(
        "--request-rate", type=float, default=None, help="Poisson arrivals per second (open loop)"
    )
    load.add_argument(
        "--concurrency-sweep", default=None, metavar="N,N,...", help="e.g. 1,2,4,8: one level each"
    )
    load.add_argument("--warmup", type=int, default=0, help="unmeasured requests before each level")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    slo = parser.add_argument_group("goodput")
    slo.add_argument("--slo-ttft-ms", type=float, default=None)
    slo.add_argument("--slo-tpot-ms", type=float, default=None)
    shape = parser.add_argument_group("traffic sizes (words; ~1.3 tokens each)")
    shape.add_argument("--prompt-words", default="16,512", metavar="LO,HI", help="diverse")
    shape.add_argument("--shared-prefix-words", type=int, default=900)
    shape.add_argument("--num-prefixes", type=int, default=1, help="shared-prefix groups")
    shape.add_argument("--agent-turns", type=int, default=4, help="requests per conversation")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=None, help="write the result as JSON")
    out.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="PNG of latency percentiles against concurrency (default with a sweep and "
        "--output: beside the JSON)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    try:
        return _config_from_args(args)
    except ValueError as exc:
        raise ServeBenchError(str(exc)) from None


def _config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.concurrency_sweep is not None:
        if args.concurrency is not None:
            raise ValueError("give --concurrency or --concurrency-sweep, not both")
        sweep = _int_list(args.concurrency_sweep, "--concurrency-sweep")
        levels = [LoadLevel(value, args.request_rate) for value in sweep]
    elif args.concurrency is None and args.request_rate is None:
        levels = [LoadLevel(concurrency=1)]
    else:
        levels = [LoadLevel(args.concurrency, args.request_rate)]
    low_high = _int_list(args.prompt_words, "--prompt-words")
    if len(low_high) != 2:
        raise ValueError(f"--prompt-words takes LO,HI, got {args.prompt_words!r}")
    for name in ("num_requests", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.timeout <= 0:
        raise ValueError("--warmup must be at least 0 and --timeout positive")
    traffic = TrafficOptions(
        prompt_words=(low_high[0], low_high[1]),
        shared_prefix_words=args.shared_prefix_words,
        num_prefixes=args.num_prefixes,
        agent_turns=args.agent_turns,
    )
    return BenchConfig(
        base_url=args.base_url,
        levels=levels,
        shape=args.shape,
        num_requests=args.num_requests,
        seed=args.seed,
        model=args.model,
        api_key=args.api_key,
        endpoint=args.endpoint,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        traffic=traffic,
        slo=Slo(args.slo_ttft_ms, args.slo_tpot_ms),
        warmup=args.warmup,
        timeout=args.timeout,
        progress=not args.no_progress,
    )


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes whole numbers like 1,2,4,8, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values


def run_command(args: argparse.Namespace) -> int:
    """The handler of `ember bench serve`."""
    from ember.bench.serve_report import format_report, write_chart, write_json

    config = config_from_args(args)
    result = run_bench(config)
    print(format_report(result), flush=True)
    if args.output is not None:
        write_json(result, args.output)
        print(f"wrote {args.output}")
    chart = args.chart
    if chart is None and args.output is not None and len(result.levels) > 1:
        chart = args.output.with_suffix(".png")
    if chart is not None:
        write_chart(result, chart)
        print(f"wrote {chart}")
    for level in result.levels:
        if level.summary.completed == 0:
            errors = level.summary.errors
            common = max(errors, key=lambda error: errors[error]) if errors else "unknown error"
            raise ServeBenchError(
                f"all {level.summary.failed} requests failed at {level.level.label}: {common}"
            )
    return 0
