"""What `ember bench serve` shows and writes: a table, a JSON result and a PNG chart."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ember.bench.serve import BenchResult, LevelResult
from ember.bench.serve_client import RequestResult
from ember.bench.serve_stats import PERCENTILES, Distribution

_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}


def format_report(result: BenchResult) -> str:
    config = result.config
    head = (
        f"{config.shape} traffic, {config.num_requests} requests per level, "
        f"max {config.max_tokens} tokens, {config.endpoint} endpoint\n"
        f"model {result.model} at {result.root}"
    )
    rows: list[list[str]] = [["", *(level.level.label for level in result.levels)]]

    def row(name: str, values: list[str]) -> None:
        rows.append([name, *values])

    levels = result.levels
    row("ok / failed", [f"{lv.summary.completed} / {lv.summary.failed}" for lv in levels])
    row("duration s", [f"{lv.summary.seconds:.2f}" for lv in levels])
    row("requests/s", [_num(lv.summary.throughput.requests) for lv in levels])
    row("output tok/s", [_num(lv.summary.throughput.output_tokens) for lv in levels])
    row("total tok/s", [_num(lv.summary.throughput.total_tokens) for lv in levels])
    goodput_name = "goodput req/s" + _slo_text(result)
    row(goodput_name, [_num(lv.summary.throughput.goodput) for lv in levels])
    for key in ("ttft", "tpot", "itl", "e2e"):
        dists = [dict(lv.summary.latencies.items())[key] for lv in levels]
        row(f"{_NAMES[key]} ms mean", [_num(d.mean) for d in dists])
        for q in PERCENTILES:
            row(f"{_NAMES[key]} ms p{q}", [_num(d.percentiles[q]) for d in dists])
    row("prefix cache hit", [_rate(lv.summary.extras["prefix_cache_hit_rate"]) for lv in levels])
    if any(lv.summary.extras["cached_prompt_token_rate"] is not None for lv in levels):
        rates = [_rate(lv.summary.extras["cached_prompt_token_rate"]) for lv in levels]
        row("cached prompt tokens", rates)
    if config.shape == "structured":
        valid = [_rate(lv.summary.extras["structured_valid_rate"]) for lv in levels]
        row("valid JSON answers", valid)
    lines = [head, "", *_align(rows)]
    for level in levels:
        for error, count in level.summary.errors.items():
            lines.append(f"failed at {level.level.label}: {count} x {error}")
    return "\n".join(lines)


def _slo_text(result: BenchResult) -> str:
    slo = result.config.slo
    parts = []
    if slo.ttft_ms is not None:
        parts.append(f"TTFT<={slo.ttft_ms:g}ms")
    if slo.tpot_ms is not None:
        parts.append(f"TPOT<={slo.tpot_ms:g}ms")
    return f" ({', '.join(parts)})" if parts else " (no SLO)"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


# --- JSON ------------------------------------------------------------------------------------


def to_json(result: BenchResult) -> dict[str, Any]:
    config = asdict(result.config)
    config.pop("api_key", None)  # never write a secret into a result file
    return {
        "tool": "ember bench serve",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "server": {"root": result.root, "model": result.model},
        "config": config,
        "levels": [_level_json(level) for level in result.levels],
    }


def _level_json(level: LevelResult) -> dict[str, Any]:
    summary = level.summary
    return {
        "concurrency": level.level.concurrency,
        "request_rate": level.level.request_rate,
        "seed": level.seed,
        "completed": summary.completed,
        "failed": summary.failed,
        "duration_s": summary.seconds,
        "request_throughput": summary.throughput.requests,
        "output_token_throughput": summary.throughput.output_tokens,
        "total_token_throughput": summary.throughput.total_tokens,
        "goodput": summary.throughput.goodput,
        **{f"{name}_ms": dist.to_json() for name, dist in summary.latencies.items()},
        **summary.extras,
        "requests": [_request_json(r) for r in level.results],
    }


def _request_json(result: RequestResult) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    return {
        "ok": result.ok,
        "error": result.error,
        "start_ms": ms(result.started),
        "ttft_ms": ms(result.ttft),
        "tpot_ms": ms(result.tpot),
        "e2e_ms": ms(result.e2e),
        "itl_ms": [gap * 1000 for gap in result.itl],
        "output_tokens": result.output_tokens,
        "prompt_tokens": result.prompt_tokens,
        "cached_tokens": result.cached_tokens,
        "json_valid": result.json_valid,
        "retries": result.retries,
    }


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=1) + "\n", encoding="utf-8")


# --- chart -----------------------------------------------------------------------------------


def write_chart(result: BenchResult, path: Path) -> None:
    """Latency percentiles and throughput against concurrency, one panel per measure."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is opened
    import matplotlib.pyplot as plt

    levels = result.levels
    xs = [_x_value(level, index) for index, level in enumerate(levels)]
    x_label = "concurrency" if all(lv.level.concurrency for lv in levels) else "level"
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    for axis, key in zip(axes.flat, ("ttft", "tpot", "itl", "e2e"), strict=False):
        dists: list[Distribution] = [dict(lv.summary.latencies.items())[key] for lv in levels]
        for q in PERCENTILES:
            axis.plot(xs, [_nan(d.percentiles[q]) for d in dists], marker="o", label=f"p{q}")
        axis.plot(xs, [_nan(d.mean) for d in dists], marker="x", linestyle="--", label="mean")
        axis.set_title(f"{_NAMES[key]} (ms)")
        axis.legend(fontsize="small")
    tokens = axes.flat[4]
    tokens.plot(xs, [lv.summary.throughput.output_tokens for lv in levels], marker="o")
    tokens.set_title("output tokens/s")
    requests = axes.flat[5]
    requests.plot(xs, [lv.summary.throughput.requests for lv in levels], marker="o", label="all")
    if result.config.slo.is_set:
        goodput = [_nan(lv.summary.throughput.goodput) for lv in levels]
        requests.plot(xs, goodput, marker="s", label="goodput" + _slo_text(result))
        requests.legend(fontsize="small")
    requests.set_title("requests/s")
    for axis in axes.flat:
        axis.set_xlabel(x_label)
        if x_label == "concurrency" and len(xs) > 1:
            axis.set_xscale("log", base=2)  # sweeps double the concurrency
        axis.set_xticks(xs, labels=[f"{x:g}" for x in xs])
        axis.grid(True, alpha=0.3)
        axis.set_ylim(bottom=0)
    model = result.model.rsplit("/", 1)[-1]  # llama-server names models by their file path
    figure.suptitle(f"ember bench serve: {result.config.shape}, {model} at {result.root}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _x_value(level: LevelResult, index: int) -> float:
    return float(level.level.concurrency) if level.level.concurrency else float(index + 1)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
