"""The Python API end to end on the real default model (SmolLM2-135M-Instruct, Q4_1)."""

from __future__ import annotations

import pytest
import torch

import ember
from ember.errors import RequestError
from tests.parity.conftest import load_reference

pytestmark = pytest.mark.parity

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm() -> ember.LLM:
    return ember.LLM("smollm2-135m-instruct")


def greedy(max_tokens: int = 12, **extra) -> ember.SamplingParams:
    return ember.SamplingParams(temperature=0.0, max_tokens=max_tokens, **extra)


def test_greedy_follows_the_models_argmax(llm: ember.LLM) -> None:
    [out] = llm.generate(PROMPT, greedy(8, logprobs=1))
    ids = llm.get_tokenizer().encode(PROMPT)
    assert out.prompt_token_ids == ids
    completion = out.outputs[0]
    assert len(completion.token_ids) == 8 and completion.logprobs is not None
    for token, position in zip(completion.token_ids, completion.logprobs, strict=True):
        assert position[token].rank == 1
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids)
    assert completion.finish_reason == "length"
    assert out.finished


def test_cached_decode_matches_full_recompute(llm: ember.LLM) -> None:
    """Logits from the KV-cached single-token path equal a full recompute of the sequence
    (up to the kernels' arithmetic: int8 activations at one row, bf16 tiles at many)."""
    model = llm.loaded.model
    tokens = llm.get_tokenizer().encode(PROMPT) + [7042, 30, 198, 198, 504]
    # float32 caches: this checks the caching, not the rounding of a 16-bit cache.
    cache = model.new_cache(len(tokens), torch.float32)
    model(torch.tensor(tokens[:-1]), cache, 0)
    stepped = model.compute_logits(model(torch.tensor(tokens[-1:]), cache, cache.length))[0]
    fresh = model.new_cache(len(tokens), torch.float32)
    full = model.compute_logits(model(torch.tensor(tokens), fresh, 0)[-1:])[0]
    assert torch.nn.functional.cosine_similarity(stepped, full, dim=0) > 0.999
    assert int(stepped.argmax()) == int(full.argmax())


def test_token_id_prompts_equal_text_prompts(llm: ember.LLM) -> None:
    ids = llm.get_tokenizer().encode(PROMPT)
    by_text, by_ids = llm.generate([PROMPT, {"prompt_token_ids": ids}], greedy(6))
    assert by_ids.prompt is None and by_ids.prompt_token_ids == ids
    assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids


def test_same_seed_same_text_and_different_seeds_differ(llm: ember.LLM) -> None:
    def sample(seed: int) -> str:
        params = ember.SamplingParams(temperature=1.0, max_tokens=24, seed=seed)
        return llm.generate("Write a word:", params)[0].outputs[0].text

    first, again = sample(7), sample(7)
    assert first == again
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_stop_string_truncates_and_reports(llm: ember.LLM) -> None:
    full = llm.generate(PROMPT, greedy(16))[0].outputs[0]
    stop = full.text[6:9]  # a string the greedy answer is known to contain
    cut = llm.generate(PROMPT, greedy(16, stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == full.text[: full.text.index(stop)]
    kept = llm.generate(PROMPT, greedy(16, stop=[stop], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == full.text[: full.text.index(stop) + len(stop)]


def test_stop_token_ids_and_ignore_eos(llm: ember.LLM) -> None:
    full = llm.generate(PROMPT, greedy(10))[0].outputs[0]
    target = full.token_ids[3]
    cut = llm.generate(PROMPT, greedy(10, stop_token_ids=[target]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == target
    assert cut.token_ids == full.token_ids[: full.token_ids.index(target) + 1]


def test_chat_stops_on_end_of_turn_and_matches_llamacpp_prompt(llm: ember.LLM) -> None:
    chat = load_reference("llamacpp-chat.json")["chats"][1]
    text, ids = llm.chat_prompt_ids(chat["messages"])
    assert text == chat["rendered_prompt"]
    assert len(ids) == chat["usage"]["prompt_tokens"]
    [out] = llm.chat(chat["messages"], greedy(64))
    completion = out.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason is None
    assert completion.token_ids[-1] in llm.get_tokenizer().eos_token_ids
    assert "<|im_end|>" not in completion.text
    forced = llm.chat(chat["messages"], greedy(40, ignore_eos=True))[0].outputs[0]
    assert len(forced.token_ids) == 40 and forced.finish_reason == "length"


def test_logprobs_in_vllm_convention(llm: ember.LLM) -> None:
    [out] = llm.generate(PROMPT, greedy(5, logprobs=3, prompt_logprobs=2))
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 5
    total = 0.0
    for token, position in zip(completion.token_ids, completion.logprobs, strict=True):
        assert token in position and position[token].rank == 1  # greedy picks the argmax
        assert 3 <= len(position) <= 4
        assert all(lp.logprob <= 0 for lp in position.values())
        total += position[token].logprob
    assert completion.cumulative_logprob == pytest.approx(total)
    prompt_lps = out.prompt_logprobs
    assert prompt_lps is not None and len(prompt_lps) == len(out.prompt_token_ids)
    assert prompt_lps[0] is None
    for token, position in zip(out.prompt_token_ids[1:], prompt_lps[1:], strict=True):
        assert position is not None and token in position and 2 <= len(position) <= 3


def test_n_completions_with_seed(llm: ember.LLM) -> None:
    params = ember.SamplingParams(n=3, temperature=0.9, max_tokens=8, seed=3)
    [out] = llm.generate(PROMPT, params)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    again = llm.generate(PROMPT, params)[0]
    assert [c.text for c in out.outputs] == [c.text for c in again.outputs]


def test_stream_equals_generate(llm: ember.LLM) -> None:
    ids = llm.get_tokenizer().encode("Tell me about the sea in French:")
    params = greedy(24)
    streamed = "".join(d.text for d in llm.stream(ids, params))
    assert streamed == llm.generate({"prompt_token_ids": ids}, params)[0].outputs[0].text


def test_context_limits_are_checked_before_work(llm: ember.LLM) -> None:
    small = ember.LLM("smollm2-135m-instruct", max_model_len=16)
    with pytest.raises(RequestError, match="16"):
        small.generate("word " * 40, greedy(4))
    with pytest.raises(RequestError, match=r"max_tokens \(100\)"):
        small.generate(PROMPT, greedy(100))
    with pytest.raises(RequestError, match="empty"):
        llm.generate({"prompt_token_ids": []}, greedy(4))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [10**9]}, greedy(4))
