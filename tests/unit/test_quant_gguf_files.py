"""Quant methods on tensors from the two real GGUF files, checked against `gguf`'s dequantizers.

Every comparison is bit-exact. Skips when a model file is absent (CI pulls them).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from ember.quant.base import get_quant_method
from tests.conftest import real_model_path

TENSORS_PER_TYPE = 3
# Caps the numpy reference's work on the 262144-row embedding tables.
MAX_ROWS = 2048


def load_reader(key: str) -> gguf.GGUFReader:
    return gguf.GGUFReader(real_model_path(key))


@pytest.fixture(scope="module")
def smollm2() -> gguf.GGUFReader:
    return load_reader("smollm2")


@pytest.fixture(scope="module")
def gemma3() -> gguf.GGUFReader:
    return load_reader("gemma3")


def raw_rows(tensor: gguf.ReaderTensor) -> tuple[np.ndarray, int]:
    """(uint8 [rows, row_bytes], cols) for a tensor, evenly sampling rows past MAX_ROWS."""
    cols = int(tensor.shape[0])  # GGUF lists the fastest-varying dimension first
    rows = int(tensor.n_elements) // cols
    raw = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(rows, -1)
    step = -(-rows // MAX_ROWS)
    return raw[::step].copy(), cols


def gguf_dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    views = {"F32": np.float32, "F16": np.float16}
    data = raw.view(views[name]) if name in views else raw
    return gguf.quants.dequantize(data, GGMLQuantizationType[name])


def tensors_of_type(reader: gguf.GGUFReader, name: str) -> list[gguf.ReaderTensor]:
    found = [t for t in reader.tensors if t.tensor_type.name == name]
    assert found, f"no {name} tensors in the file"
    # The first few plus the last, which is often a differently shaped tensor.
    return [*found[:TENSORS_PER_TYPE], found[-1]]


def check_type(reader: gguf.GGUFReader, name: str) -> None:
    method = get_quant_method(name)
    for tensor in tensors_of_type(reader, name):
        raw, cols = raw_rows(tensor)
        got = method.dequantize(torch.from_numpy(raw), cols)
        expected = gguf_dequantize(raw, name).reshape(raw.shape[0], cols)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=tensor.name)


@pytest.mark.parametrize("name", ["Q4_1", "Q8_0", "F32"])
def test_smollm2_tensors_dequantize_exactly(smollm2: gguf.GGUFReader, name: str) -> None:
    check_type(smollm2, name)


@pytest.mark.parametrize("name", ["Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"])
def test_gemma3_tensors_dequantize_exactly(gemma3: gguf.GGUFReader, name: str) -> None:
    check_type(gemma3, name)


def test_every_tensor_type_in_the_files_is_supported(
    smollm2: gguf.GGUFReader, gemma3: gguf.GGUFReader
) -> None:
    for reader in (smollm2, gemma3):
        for tensor in reader.tensors:
            method = get_quant_method(tensor.tensor_type.name)
            cols = int(tensor.shape[0])
            assert method.row_bytes(cols) * (int(tensor.n_elements) // cols) == tensor.n_bytes


@pytest.mark.parametrize("name", ["Q5_0", "Q4_K", "Q6_K"])
def test_gemma3_matmul_matches_gguf_weights(
    gemma3: gguf.GGUFReader, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")  # the reference path; kernels: test_kernels.py
    tensor = tensors_of_type(gemma3, name)[0]
    raw, cols = raw_rows(tensor)
    weight = torch.from_numpy(gguf_dequantize(raw, name).reshape(raw.shape[0], cols))
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(0))
    got = get_quant_method(name).matmul(x, torch.from_numpy(raw), cols)
    torch.testing.assert_close(got, x @ weight.T, rtol=1e-5, atol=1e-5)
