"""Quant methods on synthetic data, checked against the `gguf` package's numpy dequantizers."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from ember.errors import ModelFileError
from ember.quant import base
from ember.quant.base import SUPPORTED_TYPES, QuantMethod, get_quant_method

# Types gguf.quants can quantize; the K-quants it can only dequantize.
QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# Byte offsets of each block's fp16 scale/offset fields, given sane values in random blocks.
FP16_FIELDS = {
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
ROW_COUNTS = [1, 3, 17]
BLOCKS_PER_ROW = [1, 5]


def gguf_dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    """gguf's reference: raw uint8 [rows, row_bytes] -> float32 [rows, cols]."""
    views = {"F32": np.float32, "F16": np.float16}
    data = raw.view(views[name]) if name in views else raw
    return gguf.quants.dequantize(data, GGMLQuantizationType[name])


def columns(method: QuantMethod, blocks: int) -> int:
    # Float types have 1-weight blocks; give them rows of a realistic width.
    return method.block_size * blocks if method.block_size > 1 else 32 * blocks + 3


def quantized_rows(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    quantized = gguf.quants.quantize(weights, GGMLQuantizationType[name])
    return np.ascontiguousarray(quantized).view(np.uint8).reshape(rows, -1)


def random_blocks(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random code bytes with positive fp16 scales in a range real models use."""
    method = get_quant_method(name)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, method.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(-1, method.type_size)
    for offset in FP16_FIELDS[name]:
        values = rng.uniform(1e-4, 0.1, (blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = values.view(np.uint8)
    return raw


def sample_raw(name: str, rows: int, cols: int, seed: int) -> torch.Tensor:
    if name in FP16_FIELDS:
        return torch.from_numpy(random_blocks(name, rows, cols, seed))
    return torch.from_numpy(quantized_rows(name, rows, cols, seed))


def test_supported_types_match_ggml_block_sizes() -> None:
    for name in SUPPORTED_TYPES:
        method = get_quant_method(name)
        assert method.name == name
        expected = gguf.GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        assert (method.block_size, method.type_size) == expected


def test_unknown_type_is_a_model_file_error() -> None:
    with pytest.raises(ModelFileError, match="unsupported tensor type IQ2_XS"):
        get_quant_method("IQ2_XS")


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("blocks", BLOCKS_PER_ROW)
def test_dequantize_matches_gguf_on_quantized_data(name: str, rows: int, blocks: int) -> None:
    method = get_quant_method(name)
    cols = columns(method, blocks)
    raw = quantized_rows(name, rows, cols, seed=rows * 10 + blocks)
    got = method.dequantize(torch.from_numpy(raw), cols)
    assert got.dtype == torch.float32
    assert got.shape == (rows, cols)
    np.testing.assert_array_equal(got.numpy(), gguf_dequantize(raw, name))


@pytest.mark.parametrize("name", list(FP16_FIELDS))
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("blocks", BLOCKS_PER_ROW)
def test_dequantize_matches_gguf_on_random_blocks(name: str, rows: int, blocks: int) -> None:
    method = get_quant_method(name)
    cols = columns(method, blocks)
    raw = random_blocks(name, rows, cols, seed=rows * 10 + blocks)
    got = method.dequantize(torch.from_numpy(raw), cols)
    np.testing.assert_array_equal(got.numpy(), gguf_dequantize(raw, name))


def test_dequantize_does_not_alias_raw() -> None:
    raw = torch.from_numpy(quantized_rows("F32", 2, 8, seed=0))
    before = raw.clone()
    get_quant_method("F32").dequantize(raw, 8).fill_(1.0)
    assert torch.equal(raw, before)


@pytest.mark.parametrize("name", ["F32", "BF16", "Q8_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"])
def test_chunked_matmul_equals_dequantized_matmul(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")  # the reference path; kernels: test_kernels.py
    method = get_quant_method(name)
    cols, rows = columns(method, 2), 11
    raw = sample_raw(name, rows, cols, seed=1)
    # Chunks of 4 rows: 11 rows cover full chunks and a ragged last one.
    monkeypatch.setattr(base, "MATMUL_CHUNK_BYTES", 4 * cols * 4)
    x = torch.randn(2, 3, cols, generator=torch.Generator().manual_seed(0))
    expected = x @ method.dequantize(raw, cols).T
    got = method.matmul(x, raw, cols)
    assert got.shape == (2, 3, rows) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    as_bf16 = method.matmul(x, raw, cols, out_dtype=torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(as_bf16, expected.to(torch.bfloat16))


def test_matmul_rejects_wrong_feature_count() -> None:
    method = get_quant_method("Q8_0")
    raw = torch.from_numpy(quantized_rows("Q8_0", 2, 64, seed=0))
    with pytest.raises(ValueError, match="32 features"):
        method.matmul(torch.zeros(1, 32), raw, 64)


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q5_1", "Q5_K", "Q6_K"])
def test_embedding_gathers_dequantized_rows(name: str) -> None:
    method = get_quant_method(name)
    cols, rows = columns(method, 2), 9
    raw = sample_raw(name, rows, cols, seed=2)
    ids = torch.tensor([[8, 0, 3], [3, 3, 5]])
    got = method.embedding(raw, cols, ids)
    assert got.shape == (2, 3, cols)
    assert torch.equal(got, method.dequantize(raw, cols)[ids])


@pytest.mark.parametrize(("name", "cols"), [("Q4_0", 33), ("Q4_K", 128), ("Q6_K", 0), ("F16", -2)])
def test_row_bytes_rejects_partial_blocks(name: str, cols: int) -> None:
    with pytest.raises(ModelFileError, match=name):
        get_quant_method(name).row_bytes(cols)


def test_row_bytes_counts_whole_blocks() -> None:
    assert get_quant_method("F32").row_bytes(5) == 20
    assert get_quant_method("Q8_0").row_bytes(64) == 68
    assert get_quant_method("Q6_K").row_bytes(512) == 420


def test_dequantize_rejects_raw_of_the_wrong_width() -> None:
    method = get_quant_method("Q4_1")
    with pytest.raises(ModelFileError, match=r"expected uint8 \[rows, 40\]"):
        method.dequantize(torch.zeros(3, 39, dtype=torch.uint8), 64)
    with pytest.raises(ModelFileError, match="expected uint8"):
        method.dequantize(torch.zeros(3, 40, dtype=torch.int8), 64)
