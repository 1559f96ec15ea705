"""The offline Python API, shaped like vLLM's: LLM(model).generate(prompts, SamplingParams(...))."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ember.config import EngineConfig
from ember.core.request import RejectReason, RequestRejected
from ember.engine.generator import Generator, StreamDelta
from ember.engine.llm_engine import DEFAULT_MAX_MODEL_LEN, KV_DTYPES, LLMEngine
from ember.engine.outputs import RequestOutput
from ember.errors import RequestError, TokenizerError
from ember.runtime import set_threads
from ember.sampling_params import SamplingParams

PromptInput = str | Mapping[str, Any]
"""Text, or {"prompt_token_ids": [...]} (optionally with "prompt": the text it came from)."""

Message = Mapping[str, Any]


class LLM:
    """A loaded model ready to generate.

    `model` is a library name (`smollm2-135m-instruct`, pulled on first use), a .gguf path,
    a Hugging Face directory, or `hf:owner/repo[:file]`.

    generate() and chat() run every prompt through one serving engine (batched, paged KV cache),
    built on first use from `engine_config` (`max_model_len`, when given, overrides its field);
    stream() runs one request on the single-sequence generator. Both use the same context limit.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int | None = None,
        max_model_len: int | None = None,
        pull: bool = True,
        engine_config: EngineConfig | None = None,
    ) -> None:
        from ember.models.loader import load_model_path
        from ember.registry.library import DEFAULT_MODEL
        from ember.registry.resolve import resolve_model

        self.engine_config = _engine_config(engine_config, max_model_len)
        self.threads = set_threads(threads)
        source = resolve_model(model or DEFAULT_MODEL, pull_if_missing=pull)
        self.loaded = load_model_path(source.path)
        self.model_name = source.name
        # The engine's limit: the model's context, capped by default (see LLMEngine).
        limit = self.engine_config.max_model_len or DEFAULT_MAX_MODEL_LEN
        # The stream's contiguous cache in the engine's KV dtype (no int8 form: fp16 then).
        kv_dtype = KV_DTYPES[self.engine_config.kv_cache_dtype]
        self.generator = Generator(
            self.loaded, limit, torch.float16 if kv_dtype == torch.int8 else kv_dtype
        )
        self._engine: LLMEngine | None = None
        self._request_ids = itertools.count()

    @property
    def llm_engine(self) -> LLMEngine:
        """The serving engine behind generate() and chat(), built (KV cache and all) on first
        use."""
        if self._engine is None:
            self._engine = LLMEngine(self.loaded, self.engine_config)
        return self._engine

    @property
    def max_model_len(self) -> int:
        return self.generator.max_model_len

    def get_tokenizer(self) -> Any:
        return self.loaded.tokenizer

    # -- prompts ------------------------------------------------------------------------------

    def _prompt_ids(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.loaded.tokenizer.encode(prompt)
        if isinstance(prompt, Mapping) and "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, Sequence) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids
            ):
                raise RequestError("prompt_token_ids must be a list of integers")
            return prompt.get("prompt"), list(ids)
        if isinstance(prompt, Mapping) and isinstance(prompt.get("prompt"), str):
            return self._prompt_ids(prompt["prompt"])
        raise RequestError(
            "a prompt must be a string or a dict with 'prompt_token_ids' (or 'prompt')"
        )

    def render_chat(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        from ember.tokenizer.chat_template import render_for_tokenizer

        tokenizer = self.loaded.tokenizer
        template = chat_template or tokenizer.chat_template
        if not template:
            raise TokenizerError(
                f"{self.model_name} has no chat template: use generate() for raw completion "
                "or pass chat_template="
            )
        return render_for_tokenizer(
            tokenizer,
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **template_kwargs,
        )

    def chat_prompt_ids(self, messages: Sequence[Message], **kwargs: Any) -> tuple[str, list[int]]:
        text = self.render_chat(messages, **kwargs)
        # The template writes BOS itself where the model wants one.
        return text, self.loaded.tokenizer.encode(text, add_special=False)

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. Default sampling: vLLM's (max_tokens 16)."""
        if isinstance(prompts, str | Mapping):
            prompts = [prompts]
        prepared = [self._prompt_ids(p) for p in prompts]
        return self._run(prepared, sampling_params, use_tqdm)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        **template_kwargs: Any,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        conversations: list[Sequence[Message]]
        if messages and isinstance(messages[0], Mapping):
            conversations = [messages]  # type: ignore[list-item]
        else:
            conversations = list(messages)  # type: ignore[arg-type]
        prepared: list[tuple[str | None, list[int]]] = [
            self.chat_prompt_ids(c, **template_kwargs) for c in conversations
        ]
        return self._run(prepared, sampling_params, use_tqdm)

    def _run(
        self,
        prepared: list[tuple[str | None, list[int]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        if sampling_params is None:
            sampling_params = SamplingParams(max_tokens=16)
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prepared)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prepared):
                raise RequestError(
                    f"got {len(params_list)} sampling params for {len(prepared)} prompts"
                )
        for (_, ids), params in zip(prepared, params_list, strict=True):
            # The engine's own checks, with the same limit: fail before any work starts.
            self.generator.max_new_tokens(ids, params)
        return self._run_engine(prepared, params_list, use_tqdm)

    def _run_engine(
        self,
        prepared: list[tuple[str | None, list[int]]],
        params_list: list[SamplingParams],
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        from tqdm.auto import tqdm

        engine = self.llm_engine
        request_ids = [str(next(self._request_ids)) for _ in prepared]
        index_of = {request_id: index for index, request_id in enumerate(request_ids)}
        results: list[RequestOutput] = []
        unfinished: set[str] = set()
        bar = tqdm(
            total=len(prepared),
            desc="Generating",
            unit="req",
            disable=not use_tqdm or len(prepared) < 2,
        )
        try:
            while len(results) < len(prepared) or unfinished:
                while len(results) < len(prepared):
                    index = len(results)
                    request_id = request_ids[index]
                    text, ids = prepared[index]
                    try:
                        engine.add_request(request_id, ids, params_list[index], prompt=text)
                    except RequestRejected as exc:
                        if exc.reason is RejectReason.QUEUE_FULL and unfinished:
                            break  # step until the waiting queue has room again
                        raise
                    output = engine.output(request_id)
                    assert output is not None
                    results.append(output)
                    unfinished.add(request_id)
                for delta in engine.step():
                    if delta.request_id not in unfinished:
                        continue
                    if delta.error is not None:
                        reason = delta.error.strip().split("\n", 1)[0]
                        raise RequestError(f"prompt {index_of[delta.request_id]}: {reason}")
                    if delta.finished:
                        unfinished.discard(delta.request_id)
                        bar.update(1)
        except RequestError:
            for request_id in unfinished:
                engine.abort_request(request_id)
            raise
        except BaseException:
            # Interrupted mid-step (Ctrl-C) or a bug: the engine's state is in doubt, so the
            # next call builds a fresh one.
            self._engine = None
            raise
        finally:
            bar.close()
        return results

    def stream(
        self, prompt_ids: list[int], sampling_params: SamplingParams
    ) -> Iterator[StreamDelta]:
        """Text deltas of a single completion as they are produced (n must be 1)."""
        if sampling_params.n != 1:
            raise RequestError("stream() produces one completion: use n=1")
        for item in self.generator.stream(prompt_ids, sampling_params):
            if isinstance(item, StreamDelta):
                yield item


def _engine_config(config: EngineConfig | None, max_model_len: int | None) -> EngineConfig:
    try:
        if config is None:
            return EngineConfig(max_model_len=max_model_len)
        if max_model_len is not None:
            return dataclasses.replace(config, max_model_len=max_model_len)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return config
