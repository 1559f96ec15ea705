"""Ember: an LLM inference runtime. `ember.LLM(model).generate(prompts, ember.SamplingParams())`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch (and its OpenMP runtime) loads: threads that finish their share of one of torch's
# own parallel regions sleep at once instead of spinning (libgomp spins 300k iterations by
# default). Ember's kernels share work through their own pool (kernels/csrc/parallel.h), so
# torch's regions are the few copies and index ops between them; a torch thread spinning after
# one took a core from the pool's worker: a 1.2 MB copy per layer cost a SmolLM2 engine prefill
# step 40%, and mixed prefill + decode batches ran 10-15% faster with no spin at all (decode
# unchanged). benchmarks/RESULTS.md has the figures. A user's own OpenMP settings win.
OMP_SETTINGS_BY_EMBER = not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys())
if OMP_SETTINGS_BY_EMBER:
    os.environ["GOMP_SPINCOUNT"] = "0"

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
