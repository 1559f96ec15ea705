"""Bad input through the CLI: one line naming the problem, exit code 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from ember.cli import main
from ember.errors import ModelFileError


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.tiny import build_hf_model, save_gguf

    return save_gguf(build_hf_model("llama"), tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def _writer_file(path: Path, arch: str, tensor_type: str = "F32") -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    if tensor_type == "F32":
        writer.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    else:
        qtype = gguf.GGMLQuantizationType[tensor_type]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = np.zeros((4, 256 // block * size), dtype=np.uint8)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_model_file(capsys, tmp_path: Path) -> None:
    line = run_cli(capsys, "generate", str(tmp_path / "absent.gguf"), "hi")
    assert "absent.gguf" in line


def test_truncated_gguf(capsys, tmp_path: Path, tiny_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    assert "truncated" in run_cli(capsys, "generate", str(cut), "hi")


def test_corrupt_gguf(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(4000))
    assert "bad.gguf" in run_cli(capsys, "generate", str(bad), "hi")


def test_not_a_gguf(capsys, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a model\n")
    assert "notes.gguf" in run_cli(capsys, "generate", str(text), "hi")


def test_unknown_architecture(capsys, tmp_path: Path) -> None:
    path = _writer_file(tmp_path / "odd.gguf", "mamba9")
    line = run_cli(capsys, "generate", str(path), "hi")
    assert "unsupported architecture 'mamba9'" in line


def test_unknown_quant_type(tmp_path: Path) -> None:
    from ember.models.loader import load_gguf

    path = _writer_file(tmp_path / "iq.gguf", "llama", tensor_type="IQ2_XS")
    with pytest.raises(ModelFileError, match="IQ2_XS"):
        # The tensor type is checked before the (absent) hyperparameters would be.
        from ember.layers.linear import QuantEmbedding
        from ember.loader.gguf_file import read_gguf
        from ember.loader.weights import store_from_gguf

        QuantEmbedding(store_from_gguf(read_gguf(path)).take("token_embd.weight"))
    with pytest.raises(ModelFileError):
        load_gguf(path, with_tokenizer=False)


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "1.5", "top_p"),
        ("--top-p", "0", "top_p"),
        ("--min-p", "2", "min_p"),
        ("--top-k", "-3", "top_k"),
        ("--repeat-penalty", "0", "repetition_penalty"),
        ("--presence-penalty", "5", "presence_penalty"),
        ("--max-tokens", "0", "max_tokens"),
        ("--temperature", "nan", "temperature"),
    ],
)
def test_invalid_sampling_values(capsys, flag: str, value: str, field: str) -> None:
    # Checked before any model is touched: the model name here does not even exist.
    line = run_cli(capsys, "generate", "no-such-model", "hi", flag, value)
    assert field in line


def test_unknown_model_name(capsys) -> None:
    assert "no-such-model" in run_cli(capsys, "run", "no-such-model", "hi")


def test_real_process_exit_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ember.cli", "generate", str(tmp_path / "x.gguf"), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
