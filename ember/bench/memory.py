"""Memory held for a loaded model: resident memory after loading minus an idle Ember process's.

Both figures come from fresh subprocesses, so neither sees the other's allocations. The
baseline process imports everything the loaded one imports (torch, the model code, the
tokenizer) but loads no weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_PROBE = r"""
import gc, json, resource, sys, psutil
import torch
from ember.models.loader import load_model_path
from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata  # noqa: F401
from ember.loader.gguf_file import read_gguf  # noqa: F401
from ember.kernels import fast_methods_available
from ember.runtime import set_threads
fast_methods_available()  # loads the kernel library, as any real run does
set_threads(None)
path, prompt, generate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kv_bytes = 0
if path != "-":
    loaded = load_model_path(__import__("pathlib").Path(path))
    if prompt:
        model = loaded.model
        cache = model.new_cache(prompt + generate)
        kv_bytes = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
        logits = model.compute_logits(model.prefill(torch.randint(0, 1000, (prompt,)), cache)[-1:])
        for _ in range(generate):
            token = logits[-1:].argmax(-1)
            logits = model.compute_logits(model(token, cache, cache.length))
gc.collect()
info = psutil.Process().memory_info()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rss": info.rss, "peak": peak, "kv": kv_bytes}))
"""


@dataclass(frozen=True)
class ModelMemory:
    file_bytes: int
    baseline_rss: int
    loaded_rss: int

    @property
    def held(self) -> int:
        return self.loaded_rss - self.baseline_rss

    @property
    def ratio(self) -> float:
        return self.held / self.file_bytes


def _probe(argument: str, prompt: int = 0, generate: int = 0) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, argument, str(prompt), str(generate)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def model_memory(path: Path) -> ModelMemory:
    """Resident memory after loading (no generation) against an idle process."""
    return ModelMemory(path.stat().st_size, _probe("-")["rss"], _probe(str(path))["rss"])


@dataclass(frozen=True)
class GenerationMemory:
    file_bytes: int
    kv_bytes: int
    baseline_peak: int
    peak: int

    @property
    def held(self) -> int:
        return self.peak - self.baseline_peak

    @property
    def ratio(self) -> float:
        """Peak memory held while generating, over (file size + KV cache)."""
        return self.held / (self.file_bytes + self.kv_bytes)


def generation_memory(path: Path, prompt: int = 512, generate: int = 128) -> GenerationMemory:
    """Peak resident memory while prefilling `prompt` tokens and decoding `generate` more."""
    base = _probe("-")
    run = _probe(str(path), prompt, generate)
    return GenerationMemory(path.stat().st_size, run["kv"], base["peak"], run["peak"])
