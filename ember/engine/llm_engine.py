"""The serving engine: many requests at once over one paged KV cache.

`LLMEngine.add_request` queues a request (n > 1 becomes n sibling sequences that share the
prompt's KV blocks); each `step()` asks the scheduler for a batch, runs it through the model
runner, feeds the sampled tokens back, detokenizes, applies stop strings, and returns what every
request gained in that step. The asyncio front end (ember.engine.async_engine) drives the same
object from a background thread.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field

import psutil
import torch

from ember.config import EngineConfig
from ember.core import (
    CacheConfig,
    FinishReason,
    KVGroupSpec,
    Request,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    SchedulerStats,
    StopCriteria,
)
from ember.engine.generator import StreamDelta
from ember.engine.outputs import (
    CompletionOutput,
    PositionLogprobDict,
    RequestOutput,
    logprob_dict,
)
from ember.engine.stop import StopChecker
from ember.errors import RequestError
from ember.layers.paged_attention import PagedKVCache, kv_bytes_per_block, kv_groups
from ember.models.loader import LoadedModel
from ember.runner.model_runner import ModelRunner, RunnerOutput
from ember.sample.logprobs import PositionLogprobs
from ember.sample.state import RequestSamplingState
from ember.sampling_params import SamplingParams
from ember.structured import PendingGrammar, StructuredCompiler
from ember.tokenizer.detokenizer import IncrementalDetokenizer

log = logging.getLogger("ember.engine")

DEFAULT_MAX_MODEL_LEN = 8192
"""Context per request when none is given: the model's own, capped here (Ollama-like default)."""

KV_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "int8": torch.int8,
}
_GRAMMAR_MAY_END = (None, FinishReason.LENGTH)
"""Finish reasons a completed structured-output grammar turns into "stop"."""


@dataclass(frozen=True, slots=True)
class RequestDelta:
    """What one step added to one request."""

    request_id: str
    completions: list[StreamDelta]
    """New text / tokens per completion index (several when n > 1)."""
    finished: bool
    """Every completion of the request has ended."""
    prompt_logprobs: list[PositionLogprobDict | None] | None = None
    """Set once, in the step that scored the prompt's last token."""
    error: str | None = None
    """One-line reason when the request failed."""
    num_cached_tokens: int = 0


@dataclass
class _Completion:
    parent: _Parent
    index: int
    detokenizer: IncrementalDetokenizer | None
    stops: StopChecker
    text: str = ""
    emitted: int = 0


@dataclass
class _Parent:
    request_id: str
    params: SamplingParams
    output: RequestOutput
    children: list[str]
    unfinished: int
    prompt_logprobs: list[PositionLogprobs | None] = field(default_factory=list)
    error: str | None = None


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        model_config = loaded.config
        limit = min(model_config.context_length, DEFAULT_MAX_MODEL_LEN)
        self.max_model_len = config.max_model_len or limit
        self.max_model_len = min(self.max_model_len, model_config.context_length)
        self.eos_token_ids = (
            frozenset(self.tokenizer.eos_token_ids) if self.tokenizer is not None else frozenset()
        )

        groups = kv_groups(model_config)
        kv_dtype = KV_DTYPES[config.kv_cache_dtype]
        block_bytes = kv_bytes_per_block(model_config, config.block_size, kv_dtype, groups)
        num_blocks = self._pool_blocks(block_bytes, len(groups))
        core_groups = [KVGroupSpec(len(g.layers), g.sliding_window) for g in groups]
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_num_seqs=config.max_num_seqs,
                max_model_len=self.max_model_len,
                max_waiting=config.max_waiting,
                policy=config.policy,
            ),
            CacheConfig(
                block_size=config.block_size,
                num_blocks=num_blocks,
                enable_prefix_caching=config.enable_prefix_caching,
            ),
            core_groups,
        )
        self.kv = PagedKVCache(model_config, num_blocks, config.block_size, kv_dtype, groups)
        self.runner = ModelRunner(
            loaded.model,
            self.kv,
            deterministic=config.deterministic,
            sampleable_vocab=self.tokenizer.vocab_size if self.tokenizer is not None else None,
        )
        # Structured outputs: grammars compile on a background thread (nothing starts until the
        # first constrained request).
        self.structured = (
            StructuredCompiler(self.tokenizer, model_config.vocab_size, self.eos_token_ids)
            if self.tokenizer is not None
            else None
        )
        self._parents: dict[str, _Parent] = {}
        self._completions: dict[str, _Completion] = {}
        # Constrained requests whose grammar is still compiling: not in the scheduler yet.
        self._deferred: list[tuple[PendingGrammar, Request]] = []

    def _pool_blocks(self, block_bytes: int, num_groups: int) -> int:
        config = self.config
        if config.kv_cache_tokens is not None:
            tokens = config.kv_cache_tokens
            blocks = math.ceil(tokens / config.block_size) * num_groups
        else:
            budget = psutil.virtual_memory().available * config.kv_cache_memory_fraction
            blocks = int(budget // block_bytes)
            # More than every sequence at full length is never needed.
            most = config.max_num_seqs * math.ceil(self.max_model_len / config.block_size)
            blocks = min(blocks, most * num_groups)
        return max(blocks, 2) + 1  # + the null block

    # -- requests --------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        priority: int = 0,
        cache_salt: str = "",
    ) -> None:
        """Queue a request; RequestError (one line) when it can never run or the queue is full."""
        if request_id in self._parents:
            raise RequestError(f"request id {request_id!r} is already in use")
        prompt_ids = list(prompt_token_ids)
        self._validate(prompt_ids, params)
        grammar = self._start_grammar(params)
        want_logprobs = params.logprobs is not None
        outputs = [
            CompletionOutput(
                index=i,
                logprobs=[] if want_logprobs else None,
                cumulative_logprob=0.0 if want_logprobs else None,
            )
            for i in range(params.n)
        ]
        parent = _Parent(
            request_id,
            params,
            RequestOutput(request_id, prompt, prompt_ids, outputs),
            [],
            params.n,
        )
        # Prompt logprobs need every prompt position computed: such a request gets a namespace of
        # its own, so it never reads (and so never skips) cached prompt blocks.
        namespace = cache_salt if params.prompt_logprobs is None else f"\0plp:{request_id}"
        stop = StopCriteria(
            max_tokens=params.max_tokens,
            min_tokens=params.min_tokens,
            eos_token_ids=self.eos_token_ids,
            stop_token_ids=frozenset(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
        )
        added: list[str] = []
        try:
            for index in range(params.n):
                child_id = request_id if params.n == 1 else f"{request_id}\0{index}"
                child_params = params
                if params.seed is not None and index > 0:
                    # Distinct but reproducible samples for n > 1.
                    child_params = dataclasses.replace(params, seed=params.seed + index)
                request = Request(
                    child_id,
                    prompt_ids,
                    stop,
                    priority=priority,
                    cache_namespace=namespace,
                    sibling_group=request_id if params.n > 1 else None,
                )
                if grammar is not None and not grammar.is_ready:
                    # Held back until its grammar compiles, so that no step ever waits for a
                    # compile (unconstrained requests keep running meanwhile).
                    self._deferred.append((grammar, request))
                else:
                    self.scheduler.add_request(request)
                added.append(child_id)
                state = RequestSamplingState(
                    child_params,
                    prompt_ids,
                    self.eos_token_ids,
                    grammar=grammar.new_state() if grammar is not None else None,
                )
                plp = params.prompt_logprobs if index == 0 else None
                self.runner.add_request(child_id, state, plp)
                detokenizer = (
                    IncrementalDetokenizer(
                        self.tokenizer, skip_special_tokens=params.skip_special_tokens
                    )
                    if self.tokenizer is not None
                    else None
                )
                self._completions[child_id] = _Completion(
                    parent,
                    index,
                    detokenizer,
                    StopChecker(params.stop, params.include_stop_str_in_output),
                )
                parent.children.append(child_id)
        except RequestError:
            self._deferred = [(g, r) for g, r in self._deferred if r.request_id not in added]
            self.scheduler.abort_requests(added)
            for child_id in added:
                self.runner.remove_request(child_id)
                self._completions.pop(child_id, None)
            raise
        self._parents[request_id] = parent

    def _validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty: give at least one token")
        vocab = self.loaded.config.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
        params.verify_vocab_size(vocab)
        if len(prompt_ids) >= self.max_model_len:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the context holds "
                f"{self.max_model_len}: shorten the prompt"
            )
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > (
            self.max_model_len
        ):
            raise RequestError(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
                f"exceeds the context length of {self.max_model_len} tokens"
            )

    def _start_grammar(self, params: SamplingParams) -> PendingGrammar | None:
        """Start compiling the request's grammar (RequestError for a spec that cannot work).

        The compile runs in the background while the request waits and prefills; only its first
        sampling step waits for it, if it is still running then.
        """
        spec = params.structured_outputs
        if spec is None:
            return None
        if self.structured is None:
            raise RequestError("structured outputs need the model's tokenizer, and none is loaded")
        return self.structured.compile(spec)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its blocks; False if it is unknown or already done."""
        parent = self._parents.pop(request_id, None)
        if parent is None:
            return False
        self._deferred = [(g, r) for g, r in self._deferred if r.request_id not in parent.children]
        self.scheduler.abort_requests(parent.children)
        for child_id in parent.children:
            self.runner.remove_request(child_id)
            self._completions.pop(child_id, None)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._parents)

    @property
    def num_requests(self) -> int:
        return len(self._parents)

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def output(self, request_id: str) -> RequestOutput | None:
        """The request's output so far (complete once a delta said finished)."""
        parent = self._parents.get(request_id)
        return parent.output if parent is not None else None

    # -- one step --------------------------------------------------------------------------

    def step(self) -> list[RequestDelta]:
        admitted_errors = self._admit_compiled() if self._deferred else []
        if admitted_errors or (self._deferred and not self.scheduler.has_unfinished_requests()):
            if not admitted_errors:  # only compiles are pending: wait for one, briefly
                wait([g.future for g, _ in self._deferred], 0.05, FIRST_COMPLETED)
            return admitted_errors
        scheduled = self.scheduler.schedule()
        try:
            result = self.runner.execute(scheduled)
        except Exception as exc:  # noqa: BLE001 - any model failure ends the batch, not the engine
            log.exception("the model failed on a batch of %d requests", len(scheduled.requests))
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return self._fail_batch(scheduled, f"the model failed on this batch: {first_line}")
        updates = self.scheduler.update_from_output(scheduled, result.sampled)
        # Before the updates: a request may finish in the step that scores its prompt's end.
        plp_ready = self._collect_prompt_logprobs(result)
        by_parent: dict[str, list[StreamDelta]] = {}
        finished_parents: set[str] = set()
        cached: dict[str, int] = {}
        for update in updates:
            completion = self._completions.get(update.request_id)
            if completion is None:
                continue
            parent = completion.parent
            cached[parent.request_id] = update.num_cached_tokens
            finish, new_tokens = update.finish_reason, update.new_token_ids
            grammar_error = result.grammar_errors.get(update.request_id)
            if grammar_error is not None and finish is None:
                self.scheduler.finish_requests([update.request_id], FinishReason.ERROR)
                finish, new_tokens, parent.error = FinishReason.ERROR, [], grammar_error
            elif update.request_id in result.grammar_ended and finish in _GRAMMAR_MAY_END:
                # The grammar is complete: a natural end, even on the last token max_tokens allows.
                self.scheduler.finish_requests([update.request_id], FinishReason.STOP)
                finish = FinishReason.STOP
            delta = self._advance(completion, new_tokens, result, finish)
            if update.error is not None:
                parent.error = update.error
            if delta is not None:
                by_parent.setdefault(parent.request_id, []).append(delta)
                if delta.finish_reason is not None:
                    self._end_completion(completion, update.request_id)
                    if parent.unfinished == 0:
                        finished_parents.add(parent.request_id)
        deltas = []
        for parent_id in {*by_parent, *plp_ready}:
            parent = self._parents[parent_id]
            finished = parent_id in finished_parents
            parent.output.num_cached_tokens = cached.get(parent_id, 0)
            if finished:
                parent.output.finished = True
                del self._parents[parent_id]
            deltas.append(
                RequestDelta(
                    parent_id,
                    by_parent.get(parent_id, []),
                    finished,
                    parent.output.prompt_logprobs if parent_id in plp_ready else None,
                    parent.error,
                    cached.get(parent_id, 0),
                )
            )
        return deltas

    def _admit_compiled(self) -> list[RequestDelta]:
        """Hand requests whose grammar has compiled to the scheduler; error deltas for those it
        refuses (a compile that failed is reported by the runner at the first sampling step)."""
        waiting: list[tuple[PendingGrammar, Request]] = []
        failed: dict[str, str] = {}
        for grammar, request in self._deferred:
            if not grammar.is_ready:
                waiting.append((grammar, request))
                continue
            try:
                self.scheduler.add_request(request)
            except RequestError as exc:
                failed[request.request_id] = str(exc)
        self._deferred = waiting
        return self._fail_children(failed)

    def _fail_batch(self, scheduled: SchedulerOutput, reason: str) -> list[RequestDelta]:
        """End every request of a failed step with finish_reason "error" (retrying the same
        batch would most likely fail again)."""
        ids = [item.request_id for item in scheduled.requests]
        self.scheduler.finish_requests(ids, FinishReason.ERROR)
        self.scheduler.update_from_output(scheduled, {})
        return self._fail_children(dict.fromkeys(ids, reason))

    def _fail_children(self, reasons: dict[str, str]) -> list[RequestDelta]:
        """End these sequences with finish_reason "error": one delta per request they belong to."""
        failed: dict[str, list[StreamDelta]] = {}
        reason_of: dict[str, str] = {}
        for child_id, reason in reasons.items():
            completion = self._completions.get(child_id)
            if completion is None:
                continue
            parent = completion.parent
            parent.error = reason_of[parent.request_id] = reason
            parent.output.outputs[completion.index].finish_reason = FinishReason.ERROR.value
            failed.setdefault(parent.request_id, []).append(
                StreamDelta(completion.index, "", [], None, FinishReason.ERROR.value)
            )
            self._end_completion(completion, child_id)
        deltas = []
        for parent_id, pieces in failed.items():
            parent = self._parents[parent_id]
            finished = parent.unfinished == 0
            if finished:
                parent.output.finished = True
                del self._parents[parent_id]
            deltas.append(RequestDelta(parent_id, pieces, finished, None, reason_of[parent_id]))
        return deltas

    def _end_completion(self, completion: _Completion, child_id: str) -> None:
        completion.parent.unfinished -= 1
        self._completions.pop(child_id, None)
        self.runner.remove_request(child_id)

    def _advance(
        self,
        completion: _Completion,
        new_tokens: list[int],
        result: RunnerOutput,
        finish: FinishReason | None,
    ) -> StreamDelta | None:
        """Detokenize a completion's new tokens, apply stop strings, record the output."""
        parent = completion.parent
        params = parent.params
        child_id = parent.children[completion.index]
        out = parent.output.outputs[completion.index]
        if not new_tokens and finish is None:
            return None
        finish_reason: str | None = finish.value if finish is not None else None
        stop_reason: str | int | None = None
        step_logprobs: list[PositionLogprobDict] | None = None
        logprob = result.logprobs.get(child_id)
        if logprob is not None and new_tokens:
            step_logprobs = [self._logprob_dict(logprob)]
        text = completion.text
        for token in new_tokens:
            ends_on_token = (
                finish is FinishReason.STOP
                and token == new_tokens[-1]
                # not a token that completed a grammar: that one is text
                and (token in self.eos_token_ids or token in params.stop_token_ids)
            )
            if ends_on_token and token in params.stop_token_ids:
                stop_reason = token
            if ends_on_token:
                break  # EOS or a stop token: no text for it
            previous = len(text)
            if completion.detokenizer is not None:
                text += completion.detokenizer.add(token)
            may_stop = len(out.token_ids) + len(new_tokens) >= params.min_tokens
            match = completion.stops.find(text, previous) if may_stop else None
            if match is not None:
                text, stop_reason, finish_reason = match.text, match.stop, "stop"
                self.scheduler.finish_requests([child_id], FinishReason.STOP)
                break
        if finish_reason is not None and stop_reason is None and completion.detokenizer:
            text += completion.detokenizer.flush()
        completion.text = text
        end = len(text) if finish_reason is not None else completion.stops.safe_length(text)
        delta_text = text[completion.emitted : end]
        completion.emitted = max(completion.emitted, end)
        out.text = text[:end] if finish_reason is not None else text[: completion.emitted]
        out.token_ids.extend(new_tokens)
        if logprob is not None and step_logprobs is not None and out.logprobs is not None:
            out.logprobs.extend(step_logprobs)
            out.cumulative_logprob = (out.cumulative_logprob or 0.0) + logprob.chosen.logprob
        if finish_reason is not None:
            out.finish_reason, out.stop_reason = finish_reason, stop_reason
        return StreamDelta(
            completion.index,
            delta_text,
            list(new_tokens),
            step_logprobs,
            finish_reason,
            stop_reason,
        )

    def _collect_prompt_logprobs(self, result: RunnerOutput) -> set[str]:
        """Append this step's prompt-logprob slices; the parents whose prompt is now scored."""
        ready = set()
        for child_id, (first_index, pieces) in result.prompt_logprobs.items():
            completion = self._completions.get(child_id)
            if completion is None:
                continue
            parent = completion.parent
            collected = parent.prompt_logprobs
            if first_index != len(collected):
                continue  # recomputed after a preemption: already have these
            collected.extend(pieces)
            if len(collected) == len(parent.output.prompt_token_ids):
                parent.output.prompt_logprobs = [
                    self._logprob_dict(p) if p is not None else None for p in collected
                ]
                ready.add(parent.request_id)
        return ready

    def _logprob_dict(self, result: PositionLogprobs) -> PositionLogprobDict:
        return logprob_dict(result, self.tokenizer)
