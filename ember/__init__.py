"""Ember: an LLM inference runtime. `ember.LLM(model).generate(prompts, ember.SamplingParams())`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch (and its OpenMP runtime) loads: threads that finish their share of a parallel
# region spin ~30k iterations (tens of microseconds), then sleep. Spinning forever (libgomp's
# default spins 300k) collapses a 2-thread decode on 2 cores when another process wants a core
# (measured 205 ms vs 7 ms per SmolLM2 token); sleeping at once (OMP_WAIT_POLICY=PASSIVE)
# costs 2.5x on an idle machine, since a decode step runs a few hundred short regions.
# benchmarks/RESULTS.md has the figures. A user's own OpenMP settings win.
OMP_SETTINGS_BY_EMBER = not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys())
if OMP_SETTINGS_BY_EMBER:
    os.environ["GOMP_SPINCOUNT"] = "30000"

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ember.engine.outputs import CompletionOutput, RequestOutput
    from ember.llm import LLM
    from ember.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

_LAZY = {
    "LLM": "ember.llm",
    "SamplingParams": "ember.sampling_params",
    "RequestOutput": "ember.engine.outputs",
    "CompletionOutput": "ember.engine.outputs",
}


def __getattr__(name: str) -> Any:
    # Lazy so `import ember` (and the CLI's --help) does not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
