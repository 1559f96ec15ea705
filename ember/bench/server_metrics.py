"""The server's own counters for `ember bench serve`: /metrics (Prometheus text) read before
and after a run, and the prefix-cache hit rate over it."""

from __future__ import annotations

import re

import httpx

from ember.bench.serve_client import get_with_retry

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value summed over its label sets}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


async def scrape_metrics(client: httpx.AsyncClient, root: str) -> dict[str, float] | None:
    """GET /metrics parsed, or None when the server has none (or it is not Prometheus text)."""
    try:
        response = await get_with_retry(client, f"{root}/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    values = parse_prometheus(response.text)
    return values or None


_PREFIXES = ("vllm:", "ember:", "ember_")


def _counter(
    values: dict[str, float], stem: str, prefixes: tuple[str, ...] = _PREFIXES
) -> float | None:
    for prefix in prefixes:
        for suffix in ("_total", ""):
            name = f"{prefix}{stem}{suffix}"
            if name in values:
                return values[name]
    return None


def _delta(
    before: dict[str, float],
    after: dict[str, float],
    stem: str,
    prefixes: tuple[str, ...] = _PREFIXES,
) -> float | None:
    first, last = _counter(before, stem, prefixes), _counter(after, stem, prefixes)
    return None if first is None or last is None else last - first


def prefix_cache_hit_rate(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> float | None:
    """Prefix-cache hits / queries over the run, from the counters' deltas.

    vLLM's (and Ember's) counters are prefix_cache_hits / prefix_cache_queries; llama-server's
    are prompt tokens taken from the cache / prompt tokens computed. Falls back to a
    `*prefix_cache_hit_rate` gauge read after the run; None when the server exposes none of
    these (or no prompt token was looked up).
    """
    if after is None:
        return None
    if before is not None:
        hits = _delta(before, after, "prefix_cache_hits")
        queries = _delta(before, after, "prefix_cache_queries")
        if hits is not None and queries is not None:
            return hits / queries if queries > 0 else None
        cached = _delta(before, after, "prompt_tokens_cached", prefixes=("llamacpp:",))
        computed = _delta(before, after, "prompt_tokens", prefixes=("llamacpp:",))
        if cached is not None and computed is not None:
            return cached / (cached + computed) if cached + computed > 0 else None
    for name, value in sorted(after.items()):
        if name.startswith(_PREFIXES) and name.endswith("prefix_cache_hit_rate"):
            return value / 100 if value > 1 else value  # some servers give a percentage
    return None
