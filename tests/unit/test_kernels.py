"""Native quant kernels vs the pure-torch reference methods, on random and real GGUF tensors.

Paths: the streaming int8 gemv, the int8 GEMM (weight panels unpacked to int8) and the bf16
tile GEMM. Auto takes an int8 path up to 16 rows and the bf16 GEMM above.

Tolerances. The int8 paths quantize activations to int8 (one scale per 32 values, per 256 for
the K-quants), like llama.cpp: the output's relative error (Frobenius norm of the difference
over that of the reference) is about 0.5-1.2% on Gaussian inputs, so the bound is 2%. The bf16
path rounds activations and weights to bf16 and accumulates in fp32: about 0.25%, bound 1%.
Embedding rows must be bit-exact.

Skips when the kernels cannot be built here (see test_kernels_fallback.py for that path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ember import kernels
from ember.errors import ModelFileError
from ember.kernels.methods import GGML_TYPE_IDS, PATH_AUTO, PATH_BF16, PATH_INTEGER, qmatmul
from ember.loader.gguf_file import read_gguf
from ember.quant.base import QuantMethod

# qmatmul's path for the int8 GEMM (ops.cpp's kInt8Gemm; methods.py names the other paths).
PATH_INT8_GEMM = 3
ALL_PATHS = [PATH_AUTO, PATH_INTEGER, PATH_BF16, PATH_INT8_GEMM]
INTEGER_TOLERANCE = 2e-2
BF16_TOLERANCE = 1e-2
TYPES = list(GGML_TYPE_IDS)
# Byte offsets of each block's fp16 fields, given sane values in random blocks.
FP16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
               "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}  # fmt: skip
MODELS_DIR = Path("/root/.cache/ember-anchor-models")
SMOLLM2 = MODELS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS_DIR / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(autouse=True)
def native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_NO_KERNELS", raising=False)
    if not kernels.fast_methods_available():
        pytest.skip("native kernels unavailable on this machine")


def fast(name: str) -> QuantMethod:
    method = kernels.fast_method(name)
    assert method is not None
    return method


def reference(name: str) -> QuantMethod:
    ref: QuantMethod = fast(name).reference  # type: ignore[attr-defined]
    return ref


def random_blocks(name: str, rows: int, cols: int, seed: int) -> torch.Tensor:
    """Random code bytes with positive fp16 scales in the range real models use."""
    method = reference(name)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, method.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(-1, method.type_size)
    for offset in FP16_FIELDS[name]:
        values = rng.uniform(1e-4, 0.1, (blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = values.view(np.uint8)
    return torch.from_numpy(raw)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def tolerance(m: int, path: int) -> float:
    bf16 = path == PATH_BF16 or (path == PATH_AUTO and m > 16)
    return BF16_TOLERANCE if bf16 else INTEGER_TOLERANCE


def check_matmul(name: str, raw: torch.Tensor, cols: int, x: torch.Tensor, path: int) -> None:
    expected = x @ reference(name).dequantize(raw, cols).T
    got = qmatmul(x, raw, cols, name, path)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert relative_error(got, expected) < tolerance(x.shape[0], path)


def columns(name: str) -> list[int]:
    # 32-weight types: 3 blocks (an odd block count and a partial pair of pairs) and 18 blocks.
    return [96, 576] if reference(name).block_size == 32 else [256, 768]


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("m", [1, 3, 9, 17, 513])
@pytest.mark.parametrize("name", TYPES)
def test_matmul_matches_reference_on_random_blocks(name: str, m: int, path: int) -> None:
    generator = torch.Generator().manual_seed(m)
    for cols in columns(name):
        raw = random_blocks(name, 37, cols, seed=cols + m)
        check_matmul(name, raw, cols, torch.randn(m, cols, generator=generator), path)


@pytest.mark.parametrize("name", TYPES)
def test_int8_gemm_over_several_panels(name: str) -> None:
    # 64-row panels: 131 rows are two whole panels and a 3-row one; 7 and 23 activation rows
    # leave partial 6-row kernel calls; 1100 rows take two passes of 550.
    cols = columns(name)[1]
    raw = random_blocks(name, 131, cols, seed=11)
    for m in (7, 23, 1100):
        x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
        check_matmul(name, raw, cols, x, PATH_INT8_GEMM)


@pytest.mark.parametrize("name", ["Q4_1", "Q5_0", "Q4_K", "Q6_K"])
def test_int8_gemm_rows_do_not_depend_on_the_batch(name: str) -> None:
    # Each row is quantized and summed on its own, in a fixed order: a prompt's rows come out
    # the same whatever else shares the batch.
    cols = columns(name)[1]
    raw = random_blocks(name, 70, cols, seed=12)
    x = torch.randn(29, cols, generator=torch.Generator().manual_seed(3))
    batch = qmatmul(x, raw, cols, name, PATH_INT8_GEMM)
    for rows in (slice(0, 1), slice(5, 12), slice(13, 29)):
        assert torch.equal(qmatmul(x[rows], raw, cols, name, PATH_INT8_GEMM), batch[rows])


@pytest.mark.parametrize("name", TYPES)
def test_single_row_and_single_block(name: str) -> None:
    cols = reference(name).block_size
    raw = random_blocks(name, 1, cols, seed=5)
    weight = reference(name).dequantize(raw, cols)
    x = torch.randn(2, cols, generator=torch.Generator().manual_seed(1))
    # One short dot product can nearly cancel: bound its error by the size of its terms.
    scale = x.norm(dim=1, keepdim=True) * weight.norm(dim=1)
    for path in (PATH_INTEGER, PATH_BF16, PATH_INT8_GEMM):
        error = (qmatmul(x, raw, cols, name, path) - x @ weight.T).abs()
        assert bool((error <= tolerance(2, path) * scale).all())


def test_zero_activations_give_zero_output() -> None:
    raw = random_blocks("Q4_1", 5, 64, seed=0)
    for path in (PATH_INTEGER, PATH_BF16, PATH_INT8_GEMM):
        assert torch.equal(qmatmul(torch.zeros(3, 64), raw, 64, "Q4_1", path), torch.zeros(3, 5))


def test_unknown_path_is_refused() -> None:
    raw = random_blocks("Q4_0", 3, 64, seed=8)
    with pytest.raises(RuntimeError, match="unknown matmul path"):
        qmatmul(torch.zeros(1, 64), raw, 64, "Q4_0", 7)


def test_results_do_not_depend_on_thread_count() -> None:
    raw = random_blocks("Q4_K", 301, 512, seed=3)
    x = torch.randn(20, 512, generator=torch.Generator().manual_seed(2))

    def every_path() -> list[torch.Tensor]:
        return [qmatmul(rows, raw, 512, "Q4_K", path) for rows in (x[:1], x) for path in ALL_PATHS]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = every_path()
        torch.set_num_threads(max(2, threads))
        multi = every_path()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, multi, strict=True))


def test_fast_method_matmul_keeps_the_interface() -> None:
    method = fast("Q8_0")
    raw = random_blocks("Q8_0", 7, 64, seed=4)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    got = method.matmul(x, raw, 64)
    assert got.shape == (2, 3, 7) and got.dtype == torch.float32
    expected = x @ reference("Q8_0").dequantize(raw, 64).T
    assert relative_error(got, expected) < INTEGER_TOLERANCE
    assert method.matmul(x, raw, 64, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="32 features"):
        method.matmul(torch.zeros(1, 32), raw, 64)


def test_malformed_weights_raise_the_reference_error() -> None:
    raw = random_blocks("Q4_0", 3, 64, seed=8)
    with pytest.raises(ModelFileError, match=r"expected uint8 \[rows, 36\]"):
        fast("Q4_0").matmul(torch.zeros(1, 64), raw[:, :30], 64)


@pytest.mark.parametrize("name", TYPES)
def test_embedding_is_exact(name: str) -> None:
    cols = columns(name)[1]
    raw = random_blocks(name, 11, cols, seed=6)
    ids = torch.tensor([[10, 0, 3], [3, 3, 7]])
    got = fast(name).embedding(raw, cols, ids)
    assert got.shape == (2, 3, cols)
    assert torch.equal(got, reference(name).dequantize(raw, cols)[ids])


def test_fast_twin_is_its_reference_plus_kernels() -> None:
    method = fast("Q6_K")
    ref = reference("Q6_K")
    assert isinstance(method, type(ref)) and method.name == "Q6_K"
    raw = random_blocks("Q6_K", 3, 256, seed=7)
    assert torch.equal(method.dequantize(raw, 256), ref.dequantize(raw, 256))


def test_hook_swaps_in_fast_methods_only_where_kernels_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ember.quant import float_types, k_quants, legacy

    for method in [*float_types.METHODS, *legacy.METHODS, *k_quants.METHODS]:
        expected = fast(method.name) if method.name in GGML_TYPE_IDS else method
        assert kernels.accelerated(method) is expected
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")
    assert kernels.accelerated(legacy.METHODS[0]) is legacy.METHODS[0]


# ---- real tensors ----

REAL_TENSORS = {
    SMOLLM2: ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight",
              "blk.29.ffn_up.weight", "token_embd.weight"],
    GEMMA3: ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_v.weight",
             "blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight",
             "token_embd.weight"],
}  # fmt: skip
# Rows taken from each tensor (an odd count; the embedding tables have up to 262144).
REAL_ROWS = 301


@pytest.mark.parametrize("path", [SMOLLM2, GEMMA3], ids=["smollm2", "gemma3"])
def test_real_tensors_match_reference(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path.name} not present")
    gguf_file = read_gguf(path)
    generator = torch.Generator().manual_seed(0)
    for name in REAL_TENSORS[path]:
        tensor = gguf_file.tensors[name]
        rows, cols = tensor.shape
        raw = torch.from_numpy(tensor.data[: min(rows, REAL_ROWS)].copy())
        for m in (1, 3, 17, 513):
            x = torch.randn(m, cols, generator=generator)
            check_matmul(tensor.qtype, raw, cols, x, PATH_AUTO)
            check_matmul(tensor.qtype, raw, cols, x, PATH_INT8_GEMM)
        ids = torch.randint(0, raw.shape[0], (9,), generator=generator)
        expected = reference(tensor.qtype).embedding(raw, cols, ids)
        assert torch.equal(fast(tensor.qtype).embedding(raw, cols, ids), expected), name
