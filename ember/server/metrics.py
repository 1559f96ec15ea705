"""Prometheus metrics, named as vLLM names them with an `ember:` prefix.

Gauges of the scheduler's state are read from each engine when scraped; counters and histograms
are fed by the request path (RequestRecorder, one per engine request). Each ServerMetrics owns
its registry, so two servers in one process (tests) never share a counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from ember.core import SchedulerStats

PREFIX = "ember:"
MODEL_LABEL = "model_name"

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280)

StatsSource = Callable[[], list[tuple[str, SchedulerStats]]]
"""(model name, its engine's latest SchedulerStats) for every served model."""


class ServerMetrics:
    def __init__(self, stats_source: StatsSource) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no `_created` series beside every counter, as vLLM does
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        model = [MODEL_LABEL]
        self.request_success = Counter(
            f"{PREFIX}request_success",
            "Finished requests, by finish reason (stop, length, abort, error).",
            [MODEL_LABEL, "finished_reason"],
            registry=registry,
        )
        self.requests_rejected = Counter(
            f"{PREFIX}requests_rejected",
            "Requests refused before they ran, by reason (queue_full, shutting_down, invalid).",
            [MODEL_LABEL, "reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}prompt_tokens",
            "Prompt tokens of admitted requests.",
            model,
            registry=registry,
        )
        self.generation_tokens = Counter(
            f"{PREFIX}generation_tokens", "Generated tokens.", model, registry=registry
        )
        self.prefix_cache_queries = Counter(
            f"{PREFIX}prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            model,
            registry=registry,
        )
        self.prefix_cache_hits = Counter(
            f"{PREFIX}prefix_cache_hits",
            "Prompt tokens served by the prefix cache.",
            model,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}time_to_first_token_seconds",
            "From arrival to the first generated token.",
            model,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            f"{PREFIX}inter_token_latency_seconds",
            "Between consecutive engine outputs of a request, per token.",
            model,
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            f"{PREFIX}e2e_request_latency_seconds",
            "From arrival to the last token.",
            model,
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        registry.register(_EngineCollector(stats_source))

    def rejected(self, model: str, reason: str) -> None:
        self.requests_rejected.labels(model, reason).inc()

    def recorder(self, model: str) -> RequestRecorder:
        return RequestRecorder(self, model)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestRecorder:
    """Times one engine request from arrival to its end and counts its tokens."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model
        self._arrival = time.monotonic()
        self._last_output: float | None = None
        self._done = False

    def admitted(self, prompt_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(self._model).inc(prompt_tokens)

    def tokens(self, total: int, per_sequence: int) -> None:
        """One engine output brought `total` new tokens, at most `per_sequence` to any one
        completion (n > 1 runs several sequences in step)."""
        if total <= 0:
            return
        metrics, model, now = self._metrics, self._model, time.monotonic()
        metrics.generation_tokens.labels(model).inc(total)
        if self._last_output is None:
            metrics.time_to_first_token.labels(model).observe(now - self._arrival)
        else:
            per_token = (now - self._last_output) / per_sequence
            histogram = metrics.inter_token_latency.labels(model)
            for _ in range(per_sequence):
                histogram.observe(per_token)
        self._last_output = now

    def completion_finished(self, reason: str) -> None:
        """One completion ended ("stop", "length", "abort" or "error"); n > 1 counts n."""
        self._metrics.request_success.labels(self._model, reason).inc()

    def ended(self, prompt_tokens: int, cached_tokens: int) -> None:
        """The engine request is over (once)."""
        if self._done:
            return
        self._done = True
        metrics, model = self._metrics, self._model
        metrics.prefix_cache_queries.labels(model).inc(prompt_tokens)
        metrics.prefix_cache_hits.labels(model).inc(cached_tokens)
        metrics.e2e_latency.labels(model).observe(time.monotonic() - self._arrival)


class _EngineCollector:
    """Scheduler gauges, read from the engines at scrape time."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = GaugeMetricFamily(
            f"{PREFIX}num_requests_running", "Requests in the running batch.", labels=[MODEL_LABEL]
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}num_requests_waiting", "Requests waiting to run.", labels=[MODEL_LABEL]
        )
        usage = GaugeMetricFamily(
            f"{PREFIX}kv_cache_usage_perc",
            "Fraction of the KV-cache blocks held by requests (0 to 1).",
            labels=[MODEL_LABEL],
        )
        hit_rate = GaugeMetricFamily(
            f"{PREFIX}prefix_cache_hit_rate",
            "Prompt tokens served by the prefix cache over tokens looked up, since start.",
            labels=[MODEL_LABEL],
        )
        preemptions = CounterMetricFamily(
            f"{PREFIX}num_preemptions", "Requests preempted since start.", labels=[MODEL_LABEL]
        )
        for model, stats in self._source():
            running.add_metric([model], stats.num_running)
            waiting.add_metric([model], stats.num_waiting)
            usage.add_metric([model], stats.kv_cache_usage)
            hit_rate.add_metric([model], stats.prefix_cache_hit_rate)
            preemptions.add_metric([model], stats.num_preemptions)
        yield from (running, waiting, usage, hit_rate, preemptions)
