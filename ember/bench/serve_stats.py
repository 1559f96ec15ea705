"""Numbers for `ember bench serve`: percentiles, throughput and goodput of one load level."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ember.bench.serve_client import RequestResult

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default).

    None for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in milliseconds (None where there was no sample)."""

    count: int
    mean: float | None
    percentiles: dict[int, float | None]

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Distribution:
        millis = [value * 1000 for value in values]
        mean = sum(millis) / len(millis) if millis else None
        return cls(len(millis), mean, {q: percentile(millis, q) for q in PERCENTILES})

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean,
            **{f"p{q}": value for q, value in self.percentiles.items()},
        }


@dataclass(frozen=True)
class Slo:
    """A request meets the SLO when its TTFT and TPOT are within these (None: no limit)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def is_set(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def met_by(self, result: RequestResult) -> bool:
        if not result.ok:
            return False
        if self.ttft_ms is not None and (result.ttft is None or result.ttft * 1000 > self.ttft_ms):
            return False
        # A one-token answer has no TPOT: nothing to miss.
        tpot = result.tpot
        return self.tpot_ms is None or tpot is None or tpot * 1000 <= self.tpot_ms


@dataclass(frozen=True)
class Latencies:
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution

    @classmethod
    def of(cls, results: Sequence[RequestResult]) -> Latencies:
        ok = [r for r in results if r.ok]
        return cls(
            ttft=Distribution.of_seconds([r.ttft for r in ok if r.ttft is not None]),
            tpot=Distribution.of_seconds([t for r in ok if (t := r.tpot) is not None]),
            itl=Distribution.of_seconds([gap for r in ok for gap in r.itl]),
            e2e=Distribution.of_seconds([r.e2e for r in ok]),
        )

    def items(self) -> list[tuple[str, Distribution]]:
        return [("ttft", self.ttft), ("tpot", self.tpot), ("itl", self.itl), ("e2e", self.e2e)]


@dataclass(frozen=True)
class Throughput:
    """Per second of wall time over the level; None where the server gave no counts."""

    requests: float
    output_tokens: float
    total_tokens: float | None
    goodput: float | None

    @classmethod
    def of(cls, results: Sequence[RequestResult], seconds: float, slo: Slo) -> Throughput:
        ok = [r for r in results if r.ok]
        seconds = max(seconds, 1e-9)
        output = sum(r.output_tokens for r in ok)
        prompts = [r.prompt_tokens for r in ok]
        total = None
        if ok and all(p is not None for p in prompts):
            total = (output + sum(p for p in prompts if p is not None)) / seconds
        goodput = sum(slo.met_by(r) for r in ok) / seconds if slo.is_set else None
        return cls(len(ok) / seconds, output / seconds, total, goodput)


@dataclass(frozen=True)
class LevelSummary:
    """What one load level (a concurrency and/or request rate) measured."""

    completed: int
    failed: int
    seconds: float
    latencies: Latencies
    throughput: Throughput
    extras: dict[str, Any]
    """Counts that only some servers or shapes give: see summarize()."""

    @property
    def errors(self) -> dict[str, int]:
        return dict(self.extras.get("errors", {}))


def summarize(
    results: Sequence[RequestResult],
    seconds: float,
    slo: Slo,
    prefix_cache_hit_rate: float | None = None,
) -> LevelSummary:
    ok = [r for r in results if r.ok]
    errors = Counter(r.error or "unknown error" for r in results if not r.ok)
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    prompt_with_cache = [r.prompt_tokens or 0 for r in ok if r.cached_tokens is not None]
    structured = [r.json_valid for r in ok if r.json_valid is not None]
    extras: dict[str, Any] = {
        "errors": dict(errors.most_common()),
        "prefix_cache_hit_rate": prefix_cache_hit_rate,
        "output_tokens": sum(r.output_tokens for r in ok),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        # From usage.prompt_tokens_details, for servers that report it per request.
        "cached_prompt_token_rate": (
            sum(cached) / sum(prompt_with_cache) if sum(prompt_with_cache) else None
        ),
        "structured_valid_rate": sum(structured) / len(structured) if structured else None,
        "slo_met": sum(slo.met_by(r) for r in ok) if slo.is_set else None,
        "stale_connection_retries": sum(r.retries for r in results),
    }
    return LevelSummary(
        completed=len(ok),
        failed=len(results) - len(ok),
        seconds=seconds,
        latencies=Latencies.of(results),
        throughput=Throughput.of(results, seconds, slo),
        extras=extras,
    )
