"""Ember: an LLM inference runtime. `ember.LLM(model).generate(prompts, ember.SamplingParams())`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch (and its OpenMP runtime) loads: threads that finish their share of a parallel
# region sleep instead of spinning. With spinning, a 2-thread decode on 2 cores collapses ~20x
# as soon as another process wants a core (measured: 205 vs 7 ms per SmolLM2 token with one
# busy process beside it). A user's own setting wins.
OMP_WAIT_POLICY_SET_BY_EMBER = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
