"""Ember: an LLM inference runtime. `ember.LLM(model).generate(prompts, ember.SamplingParams())`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
