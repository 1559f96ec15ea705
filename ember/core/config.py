"""Configuration of the serving core: the KV block pool and the scheduler.

Frozen dataclasses; every field has a default and a one-line meaning, and an invalid value raises
ValueError naming it. The engine builds them (for example max_model_len from the model's context
length, num_blocks from the memory the runner can spare) and hands each component only its own.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("fcfs", "priority")


def _positive(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: one pool of fixed-size blocks shared by every request."""

    block_size: int = 16
    """Tokens per KV block (the paging granularity and the prefix-cache granularity)."""
    num_blocks: int = 2048
    """Blocks in the pool, including block 0, which is reserved as the null block."""
    enable_prefix_caching: bool = True
    """Keep computed full blocks after a request ends and reuse them for equal prefixes."""

    def __post_init__(self) -> None:
        _positive("cache config", "block_size", self.block_size)
        _positive("cache config", "num_blocks", self.num_blocks)
        if self.num_blocks < 2:
            raise ValueError(
                f"cache config: num_blocks must be at least 2 (block 0 is reserved), "
                f"got {self.num_blocks}"
            )
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"cache config: enable_prefix_caching must be a bool, "
                f"got {self.enable_prefix_caching!r}"
            )


@dataclass(frozen=True)
class KVGroupSpec:
    """Layers that share one block table: a full-attention group or a sliding-window group.

    All groups draw blocks from the one pool; a block id in a group's table means the same token
    range in every layer of that group, and the runner sizes the storage behind it per group.
    """

    num_layers: int = 1
    """Attention layers in the group (for the runner; the core only counts blocks)."""
    sliding_window: int | None = None
    """A query at position q sees keys with q - key_pos < sliding_window (None: all keys)."""

    def __post_init__(self) -> None:
        _positive("kv group", "num_layers", self.num_layers)
        if self.sliding_window is not None:
            _positive("kv group", "sliding_window", self.sliding_window)


@dataclass(frozen=True)
class SchedulerConfig:
    """What one scheduling step may hold, how requests queue, and the longest sequence."""

    max_num_batched_tokens: int = 2048
    """Token budget of one step: tokens computed across all scheduled requests."""
    max_num_seqs: int = 64
    """Most requests running (holding KV blocks) at once."""
    max_model_len: int = 4096
    """Longest sequence, prompt plus generated tokens (the model's context length at most)."""
    max_waiting: int = 1024
    """Most requests waiting for admission; add_request refuses more (preempted ones always fit)."""
    enable_chunked_prefill: bool = True
    """Split prompts longer than the remaining budget over several steps."""
    long_prefill_token_threshold: int = 0
    """Most tokens one request may compute in a step (0: only the step budget limits it)."""
    policy: str = "fcfs"
    """Admission and preemption order: 'fcfs' (arrival) or 'priority' (lower value first)."""

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "max_waiting"):
            _positive("scheduler config", name, getattr(self, name))
        if not isinstance(self.enable_chunked_prefill, bool):
            raise ValueError(
                f"scheduler config: enable_chunked_prefill must be a bool, "
                f"got {self.enable_chunked_prefill!r}"
            )
        threshold = self.long_prefill_token_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(
                f"scheduler config: long_prefill_token_threshold must be an integer >= 0, "
                f"got {threshold!r}"
            )
        if self.policy not in POLICIES:
            raise ValueError(
                f"scheduler config: policy must be one of {', '.join(POLICIES)}, "
                f"got {self.policy!r}"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Otherwise some running requests could not even get their one decode token.
            raise ValueError(
                f"scheduler config: max_num_batched_tokens ({self.max_num_batched_tokens}) "
                f"must be >= max_num_seqs ({self.max_num_seqs})"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # A prompt (or a preempted request's prompt + output) must fit one step unchunked.
            raise ValueError(
                f"scheduler config: without chunked prefill, max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})"
            )

    @property
    def max_chunk(self) -> int:
        """Most tokens one request can compute in one step."""
        threshold = self.long_prefill_token_threshold
        if threshold:
            return min(threshold, self.max_num_batched_tokens)
        return self.max_num_batched_tokens
