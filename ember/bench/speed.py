"""llama-bench-style throughput: pp (prefill) and tg (single-stream decode) tokens per second."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.envs import peer_environment
from ember.errors import EmberError
from ember.models.loader import LoadedModel


@dataclass(frozen=True)
class SpeedResult:
    test: str  # "pp512", "tg128"
    tokens_per_second: float
    seconds: list[float]


def _ids(count: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count,), generator=generator)


def prefill_speed(loaded: LoadedModel, tokens: int = 512, repetitions: int = 3) -> SpeedResult:
    """Like llama-bench's pp test: one sequence of `tokens` prefilled from an empty cache."""
    model = loaded.model
    seconds = []
    for rep in range(repetitions + 1):
        ids = _ids(tokens, loaded.config.vocab_size, rep)
        cache = model.new_cache(tokens)
        started = time.perf_counter()
        hidden = model.prefill(ids, cache)
        model.compute_logits(hidden[-1:])
        if rep:  # the first run warms up allocators and caches
            seconds.append(time.perf_counter() - started)
    return SpeedResult(f"pp{tokens}", tokens / (sum(seconds) / len(seconds)), seconds)


def decode_speed(loaded: LoadedModel, tokens: int = 128, repetitions: int = 2) -> SpeedResult:
    """Like llama-bench's tg test: `tokens` single-token steps from an empty context (greedy)."""
    model = loaded.model
    seconds = []
    for rep in range(repetitions + 1):
        cache = model.new_cache(max(tokens, 8) + 1)
        token = torch.tensor([1 + rep])
        steps = tokens if rep else 8
        started = time.perf_counter()
        for _ in range(steps):
            logits = model.compute_logits(model(token, cache, cache.length))
            token = logits[-1:].argmax(-1)
        if rep:
            seconds.append(time.perf_counter() - started)
    return SpeedResult(f"tg{tokens}", tokens / (sum(seconds) / len(seconds)), seconds)


def llama_bench(
    bin_dir: Path, model: Path, threads: int, prompt_sizes: list[int], gen_tokens: int
) -> dict[str, float]:
    """llama.cpp's llama-bench on the same file: {"pp512": tok/s, "tg128": tok/s, ...}.

    Empty when llama-bench is not built (see ../shared/tools/build-llama-cpp.sh).
    """
    exe = bin_dir / "llama-bench"
    if not exe.is_file():
        return {}
    command = [
        str(exe),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-r",
        "3",
        "-o",
        "json",
        "-p",
        ",".join(str(p) for p in prompt_sizes) or "0",
        "-n",
        str(gen_tokens),
    ]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env=peer_environment()
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmberError(f"llama-bench failed: {exc}") from None
    results = {}
    for row in json.loads(out):
        name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        results[name] = float(row["avg_ts"])
    return results


def default_llama_bin() -> Path:
    from ember.envs import llama_bin

    return llama_bin()


def speed_table(
    loaded: LoadedModel,
    model_path: Path,
    threads: int,
    prompt_sizes: list[int],
    gen_tokens: int,
    llama_bin_dir: Path | None,
    on_row: Callable[[str], None],
) -> None:
    """Runs Ember's tests, then llama.cpp's on the same file, and reports a markdown table."""
    ours = [prefill_speed(loaded, size) for size in prompt_sizes]
    if gen_tokens:
        ours.append(decode_speed(loaded, gen_tokens))
    peer = (
        llama_bench(llama_bin_dir, model_path, threads, prompt_sizes, gen_tokens)
        if (llama_bin_dir is not None)
        else {}
    )
    on_row("| test | Ember tok/s | llama.cpp tok/s | Ember / llama.cpp |")
    on_row("|---|---|---|---|")
    for result in ours:
        theirs = peer.get(result.test)
        shown = f"{theirs:.1f}" if theirs else "n/a"
        ratio = f"{result.tokens_per_second / theirs:.2f}x" if theirs else "n/a"
        on_row(f"| {result.test} | {result.tokens_per_second:.1f} | {shown} | {ratio} |")
