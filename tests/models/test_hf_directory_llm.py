"""The Python API on a Hugging Face folder (safetensors + tokenizer.json + chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ember
from tests.models.tiny import build_hf_model, save_hf, write_byte_level_tokenizer

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-hf")
    write_byte_level_tokenizer(directory, vocab_size=400)
    save_hf(build_hf_model("qwen3", vocab_size=400), directory)
    return directory


def test_generate_and_chat_on_a_hf_folder(hf_dir: Path) -> None:
    llm = ember.LLM(str(hf_dir))
    tokenizer = llm.get_tokenizer()
    params = ember.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    [out] = llm.generate("Hello world", params)
    assert out.prompt_token_ids == tokenizer.encode("Hello world")
    assert len(out.outputs[0].token_ids) == 6
    assert out.outputs[0].text == tokenizer.decode(out.outputs[0].token_ids)
    text, ids = llm.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "Hi" in text
    [chat] = llm.chat([{"role": "user", "content": "Hi"}], params)
    assert chat.prompt_token_ids == ids


def test_cli_generate_on_a_hf_folder(hf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ember.cli import main

    assert main(["generate", str(hf_dir), "the quick", "-n", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() != ""
