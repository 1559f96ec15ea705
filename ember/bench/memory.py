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
import gc, json, sys, psutil
import torch  # noqa: F401
from ember.models.loader import load_model_path
from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata  # noqa: F401
from ember.loader.gguf_file import read_gguf  # noqa: F401
path = sys.argv[1]
if path != "-":
    loaded = load_model_path(__import__("pathlib").Path(path))
gc.collect()
info = psutil.Process().memory_info()
print(json.dumps({"rss": info.rss}))
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


def _rss(argument: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, argument],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["rss"])


def model_memory(path: Path) -> ModelMemory:
    return ModelMemory(path.stat().st_size, _rss("-"), _rss(str(path)))
