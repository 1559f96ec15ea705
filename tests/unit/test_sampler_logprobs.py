from __future__ import annotations

import math

import pytest
import torch

from ember.sample import PositionLogprobs, RequestSamplingState, Sampler, prompt_logprobs
from ember.sample.logprobs import score_tokens
from ember.sampling_params import SamplingParams


def state(params: SamplingParams, prompt: tuple[int, ...] = ()) -> RequestSamplingState:
    return RequestSamplingState(params, prompt)


def random_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def only(position: PositionLogprobs | None) -> PositionLogprobs:
    assert position is not None
    return position


def test_raw_logprobs_ignore_all_processing() -> None:
    """vLLM's default mode: log_softmax of the model's logits, before bias/penalties/temperature."""
    logits = random_logits(2, 12)
    busy = SamplingParams(
        temperature=0.5,
        top_k=3,
        repetition_penalty=1.4,
        presence_penalty=1.0,
        logit_bias={5: 4.0},
        logprobs=4,
        seed=3,
    )
    greedy = SamplingParams(temperature=0, logprobs=2, frequency_penalty=1.0)
    requests = [state(busy, prompt=(1, 2)), state(greedy, prompt=(0,))]
    requests[1].append_token(int(logits[1].argmax()))
    out = Sampler().sample(logits, requests)
    raw = torch.log_softmax(logits, dim=-1)
    for row, n in [(0, 4), (1, 2)]:
        position = only(out.logprobs[row])
        token = out.token_ids[row]
        assert position.chosen.token_id == token
        assert position.chosen.logprob == pytest.approx(float(raw[row, token]), abs=1e-6)
        assert position.chosen.rank == int((raw[row] >= raw[row, token]).sum())
        best = raw[row].topk(n)
        assert [lp.token_id for lp in position.top] == best.indices.tolist()
        assert [lp.logprob for lp in position.top] == pytest.approx(best.values.tolist(), abs=1e-6)
        assert [lp.rank for lp in position.top] == list(range(1, n + 1))


def test_processed_logprobs_are_the_sampled_distribution() -> None:
    logits = random_logits(1, 10, seed=1)
    params = SamplingParams(temperature=0.7, top_k=3, logprobs=10)
    out = Sampler(logprobs_mode="processed_logprobs").sample(logits, [state(params)])
    position = only(out.logprobs[0])
    values = [lp.logprob for lp in position.top]
    finite = [v for v in values if math.isfinite(v)]
    assert len(finite) == 3 and values[3:] == [-math.inf] * 7
    assert sum(math.exp(v) for v in finite) == pytest.approx(1.0, abs=1e-5)
    tempered = torch.log_softmax(logits[0] / 0.7, dim=0)
    kept = tempered.topk(3)
    renormalised = kept.values - torch.logsumexp(kept.values, dim=0)
    assert values[:3] == pytest.approx(renormalised.tolist(), abs=1e-5)
    assert position.chosen.token_id in kept.indices.tolist()
    assert math.isfinite(position.chosen.logprob)


def test_processed_logprobs_in_mixed_batch() -> None:
    logits = random_logits(2, 6, seed=2)
    requests = [
        state(SamplingParams(temperature=0, logprobs=6)),
        state(SamplingParams(temperature=2.0, logprobs=6)),
    ]
    out = Sampler(logprobs_mode="processed_logprobs").sample(logits, requests)
    for row, temperature in [(0, 1.0), (1, 2.0)]:
        want = torch.log_softmax(logits[row] / temperature, dim=0)
        got = {lp.token_id: lp.logprob for lp in only(out.logprobs[row]).top}
        assert [got[i] for i in range(6)] == pytest.approx(want.tolist(), abs=1e-5)


def test_top_probabilities_sum_to_at_most_one_and_full_vocab_to_one() -> None:
    logits = random_logits(1, 20, seed=4)
    for n in (1, 5, 20):
        position = only(Sampler().sample(logits, [state(SamplingParams(logprobs=n))]).logprobs[0])
        total = sum(math.exp(lp.logprob) for lp in position.top)
        assert len(position.top) == n
        assert total <= 1.0 + 1e-6
        assert [lp.logprob for lp in position.top] == sorted(
            (lp.logprob for lp in position.top), reverse=True
        )
    assert total == pytest.approx(1.0, abs=1e-5)


def test_logprobs_zero_returns_only_chosen_and_none_when_not_asked() -> None:
    logits = random_logits(2, 8)
    requests = [state(SamplingParams(temperature=0, logprobs=0)), state(SamplingParams())]
    out = Sampler().sample(logits, requests)
    position = only(out.logprobs[0])
    assert position.top == ()
    assert position.chosen.rank == 1 and position.chosen.token_id == out.token_ids[0]
    assert out.logprobs[1] is None


def test_tied_chosen_token_gets_worst_rank_of_its_tie() -> None:
    logits = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    out = Sampler().sample(logits, [state(SamplingParams(temperature=0, logprobs=1))])
    assert out.token_ids == [0]
    assert only(out.logprobs[0]).chosen.rank == 3


def test_prompt_logprobs_shape_and_values() -> None:
    logits = random_logits(5, 11, seed=6)
    tokens = [3, 7, 0, 10, 2]
    result = prompt_logprobs(logits, tokens, 3)
    assert len(result) == 5 and result[0] is None
    expected = torch.log_softmax(logits, dim=-1)
    for position in range(1, 5):
        entry = only(result[position])
        token = tokens[position]
        row = expected[position - 1]
        assert entry.chosen.token_id == token
        assert entry.chosen.logprob == pytest.approx(float(row[token]), abs=1e-6)
        assert entry.chosen.rank == int((row >= row[token]).sum())
        assert len(entry.top) == 3
        assert [lp.token_id for lp in entry.top] == row.topk(3).indices.tolist()


def test_prompt_logprobs_edge_cases() -> None:
    assert prompt_logprobs(torch.zeros(0, 4), [], 2) == []
    assert prompt_logprobs(torch.zeros(1, 4), [1], 2) == [None]
    entry = only(prompt_logprobs(torch.zeros(2, 4), [1, 2], 0)[1])
    assert entry.top == () and entry.chosen.logprob == pytest.approx(math.log(0.25))
    with pytest.raises(ValueError, match="one logits row per prompt token"):
        prompt_logprobs(torch.zeros(3, 4), [1, 2], 1)


def test_score_tokens_chunks_agree_with_whole_prompt() -> None:
    logits = random_logits(6, 9, seed=8)
    tokens = [1, 4, 4, 8, 0, 2]
    whole = prompt_logprobs(logits, tokens, 2)
    chunked = [
        None,
        *score_tokens(logits[:3], tokens[1:4], 2),
        *score_tokens(logits[3:5], tokens[4:], 2),
    ]
    assert chunked == whole
