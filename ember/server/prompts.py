"""Prompts for the engine: chat messages through the model's (sandboxed) chat template, text
through the tokenizer.

Short texts are handled on the event loop (a few hundred microseconds); long ones go to a
one-thread pool so that a 4 MiB prompt cannot stall every other connection while it tokenizes.
Tokenizers are shared with the engine thread's detokenizer: they only read their vocabularies,
and their memo caches are plain dicts (single get/set/clear calls, atomic under the GIL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from ember.errors import RequestError

INLINE_CHARS = 16 * 1024
"""Texts up to this long are tokenized on the event loop."""

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """One engine input: token ids, and the text they came from when there was one."""

    token_ids: list[int]
    text: str | None = None


async def off_loop_if_long(pool: Executor, size: int, work: Callable[[], T]) -> T:
    """Run `work` inline when `size` (characters) is small, else on `pool`."""
    if size <= INLINE_CHARS:
        return work()
    return await asyncio.get_running_loop().run_in_executor(pool, work)


def require_tokenizer(tokenizer: Any, model: str) -> Any:
    if tokenizer is None:
        raise RequestError(f"{model} has no tokenizer: send token ids instead of text")
    return tokenizer


async def encode_text(
    pool: Executor, tokenizer: Any, model: str, text: str, add_special: bool = True
) -> Prompt:
    tokenizer = require_tokenizer(tokenizer, model)
    ids = await off_loop_if_long(
        pool, len(text), lambda: tokenizer.encode(text, add_special=add_special)
    )
    return Prompt(list(ids), text)


def render_chat(
    tokenizer: Any,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The conversation as the model's chat template writes it (TokenizerError on failure)."""
    from ember.tokenizer.chat_template import render_for_tokenizer

    tokenizer = require_tokenizer(tokenizer, model)
    template = tokenizer.chat_template
    if not template:
        raise RequestError(
            f"{model} has no chat template: use /v1/completions with a raw prompt instead"
        )
    kwargs = dict(template_kwargs or {})
    # Names the renderer sets itself cannot be overridden from the request.
    reserved_names = ("template", "messages", "add_generation_prompt", "bos_token", "eos_token")
    for reserved in (*reserved_names, "tools"):
        kwargs.pop(reserved, None)
    return render_for_tokenizer(
        tokenizer,
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        **kwargs,
    )


async def chat_prompt(
    pool: Executor,
    tokenizer: Any,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    **options: Any,
) -> Prompt:
    size = sum(len(str(m.get("content") or "")) for m in messages)

    def work() -> Prompt:
        text = render_chat(tokenizer, model, messages, **options)
        # The template writes BOS itself where the model wants one.
        return Prompt(list(tokenizer.encode(text, add_special=False)), text)

    return await off_loop_if_long(pool, size, work)
