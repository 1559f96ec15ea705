from __future__ import annotations

from collections.abc import Callable

import pytest

from ember.core import (
    CacheConfig,
    FinishReason,
    KVGroupSpec,
    Request,
    RequestStatus,
    SchedulerConfig,
    StopCriteria,
)
from ember.core.request import check_stop


def test_config_defaults() -> None:
    cache = CacheConfig()
    assert (cache.block_size, cache.enable_prefix_caching) == (16, True)
    config = SchedulerConfig()
    assert (config.max_num_batched_tokens, config.max_num_seqs) == (2048, 64)
    assert config.enable_chunked_prefill and config.policy == "fcfs"
    assert config.max_chunk == 2048
    assert SchedulerConfig(long_prefill_token_threshold=256).max_chunk == 256
    assert KVGroupSpec().sliding_window is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CacheConfig(block_size=0), "block_size must be a positive integer, got 0"),
        (lambda: CacheConfig(num_blocks=1), "num_blocks must be at least 2"),
        (lambda: CacheConfig(num_blocks=True), "num_blocks must be a positive integer, got True"),
        (
            lambda: SchedulerConfig(policy="lifo"),
            "policy must be one of fcfs, priority, got 'lifo'",
        ),
        (lambda: SchedulerConfig(max_waiting=-1), "max_waiting must be a positive integer"),
        (lambda: SchedulerConfig(long_prefill_token_threshold=-5), "got -5"),
        (lambda: SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=16), r"\(8\) must be"),
        (
            lambda: SchedulerConfig(enable_chunked_prefill=False, max_model_len=8192),
            "without chunked prefill",
        ),
        (lambda: KVGroupSpec(sliding_window=0), "sliding_window must be a positive integer"),
        (lambda: StopCriteria(max_tokens=0), "max_tokens must be >= 1 or None, got 0"),
        (lambda: StopCriteria(min_tokens=-1), "min_tokens must be >= 0, got -1"),
    ],
)
def test_invalid_config_values_raise_value_error_naming_them(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _with_output(stop: StopCriteria, tokens: list[int], prompt_len: int = 3) -> Request:
    request = Request("r", list(range(100, 100 + prompt_len)), stop)
    request.append_output(tokens)
    return request


EOS = 2


def test_eos_stops_unless_ignored() -> None:
    stop = StopCriteria(eos_token_ids=frozenset({EOS, 9}))
    assert check_stop(_with_output(stop, [5, EOS]), 100) is FinishReason.STOP
    assert check_stop(_with_output(stop, [5, 9]), 100) is FinishReason.STOP
    assert check_stop(_with_output(stop, [5, 6]), 100) is None
    ignoring = StopCriteria(eos_token_ids=frozenset({EOS}), ignore_eos=True)
    assert check_stop(_with_output(ignoring, [5, EOS]), 100) is None


def test_stop_token_ids_apply_even_with_ignore_eos_and_are_reported() -> None:
    stop = StopCriteria(stop_token_ids=frozenset({7}), ignore_eos=True)
    request = _with_output(stop, [5, 7])
    assert check_stop(request, 100) is FinishReason.STOP
    assert request.stop_reason == 7


def test_min_tokens_suppresses_stops_but_not_length() -> None:
    stop = StopCriteria(min_tokens=3, eos_token_ids=frozenset({EOS}), max_tokens=2)
    assert check_stop(_with_output(stop, [EOS]), 100) is None
    assert check_stop(_with_output(stop, [5, EOS]), 100) is FinishReason.LENGTH
    stop = StopCriteria(min_tokens=3, eos_token_ids=frozenset({EOS}))
    assert check_stop(_with_output(stop, [5, 5, EOS]), 100) is FinishReason.STOP


def test_length_limits() -> None:
    assert check_stop(_with_output(StopCriteria(max_tokens=2), [5]), 100) is None
    assert check_stop(_with_output(StopCriteria(max_tokens=2), [5, 6]), 100) is FinishReason.LENGTH
    assert check_stop(_with_output(StopCriteria(), [5, 6]), 5) is FinishReason.LENGTH
    # A stop token on the last allowed token is still a stop.
    stop = StopCriteria(max_tokens=2, eos_token_ids=frozenset({EOS}))
    assert check_stop(_with_output(stop, [5, EOS]), 100) is FinishReason.STOP


def test_request_bookkeeping() -> None:
    request = Request("r", [1, 2, 3], StopCriteria(max_tokens=10))
    assert request.status is RequestStatus.WAITING and not request.is_finished
    request.append_output([4, 5])
    assert request.all_token_ids == [1, 2, 3, 4, 5] and request.output_token_ids == [4, 5]
    assert (request.num_prompt_tokens, request.num_output_tokens, request.num_tokens) == (3, 2, 5)
    assert request.max_total_tokens(100) == 13
    assert request.max_total_tokens(8) == 8
    assert Request("s", [1]).max_total_tokens(64) == 64
    assert RequestStatus.FINISHED_ABORTED.is_finished and not RequestStatus.PREEMPTED.is_finished
