"""Turns a SchedulerOutput into one batched forward pass over the paged KV cache, then samples.

Every scheduled request contributes its chunk of tokens to one flat batch; logits are computed
only for the rows that need them (the last row of a chunk that reaches the end of the known
tokens, and the prompt rows of requests asking for prompt logprobs).

Requests with structured outputs get their grammar's token mask applied to their logits row
before sampling; the masks are filled on a worker thread during the forward pass
(ember.structured.masks), and a batch without such requests skips all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ember.core.outputs import SchedulerOutput
from ember.kernels.methods import batch_invariant, integer_batches
from ember.layers.paged_attention import BatchContext, PagedKVCache
from ember.models.base import DecoderLM
from ember.sample.logprobs import PositionLogprobs, score_tokens
from ember.sample.sampler import Sampler
from ember.sample.state import RequestSamplingState
from ember.structured.masks import GrammarMasker


@dataclass
class RunnerOutput:
    sampled: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, PositionLogprobs] = field(default_factory=dict)
    """Of the sampled token, for requests that asked."""
    prompt_logprobs: dict[str, tuple[int, list[PositionLogprobs | None]]] = field(
        default_factory=dict
    )
    """This step's slice of the prompt logprobs: (index of its first prompt token, entries);
    the prompt's first token has None (nothing predicts it)."""
    grammar_ended: set[str] = field(default_factory=set)
    """Requests whose structured-output grammar is complete with this step's token: they end
    with finish_reason "stop"."""
    grammar_errors: dict[str, str] = field(default_factory=dict)
    """Requests that cannot go on under their grammar, with a one-line reason."""


@dataclass
class _RunnerRequest:
    state: RequestSamplingState
    num_prompt_logprobs: int | None


class ModelRunner:
    def __init__(
        self,
        model: DecoderLM,
        kv: PagedKVCache,
        sampler: Sampler | None = None,
        deterministic: bool = False,
        sampleable_vocab: int | None = None,
    ) -> None:
        self.model = model
        self.deterministic = deterministic
        # Logits columns past the tokenizer's vocabulary (padding rows of the embedding) are
        # never sampled: no tokenizer could decode them.
        self.sampleable_vocab = sampleable_vocab
        self.kv = kv
        self.sampler = sampler or Sampler()
        self.requests: dict[str, _RunnerRequest] = {}
        self.grammar_masker = GrammarMasker()

    def add_request(
        self, request_id: str, state: RequestSamplingState, num_prompt_logprobs: int | None
    ) -> None:
        self.requests[request_id] = _RunnerRequest(state, num_prompt_logprobs)

    def remove_request(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        with batch_invariant(self.deterministic):
            return self._execute(step)

    def _execute(self, step: SchedulerOutput) -> RunnerOutput:
        # Finished and aborted requests were removed by the engine as they ended: ids in
        # step.finished_ids may already belong to new requests.
        result = RunnerOutput()
        if step.is_empty:
            return result
        items = step.requests
        num_groups = len(self.kv.groups)
        tables: list[list[Sequence[int]]] = [[] for _ in range(num_groups)]
        for item in items:
            for group in range(num_groups):
                tables[group].append(item.block_tables[group])
        context = BatchContext(
            self.kv,
            [item.num_tokens for item in items],
            [item.start_position + item.num_tokens for item in items],
            tables,
            deterministic=self.deterministic,
        )
        token_ids = torch.tensor(
            [token for item in items for token in item.token_ids], dtype=torch.int64
        )
        # Structured-output masks are filled on a worker thread while the model runs.
        sampling_states = [self.requests[i.request_id].state for i in items if i.needs_logits]
        masks = self.grammar_masker.start([state.grammar for state in sampling_states])
        # A batch of decode steps (no prompt chunk) takes the int8 GEMM; see integer_batches.
        decode_only = all(item.num_tokens == 1 for item in items)
        with integer_batches(len(items) if decode_only else 0):
            hidden = self.model.forward(token_ids, context.positions, context)

        # Rows whose logits are needed: prompt-logprob rows first, then one row per sample.
        sample_rows, sample_ids = [], []
        scored: list[tuple[str, int, int, int]] = []  # (request, first row, rows, prompt offset)
        row = 0
        for item in items:
            runner_request = self.requests[item.request_id]
            prompt_len = len(runner_request.state.prompt_token_ids)
            if runner_request.num_prompt_logprobs is not None and item.start_position < prompt_len:
                count = min(item.num_tokens, prompt_len - item.start_position)
                scored.append((item.request_id, row, count, item.start_position))
            if item.needs_logits:
                sample_rows.append(row + item.num_tokens - 1)
                sample_ids.append(item.request_id)
            row += item.num_tokens

        if sample_rows:
            with integer_batches(len(sample_rows) if decode_only else 0):
                logits = self.model.compute_logits(hidden[sample_rows])
            if self.sampleable_vocab is not None and self.sampleable_vocab < logits.shape[1]:
                logits[:, self.sampleable_vocab :] = float("-inf")
            states = sampling_states
            if masks is not None:
                masks.apply(logits)
            sampled = self.sampler.sample(logits, states)
            for rid, state, token, logprob in zip(
                sample_ids, states, sampled.token_ids, sampled.logprobs, strict=True
            ):
                state.append_token(token)
                result.sampled[rid] = [token]
                if logprob is not None:
                    result.logprobs[rid] = logprob
                grammar = state.grammar
                if grammar is not None and grammar.error is not None:
                    result.grammar_errors[rid] = grammar.error
                elif grammar is not None and grammar.ended:
                    result.grammar_ended.add(rid)
        for rid, first, count, offset in scored:
            first_index = 0 if offset == 0 else offset + 1
            result.prompt_logprobs[rid] = (
                first_index,
                self._prompt_logprobs(rid, hidden[first : first + count], offset),
            )
        return result

    def _prompt_logprobs(
        self, request_id: str, hidden: torch.Tensor, offset: int
    ) -> list[PositionLogprobs | None]:
        """Logprobs of prompt tokens offset+1 .. given rows at positions offset ..; position 0
        has none (nothing predicts the first token)."""
        runner_request = self.requests[request_id]
        prompt = runner_request.state.prompt_token_ids
        # Row t predicts prompt[offset + t + 1]; the prompt's last row predicts the first output.
        count = min(hidden.shape[0], len(prompt) - 1 - offset)
        pieces: list[PositionLogprobs | None] = [None] if offset == 0 else []
        if count > 0:
            logits = self.model.compute_logits(hidden[:count])
            targets = list(prompt[offset + 1 : offset + 1 + count])
            pieces += score_tokens(logits, targets, runner_request.num_prompt_logprobs or 0)
        return pieces
