"""HFTokenizer over tiny tokenizer.json files built with the `tokenizers` library (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, normalizers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import BPE

from ember.errors import TokenizerError
from ember.tokenizer.chat_template import render_chat_template
from ember.tokenizer.detokenizer import IncrementalDetokenizer
from ember.tokenizer.hf_tokenizer import HFTokenizer, tokenizer_from_hf_directory
from tests.models.tiny import TEMPLATE, write_byte_level_tokenizer, write_json


@pytest.fixture
def byte_level_dir(tmp_path: Path) -> Path:
    return write_byte_level_tokenizer(tmp_path)


def test_encode_decode_match_the_library(byte_level_dir: Path) -> None:
    tok = tokenizer_from_hf_directory(byte_level_dir)
    library = RustTokenizer.from_file(str(byte_level_dir / "tokenizer.json"))
    for text in ["Hello world", "café 日本語 😀", "  spaced\n\nlines\t", ""]:
        ids = tok.encode(text)
        assert ids == library.encode(text).ids
        assert tok.decode(ids) == text == library.decode(ids)


def test_special_tokens_and_ids(byte_level_dir: Path) -> None:
    tok = HFTokenizer.from_directory(byte_level_dir)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 0)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|endoftext|>")
    assert tok.eos_token_ids == {0, 2}  # generation_config, plus <|im_end|> by name
    assert tok.encode("<|im_start|>user<|im_end|>")[0] == 1
    plain = tok.encode("<|im_start|>", parse_special=False)
    assert 1 not in plain and tok.decode(plain) == "<|im_start|>"
    assert tok.is_special(2) and not tok.is_special(100)
    assert tok.decode([1, 100, 2], skip_special_tokens=True) == tok.decode([100])
    assert tok.id_to_piece(1) == "<|im_start|>"
    library = RustTokenizer.from_file(str(byte_level_dir / "tokenizer.json"))
    assert tok.vocab_size == library.get_vocab_size() > 300


def test_chat_template_from_tokenizer_config(byte_level_dir: Path) -> None:
    tok = tokenizer_from_hf_directory(byte_level_dir)
    assert tok.chat_template == TEMPLATE
    messages = [{"role": "user", "content": "Hi"}]
    rendered = render_chat_template(
        tok.chat_template, messages, bos_token=tok.bos_token, eos_token=tok.eos_token
    )
    assert rendered == "<|im_start|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # A chat_template.jinja beside the config (newer transformers) is the template.
    (byte_level_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    tok = tokenizer_from_hf_directory(byte_level_dir)
    assert render_chat_template(tok.chat_template or "", messages) == "Hi!"


def test_add_bos_token_from_config(byte_level_dir: Path) -> None:
    config = json.loads((byte_level_dir / "tokenizer_config.json").read_text())
    write_json(byte_level_dir / "tokenizer_config.json", {**config, "add_bos_token": True})
    tok = tokenizer_from_hf_directory(byte_level_dir)
    assert tok.encode("Hello")[0] == 1
    assert tok.encode("Hello", add_special=False)[0] != 1


def test_streaming_byte_level_pieces(byte_level_dir: Path) -> None:
    tok = tokenizer_from_hf_directory(byte_level_dir)
    text = "naïve 😀 日本語 ünseen ẞ"
    ids = tok.encode(text)
    detokenizer = IncrementalDetokenizer(tok)
    chunks = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(chunks) == text
    assert all("\ufffd" not in chunk for chunk in chunks)


def test_byte_fallback_tokenizer(tmp_path: Path) -> None:
    # SentencePiece-style: spaces become "▁", unknown characters fall back to <0xXX> tokens.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "a", "b", "▁a", "ab", "▁ab"]:
        vocab[piece] = len(vocab)
    model = BPE(vocab, [("▁", "a"), ("a", "b"), ("▁a", "b")], unk_token="<unk>", byte_fallback=True)
    tokenizer = RustTokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_special_tokens(
        [AddedToken("<s>", special=True), AddedToken("</s>", special=True)]
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    write_json(tmp_path / "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>"})
    tok = tokenizer_from_hf_directory(tmp_path)
    ids = tok.encode(" ab é")
    assert ids == [vocab["▁ab"], vocab["▁"], 3 + 0xC3, 3 + 0xA9]
    assert [tok.token_bytes(i) for i in ids] == [b" ab", b" ", b"\xc3", b"\xa9"]
    assert tok.decode(ids) == " ab é"
    assert tok.eos_token_ids == {2}


def test_missing_or_broken_files_are_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        tokenizer_from_hf_directory(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load"):
        tokenizer_from_hf_directory(tmp_path)
