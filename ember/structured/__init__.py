"""Grammar-constrained decoding (structured outputs) with xgrammar.

- grammar.py: StructuredOutputs -> xgrammar Grammar, checked when the request arrives;
- vocab.py: an Ember tokenizer -> xgrammar.TokenizerInfo;
- compiler.py: per-model compiles on a background thread, cached by spec;
- matcher.py: one sequence's grammar state, advanced with each kept token;
- masks.py: the batch's token masks, filled on a worker thread during the forward pass.

xgrammar itself is imported only once a constrained request arrives.
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
