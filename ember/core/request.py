"""The scheduler's view of one request: its tokens, how far they are computed, when it stops.

Token-based stopping lives here (EOS unless ignore_eos, stop token ids, max_tokens, min_tokens,
max_model_len). Stop *strings* need text, so the engine finds them and calls
``Scheduler.finish_requests``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ember.errors import RequestError


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    """Back in the waiting queue after losing its KV blocks; recomputes prompt + output so far."""
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_ERROR = "finished_error"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


class FinishReason(enum.StrEnum):
    """Why a request ended, spelled as the OpenAI API spells it."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


_FINISHED = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
    RequestStatus.FINISHED_ERROR,
}
STATUS_OF_REASON = {
    FinishReason.STOP: RequestStatus.FINISHED_STOPPED,
    FinishReason.LENGTH: RequestStatus.FINISHED_LENGTH,
    FinishReason.ABORT: RequestStatus.FINISHED_ABORTED,
    FinishReason.ERROR: RequestStatus.FINISHED_ERROR,
}


class RejectReason(enum.Enum):
    INVALID = "invalid"
    """Malformed request: empty prompt, duplicate id, ..."""
    TOO_LONG = "too_long"
    """Prompt plus max_tokens exceeds max_model_len."""
    KV_POOL = "kv_pool"
    """Even alone, the request would need more KV blocks than the pool has."""
    QUEUE_FULL = "queue_full"
    """The waiting queue is at max_waiting: try again later."""


class RequestRejected(RequestError, ValueError):
    """add_request refused the request; ``reason`` tells the server which status to answer."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StopCriteria:
    """When generation ends, in token terms (built by the engine from SamplingParams)."""

    max_tokens: int | None = None
    """Most tokens to generate (None: until max_model_len)."""
    min_tokens: int = 0
    """EOS and stop tokens do not end the request before this many tokens were generated."""
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    """The model's end-of-sequence tokens (Gemma has several)."""
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    """Extra tokens that end the request; they apply even with ignore_eos."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks)."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise ValueError(
                f"stop criteria: max_tokens must be >= 1 or None, got {self.max_tokens!r}"
            )
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int):
            raise ValueError(
                f"stop criteria: min_tokens must be an integer, got {self.min_tokens!r}"
            )
        if self.min_tokens < 0:
            raise ValueError(f"stop criteria: min_tokens must be >= 0, got {self.min_tokens}")


class Request:
    """Mutable state of one sequence; the scheduler owns the fields below `arrival`."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        stop: StopCriteria | None = None,
        *,
        priority: int = 0,
        cache_namespace: str = "",
        sibling_group: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.stop = stop if stop is not None else StopCriteria()
        self.priority = priority
        """Lower is scheduled sooner and preempted later (vLLM's convention)."""
        self.cache_namespace = cache_namespace
        """Prefix-cache namespace (LoRA adapter name, user cache salt): namespaces share nothing."""
        self.sibling_group = sibling_group
        """Shared by the n copies of an n > 1 request, so they can share the prompt's blocks."""

        self.arrival = -1
        """Arrival order, set by the scheduler (ties in priority go to the earlier arrival)."""
        self.status = RequestStatus.WAITING
        self.all_token_ids = list(self.prompt_token_ids)
        """Prompt followed by every generated token."""
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        """Leading tokens whose KV is in this request's blocks."""
        self.num_cached_tokens = 0
        """Prompt tokens served by the prefix cache at first admission (usage reporting)."""
        self.num_preemptions = 0
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        """The stop token id (set here) or stop string (set by the engine) that ended it."""
        self.error: str | None = None
        """One-line reason when the request ended with FinishReason.ERROR."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def max_total_tokens(self, max_model_len: int) -> int:
        """Longest this request can grow: prompt plus max_tokens, capped by max_model_len."""
        if self.stop.max_tokens is None:
            return max_model_len
        return min(max_model_len, self.num_prompt_tokens + self.stop.max_tokens)

    def append_output(self, token_ids: Iterable[int]) -> None:
        for token in token_ids:
            self.output_token_ids.append(token)
            self.all_token_ids.append(token)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens})"
        )


def check_stop(request: Request, max_model_len: int) -> FinishReason | None:
    """Whether the request's newest token ends it (setting stop_reason for a stop token)."""
    stop = request.stop
    num_output = request.num_output_tokens
    if num_output >= stop.min_tokens and num_output > 0:
        last = request.output_token_ids[-1]
        if not stop.ignore_eos and last in stop.eos_token_ids:
            return FinishReason.STOP
        if last in stop.stop_token_ids:
            request.stop_reason = last
            return FinishReason.STOP
    if stop.max_tokens is not None and num_output >= stop.max_tokens:
        return FinishReason.LENGTH
    if request.num_tokens >= max_model_len:
        return FinishReason.LENGTH
    return None
