"""Tokenizers (GGUF and Hugging Face), streaming detokenization and chat templates."""

from ember.tokenizer.base import Tokenizer
from ember.tokenizer.chat_template import render_chat_template
from ember.tokenizer.detokenizer import IncrementalDetokenizer
from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata
from ember.tokenizer.hf_tokenizer import HFTokenizer

__all__ = [
    "HFTokenizer",
    "IncrementalDetokenizer",
    "Tokenizer",
    "render_chat_template",
    "tokenizer_from_gguf_metadata",
]
