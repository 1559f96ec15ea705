from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
import torch

from ember.sample import RequestSamplingState, Sampler
from ember.sample.ops import (
    apply_penalties,
    exponential_race,
    min_p_remove_mask,
    top_k_top_p_remove_mask,
)
from ember.sampling_params import SamplingParams, SamplingParamsError

# A 4-token distribution whose nucleus boundaries are far from any top_p used below.
PROBS = [0.5, 0.3, 0.15, 0.05]
LOGITS = torch.tensor(PROBS).log()


def state(
    params: SamplingParams | None = None,
    prompt: Sequence[int] = (),
    eos: Sequence[int] = (),
) -> RequestSamplingState:
    return RequestSamplingState(params or SamplingParams(), prompt, eos)


def random_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def draws(params: SamplingParams, logits_row: torch.Tensor, count: int, seed: int = 0) -> Counter:
    """Sample count times from one distribution, as one batch of count identical rows."""
    sampler = Sampler(generator=torch.Generator().manual_seed(seed))
    logits = logits_row.unsqueeze(0).repeat(count, 1)
    return Counter(sampler.sample(logits, [state(params) for _ in range(count)]).token_ids)


# ---- greedy -------------------------------------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = random_logits(6, 50)
    out = Sampler().sample(logits, [state(SamplingParams(temperature=0)) for _ in range(6)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_greedy_ties_go_to_lowest_id() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    greedy = SamplingParams(temperature=0)
    assert Sampler().sample(logits, [state(greedy), state(greedy)]).token_ids == [1, 0]


def test_greedy_uses_no_randomness() -> None:
    logits = random_logits(4, 30)
    before = torch.get_rng_state()
    generator = torch.Generator().manual_seed(5)
    shared_before = generator.get_state()
    Sampler(generator=generator).sample(logits, [state(SamplingParams(temperature=0))] * 4)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(generator.get_state(), shared_before)


def test_caller_logits_are_not_modified() -> None:
    logits = random_logits(2, 20)
    copy = logits.clone()
    params = SamplingParams(
        temperature=0.7, top_k=3, repetition_penalty=1.5, logit_bias={1: 5.0}, min_tokens=2
    )
    Sampler().sample(logits, [state(params, prompt=[1, 2], eos=[0]), state()])
    assert torch.equal(logits, copy)


def test_tiny_temperature_approaches_greedy() -> None:
    logits = random_logits(1, 40)[0]
    counts = draws(SamplingParams(temperature=1e-3), logits, 500)
    assert set(counts) == {int(logits.argmax())}


def test_top_k_one_is_greedy_even_with_ties() -> None:
    logits = torch.cat([random_logits(3, 25), torch.tensor([[1.0, 3.0, 3.0] + [0.0] * 22])])
    params = SamplingParams(top_k=1, temperature=1.5)
    out = Sampler().sample(logits, [state(params) for _ in range(4)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()


# ---- truncation masks ----------------------------------------------------------------------------


def kept(remove_mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(~row).flatten().tolist()) for row in remove_mask]


@pytest.mark.parametrize(
    ("top_p", "expected"), [(0.45, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2}), (0.99, {0, 1, 2, 3})]
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p: float, expected: set[int]) -> None:
    logits = LOGITS[[2, 0, 3, 1]].unsqueeze(0)  # shuffled so ids differ from ranks
    mask = top_k_top_p_remove_mask(logits, torch.tensor([0]), torch.tensor([top_p]))
    id_of_rank = [1, 3, 0, 2]
    assert kept(mask) == [{id_of_rank[r] for r in expected}]


def test_top_k_keeps_exactly_k_with_ties_to_lower_ids() -> None:
    logits = torch.tensor([[1.0, 4.0, 2.0, 4.0, 2.0, 0.0]])
    for k, expected in [
        (1, {1}),
        (2, {1, 3}),
        (3, {1, 3, 2}),
        (4, {1, 3, 2, 4}),
        (0, set(range(6))),
    ]:
        mask = top_k_top_p_remove_mask(logits, torch.tensor([k]), torch.tensor([1.0]))
        assert kept(mask) == [expected]


def test_top_p_applies_to_the_top_k_renormalised_distribution() -> None:
    # after top_k=3 the masses are 0.5/0.95, 0.3/0.95, 0.15/0.95 = .526, .316, .158
    mask = top_k_top_p_remove_mask(LOGITS.unsqueeze(0), torch.tensor([3]), torch.tensor([0.85]))
    assert kept(mask) == [{0, 1, 2}]
    mask = top_k_top_p_remove_mask(LOGITS.unsqueeze(0), torch.tensor([3]), torch.tensor([0.8]))
    assert kept(mask) == [{0, 1}]


@pytest.mark.parametrize(
    ("min_p", "expected"), [(0.0, {0, 1, 2, 3}), (0.2, {0, 1, 2}), (0.5, {0, 1})]
)
def test_min_p_keeps_tokens_above_fraction_of_top(min_p: float, expected: set[int]) -> None:
    mask = min_p_remove_mask(LOGITS.unsqueeze(0), torch.tensor([min_p]))
    assert kept(mask) == [expected]


def reference_kept(row: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """Plain Python nucleus: walk tokens best first (ties by id) and stop once mass >= top_p."""
    order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))
    if top_k > 0:
        order = order[:top_k]
    probs = torch.softmax(row[order], dim=0).tolist()
    result, mass = set(), 0.0
    for token, prob in zip(order, probs, strict=True):
        if mass >= top_p:
            break
        result.add(token)
        mass += prob
    return result


def test_masks_match_reference_on_random_rows() -> None:
    logits = random_logits(64, 30, seed=3)
    gen = torch.Generator().manual_seed(4)
    top_k = torch.randint(0, 12, (64,), generator=gen)
    top_p = torch.rand(64, generator=gen) * 0.9 + 0.05
    top_p[::5] = 1.0
    min_p = torch.rand(64, generator=gen) * 0.3
    got = kept(top_k_top_p_remove_mask(logits, top_k, top_p))
    for row in range(64):
        assert got[row] == reference_kept(logits[row], int(top_k[row]), float(top_p[row]))
    got_min_p = kept(min_p_remove_mask(logits, min_p))
    probs = logits.softmax(dim=-1)
    for row in range(64):
        threshold = float(min_p[row]) * float(probs[row].max())
        assert got_min_p[row] == {i for i in range(30) if float(probs[row, i]) >= threshold}


def test_sampling_stays_inside_top_p_set_with_right_frequencies() -> None:
    counts = draws(SamplingParams(top_p=0.75), LOGITS, 4000)
    assert set(counts) == {0, 1}
    assert counts[0] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)


def test_sampling_stays_inside_min_p_and_top_k_sets() -> None:
    assert set(draws(SamplingParams(min_p=0.2), LOGITS, 3000)) == {0, 1, 2}
    assert set(draws(SamplingParams(top_k=2), LOGITS, 3000)) == {0, 1}


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_frequencies_follow_tempered_distribution(temperature: float) -> None:
    counts = draws(SamplingParams(temperature=temperature), LOGITS, 10000, seed=11)
    expected = torch.softmax(LOGITS / temperature, dim=0).tolist()
    for token, prob in enumerate(expected):
        assert counts[token] / 10000 == pytest.approx(prob, abs=0.02)


def test_exponential_race_never_picks_zero_probability() -> None:
    probs = torch.tensor([[0.0, 1e-30, 0.0, 1.0 - 1e-30]]).repeat(2000, 1)
    picked = exponential_race(probs, [None] * 2000, torch.Generator().manual_seed(0))
    assert set(picked.tolist()) <= {1, 3}


# ---- penalties ----------------------------------------------------------------------------------


def expected_penalised(
    logits: list[float],
    prompt: list[int],
    output: list[int],
    repetition: float,
    frequency: float,
    presence: float,
) -> list[float]:
    result = []
    for token, value in enumerate(logits):
        if token in prompt or token in output:
            value = value / repetition if value > 0 else value * repetition
        count = output.count(token)
        value -= frequency * count + presence * (count > 0)
        result.append(value)
    return result


PENALTY_LOGITS = [2.0, -1.0, 0.0, 3.0, -2.5, 1.0, 0.5]
PROMPT = [0, 1, 1, 6]
OUTPUT = [3, 4, 3, 1, 3]


def test_apply_penalties_matches_formulas() -> None:
    vocab = len(PENALTY_LOGITS)
    prompt_mask = torch.zeros(1, vocab, dtype=torch.bool)
    prompt_mask[0, PROMPT] = True
    counts = torch.bincount(torch.tensor(OUTPUT), minlength=vocab).float().unsqueeze(0)
    got = apply_penalties(
        torch.tensor([PENALTY_LOGITS]),
        prompt_mask,
        counts,
        torch.tensor([1.3]),
        torch.tensor([0.4]),
        torch.tensor([0.7]),
    )
    expected = expected_penalised(PENALTY_LOGITS, PROMPT, OUTPUT, 1.3, 0.4, 0.7)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("repetition", "frequency", "presence"),
    [(1.3, 0.0, 0.0), (0.8, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, -1.0), (2.0, -0.3, 1.5)],
)
def test_sampler_applies_penalties(repetition: float, frequency: float, presence: float) -> None:
    params = SamplingParams(
        temperature=0,
        repetition_penalty=repetition,
        frequency_penalty=frequency,
        presence_penalty=presence,
        logprobs=len(PENALTY_LOGITS),
    )
    request = state(params, prompt=PROMPT)
    for token in OUTPUT:
        request.append_token(token)
    sampler = Sampler(logprobs_mode="processed_logprobs")
    out = sampler.sample(torch.tensor([PENALTY_LOGITS]), [request])
    expected = torch.tensor(
        expected_penalised(PENALTY_LOGITS, PROMPT, OUTPUT, repetition, frequency, presence)
    )
    assert out.token_ids == [int(expected.argmax())]
    position = out.logprobs[0]
    assert position is not None
    got = {lp.token_id: lp.logprob for lp in position.top}
    want = torch.log_softmax(expected, dim=0).tolist()
    assert [got[i] for i in range(len(want))] == pytest.approx(want, abs=1e-5)


def test_output_counts_follow_appends() -> None:
    request = state(SamplingParams(frequency_penalty=1.0), prompt=[2])
    request.append_token(4)
    counts = request.output_counts(8)  # built from the tokens so far
    request.append_token(4)
    request.append_token(1)
    assert counts.tolist() == [0, 1, 0, 0, 2, 0, 0, 0]
    assert list(request.output_token_ids) == [4, 4, 1]
    assert request.prompt_mask(8).tolist() == [i == 2 for i in range(8)]


# ---- min_tokens and logit_bias -------------------------------------------------------------------


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    eos, stop_id = 0, 1
    logits = torch.tensor([[9.0, 8.0, 1.0, 2.0]])
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[stop_id])
    request = state(params, eos=[eos])
    sampler = Sampler()
    tokens = []
    for _ in range(4):
        token = sampler.sample(logits, [request]).token_ids[0]
        request.append_token(token)
        tokens.append(token)
    assert tokens == [3, 3, 3, eos]


def test_min_tokens_masks_eos_also_with_ignore_eos() -> None:
    # vLLM's convention: EOS stays blocked during min_tokens whatever ignore_eos says
    params = SamplingParams(temperature=0, min_tokens=1, ignore_eos=True)
    out = Sampler().sample(torch.tensor([[5.0, 1.0]]), [state(params, eos=[0])])
    assert out.token_ids == [1]


def test_logit_bias_moves_greedy_choice() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    sampler = Sampler()
    assert sampler.sample(
        logits, [state(SamplingParams(temperature=0, logit_bias={3: 3.5}))]
    ).token_ids == [3]
    assert sampler.sample(
        logits, [state(SamplingParams(temperature=0, logit_bias={0: -100}))]
    ).token_ids == [2]


def test_logit_bias_outside_vocab_is_a_request_error() -> None:
    request = state(SamplingParams(logit_bias={10: 1.0}))
    with pytest.raises(SamplingParamsError, match="vocab size 4"):
        Sampler().sample(torch.zeros(1, 4), [request])


# ---- seeds --------------------------------------------------------------------------------------


def run_steps(batches: list[list[tuple[SamplingParams, torch.Tensor]]]) -> list[list[int]]:
    """Run len(batches[0]) requests for len(batches) steps; return the tokens of each request."""
    requests = [state(params) for params, _ in batches[0]]
    sampler = Sampler(generator=torch.Generator().manual_seed(99))
    tokens: list[list[int]] = [[] for _ in requests]
    for step in batches:
        logits = torch.stack([row for _, row in step])
        for i, token in enumerate(sampler.sample(logits, requests).token_ids):
            requests[i].append_token(token)
            tokens[i].append(token)
    return tokens


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    steps = 12
    rows = random_logits(steps, 64, seed=1) * 0.3  # flat enough that draws vary
    noise = random_logits(steps, 64, seed=2)
    seeded = SamplingParams(seed=1234, top_p=0.95, repetition_penalty=1.1)

    alone = run_steps([[(seeded, rows[t])] for t in range(steps)])[0]
    others = [SamplingParams(), SamplingParams(seed=7), SamplingParams(temperature=0)]
    mixed = run_steps(
        [
            [(others[0], noise[t]), (others[1], noise[t]), (seeded, rows[t]), (others[2], noise[t])]
            for t in range(steps)
        ]
    )[2]
    first = run_steps([[(seeded, rows[t]), (others[1], noise[t])] for t in range(steps)])[0]
    assert alone == mixed == first
    assert len(set(alone)) > 1


def test_different_seeds_give_different_tokens() -> None:
    rows = random_logits(10, 64, seed=5) * 0.2
    results = [
        run_steps([[(SamplingParams(seed=seed), rows[t])] for t in range(10)])[0]
        for seed in (1, 2, 3)
    ]
    assert results[0] != results[1] and results[1] != results[2] and results[0] != results[2]


def test_seeded_greedy_request_has_no_generator() -> None:
    assert state(SamplingParams(temperature=0, seed=3)).generator is None
    assert state(SamplingParams(seed=3)).generator is not None


def test_unseeded_rows_reproducible_through_shared_generator() -> None:
    logits = random_logits(8, 100) * 0.2
    runs = [
        Sampler(generator=torch.Generator().manual_seed(42)).sample(logits, [state()] * 8).token_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_logits_shape_must_match_states() -> None:
    with pytest.raises(ValueError, match="one row per request"):
        Sampler().sample(torch.zeros(2, 5), [state()])
