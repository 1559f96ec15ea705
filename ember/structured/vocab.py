"""An Ember tokenizer as the grammar libraries see it: the bytes each token adds to the output.

Both libraries match a grammar against those bytes. Ember's tokenizers already define exactly
them (Tokenizer.token_bytes: the byte-level BPE alphabet mapped back to bytes for gpt2-style
vocabularies such as SmolLM2's; <0xNN> byte-fallback pieces and "▁" -> " " for SentencePiece-style
ones such as Gemma's), and the text Ember streams is their plain concatenation. So the vocabulary
goes to the library pre-decoded, with no prefix-space handling: the grammar then sees precisely
the text the user gets, whatever the tokenizer family, instead of relying on a second decoder
agreeing with ours.

Special tokens never match grammar text (each backend marks them its own way), and neither do
the ids between the tokenizer's vocabulary and the model's (padded) logits width. The stop
tokens (end of generation) are allowed only where the grammar may end.
"""

from __future__ import annotations

from ember.tokenizer.base import Tokenizer


def grammar_vocab(
    tokenizer: Tokenizer, vocab_size: int, special: bytes | None = None
) -> list[bytes]:
    """Per token id below min(tokenizer size, vocab_size): the bytes it adds to the output.

    Special tokens are b"" by default; with `special` (llguidance's b"\\xff") they are that
    marker followed by their piece, so that a grammar can name them.
    """
    size = min(tokenizer.vocab_size, vocab_size)
    if special is None:
        return [b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(size)]
    return [
        special + tokenizer.id_to_piece(i).encode()
        if tokenizer.is_special(i)
        else tokenizer.token_bytes(i)
        for i in range(size)
    ]
