"""Native fused ops (csrc/fused.cpp) vs their pure-torch references in ember.kernels.fused.

Tolerance: fp32 rounding level. Each op may differ from its reference only by the order of its
float32 operations (sum-of-squares order in RMSNorm, softmax blocking in attention) and by
~1 ulp in its transcendental functions (exp, cos, sin), so the largest absolute difference must
stay within ULPS = 32 float32 ulps of the scale of the values involved: max |reference output|
for the norms and activations, max |input| for RoPE, max |v| for attention. Observed errors stay
under 12 ulps. KV-cache writes must be bit-exact (torch's own round-to-nearest-even).
"""

from __future__ import annotations

import logging

import pytest
import torch

from ember import kernels
from ember.kernels import fused

ULPS = 32
EPS32 = torch.finfo(torch.float32).eps


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, scale: float) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= ULPS * EPS32 * scale, f"max error {error:.3g} vs scale {scale:.3g}"


def magnitude(x: torch.Tensor) -> float:
    return max(x.abs().max().item(), 1e-30)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> fused.FusedOps:
    monkeypatch.delenv("EMBER_NO_KERNELS", raising=False)
    if not kernels.fast_methods_available():
        pytest.skip("native kernels unavailable on this machine")
    return fused.native_ops()


REF = fused.reference_ops()


def generator(*seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(seed) % 2**31)


# ---- norms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("dim", [5, 64, 576, 640])
def test_rms_norm_and_residual_variants(native: fused.FusedOps, tokens: int, dim: int) -> None:
    g = generator(tokens, dim)
    x = torch.randn(tokens, dim, generator=g) * 3
    residual = torch.randn(tokens, dim, generator=g)
    weight, x_weight = torch.randn(dim, generator=g), torch.randn(dim, generator=g)

    expected = REF.rms_norm(x, weight, 1e-6)
    assert_fp32_close(native.rms_norm(x, weight, 1e-6), expected, magnitude(expected))

    normed, total = native.add_rms_norm(x, residual, weight, 1e-5)
    ref_normed, ref_total = REF.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(total, ref_total)
    assert_fp32_close(normed, ref_normed, magnitude(ref_normed))

    normed, total = native.norm_add_rms_norm(x, residual, x_weight, weight, 1e-6)
    ref_normed, ref_total = REF.norm_add_rms_norm(x, residual, x_weight, weight, 1e-6)
    assert_fp32_close(total, ref_total, magnitude(ref_total))
    assert_fp32_close(normed, ref_normed, magnitude(ref_normed))


def test_rms_norm_per_head_on_a_strided_view(native: fused.FusedOps) -> None:
    # q of a fused QKV output: [T, Hq, Dh] whose token stride spans q, k and v.
    g = generator(7)
    qkv = torch.randn(3, (4 + 2 * 1) * 256, generator=g)
    q = qkv[:, : 4 * 256].view(3, 4, 256)
    weight = torch.randn(256, generator=g)
    expected = REF.rms_norm(q, weight, 1e-6)
    got = native.rms_norm(q, weight, 1e-6)
    assert got.is_contiguous()
    assert_fp32_close(got, expected, magnitude(expected))


def test_zero_rows_normalise_to_zero(native: fused.FusedOps) -> None:
    x = torch.zeros(2, 64)
    assert torch.equal(native.rms_norm(x, torch.ones(64), 1e-6), x)


# ---- gated activations ---------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("width", [1, 7, 1536, 2048])
def test_gated_activations(native: fused.FusedOps, tokens: int, width: int) -> None:
    g = generator(tokens, width)
    gate_up = torch.randn(tokens, 2 * width, generator=g) * 4
    for name in ("silu_mul", "gelu_tanh_mul"):
        expected = getattr(REF, name)(gate_up)
        assert_fp32_close(getattr(native, name)(gate_up), expected, magnitude(expected))


def test_gated_activations_at_the_ends_of_the_range(native: fused.FusedOps) -> None:
    gate = torch.tensor([-200.0, -90.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 90.0, 200.0])
    special = torch.tensor([float("inf"), float("nan")])
    gate_up = torch.cat([gate, special, torch.ones(gate.numel() + 2)])[None]
    for name in ("silu_mul", "gelu_tanh_mul"):
        got, expected = getattr(native, name)(gate_up), getattr(REF, name)(gate_up)
        assert torch.isinf(got[0, -2]) and torch.isnan(got[0, -1])
        assert_fp32_close(got[:, :-2], expected[:, :-2], 200.0)


# ---- RoPE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("head_dim", "rotary_dim"), [(64, 64), (256, 256), (80, 32), (64, 16)])
@pytest.mark.parametrize("position_scale", [1.0, 3.0])
def test_rope(
    native: fused.FusedOps,
    tokens: int,
    interleaved: bool,
    head_dim: int,
    rotary_dim: int,
    position_scale: float,
) -> None:
    g = generator(tokens, int(interleaved), head_dim, rotary_dim, int(position_scale))
    # q and k as views of one fused QKV row, as a layer would pass them.
    qkv = torch.randn(tokens, (9 + 3 + 3) * head_dim, generator=g)
    q = qkv[:, : 9 * head_dim].view(tokens, 9, head_dim)
    k = qkv[:, 9 * head_dim : 12 * head_dim].view(tokens, 3, head_dim)
    positions = torch.randint(0, 40000, (tokens,), generator=g)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    ref_q, ref_k = q.clone(), k.clone()
    REF.rope_(ref_q, ref_k, positions, inv_freq, rotary_dim, interleaved, position_scale)
    v_before = qkv[:, 12 * head_dim :].clone()
    native.rope_(q, k, positions, inv_freq, rotary_dim, interleaved, position_scale)
    assert_fp32_close(q, ref_q, magnitude(qkv))
    assert_fp32_close(k, ref_k, magnitude(qkv))
    assert torch.equal(qkv[:, 12 * head_dim :], v_before)  # v untouched
    # Dims past rotary_dim are left exactly as they were.
    assert torch.equal(q[..., rotary_dim:], ref_q[..., rotary_dim:])


def test_rope_matches_the_rotary_layer() -> None:
    from ember.config import RopeConfig
    from ember.layers.rotary import RotaryEmbedding

    rotary = RotaryEmbedding(64, RopeConfig(theta=10000.0, linear_factor=4.0), interleaved=True)
    g = generator(11)
    q, k = torch.randn(5, 4, 64, generator=g), torch.randn(5, 2, 64, generator=g)
    positions = torch.arange(100, 105)
    cos, sin = rotary.cos_sin(positions)
    expected_q, expected_k = rotary.apply(q, cos, sin), rotary.apply(k, cos, sin)
    REF.rope_(q, k, positions, rotary.inv_freq, 64, True, 4.0)
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)


# ---- KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_kv_is_exact(native: fused.FusedOps, dtype: torch.dtype) -> None:
    g = generator(5)
    k_cache, v_cache = torch.zeros(40, 3, 64, dtype=dtype), torch.zeros(40, 3, 64, dtype=dtype)
    ref_k_cache, ref_v_cache = k_cache.clone(), v_cache.clone()
    qkv = torch.randn(17, (9 + 6) * 64, generator=g)
    k = qkv[:, 9 * 64 : 12 * 64].view(17, 3, 64)
    v = qkv[:, 12 * 64 :].view(17, 3, 64)
    native.write_kv_(k_cache, v_cache, k, v, 20)
    REF.write_kv_(ref_k_cache, ref_v_cache, k, v, 20)
    assert torch.equal(k_cache, ref_k_cache) and torch.equal(v_cache, ref_v_cache)


def test_write_kv_overflow_is_refused(native: fused.FusedOps) -> None:
    cache = torch.zeros(4, 1, 16)
    k = torch.zeros(2, 1, 16)
    with pytest.raises(RuntimeError, match="overflows a cache of 4"):
        native.write_kv_(cache, cache.clone(), k, k, 3)


# ---- attention ---------------------------------------------------------------------------------

HEAD_SHAPES = [(9, 3, 64), (4, 1, 256), (6, 2, 40)]  # SmolLM2, Gemma 3, Dh not a multiple of 16


def attention_case(
    tokens: int, keys: int, heads: tuple[int, int, int], dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """q at positions keys-T .. keys-1; caches with spare slots full of NaN (never read)."""
    q_heads, kv_heads, dim = heads
    g = generator(tokens, keys, q_heads, dim, seed)
    capacity = keys + 9
    q = torch.randn(tokens, q_heads, dim, generator=g)
    k_cache = torch.full((capacity, kv_heads, dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    k_cache[:keys] = (torch.randn(keys, kv_heads, dim, generator=g) * 2).to(dtype)
    v_cache[:keys] = torch.randn(keys, kv_heads, dim, generator=g).to(dtype)
    return q, k_cache, v_cache, keys - tokens


# Queries are the last positions of the cache, so keys >= tokens.
@pytest.mark.parametrize(
    ("tokens", "keys"), [(t, s) for t in (1, 3, 17) for s in (1, 5, 600, 4100) if s >= t]
)
@pytest.mark.parametrize("window", [0, 7, 512])
@pytest.mark.parametrize("heads", HEAD_SHAPES)
def test_decode_attention(
    native: fused.FusedOps, tokens: int, keys: int, window: int, heads: tuple[int, int, int]
) -> None:
    q, k_cache, v_cache, start = attention_case(tokens, keys, heads, torch.float32, 0)
    scale = heads[2] ** -0.5
    expected = REF.decode_attention(q, k_cache, v_cache, start, scale, window)
    got = native.decode_attention(q, k_cache, v_cache, start, scale, window)
    assert got.is_contiguous() and not got.isnan().any()
    assert_fp32_close(got, expected, magnitude(v_cache[:keys]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("tokens", "keys", "window"), [(1, 600, 0), (3, 4100, 512), (17, 40, 7)])
def test_decode_attention_over_half_precision_caches(
    native: fused.FusedOps, dtype: torch.dtype, tokens: int, keys: int, window: int
) -> None:
    q, k_cache, v_cache, start = attention_case(tokens, keys, (9, 3, 64), dtype, 1)
    expected = REF.decode_attention(q, k_cache, v_cache, start, 0.125, window)
    got = native.decode_attention(q, k_cache, v_cache, start, 0.125, window)
    assert_fp32_close(got, expected, magnitude(v_cache[:keys].float()))


def test_decode_attention_reads_strided_queries_and_head_major_caches(
    native: fused.FusedOps,
) -> None:
    g = generator(3)
    qkv = torch.randn(3, (4 + 2) * 64, generator=g)
    q = qkv[:, : 4 * 64].view(3, 4, 64)
    # A cache stored [kv_heads, slots, head_dim], passed as a [slots, kv_heads, head_dim] view.
    k_cache = torch.randn(1, 300, 64, generator=g).transpose(0, 1)
    v_cache = torch.randn(1, 300, 64, generator=g).transpose(0, 1)
    expected = REF.decode_attention(q, k_cache, v_cache, 250, 0.125, 0)
    got = native.decode_attention(q, k_cache, v_cache, 250, 0.125, 0)
    assert_fp32_close(got, expected, magnitude(v_cache))


@pytest.mark.parametrize("threads", [1, 3])
def test_decode_attention_does_not_depend_on_the_thread_count(
    native: fused.FusedOps, threads: int
) -> None:
    # The key range is cut into a different number of chunks for each thread count.
    q, k_cache, v_cache, start = attention_case(2, 4100, (4, 1, 256), torch.float32, 5)
    expected = REF.decode_attention(q, k_cache, v_cache, start, 0.0625, 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = native.decode_attention(q, k_cache, v_cache, start, 0.0625, 0)
    finally:
        torch.set_num_threads(before)
    assert_fp32_close(got, expected, magnitude(v_cache[: start + 2]))


def test_cached_attention_overflow_leaves_q_and_k_untouched(native: fused.FusedOps) -> None:
    q, k = torch.randn(2, 2, 16), torch.randn(2, 1, 16)
    q_before, k_before = q.clone(), k.clone()
    cache = torch.zeros(3, 1, 16)
    with pytest.raises(RuntimeError, match="overflows"):
        native.cached_attention(
            q, k, k, cache, cache.clone(), torch.arange(2, 4), torch.rand(8), 16, False, 1.0, 2,
            0.25, 0,
        )  # fmt: skip
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


def test_decode_attention_refuses_queries_past_the_cache(native: fused.FusedOps) -> None:
    q, k_cache, v_cache, _ = attention_case(3, 5, (9, 3, 64), torch.float32, 0)
    with pytest.raises(RuntimeError, match="does not hold"):
        native.decode_attention(q, k_cache, v_cache, k_cache.shape[0] - 2, 0.125, 0)


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("tokens", [1, 17])
def test_cached_attention(native: fused.FusedOps, qk_norm: bool, tokens: int) -> None:
    q_heads, kv_heads, dim = 4, 1, 256
    g = generator(tokens, int(qk_norm))
    start = 530
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * dim, generator=g)
    k_cache = torch.randn(start + tokens + 5, kv_heads, dim, generator=g)
    v_cache = torch.randn(start + tokens + 5, kv_heads, dim, generator=g)
    norms = (torch.rand(dim, generator=g) + 0.5, torch.rand(dim, generator=g) + 0.5)
    q_norm, k_norm = norms if qk_norm else (None, None)
    positions = torch.arange(start, start + tokens)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))

    def run(ops: fused.FusedOps) -> tuple[torch.Tensor, ...]:
        buffer, kc, vc = qkv.clone(), k_cache.clone(), v_cache.clone()
        q = buffer[:, : q_heads * dim].view(tokens, q_heads, dim)
        k = buffer[:, q_heads * dim : (q_heads + kv_heads) * dim].view(tokens, kv_heads, dim)
        v = buffer[:, (q_heads + kv_heads) * dim :].view(tokens, kv_heads, dim)
        out = ops.cached_attention(
            q, k, v, kc, vc, positions, inv_freq, dim, False, 1.0, start, dim**-0.5, 512,
            q_norm, k_norm, 1e-6,
        )  # fmt: skip
        return out, buffer, kc, vc

    got, expected = run(native), run(REF)
    for actual, wanted in zip(got, expected, strict=True):
        assert_fp32_close(actual, wanted, magnitude(wanted))


# ---- the switch --------------------------------------------------------------------------------


def test_wrappers_run_the_reference_with_ember_no_kernels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")

    def must_not_load() -> bool:
        raise AssertionError("the library was loaded despite EMBER_NO_KERNELS")

    monkeypatch.setattr(kernels, "_library_loaded", must_not_load)
    with caplog.at_level(logging.INFO, logger="ember.kernels"):
        assert fused.select_ops() == REF
        check_wrappers_equal_reference()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_wrappers_run_the_reference_when_the_library_cannot_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMBER_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_library_loaded", lambda: False)
    assert fused.select_ops() == REF
    check_wrappers_equal_reference()


def test_wrappers_use_the_native_ops_when_available(native: fused.FusedOps) -> None:
    assert fused.select_ops() is native
    assert native.rms_norm is torch.ops.ember.rms_norm.default


def check_wrappers_equal_reference() -> None:
    """The ops select_ops() hands the layers give exactly what the reference gives."""
    ops = fused.select_ops()
    g = generator(99)
    x, residual = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    weight, x_weight = torch.randn(64, generator=g), torch.randn(64, generator=g)
    assert torch.equal(ops.rms_norm(x, weight, 1e-6), REF.rms_norm(x, weight, 1e-6))
    for got, want in zip(
        ops.add_rms_norm(x, residual, weight, 1e-6),
        REF.add_rms_norm(x, residual, weight, 1e-6),
        strict=True,
    ):
        assert torch.equal(got, want)
    for got, want in zip(
        ops.norm_add_rms_norm(x, residual, x_weight, weight, 1e-6),
        REF.norm_add_rms_norm(x, residual, x_weight, weight, 1e-6),
        strict=True,
    ):
        assert torch.equal(got, want)
    assert torch.equal(ops.silu_mul(x), REF.silu_mul(x))
    assert torch.equal(ops.gelu_tanh_mul(x), REF.gelu_tanh_mul(x))

    q, k_cache, v_cache, start = attention_case(3, 40, (4, 2, 16), torch.float32, 4)
    assert torch.equal(
        ops.decode_attention(q, k_cache, v_cache, start, 0.25, 7),
        REF.decode_attention(q, k_cache, v_cache, start, 0.25, 7),
    )
    positions, inv_freq = torch.arange(3), torch.rand(8)
    k = torch.randn(3, 2, 16, generator=g)
    q1, k1, q2, k2 = q.clone(), k.clone(), q.clone(), k.clone()
    ops.rope_(q1, k1, positions, inv_freq, 16, False, 1.0)
    REF.rope_(q2, k2, positions, inv_freq, 16, False, 1.0)
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    kc1, vc1, kc2, vc2 = (torch.zeros(5, 2, 16) for _ in range(4))
    ops.write_kv_(kc1, vc1, k, k, 2)
    REF.write_kv_(kc2, vc2, k, k, 2)
    assert torch.equal(kc1, kc2) and torch.equal(vc1, vc2)
    args = (positions, inv_freq, 16, False, 1.0, 0, 0.25, 0)
    out1 = ops.cached_attention(q1, k1, k, kc1, vc1, *args)
    out2 = REF.cached_attention(q2, k2, k, kc2, vc2, *args)
    assert torch.equal(out1, out2)


def paged_case(
    query_lens: list[int],
    seq_lens: list[int],
    heads: tuple[int, int, int],
    block_size: int,
    dtype: torch.dtype,
    seed: int,
) -> tuple[torch.Tensor, ...]:
    """Sequences whose blocks are scattered over a pool in random order; unused blocks and
    table entries are NaN-filled / point at a NaN block, so reading them would show."""
    q_heads, kv_heads, dim = heads
    g = generator(len(seq_lens), block_size, seed)
    needed = [(length + block_size - 1) // block_size for length in seq_lens]
    pool = sum(needed) + 3
    order = torch.randperm(pool - 1, generator=g) + 1  # block 0 stays NaN: the null block
    k_cache = torch.full((pool, block_size, kv_heads, dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    tables = torch.zeros(len(seq_lens), max(needed), dtype=torch.int32)
    used = 0
    for b, length in enumerate(seq_lens):
        ids = order[used : used + needed[b]]
        used += needed[b]
        tables[b, : needed[b]] = ids.to(torch.int32)
        keys = torch.randn(needed[b] * block_size, kv_heads, dim, generator=g) * 2
        values = torch.randn(needed[b] * block_size, kv_heads, dim, generator=g)
        keys[length:] = values[length:] = float("nan")  # slots past the sequence end
        k_cache[ids] = keys.view(-1, block_size, kv_heads, dim).to(dtype)
        v_cache[ids] = values.view(-1, block_size, kv_heads, dim).to(dtype)
    q = torch.randn(sum(query_lens), q_heads, dim, generator=g)
    query_start = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()])
    return q, k_cache, v_cache, tables, query_start, torch.tensor(seq_lens)


PAGED_BATCHES = [
    ([1], [1]),
    ([1, 1, 1], [37, 5, 600]),
    ([3, 1, 17], [3, 300, 40]),
    ([16] * 2 + [1] * 30, [16, 700] + list(range(40, 1240, 40))),
]


@pytest.mark.parametrize(("query_lens", "seq_lens"), PAGED_BATCHES)
@pytest.mark.parametrize("block_size", [16, 5])
@pytest.mark.parametrize("window", [0, 7, 512])
@pytest.mark.parametrize("heads", [(9, 3, 64), (4, 1, 256)])
@pytest.mark.parametrize("fixed_chunk", [0, 40])
def test_paged_attention(
    native: fused.FusedOps,
    query_lens: list[int],
    seq_lens: list[int],
    block_size: int,
    window: int,
    heads: tuple[int, int, int],
    fixed_chunk: int,
) -> None:
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        query_lens, seq_lens, heads, block_size, torch.float32, 2
    )
    scale = heads[2] ** -0.5
    expected = REF.paged_attention(q, k_cache, v_cache, tables, starts, lens, scale, window)
    got = native.paged_attention(
        q, k_cache, v_cache, tables, starts, lens, scale, window, fixed_chunk
    )
    assert not expected.isnan().any() and not got.isnan().any()
    assert_fp32_close(got, expected, magnitude(v_cache.nan_to_num(0.0)))


def test_paged_reference_equals_contiguous_attention() -> None:
    """The paged reference sees exactly what one contiguous cache per sequence holds."""
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        [2, 1], [30, 17], (4, 2, 32), 8, torch.float32, 3
    )
    got = REF.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.2, 0)
    for b in range(2):
        ids = tables[b, : (int(lens[b]) + 7) // 8].long()
        keys = k_cache[ids].flatten(0, 1)[: int(lens[b])]
        values = v_cache[ids].flatten(0, 1)[: int(lens[b])]
        rows = slice(int(starts[b]), int(starts[b + 1]))
        count = rows.stop - rows.start
        expected = REF.decode_attention(q[rows], keys, values, int(lens[b]) - count, 0.2, 0)
        torch.testing.assert_close(got[rows], expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_attention_over_half_precision_caches(
    native: fused.FusedOps, dtype: torch.dtype
) -> None:
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        [1, 4, 1], [600, 50, 9], (9, 3, 64), 16, dtype, 4
    )
    expected = REF.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.125, 0)
    got = native.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.125, 0)
    assert_fp32_close(got, expected, magnitude(v_cache.float().nan_to_num(0.0)))


def test_paged_attention_refuses_blocks_outside_the_pool(native: fused.FusedOps) -> None:
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        [1], [40], (2, 1, 16), 16, torch.float32, 5
    )
    tables[0, 1] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="outside the pool"):
        native.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.25, 0)
    tables[0, 1] = 1
    lens[0] = 10_000  # more positions than the table can hold
    with pytest.raises(RuntimeError, match="room for"):
        native.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.25, 0)


def test_paged_attention_never_reads_blocks_behind_the_window(native: fused.FusedOps) -> None:
    """A sliding layer's table points blocks wholly behind the window at the (NaN) null block."""
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        [1, 3], [600, 333], (9, 3, 64), 16, torch.float32, 6
    )
    expected = REF.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.125, 100)
    for b in range(2):
        first_visible = int(lens[b]) - (int(starts[b + 1]) - int(starts[b])) - 100 + 1
        tables[b, : first_visible // 16] = 0
    got = native.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.125, 100)
    assert not got.isnan().any()
    assert_fp32_close(got, expected, magnitude(v_cache.nan_to_num(0.0)))


def test_paged_attention_with_a_fixed_split_ignores_the_rest_of_the_batch(
    native: fused.FusedOps,
) -> None:
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        [1, 5, 1], [700, 90, 33], (9, 3, 64), 16, torch.bfloat16, 7
    )
    together = native.paged_attention(q, k_cache, v_cache, tables, starts, lens, 0.125, 0, 256)
    for b in range(3):
        rows = slice(int(starts[b]), int(starts[b + 1]))
        alone = native.paged_attention(
            q[rows], k_cache, v_cache, tables[b : b + 1],
            torch.tensor([0, rows.stop - rows.start]), lens[b : b + 1], 0.125, 0, 256,
        )  # fmt: skip
        assert torch.equal(alone, together[rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_kv_paged_is_exact(native: fused.FusedOps, dtype: torch.dtype) -> None:
    g = generator(11)
    qkv = torch.randn(5, 4 * 32, generator=g)
    k, v = qkv[:, : 2 * 32].view(5, 2, 32), qkv[:, 2 * 32 :].view(5, 2, 32)
    blocks, offsets = torch.tensor([3, 3, 1, 7, 0]), torch.tensor([0, 5, 2, 7, 1])
    expected_k = torch.randn(8, 2, 8, 32, generator=g).to(dtype)
    expected_v = torch.randn(8, 2, 8, 32, generator=g).to(dtype)
    got_k, got_v = expected_k.clone(), expected_v.clone()
    REF.write_kv_paged_(expected_k, expected_v, k, v, blocks, offsets)
    native.write_kv_paged_(got_k, got_v, k, v, blocks, offsets)
    assert torch.equal(got_k, expected_k) and torch.equal(got_v, expected_v)
    with pytest.raises(RuntimeError, match="outside"):
        native.write_kv_paged_(got_k, got_v, k, v, torch.tensor([3, 3, 1, 8, 0]), offsets)


def test_write_kv_paged_int8_matches_the_reference_exactly(native: fused.FusedOps) -> None:
    g = generator(12)
    qkv = torch.randn(6, 4 * 32, generator=g) * 3
    qkv[2, :32] = 0.0  # an all-zero row: scale 0, codes 0
    k, v = qkv[:, : 2 * 32].view(6, 2, 32), qkv[:, 2 * 32 :].view(6, 2, 32)
    blocks, offsets = torch.tensor([3, 3, 1, 7, 0, 5]), torch.tensor([0, 5, 2, 7, 1, 1])
    pages = [torch.zeros(8, 2, 8, 32, dtype=torch.int8) for _ in range(4)]
    scales = [torch.zeros(8, 2, 8) for _ in range(4)]
    REF.write_kv_paged_(pages[0], pages[1], k, v, blocks, offsets, scales[0], scales[1])
    native.write_kv_paged_(pages[2], pages[3], k, v, blocks, offsets, scales[2], scales[3])
    assert torch.equal(pages[0], pages[2]) and torch.equal(pages[1], pages[3])
    assert torch.equal(scales[0], scales[2]) and torch.equal(scales[1], scales[3])
    restored = pages[2][blocks, :, offsets].float() * scales[2][blocks, :, offsets].unsqueeze(-1)
    assert (restored - k).abs().max() <= k.abs().amax() / 127 / 2 * 1.001
    with pytest.raises(RuntimeError, match="int8 pages need"):
        native.write_kv_paged_(pages[2], pages[3], k, v, blocks, offsets)


@pytest.mark.parametrize(("query_lens", "seq_lens"), PAGED_BATCHES)
@pytest.mark.parametrize("window", [0, 7])
def test_paged_attention_over_int8_pages(
    native: fused.FusedOps, query_lens: list[int], seq_lens: list[int], window: int
) -> None:
    q, k_cache, v_cache, tables, starts, lens = paged_case(
        query_lens, seq_lens, (9, 3, 64), 16, torch.float32, 8
    )
    # Quantize the pool page by page: head-major codes, one scale per row.
    k_pages, k_scales = fused.quantize_rows_int8(k_cache.nan_to_num(0.0).transpose(1, 2))
    v_pages, v_scales = fused.quantize_rows_int8(v_cache.nan_to_num(0.0).transpose(1, 2))
    k_view, v_view = k_pages.transpose(1, 2), v_pages.transpose(1, 2)
    args = (tables, starts, lens, 0.125, window, 0, k_scales, v_scales)
    expected = REF.paged_attention(q, k_view, v_view, *args)
    got = native.paged_attention(q, k_view, v_view, *args)
    assert not got.isnan().any()
    assert_fp32_close(got, expected, magnitude(v_cache.nan_to_num(0.0)))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.int8])
def test_paged_cached_attention(
    native: fused.FusedOps, qk_norm: bool, kv_dtype: torch.dtype
) -> None:
    g = generator(13, int(qk_norm))
    heads, kv_heads, dim, block = 4, 2, 32, 8
    lens, counts = torch.tensor([20, 3, 9]), torch.tensor([1, 3, 2])
    starts = torch.tensor([0, *counts.cumsum(0).tolist()])
    tokens = int(counts.sum())
    tables = torch.tensor([[1, 2, 3], [4, 0, 0], [5, 6, 0]], dtype=torch.int32)
    positions = torch.cat(
        [torch.arange(int(n) - int(c), int(n)) for n, c in zip(lens, counts, strict=True)]
    )
    blocks = torch.cat(
        [tables[b, (positions[starts[b] : starts[b + 1]] // block)].long() for b in range(3)]
    )
    offsets = positions % block
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    norms = (torch.rand(dim, generator=g) + 0.5, torch.rand(dim, generator=g) + 0.5)
    results = []
    for ops in (REF, native):
        q = qkv[:, : heads * dim].clone().view(tokens, heads, dim)
        k = qkv[:, heads * dim : (heads + kv_heads) * dim].clone().view(tokens, kv_heads, dim)
        v = qkv[:, (heads + kv_heads) * dim :].view(tokens, kv_heads, dim)
        pages = torch.Generator().manual_seed(3)
        k_pages = (torch.randn(7, kv_heads, block, dim, generator=pages) * 40).to(kv_dtype)
        v_pages = (torch.randn(7, kv_heads, block, dim, generator=pages) * 40).to(kv_dtype)
        scales = None, None
        if kv_dtype == torch.int8:
            scales = (
                torch.rand(7, kv_heads, block, generator=pages) * 0.02,
                torch.rand(7, kv_heads, block, generator=pages) * 0.02,
            )
        out = ops.paged_cached_attention(
            q, k, v, k_pages, v_pages, blocks, offsets, positions, inv_freq, dim, False, 1.0,
            tables, starts, lens, dim**-0.5, 0, 0, *scales,
            norms[0] if qk_norm else None, norms[1] if qk_norm else None, 1e-6,
        )  # fmt: skip
        results.append((out, q, k, k_pages, v_pages))
    for expected, got in zip(results[0], results[1], strict=True):
        if expected.dtype in (torch.bfloat16, torch.int8):
            assert torch.equal(expected, got)
        else:
            assert_fp32_close(got, expected, max(magnitude(expected), 1.0))


# ---- prefill attention (csrc/prefill_attention.cpp) --------------------------------------------
# bf16 dot products on operands split into bf16 parts (queries and softmax weights two parts;
# fp32 / fp16 / int8 keys and values two, bf16 ones are exact), so results stay within ~2^-16
# of fp32 attention, relative to max |v|. Observed: 6e-6 over bf16 caches, 1.4e-5 over the
# others; a wrong mask or pack, or a lost low part (~2e-3), is far outside.
PREFILL_TOLERANCE = 5e-5


def assert_prefill_close(actual: torch.Tensor, expected: torch.Tensor, scale: float, tol: float):
    assert actual.shape == expected.shape and not actual.isnan().any()
    error = (actual - expected).abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize(
    ("tokens", "keys"), [(1, 1), (3, 5), (17, 17), (17, 600), (100, 100), (513, 513), (64, 1000)]
)
@pytest.mark.parametrize("window", [0, 7, 512])
@pytest.mark.parametrize("heads", [(9, 3, 64), (4, 1, 256), (6, 2, 48), (2, 2, 16)])
@pytest.mark.parametrize("block_size", [16, 5])
def test_prefill_attention(
    native: fused.FusedOps,
    tokens: int,
    keys: int,
    window: int,
    heads: tuple[int, int, int],
    block_size: int,
) -> None:
    q, k_cache, v_cache, tables, _, _ = paged_case(
        [tokens], [keys], heads, block_size, torch.bfloat16, 20
    )
    scale = heads[2] ** -0.5
    args = (tables[0], keys, scale, window)
    expected = REF.prefill_attention(q, k_cache, v_cache, *args)
    got = native.prefill_attention(q, k_cache, v_cache, *args)
    assert got.is_contiguous()
    assert_prefill_close(
        got, expected, magnitude(v_cache.float().nan_to_num(0.0)), PREFILL_TOLERANCE
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("tokens", "keys", "window"), [(40, 40, 0), (70, 300, 64)])
def test_prefill_attention_over_wider_caches(
    native: fused.FusedOps, dtype: torch.dtype, tokens: int, keys: int, window: int
) -> None:
    q, k_cache, v_cache, tables, _, _ = paged_case([tokens], [keys], (4, 1, 256), 16, dtype, 21)
    args = (tables[0], keys, 0.0625, window)
    expected = REF.prefill_attention(q, k_cache, v_cache, *args)
    got = native.prefill_attention(q, k_cache, v_cache, *args)
    assert_prefill_close(
        got, expected, magnitude(v_cache.float().nan_to_num(0.0)), PREFILL_TOLERANCE
    )


def test_prefill_attention_over_int8_pages(native: fused.FusedOps) -> None:
    q, k_cache, v_cache, tables, _, _ = paged_case([50], [230], (9, 3, 64), 16, torch.float32, 22)
    k_pages, k_scales = fused.quantize_rows_int8(k_cache.nan_to_num(0.0).transpose(1, 2))
    v_pages, v_scales = fused.quantize_rows_int8(v_cache.nan_to_num(0.0).transpose(1, 2))
    k_view, v_view = k_pages.transpose(1, 2), v_pages.transpose(1, 2)
    args = (tables[0], 230, 0.125, 0, k_scales, v_scales)
    expected = REF.prefill_attention(q, k_view, v_view, *args)
    got = native.prefill_attention(q, k_view, v_view, *args)
    assert_prefill_close(got, expected, magnitude(v_cache.nan_to_num(0.0)), PREFILL_TOLERANCE)
    with pytest.raises(RuntimeError, match="int8 pages need"):
        native.prefill_attention(q, k_view, v_view, tables[0], 230, 0.125, 0)


def test_prefill_attention_reads_a_contiguous_cache_as_one_block(native: fused.FusedOps) -> None:
    """How the single-sequence path calls it: [1, capacity, Hk, Dh] and the block table [0]."""
    q, k_cache, v_cache, start = attention_case(30, 90, (4, 1, 256), torch.bfloat16, 23)
    one = torch.zeros(1, dtype=torch.int32)
    got = native.prefill_attention(q, k_cache[None], v_cache[None], one, 90, 0.0625, 0)
    expected = REF.decode_attention(q, k_cache, v_cache, start, 0.0625, 0)
    assert_prefill_close(got, expected, magnitude(v_cache[:90].float()), PREFILL_TOLERANCE)


def test_prefill_reference_equals_the_decode_reference() -> None:
    """The paged prefill reference is the decode reference on the gathered sequence."""
    q, k_cache, v_cache, tables, _, _ = paged_case([600], [700], (9, 3, 64), 16, torch.float32, 24)
    got = REF.prefill_attention(q, k_cache, v_cache, tables[0], 700, 0.125, 300)
    ids = tables[0].long()
    keys, values = k_cache[ids].flatten(0, 1)[:700], v_cache[ids].flatten(0, 1)[:700]
    expected = REF.decode_attention(q, keys, values, 100, 0.125, 300)
    torch.testing.assert_close(got, expected)


def test_prefill_attention_does_not_depend_on_the_thread_count(native: fused.FusedOps) -> None:
    q, k_cache, v_cache, tables, _, _ = paged_case(
        [200], [260], (4, 1, 256), 16, torch.bfloat16, 25
    )
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(native.prefill_attention(q, k_cache, v_cache, tables[0], 260, 0.06, 0))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


def test_prefill_attention_refuses_bad_shapes_and_blocks(native: fused.FusedOps) -> None:
    q, k_cache, v_cache, tables, _, _ = paged_case([20], [40], (2, 1, 16), 16, torch.bfloat16, 26)
    table = tables[0].clone()
    table[1] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="outside the pool"):
        native.prefill_attention(q, k_cache, v_cache, table, 40, 0.25, 0)
    with pytest.raises(RuntimeError, match="need more than"):
        native.prefill_attention(q, k_cache, v_cache, tables[0], 10_000, 0.25, 0)
    with pytest.raises(RuntimeError, match="need more than"):  # fewer positions than queries
        native.prefill_attention(q, k_cache, v_cache, tables[0], 19, 0.25, 0)
    odd = torch.zeros(3, 16, 1, 40, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        native.prefill_attention(torch.zeros(2, 2, 40), odd, odd, tables[0][:3], 30, 0.25, 0)
