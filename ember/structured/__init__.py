"""Grammar-constrained decoding (structured outputs), with llguidance or xgrammar.

- backend.py: the interface a grammar library implements, and which one "auto" picks;
  backend_llguidance.py (+ llguidance_lark.py, gbnf_lark.py) and backend_xgrammar.py
  implement it;
- grammar.py: StructuredOutputs -> the library's grammar, checked when the request arrives;
- vocab.py: an Ember tokenizer -> the token bytes both libraries match against;
- compiler.py: per-model compiles on a background thread, cached by spec;
- matcher.py: one sequence's grammar state, advanced with each kept token;
- masks.py, bitmask.py: the batch's token masks, filled on a worker thread during the forward
  pass and applied to the logits with plain torch.

The grammar library itself is imported only once a constrained request arrives.
"""

from ember.structured.compiler import PendingGrammar, StructuredCompiler
from ember.structured.grammar import check_structured_outputs
from ember.structured.masks import GrammarMasker, PendingMasks
from ember.structured.matcher import GrammarState

__all__ = [
    "GrammarMasker",
    "GrammarState",
    "PendingGrammar",
    "PendingMasks",
    "StructuredCompiler",
    "check_structured_outputs",
]
