"""Real GGUF models against llama.cpp's own outputs (see shared/reference/README.md)."""

from __future__ import annotations

import pytest
import torch

from tests.parity.conftest import load_reference, reference_file

pytestmark = pytest.mark.parity

PPL_REFERENCE = {"smollm2-135m-instruct-q4_1": 15.9289, "gemma-3-270m-q4_k_m": 10.1452}


def test_teacher_forced_agreement_with_llamacpp(reference_model) -> None:
    """At each of llama.cpp's 32 continuation positions, Ember's best token is llama.cpp's at
    >= 95% of positions, and llama.cpp's token is never more than 0.5 nats below Ember's best."""
    key, loaded = reference_model
    cases = load_reference("llamacpp-greedy.json")["models"][key]
    agree = total = 0
    worst_gap = 0.0
    for case in cases:
        prompt, completion = case["prompt_tokens"], case["completion_tokens"]
        ids = torch.tensor(prompt + completion)
        cache = loaded.model.new_cache(len(ids))
        hidden = loaded.model.prefill(ids, cache)
        # Row p predicts token p + 1: rows len(prompt)-1 .. end-1 predict the completion.
        logits = loaded.model.compute_logits(hidden[len(prompt) - 1 : len(ids) - 1])
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        expected = torch.tensor(completion)
        agree += int((logprobs.argmax(-1) == expected).sum())
        total += len(completion)
        gaps = logprobs.max(-1).values - logprobs.gather(1, expected[:, None]).squeeze(1)
        worst_gap = max(worst_gap, float(gaps.max()))
    assert agree / total >= 0.95, f"{key}: {agree}/{total} positions agree"
    assert worst_gap <= 0.5, f"{key}: llama.cpp's token is {worst_gap:.3f} nats below Ember's best"


def test_perplexity_within_one_percent_of_llamacpp(reference_model) -> None:
    from ember.bench.perplexity import perplexity

    key, loaded = reference_model
    text = reference_file("apache-2.0.txt").read_text()
    result = perplexity(loaded, text, n_ctx=512)
    assert result.chunks == 4
    assert result.tokens_scored == 4 * 255
    expected = PPL_REFERENCE[key]
    assert abs(result.perplexity - expected) / expected < 0.01, (
        f"{key}: perplexity {result.perplexity:.4f} vs llama.cpp {expected}"
    )
