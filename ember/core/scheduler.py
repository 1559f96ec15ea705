"""Continuous batching over a paged KV cache: which tokens of which requests run in each step.

The engine loop is::

    scheduler.add_request(request)               # any time; raises RequestRejected at once
    output = scheduler.schedule()                # the batch of this step
    sampled = runner.execute(output)             # {request_id: [token, ...]} for needs_logits
    updates = scheduler.update_from_output(output, sampled)

Call update_from_output after every schedule, even an empty one: it also reports requests that
failed while scheduling. abort_requests and finish_requests (stop strings) work at any stage and
free everything at once. The runner drops its state for `preempted_ids` and `finished_ids` before
it looks at the scheduled requests.

Preemption recomputes: a preempted request frees its blocks (offering its computed ones to the
prefix cache, so resuming is usually cheap), keeps its output tokens, and later computes prompt +
output as if it were all prompt.

n > 1 requests (the same prompt in one `sibling_group`): while one sibling is computing the
prompt, the others stay in the waiting queue without blocking anyone behind them; once the
prompt's blocks are cached they are admitted and hit the cache for every full block of it.
Without prefix caching they simply compute the prompt each.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from ember.core.config import CacheConfig, KVGroupSpec, SchedulerConfig
from ember.core.kv_cache_manager import KVCacheManager
from ember.core.outputs import RequestUpdate, ScheduledRequest, SchedulerOutput, SchedulerStats
from ember.core.request import (
    STATUS_OF_REASON,
    FinishReason,
    RejectReason,
    Request,
    RequestRejected,
    RequestStatus,
    check_stop,
)
from ember.core.request_queue import RequestQueue


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig | None = None,
        cache_config: CacheConfig | None = None,
        kv_groups: Sequence[KVGroupSpec] = (KVGroupSpec(),),
    ) -> None:
        self.config = config or SchedulerConfig()
        self.kv = KVCacheManager(cache_config or CacheConfig(), kv_groups)
        self.waiting = RequestQueue(self.config.policy)
        self.running = RequestQueue(self.config.policy)
        self.requests: dict[str, Request] = {}
        """Every unfinished request, waiting or running."""
        self.num_preemptions = 0
        self._arrivals = itertools.count()
        self._finished_ids: list[str] = []
        self._failed: list[Request] = []
        self._pending: SchedulerOutput | None = None
        self._pending_requests: dict[str, Request] = {}

    # -- requests in and out ---------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request, or raise RequestRejected with a one-line reason."""
        self._check_admissible(request)
        request.arrival = next(self._arrivals)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.add(request)

    def abort_requests(self, request_ids: Iterable[str]) -> list[str]:
        """End requests wherever they are, freeing their blocks; returns the ids that were live."""
        return self.finish_requests(request_ids, FinishReason.ABORT)

    def finish_requests(
        self, request_ids: Iterable[str], reason: FinishReason = FinishReason.STOP
    ) -> list[str]:
        """End requests for a reason found outside the core (a stop string, a client gone)."""
        ended = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is not None:
                self._finish(request, reason)
                ended.append(request_id)
        return ended

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=self.kv.usage,
            prefix_cache_hit_rate=self.kv.prefix_cache_stats.hit_rate,
            num_preemptions=self.num_preemptions,
        )

    def reset_prefix_cache(self) -> None:
        self.kv.reset_prefix_cache()

    # -- one step --------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Choose this step's batch.

        THE RULE. Every request has tokens computed (num_computed_tokens) and tokens wanted (all
        it knows: prompt + output so far). A step hands out one token budget
        (max_num_batched_tokens): first to running requests in policy order, then to waiting
        ones in policy order (FCFS: arrival; priority: priority, then arrival) while fewer than
        max_num_seqs run. Each gets min(wanted - computed, budget left, per-request cap): 1 token
        for a decode, a chunk for a prompt - a prompt longer than the budget left is just
        prefilled in chunks alongside the others' decodes. A prefix-cache hit just counts as
        computed. When the pool cannot hold a running request's new tokens, the lowest-precedence
        running request is preempted until it fits (and a step that preempts admits nobody).
        """
        if self._pending is not None:
            raise RuntimeError("schedule() called before update_from_output() of the last step")
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[str] = []

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = self._num_new_tokens(request, request.num_computed_tokens, budget)
            if self._make_room(request, num_new, preempted):
                scheduled.append((request, num_new))
                budget -= num_new
                index += 1
            # else the request left the running set and the next one moved into `index`

        if not preempted:
            budget = self._admit_waiting(budget, scheduled)

        items = []
        for request, num_new in scheduled:
            start = request.num_computed_tokens
            end = start + num_new
            items.append(
                ScheduledRequest(
                    request_id=request.request_id,
                    token_ids=request.all_token_ids[start:end],
                    start_position=start,
                    block_tables=self.kv.block_tables(request.request_id),
                    needs_logits=end == request.num_tokens,
                )
            )
        output = SchedulerOutput(items, preempted, self._finished_ids)
        self._finished_ids = []
        self._pending = output
        self._pending_requests = {request.request_id: request for request, _ in scheduled}
        return output

    def update_from_output(
        self, output: SchedulerOutput, sampled: Mapping[str, Sequence[int]]
    ) -> list[RequestUpdate]:
        """Record a step's results: sampled tokens for requests whose chunk needed logits.

        Requests aborted or finished since schedule() are skipped. Several tokens per request
        (accepted draft tokens) are checked for a stop one by one.
        """
        if output is not self._pending:
            raise RuntimeError("update_from_output() expects the output of the last schedule()")
        live = []
        for item in output.requests:
            request = self._pending_requests[item.request_id]
            if request.status is not RequestStatus.RUNNING:
                continue
            if item.needs_logits and not sampled.get(item.request_id):
                raise ValueError(f"no sampled token for request {item.request_id!r}")
            live.append((item, request))

        updates = []
        for item, request in live:
            request.num_computed_tokens = item.start_position + item.num_tokens
            new_tokens: list[int] = []
            reason = None
            if item.needs_logits:
                for token in sampled[item.request_id]:
                    request.append_output((token,))
                    new_tokens.append(token)
                    reason = check_stop(request, self.config.max_model_len)
                    if reason is not None:
                        break
            if reason is None:
                self.kv.cache_blocks(request)
            else:
                self._finish(request, reason)
            updates.append(
                RequestUpdate(request.request_id, new_tokens, reason, request.num_cached_tokens)
            )
        for request in self._failed:
            updates.append(
                RequestUpdate(
                    request.request_id,
                    [],
                    FinishReason.ERROR,
                    request.num_cached_tokens,
                    request.error,
                )
            )
        self._failed = []
        self._pending = None
        self._pending_requests = {}
        return updates

    # -- helpers ---------------------------------------------------------------------------------

    def _num_new_tokens(self, request: Request, num_computed: int, budget: int) -> int:
        return min(request.num_tokens - num_computed, budget, self.config.max_chunk)

    def _make_room(self, request: Request, num_new: int, preempted: list[str]) -> bool:
        """Allocate a running request's slots, preempting from the back; False if it left."""
        while self.kv.allocate_slots(request, num_new) is None:
            victim = self.running.last()
            if victim is request and len(self.running) == 1:
                self._fail(
                    request,
                    f"request {request.request_id!r} does not fit the KV cache even alone "
                    f"({self.kv.pool.capacity} blocks of {self.kv.block_size} tokens)",
                )
                return False
            # Running requests are served in policy order, so the victim was not scheduled yet.
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _admit_waiting(self, budget: int, scheduled: list[tuple[Request, int]]) -> int:
        prefix_caching = self.kv.prefix_cache is not None
        prompt_computing = {
            r.sibling_group for r in self.running if self._computing_shared_prompt(r)
        }
        for request in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if (
                prefix_caching
                and request.sibling_group in prompt_computing
                and self._shareable_prompt_tokens(request) > 0
            ):
                continue  # a sibling is computing the shared prompt: wait to hit its blocks
            hit = self.kv.get_computed_blocks(request)
            wanted = request.num_tokens - hit.num_tokens
            num_new = self._num_new_tokens(request, hit.num_tokens, budget)
            if num_new < wanted and not self.config.enable_chunked_prefill:
                break
            if self.kv.allocate_slots(request, num_new, hit) is None:
                if not self.running:
                    self._fail(
                        request,
                        f"request {request.request_id!r} does not fit the KV cache even alone",
                    )
                    continue
                break  # head-of-line: wait for running requests to free blocks
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = hit.num_tokens
            if request.num_preemptions == 0:
                request.num_cached_tokens = hit.num_tokens
            self.running.add(request)
            scheduled.append((request, num_new))
            budget -= num_new
            if self._computing_shared_prompt(request):
                prompt_computing.add(request.sibling_group)
        return budget

    def _shareable_prompt_tokens(self, request: Request) -> int:
        """Prompt tokens a sibling can take from the prefix cache (whole blocks, not the last)."""
        return (request.num_prompt_tokens - 1) // self.kv.block_size * self.kv.block_size

    def _computing_shared_prompt(self, request: Request) -> bool:
        return request.sibling_group is not None and (
            request.num_computed_tokens < self._shareable_prompt_tokens(request)
        )

    def _check_admissible(self, request: Request) -> None:
        request_id = request.request_id
        if request_id in self.requests:
            raise RequestRejected(
                RejectReason.INVALID, f"request id {request_id!r} is already in use"
            )
        if request.status is not RequestStatus.WAITING or request.output_token_ids:
            raise RequestRejected(
                RejectReason.INVALID, f"request {request_id!r} was already scheduled once"
            )
        num_prompt = request.num_prompt_tokens
        if num_prompt == 0:
            raise RequestRejected(
                RejectReason.INVALID, f"request {request_id!r} has an empty prompt"
            )
        max_len = self.config.max_model_len
        max_tokens = request.stop.max_tokens
        if num_prompt + (max_tokens or 1) > max_len:
            wanted = f"plus max_tokens ({max_tokens}) " if max_tokens else "plus one new token "
            raise RequestRejected(
                RejectReason.TOO_LONG,
                f"the prompt ({num_prompt} tokens) {wanted}exceeds the context length "
                f"({max_len} tokens)",
            )
        # The last token is sampled, never computed, so it needs no KV slot.
        most_computed = request.max_total_tokens(max_len) - 1
        blocks = self.kv.max_blocks_held(most_computed, self.config.max_chunk)
        if blocks > self.kv.pool.capacity:
            raise RequestRejected(
                RejectReason.KV_POOL,
                f"request {request_id!r} may need {blocks} KV blocks but the cache holds "
                f"{self.kv.pool.capacity}; lower max_tokens or give the KV cache more memory",
            )
        if len(self.waiting) >= self.config.max_waiting:
            raise RequestRejected(
                RejectReason.QUEUE_FULL,
                f"server busy: {len(self.waiting)} requests are already waiting; retry later",
            )

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.add(request)  # preempted requests bypass max_waiting: they were admitted

    def _fail(self, request: Request, message: str) -> None:
        request.error = message
        self._finish(request, FinishReason.ERROR)
        self._failed.append(request)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            self.kv.free(request)
        else:
            self.waiting.remove(request)
        request.status = STATUS_OF_REASON[reason]
        request.finish_reason = reason
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
