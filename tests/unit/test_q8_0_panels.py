"""Q8_0 repacked at load into the int8 GEMM's panels (ember.quant.q8_0_panels).

The layout's pure-torch reference against the Q8_0 reference, the in-place native repack
against the reference repack, and every matmul path and the embedding on panels against the
Q8_0 reference (same tolerances as test_kernels.py). Skips when the kernels cannot be built.
"""

from __future__ import annotations

import pytest
import torch

from ember import kernels
from ember.kernels.methods import (
    PATH_AUTO,
    PATH_BF16,
    PATH_INT8_GEMM,
    PATH_INTEGER,
    batch_invariant,
    repacking,
)
from ember.layers.linear import QuantEmbedding, QuantLinear
from ember.loader.weights import RawTensor
from ember.quant.legacy import Q8_0
from ember.quant.q8_0_panels import Q8_0Panels, can_repack, repack_reference
from tests.unit.test_kernels import random_blocks, relative_error

INTEGER_TOLERANCE = 2e-2
BF16_TOLERANCE = 1e-2


@pytest.fixture(autouse=True)
def native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_NO_KERNELS", raising=False)
    if not kernels.fast_methods_available():
        pytest.skip("native kernels unavailable on this machine")


def fast_q8_0():
    method = kernels.fast_method("Q8_0")
    assert method is not None
    return method


def repacked(raw: torch.Tensor, cols: int):
    """(panels, their method): a repacked copy of `raw`."""
    packed = raw.clone()
    with repacking(True):
        method = fast_q8_0().prepared(packed, cols)
    assert method.name == "Q8_0_PANELS"
    return packed, method


@pytest.mark.parametrize(("rows", "cols"), [(64, 64), (192, 640), (128, 576)])
def test_native_repack_matches_the_reference_layout(rows: int, cols: int) -> None:
    raw = random_blocks("Q8_0", rows, cols, seed=rows + cols)
    packed, _ = repacked(raw, cols)
    assert packed.shape == raw.shape  # same bytes, rearranged in place
    assert torch.equal(packed, repack_reference(raw, cols))
    assert torch.equal(Q8_0Panels().dequantize(packed, cols), Q8_0().dequantize(raw, cols))


def test_repacking_is_off_by_default_and_needs_whole_panels() -> None:
    raw = random_blocks("Q8_0", 64, 128, seed=1)
    assert fast_q8_0().prepared(raw.clone(), 128).name == "Q8_0"
    with repacking(True):
        for rows, cols in ((65, 128), (64, 96)):  # a partial panel; K not a multiple of 64
            odd = random_blocks("Q8_0", rows, cols, seed=2)
            assert not can_repack(odd, cols)
            before = odd.clone()
            assert fast_q8_0().prepared(odd, cols).name == "Q8_0"
            assert torch.equal(odd, before)
        assert (
            kernels.fast_method("Q4_0").prepared(random_blocks("Q4_0", 64, 128, 3), 128).name
            == "Q4_0"
        )


@pytest.mark.parametrize("path", [PATH_AUTO, PATH_INTEGER, PATH_BF16, PATH_INT8_GEMM])
@pytest.mark.parametrize("m", [1, 3, 9, 17, 513])
def test_matmul_on_panels_matches_the_reference(m: int, path: int) -> None:
    cols = 576
    raw = random_blocks("Q8_0", 192, cols, seed=m)
    packed, method = repacked(raw, cols)
    x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
    expected = x @ Q8_0().dequantize(raw, cols).T
    got = method.matmul_op(x, packed, cols, method.ggml_type, path)
    bf16 = path == PATH_BF16 or (path == PATH_AUTO and m > 16)
    assert relative_error(got, expected) < (BF16_TOLERANCE if bf16 else INTEGER_TOLERANCE)
    # the layout's pure-torch reference agrees with the Q8_0 one
    assert torch.allclose(Q8_0Panels().matmul(x, packed, cols), expected, rtol=1e-4, atol=1e-3)


def test_panels_give_the_unpacked_int8_gemm_bit_for_bit() -> None:
    # Same kernel, same activations: the repacked weights change where the codes come from,
    # not the arithmetic, so batch-invariant (deterministic) outputs are unchanged.
    cols = 640
    raw = random_blocks("Q8_0", 256, cols, seed=9)
    packed, method = repacked(raw, cols)
    for m in (1, 5, 32, 70):
        x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
        with batch_invariant():
            assert torch.equal(method.matmul(x, packed, cols), fast_q8_0().matmul(x, raw, cols))
        unpacked = fast_q8_0().matmul_op(x, raw, cols, 8, PATH_INT8_GEMM)
        assert torch.equal(
            method.matmul_op(x, packed, cols, method.ggml_type, PATH_INT8_GEMM), unpacked
        )


def test_embedding_rows_from_panels_are_exact() -> None:
    cols = 640
    raw = random_blocks("Q8_0", 192, cols, seed=4)
    packed, method = repacked(raw, cols)
    ids = torch.tensor([[0, 191, 64], [63, 65, 7]])
    expected = Q8_0().dequantize(raw, cols)[ids]
    assert torch.equal(method.embedding(packed, cols, ids), expected)
    assert torch.equal(Q8_0Panels().embedding(packed, cols, ids), expected)


def test_tied_embedding_is_repacked_once_and_shared_by_the_lm_head() -> None:
    cols = 128
    raw = random_blocks("Q8_0", 128, cols, seed=5).clone()  # torch's allocation: 64-byte aligned
    original = raw.clone()
    with repacking(True):
        embed = QuantEmbedding(RawTensor("token_embd.weight", "Q8_0", (128, cols), raw))
        head = embed.as_linear()
    assert embed.method.name == head.method.name == "Q8_0_PANELS"
    assert head.raw.data_ptr() == embed.raw.data_ptr()
    assert torch.equal(raw, repack_reference(original, cols))  # repacked once, not twice
    x = torch.randn(4, cols, generator=torch.Generator().manual_seed(0))
    expected = x @ Q8_0().dequantize(original, cols).T
    assert relative_error(head(x), expected) < INTEGER_TOLERANCE
    assert torch.equal(embed(torch.tensor([3, 100])), Q8_0().dequantize(original, cols)[[3, 100]])


def test_a_linear_owning_its_weight_is_repacked() -> None:
    raw = random_blocks("Q8_0", 64, 64, seed=6).clone()  # torch's allocation: 64-byte aligned
    original = raw.clone()
    with repacking(True):
        layer = QuantLinear(RawTensor("w", "Q8_0", (64, 64), raw))
    assert layer.method.name == "Q8_0_PANELS"
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    expected = x @ Q8_0().dequantize(original, 64).T
    assert relative_error(layer(x), expected) < BF16_TOLERANCE
