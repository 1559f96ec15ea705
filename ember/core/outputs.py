"""What the scheduler hands the runner each step, and what it hands the engine back."""

from __future__ import annotations

from dataclasses import dataclass

from ember.core.request import FinishReason


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    """One request's work in a step."""

    request_id: str
    token_ids: list[int]
    """Tokens to compute now: positions start_position .. start_position + len - 1."""
    start_position: int
    """Tokens already computed before this step (their KV is in the blocks)."""
    block_tables: list[list[int]]
    """Per KV group, the whole table (NULL_BLOCK = 0 where a sliding window dropped a block)."""
    needs_logits: bool
    """The chunk reaches the last known token: sample the next token from its logits."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """One step's batch, plus what the runner may forget."""

    requests: list[ScheduledRequest]
    """In scheduling order (highest precedence first)."""
    preempted_ids: list[str]
    """Lost their blocks this step; they start over (prompt + output so far) when resumed."""
    finished_ids: list[str]
    """Ended since the previous step (stopped, aborted, failed)."""

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(len(request.token_ids) for request in self.requests)

    @property
    def is_empty(self) -> bool:
        return not self.requests


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    """What one step did to one request."""

    request_id: str
    new_token_ids: list[int]
    """Tokens generated this step (empty for a prefill chunk that did not reach the end)."""
    finish_reason: FinishReason | None
    """Set when the request ended in this step."""
    num_cached_tokens: int
    """Prompt tokens served by the prefix cache (for usage reporting)."""
    error: str | None = None
    """One-line reason when finish_reason is ERROR."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    """Fraction of the KV pool held by requests."""
    prefix_cache_hit_rate: float
    """Cached tokens over tokens looked up, since start."""
    num_preemptions: int
    """Preemptions since start."""
