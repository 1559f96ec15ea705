"""`ember serve` beside llama-server on the same GGUF: every traffic shape of `ember bench serve`.

Starts one server at a time (never both: the machine has two cores), runs each shape against
it with the same seeds, writes each run's JSON and chart, then prints a markdown table of the
two servers side by side and writes a comparison chart.

    .venv/bin/python benchmarks/bench_serve_peer.py --concurrency 16 --num-requests 48 \
        --out-dir benchmarks/charts/serve-peer

llama-server gets as many slots as there are clients (-np = concurrency) and a context of
--slot-context tokens per slot; both servers get --threads threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ember.bench.serve import BenchConfig, BenchResult, LoadLevel, run_bench
from ember.bench.serve_report import format_report, write_chart, write_json
from ember.bench.speed import default_llama_bin
from ember.bench.traffic import SHAPES

_EMBER_PORT = 8311
_LLAMA_PORT = 8312


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Ember library name")
    parser.add_argument("--gguf", type=Path, help="the model's GGUF (default: Ember's copy)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument("--slot-context", type=int, default=4096)
    parser.add_argument("--servers", default="ember,llama")
    parser.add_argument("--ember-args", default="", help="more `ember serve` options, one string")
    parser.add_argument("--llama-args", default="", help="more llama-server options, one string")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/charts/serve-peer"))
    args = parser.parse_args()

    gguf = args.gguf or _library_gguf(args.model)
    shapes = [s for s in args.shapes.split(",") if s]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, BenchResult]] = {}
    for server in args.servers.split(","):
        command, port = _server_command(server, args, gguf)
        print(f"# {server}: {' '.join(command)}", flush=True)
        with _running(command, port):
            results[server] = {}
            for shape in shapes:
                result = _bench(port, shape, args)
                results[server][shape] = result
                stem = args.out_dir / f"{server}-{shape}-{args.endpoint}-c{args.concurrency}"
                write_json(result, stem.with_suffix(".json"))
                write_chart(result, stem.with_suffix(".png"))
                print(format_report(result), flush=True)
    print(_table(results, shapes))
    if len(results) == 2:
        _comparison_chart(
            results, shapes, args.out_dir / f"side-by-side-{args.endpoint}-c{args.concurrency}.png"
        )
    return 0


def _library_gguf(name: str) -> Path:
    from ember.registry.cache import is_complete, read_manifest

    manifest = read_manifest(name)
    if manifest is None or not is_complete(manifest):
        raise SystemExit(f"{name} is not downloaded: run `ember pull {name}` first")
    return manifest.path()


def _server_command(server: str, args: argparse.Namespace, gguf: Path) -> tuple[list[str], int]:
    if server == "ember":
        exe = Path(sys.executable).with_name("ember")
        return [
            str(exe),
            "serve",
            str(args.model),
            "--port",
            str(_EMBER_PORT),
            "--threads",
            str(args.threads),
            "--log-level",
            "warning",
            *shlex.split(args.ember_args),
        ], _EMBER_PORT
    if server == "llama":
        exe = default_llama_bin() / "llama-server"
        if not exe.exists():
            raise SystemExit(f"{exe} not found: build llama.cpp with ../shared/tools/")
        return [
            str(exe),
            "-m",
            str(gguf),
            "-t",
            str(args.threads),
            "-tb",
            str(args.threads),
            "-np",
            str(args.concurrency),
            "-c",
            str(args.concurrency * args.slot_context),
            "--port",
            str(_LLAMA_PORT),
            "--metrics",
            "--jinja",
            "--log-disable",
            *shlex.split(args.llama_args),
        ], _LLAMA_PORT
    raise SystemExit(f"unknown server {server!r}: ember or llama")


class _running:
    """A server process for the duration of a with-block; ready once /health answers 200."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}: {self.command}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server not ready after 180 s: {self.command}")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _bench(port: int, shape: str, args: argparse.Namespace) -> BenchResult:
    config = BenchConfig(
        base_url=f"http://127.0.0.1:{port}",
        levels=[LoadLevel(concurrency=args.concurrency)],
        shape=shape,
        num_requests=args.num_requests,
        max_tokens=args.max_tokens,
        endpoint=args.endpoint,
        warmup=2,
        progress=False,
    )
    return run_bench(config)


def _figures(result: BenchResult) -> dict[str, Any]:
    summary = result.levels[0].summary
    ttft = summary.latencies.ttft
    return {
        "ok": summary.completed,
        "failed": summary.failed,
        "req/s": summary.throughput.requests,
        "out tok/s": summary.throughput.output_tokens,
        "ttft mean": ttft.mean,
        "ttft p50": ttft.percentiles[50],
        "ttft p99": ttft.percentiles[99],
        "tpot p50": summary.latencies.tpot.percentiles[50],
        "hit rate": summary.extras.get("prefix_cache_hit_rate"),
        "json valid": summary.extras.get("structured_valid_rate"),
    }


def _table(results: dict[str, dict[str, BenchResult]], shapes: list[str]) -> str:
    lines = [
        "| shape | server | ok/failed | req/s | output tok/s | TTFT mean / p50 / p99 ms "
        "| TPOT p50 ms | prefix hit | JSON valid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in shapes:
        for server, by_shape in results.items():
            f = _figures(by_shape[shape])
            lines.append(
                f"| {shape} | {server} | {f['ok']}/{f['failed']} | {f['req/s']:.2f} "
                f"| {f['out tok/s']:.1f} | {_ms(f['ttft mean'])} / {_ms(f['ttft p50'])} / "
                f"{_ms(f['ttft p99'])} | {_ms(f['tpot p50'])} | {_pct(f['hit rate'])} "
                f"| {_pct(f['json valid'])} |"
            )
    if {"ember", "llama"} <= results.keys():
        lines += [
            "",
            "| shape | output tok/s ratio | TTFT mean ratio (llama / ember) "
            "| TTFT p99 ratio (llama / ember) |",
            "|---|---|---|---|",
        ]
        for shape in shapes:
            e = _figures(results["ember"][shape])
            q = _figures(results["llama"][shape])
            lines.append(
                f"| {shape} | {e['out tok/s'] / q['out tok/s']:.2f}x "
                f"| {_ratio(q['ttft mean'], e['ttft mean'])} "
                f"| {_ratio(q['ttft p99'], e['ttft p99'])} |"
            )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ratio(top: float | None, bottom: float | None) -> str:
    return "-" if not top or not bottom else f"{top / bottom:.2f}x"


def _comparison_chart(
    results: dict[str, dict[str, BenchResult]], shapes: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("out tok/s", "output tokens/s"),
        ("ttft mean", "TTFT mean (ms)"),
        ("ttft p99", "TTFT p99 (ms)"),
        ("tpot p50", "TPOT p50 (ms)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(18, 4.5), constrained_layout=True)
    width = 0.38
    xs = range(len(shapes))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for offset, (server, label) in enumerate((("ember", "Ember"), ("llama", "llama-server"))):
            values = [_figures(results[server][s])[key] or 0.0 for s in shapes]
            axis.bar([x + (offset - 0.5) * width for x in xs], values, width, label=label)
        axis.set_xticks(list(xs), labels=shapes)
        axis.set_title(title)
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    first = next(iter(results["ember"].values()))
    figure.suptitle(
        f"ember serve vs llama-server, {first.model.rsplit('/', 1)[-1]}, "
        f"concurrency {first.levels[0].level.concurrency}"
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"chart: {path}")
    (path.with_suffix(".json")).write_text(
        json.dumps(
            {srv: {s: _figures(r) for s, r in by.items()} for srv, by in results.items()}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
