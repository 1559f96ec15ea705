"""Run one request on one model: prefill, then decode token by token, streaming deltas.

This is the single-sequence reference loop of the foundation. The serving engine (scheduler,
paged cache, batching) drives the same model, sampler, detokenizer and stop checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ember.engine.outputs import (
    CompletionOutput,
    PositionLogprobDict,
    RequestOutput,
    logprob_dict,
)
from ember.engine.stop import StopChecker
from ember.errors import RequestError
from ember.layers.attention import SequenceKVCache
from ember.models.loader import LoadedModel
from ember.sample.logprobs import PositionLogprobs, prompt_logprobs
from ember.sample.sampler import Sampler
from ember.sample.state import RequestSamplingState
from ember.sampling_params import SamplingParams
from ember.tokenizer.detokenizer import IncrementalDetokenizer


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one decode step adds to completion `index`."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobDict] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class _Prefill:
    cache: SequenceKVCache
    last_logits: torch.Tensor  # [1, vocab]
    prompt_logprobs: list[PositionLogprobDict | None] | None


class Generator:
    def __init__(
        self,
        loaded: LoadedModel,
        max_model_len: int | None = None,
        kv_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.model = loaded.model
        self.kv_dtype = kv_dtype
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        limit = loaded.config.context_length
        if max_model_len is not None:
            if max_model_len < 1:
                raise RequestError(f"max_model_len must be positive, got {max_model_len}")
            limit = min(limit, max_model_len)
        self.max_model_len = limit
        self.sampler = Sampler()

    # -- request checks ---------------------------------------------------------------------

    def max_new_tokens(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        """Tokens this request may generate; RequestError when it cannot fit the context."""
        if not prompt_ids:
            raise RequestError("the prompt is empty: give at least one token")
        vocab = self.config.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
        params.verify_vocab_size(vocab)
        if getattr(params, "structured_outputs", None) is not None:
            raise RequestError(
                "structured outputs need the serving engine (LLM.generate / ember serve), "
                "not the single-sequence stream"
            )
        room = self.max_model_len - len(prompt_ids)
        if room <= 0:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the context holds "
                f"{self.max_model_len}: shorten the prompt"
            )
        if params.max_tokens is None:
            return room
        if params.max_tokens > room:
            raise RequestError(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
                f"exceeds the context length of {self.max_model_len} tokens"
            )
        return params.max_tokens

    # -- the loop ---------------------------------------------------------------------------

    def _logprob_dict(self, result: PositionLogprobs) -> PositionLogprobDict:
        return logprob_dict(result, self.tokenizer)

    def _prefill(self, prompt_ids: list[int], capacity: int, num_prompt_logprobs: int | None):
        cache = self.model.new_cache(capacity, self.kv_dtype)
        hidden = self.model.prefill(torch.tensor(prompt_ids, dtype=torch.long), cache)
        plp = None
        if num_prompt_logprobs is not None:
            all_logits = self.model.compute_logits(hidden)
            results = prompt_logprobs(all_logits, prompt_ids, num_prompt_logprobs)
            plp = [self._logprob_dict(r) if r is not None else None for r in results]
            last = all_logits[-1:]
        else:
            last = self.model.compute_logits(hidden[-1:])
        return _Prefill(cache, last, plp)

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
    ) -> Iterator[StreamDelta | list[PositionLogprobDict | None]]:
        """Yields prompt logprobs first (when asked), then deltas of each completion in turn."""
        max_new = self.max_new_tokens(prompt_ids, params)
        prefill = self._prefill(prompt_ids, len(prompt_ids) + max_new, params.prompt_logprobs)
        if prefill.prompt_logprobs is not None:
            yield prefill.prompt_logprobs
        for index in range(params.n):
            cache = prefill.cache if index == params.n - 1 else prefill.cache.fork()
            seq_params = params
            if params.seed is not None and index > 0:
                # Distinct but reproducible samples for n > 1.
                seq_params = dataclasses.replace(params, seed=params.seed + index)
            yield from self._decode(
                index, prompt_ids, seq_params, cache, prefill.last_logits, max_new
            )

    def _decode(
        self,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        cache: SequenceKVCache,
        logits: torch.Tensor,
        max_new: int,
    ) -> Iterator[StreamDelta]:
        tokenizer = self.tokenizer
        eos_ids = frozenset(tokenizer.eos_token_ids) if tokenizer is not None else frozenset()
        state = RequestSamplingState(params, prompt_ids, eos_ids)
        detok = (
            IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens)
            if tokenizer is not None
            else None
        )
        stops = StopChecker(params.stop, params.include_stop_str_in_output)
        stop_ids = set(params.stop_token_ids)
        text, emitted = "", 0
        while True:
            sampled = self.sampler.sample(logits, [state])
            token = sampled.token_ids[0]
            state.append_token(token)
            count = state.num_output_tokens
            lp = sampled.logprobs[0]
            step_logprobs = [self._logprob_dict(lp)] if lp is not None else None
            finish: str | None = None
            stop_reason: str | int | None = None
            may_stop = count >= params.min_tokens
            if may_stop and not params.ignore_eos and token in eos_ids:
                finish = "stop"
            elif may_stop and token in stop_ids:
                finish, stop_reason = "stop", token
            else:
                previous = len(text)
                text += detok.add(token) if detok is not None else ""
                match = stops.find(text, previous) if may_stop else None
                if match is not None:
                    finish, stop_reason, text = "stop", match.stop, match.text
                elif count >= max_new:
                    finish = "length"
            if finish is not None and detok is not None and stop_reason is None:
                text += detok.flush()
            end = len(text) if finish is not None else stops.safe_length(text)
            yield StreamDelta(index, text[emitted:end], [token], step_logprobs, finish, stop_reason)
            emitted = max(emitted, end)
            if finish is not None:
                return
            step = torch.tensor([token], dtype=torch.long)
            logits = self.model.compute_logits(self.model(step, cache, cache.length))

    def run(
        self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> RequestOutput:
        """Collects a whole request into a RequestOutput."""
        want_logprobs = params.logprobs is not None
        outputs = [
            CompletionOutput(
                index=i,
                logprobs=[] if want_logprobs else None,
                cumulative_logprob=0.0 if want_logprobs else None,
            )
            for i in range(params.n)
        ]
        result = RequestOutput(request_id, prompt, list(prompt_ids), outputs)
        for item in self.stream(list(prompt_ids), params):
            if isinstance(item, list):
                result.prompt_logprobs = item
                continue
            out = outputs[item.index]
            out.text += item.text
            out.token_ids.extend(item.token_ids)
            if item.logprobs is not None and out.logprobs is not None:
                out.logprobs.extend(item.logprobs)
                for token, position in zip(item.token_ids, item.logprobs, strict=True):
                    out.cumulative_logprob = (out.cumulative_logprob or 0.0) + position[
                        token
                    ].logprob
            if item.finish_reason is not None:
                out.finish_reason, out.stop_reason = item.finish_reason, item.stop_reason
        result.finished = True
        return result
