"""Every architecture, tiny random weights: Ember's logits and greedy tokens equal transformers'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.models.loader import load_model_path
from tests.models.tiny import SPECS, VOCAB, build_hf_model, save_gguf, save_hf

pytestmark = pytest.mark.models

PROMPT = torch.tensor(
    [[3, 17, 42, 99, 5, 7, 120, 64, 33, 2, 150, 11, 8, 91, 27, 45, 6, 130, 77, 12]]
)


def _ember_logits(path: Path, prompt: torch.Tensor) -> torch.Tensor:
    loaded = load_model_path(path, with_tokenizer=False)
    cache = loaded.model.new_cache(prompt.shape[1], torch.float32)
    hidden = loaded.model(prompt[0], cache, 0)
    return loaded.model.compute_logits(hidden)


def _ember_greedy(path: Path, prompt: torch.Tensor, steps: int) -> list[int]:
    loaded = load_model_path(path, with_tokenizer=False)
    model = loaded.model
    cache = model.new_cache(prompt.shape[1] + steps, torch.float32)
    logits = model.compute_logits(model(prompt[0], cache, 0)[-1:])
    out: list[int] = []
    for _ in range(steps):
        token = int(logits[-1].argmax())
        out.append(token)
        logits = model.compute_logits(model(torch.tensor([token]), cache, cache.length))
    return out


def _hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> list[int]:
    with torch.no_grad():
        generated = model.generate(
            prompt, max_new_tokens=steps, do_sample=False, min_new_tokens=steps, pad_token_id=0
        )
    return generated[0, prompt.shape[1] :].tolist()


@pytest.fixture(scope="module", params=sorted(SPECS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    model = build_hf_model(name)
    directory = save_hf(model, tmp_path_factory.mktemp(f"{name}-hf"))
    gguf_path = save_gguf(model, tmp_path_factory.mktemp(f"{name}-gguf") / "model.gguf")
    with torch.no_grad():
        reference = model(PROMPT).logits[0].float()
    return name, model, directory, gguf_path, reference


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_logits_match_transformers(tiny, fmt: str) -> None:
    name, _, directory, gguf_path, reference = tiny
    logits = _ember_logits(directory if fmt == "safetensors" else gguf_path, PROMPT)
    assert logits.shape == (PROMPT.shape[1], VOCAB)
    torch.testing.assert_close(logits, reference, atol=2e-4, rtol=1e-4, msg=f"{name}/{fmt}")


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_greedy_tokens_match_transformers(tiny, fmt: str) -> None:
    name, model, directory, gguf_path, _ = tiny
    # Longer than the tiny Gemma's sliding window (8), so cached decode crosses the window.
    steps = 12
    expected = _hf_greedy(model, PROMPT, steps)
    got = _ember_greedy(directory if fmt == "safetensors" else gguf_path, PROMPT, steps)
    assert got == expected, f"{name}/{fmt}"


# gguf can write these block types itself; K-quants are covered on the real models.
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantized_gguf_matches_transformers_on_dequantized_weights(
    tmp_path: Path, qtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quantized GGUF runs with its weights kept quantized, and the reference path computes
    exactly what transformers computes in fp32 on the same weights dequantized."""
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")
    import gguf

    # Wider than the other tiny models so rows hold several quant blocks.
    model = build_hf_model(
        "qwen3", hidden_size=256, intermediate_size=512, num_attention_heads=8, head_dim=32
    )
    path = save_gguf(model, tmp_path / "model.gguf", qtype=qtype)
    loaded = load_model_path(path, with_tokenizer=False)
    assert loaded.model.layers[0].attn.qkv.method.name == qtype
    ggml_type = gguf.GGMLQuantizationType[qtype]
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                array = param.detach().numpy()
                restored = gguf.quants.dequantize(gguf.quants.quantize(array, ggml_type), ggml_type)
                param.copy_(torch.from_numpy(restored.reshape(array.shape)))
        reference = model(PROMPT).logits[0]
    logits = _ember_logits(path, PROMPT)
    torch.testing.assert_close(logits, reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_safetensors(tmp_path: Path, dtype: torch.dtype) -> None:
    """bf16/fp16 folders load in their dtype and compute what transformers computes in fp32
    on the same (rounded) weights."""
    model = build_hf_model("llama")
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(dtype).float())
        reference = model(PROMPT).logits[0]
    save_hf(model.to(dtype), tmp_path)
    loaded = load_model_path(tmp_path, with_tokenizer=False)
    expected_type = "BF16" if dtype == torch.bfloat16 else "F16"
    assert loaded.model.layers[0].mlp.gate_up.method.name == expected_type
    logits = _ember_logits(tmp_path, PROMPT)
    torch.testing.assert_close(logits, reference, atol=2e-4, rtol=1e-4)


def test_prefill_in_steps_matches_transformers(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt prefilled in several forward steps (here 7 tokens each, so steps cross the tiny
    Gemma's sliding window of 8) gives the logits of transformers' one pass."""
    import ember.models.base

    monkeypatch.setattr(ember.models.base, "PREFILL_UBATCH", 7)
    name, _, _, gguf_path, reference = tiny
    loaded = load_model_path(gguf_path, with_tokenizer=False)
    cache = loaded.model.new_cache(PROMPT.shape[1], torch.float32)
    logits = loaded.model.compute_logits(loaded.model.prefill(PROMPT[0], cache))
    assert cache.length == PROMPT.shape[1]
    torch.testing.assert_close(logits, reference, atol=2e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_cache_prompt_stays_close_to_transformers(tiny, dtype: torch.dtype) -> None:
    """A 16-bit cache sends a prompt through the native prefill attention: its logits stay
    within the cache's rounding of transformers' fp32 ones."""
    name, _, _, gguf_path, reference = tiny
    loaded = load_model_path(gguf_path, with_tokenizer=False)
    cache = loaded.model.new_cache(PROMPT.shape[1], dtype)
    logits = loaded.model.compute_logits(loaded.model(PROMPT[0], cache, 0))
    scale = reference.abs().max()
    # Observed: 0.3-0.4% of the largest logit; a mask or packing error moves far more.
    torch.testing.assert_close(logits, reference, atol=float(scale) * 0.01, rtol=0.0, msg=name)
    similarity = torch.nn.functional.cosine_similarity(logits, reference, dim=-1)
    assert bool((similarity > 0.9995).all()), name
