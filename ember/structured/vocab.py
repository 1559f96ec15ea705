"""An Ember tokenizer -> xgrammar.TokenizerInfo.

xgrammar matches a grammar against the bytes each token adds to the output. Ember's tokenizers
already define exactly those bytes (Tokenizer.token_bytes: the byte-level BPE alphabet mapped
back to bytes for gpt2-style vocabularies such as SmolLM2's; <0xNN> byte-fallback pieces and
"▁" -> " " for SentencePiece-style ones such as Gemma's), and the text Ember streams is their
plain concatenation. So the vocabulary goes to xgrammar pre-decoded, as VocabType.RAW, with no
prefix-space handling: the grammar then sees precisely the text the user gets, whatever the
tokenizer family, instead of relying on a second decoder agreeing with ours.

Special tokens become b"", which xgrammar treats as never allowed, as are the ids between the
tokenizer's vocabulary and the model's (padded) logits width. The stop tokens (end of
generation) are listed explicitly: the grammar allows them only where it may end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ember.tokenizer.base import Tokenizer

if TYPE_CHECKING:
    import xgrammar


def grammar_vocab(tokenizer: Tokenizer, vocab_size: int) -> list[bytes]:
    """Per token id below min(tokenizer size, vocab_size): the bytes it adds to the output,
    b"" for special tokens."""
    size = min(tokenizer.vocab_size, vocab_size)
    return [b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(size)]


def tokenizer_info(
    tokenizer: Tokenizer, vocab_size: int, stop_token_ids: Iterable[int]
) -> xgrammar.TokenizerInfo:
    """xgrammar's view of `tokenizer` for a model whose logits have `vocab_size` columns."""
    import xgrammar as xgr

    stops = sorted({token for token in stop_token_ids if 0 <= token < vocab_size})
    return xgr.TokenizerInfo(
        grammar_vocab(tokenizer, vocab_size),
        xgr.VocabType.RAW,
        vocab_size=vocab_size,
        stop_token_ids=stops,
        add_prefix_space=False,
    )
