"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Each handler: validate the body (protocol/openai.py) -> prompts and SamplingParams -> a
Generation on the engine -> a response or a stream (render/openai.py).
"""

from __future__ import annotations

import asyncio
import base64
import struct

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.server.encoding import JSONResponse
from ember.server.errors import bad_request, not_found
from ember.server.generation import EngineInput, Generation
from ember.server.prompts import Prompt, chat_prompt, encode_text
from ember.server.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    PromptValue,
    check_limits,
    default_max_tokens,
    sampling_params,
)
from ember.server.render.openai import (
    Echo,
    RenderContext,
    chat_response,
    chat_stream,
    completion_response,
    completion_stream,
)
from ember.server.routes.common import read_json, respond, server_state, until_disconnected
from ember.server.state import ServedModel, ServerState
from ember.server.structured import checked_constraint, structured_output_constraint
from ember.server.tools import prepare_tools

router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default for the legacy completions endpoint."""


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, ChatCompletionRequest)
    served = await state.model(body.model)
    state.check_admitting(served)
    constraint = structured_output_constraint(body.response_format, body.constraint_extras())
    limits = state.settings.limits
    logprobs = body.wanted_logprobs(limits)
    wanted = body.wanted_max_tokens()
    check_limits(body, limits, wanted)
    if body.stream and body.prompt_logprobs is not None:
        raise bad_request("prompt_logprobs is not supported with stream=true", "prompt_logprobs")
    tools = await prepare_tools(
        body.template_messages(),
        getattr(served.tokenizer, "chat_template", None),
        body.tools,
        body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
    )
    if tools.constraint is not None and constraint is not None:
        raise bad_request(
            'tool_choice "required" or a named function cannot be combined with an output '
            "constraint",
            "tool_choice",
        )
    constraint = tools.constraint or await checked_constraint(constraint)
    prompt = await chat_prompt(
        state.tokenize_pool,
        served.tokenizer,
        served.name,
        tools.messages,
        add_generation_prompt=body.add_generation_prompt,
        tools=tools.template_tools,
        template_kwargs=body.chat_template_kwargs,
    )
    max_tokens = default_max_tokens(wanted, len(prompt.token_ids), served.max_model_len, limits)
    params = sampling_params(
        body,
        max_tokens=max_tokens,
        logprobs=logprobs,
        prompt_logprobs=body.prompt_logprobs,
        structured_outputs=constraint,
    )
    generation = Generation(state, served, [EngineInput(prompt, params)])
    ctx = RenderContext.new(
        "chatcmpl",
        generation,
        n=body.n,
        top_logprobs=logprobs,
        show_prompt_logprobs=body.prompt_logprobs is not None,
        include_usage=body.include_usage,
        continuous_usage=bool(body.stream_options and body.stream_options.continuous_usage_stats),
        parse_tools=tools.parse_calls,
    )
    return await respond(
        request,
        generation,
        stream=body.stream,
        n=body.n,
        stream_body=lambda: chat_stream(ctx, generation),
        render=lambda collected: chat_response(ctx, collected),
    )


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, CompletionRequest)
    served = await state.model(body.model)
    state.check_admitting(served)
    constraint = structured_output_constraint(body.response_format, body.constraint_extras())
    limits = state.settings.limits
    if body.suffix:
        raise bad_request("suffix is not supported", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of is not supported (other than best_of == n)", "best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= limits.max_logprobs:
        raise bad_request(
            f"logprobs must be in [0, {limits.max_logprobs}], got {body.logprobs}", "logprobs"
        )
    check_limits(body, limits, body.max_tokens)
    if body.stream and body.prompt_logprobs is not None:
        raise bad_request("prompt_logprobs is not supported with stream=true", "prompt_logprobs")
    constraint = await checked_constraint(constraint)
    prompts = await _completion_prompts(state, served, body.prompt)
    wanted = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    prompt_logprobs = body.prompt_logprobs
    if body.echo and body.logprobs is not None:
        # echo with logprobs reports the prompt's tokens too: the engine scores them.
        prompt_logprobs = max(body.logprobs, prompt_logprobs or 0)
    inputs = [
        EngineInput(
            prompt,
            sampling_params(
                body,
                max_tokens=default_max_tokens(
                    wanted, len(prompt.token_ids), served.max_model_len, limits
                ),
                logprobs=body.logprobs,
                prompt_logprobs=prompt_logprobs,
                structured_outputs=constraint,
            ),
        )
        for prompt in prompts
    ]
    echoes = [_echo(served, p) if body.echo else None for p in prompts]
    generation = Generation(state, served, inputs)
    ctx = RenderContext.new(
        "cmpl",
        generation,
        n=body.n,
        top_logprobs=body.logprobs,
        show_prompt_logprobs=body.prompt_logprobs is not None,
        include_usage=body.include_usage,
        continuous_usage=bool(body.stream_options and body.stream_options.continuous_usage_stats),
    )
    return await respond(
        request,
        generation,
        stream=body.stream,
        n=body.n,
        stream_body=lambda: completion_stream(ctx, generation, echoes),
        render=lambda collected: completion_response(ctx, collected, echoes),
    )


def _echo(served: ServedModel, prompt: Prompt) -> Echo:
    text = prompt.text
    if text is None:
        tokenizer = served.tokenizer
        text = tokenizer.decode(prompt.token_ids) if tokenizer is not None else ""
    return Echo(text, prompt.token_ids)


async def _completion_prompts(
    state: ServerState, served: ServedModel, value: PromptValue
) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    items: list[str | list[int]]
    if isinstance(value, str):
        items = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [[v for v in value if isinstance(v, int)]]
    else:
        items = [v for v in value if isinstance(v, str | list)]
    if not items:
        raise bad_request("prompt is empty: give a string, strings or token ids", "prompt")
    most = state.settings.limits.max_prompts
    if len(items) > most:
        raise bad_request(f"prompt has {len(items)} prompts; at most {most} are allowed", "prompt")
    prompts = []
    for item in items:
        if isinstance(item, str):
            prompts.append(
                await encode_text(state.tokenize_pool, served.tokenizer, served.name, item)
            )
        else:
            prompts.append(Prompt(list(item)))
    return prompts


# -- embeddings ------------------------------------------------------------------------------


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, EmbeddingRequest)
    served = await state.model(body.model)
    state.check_admitting(served)
    hidden = served.loaded.config.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise bad_request(
            f"dimensions must be {hidden} for {served.name} (it cannot be shortened)",
            "dimensions",
        )
    prompts = await _completion_prompts(state, served, body.input)
    limit = served.max_model_len
    vocab = served.vocab_size
    for index, prompt in enumerate(prompts):
        if not prompt.token_ids:
            raise bad_request(f"input {index} is empty", "input")
        if len(prompt.token_ids) > limit:
            raise bad_request(
                f"input {index} has {len(prompt.token_ids)} tokens, but the context holds {limit}",
                "input",
            )
        bad = next((t for t in prompt.token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(
                f"input {index}: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                "input",
            )
    vectors = await until_disconnected(request, _embed_all(state, served, prompts))
    data = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str = vector
        if body.encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(p.token_ids) for p in prompts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _embed_all(
    state: ServerState, served: ServedModel, prompts: list[Prompt]
) -> list[list[float]]:
    from ember.engine.embeddings import embed

    loop = asyncio.get_running_loop()
    model = served.loaded.model
    vectors = []
    for prompt in prompts:  # one job per input: a client that leaves stops the rest
        vector = await loop.run_in_executor(state.embed_pool, embed, model, prompt.token_ids)
        vectors.append(vector.tolist())
    return vectors


# -- models ----------------------------------------------------------------------------------


def _model_card(served: ServedModel, name: str) -> dict[str, object]:
    return {
        "id": name,
        "object": "model",
        "created": served.created,
        "owned_by": "ember",
        "root": served.loaded.name,
        "max_model_len": served.max_model_len,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """Loaded models by every name they answer to, then the downloaded library models a
    request may name (they load on first use)."""
    from ember.registry.cache import list_models as downloaded

    state = server_state(request)
    cards = [_model_card(s, name) for s in state.served for name in s.names]
    listed = {card["id"] for card in cards}
    for manifest in await asyncio.to_thread(downloaded):
        if manifest.alias not in listed:
            mtime = int(manifest.path().stat().st_mtime) if manifest.path().exists() else 0
            cards.append(
                {"id": manifest.alias, "object": "model", "created": mtime, "owned_by": "ember"}
            )
    return JSONResponse({"object": "list", "data": cards})


@router.get("/v1/models/{name:path}")
async def get_model(request: Request, name: str) -> Response:
    state = server_state(request)
    for served in state.served:
        if name in served.names:
            return JSONResponse(_model_card(served, name))
    raise not_found(f"the model {name!r} does not exist", code="model_not_found")
