"""Anthropic's Messages API: /v1/messages and /v1/messages/count_tokens.

Same path as the OpenAI routes: validate (protocol/anthropic.py) -> prompt and SamplingParams ->
a Generation -> a message or an event stream (render/anthropic.py). Errors take Anthropic's
shape (app.py picks the shape by path, see error_shapes.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.server.encoding import JSONResponse
from ember.server.errors import bad_request
from ember.server.generation import EngineInput, Generation
from ember.server.prompts import Prompt, chat_prompt
from ember.server.protocol.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    sampling_params,
)
from ember.server.render.anthropic import message_response, message_stream
from ember.server.routes.common import read_json, respond, server_state
from ember.server.state import ServedModel, ServerState
from ember.server.tools import ToolRequest, prepare_tools

router = APIRouter()


async def _tool_request(served: ServedModel, body: CountTokensRequest) -> ToolRequest:
    return await prepare_tools(
        body.template_messages(),
        getattr(served.tokenizer, "chat_template", None),
        body.template_tools(),
        body.openai_tool_choice(),
        parallel_tool_calls=body.parallel_tool_calls(),
    )


async def _prompt(state: ServerState, served: ServedModel, tools: ToolRequest) -> Prompt:
    return await chat_prompt(
        state.tokenize_pool,
        served.tokenizer,
        served.name,
        tools.messages,
        tools=tools.template_tools,
    )


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, MessagesRequest)
    served = await state.model(body.model)
    state.check_admitting(served)
    limits = state.settings.limits
    if body.max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {body.max_tokens}", "max_tokens")
    if limits.max_tokens is not None and body.max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens is {body.max_tokens}, but this server allows at most {limits.max_tokens}",
            "max_tokens",
        )
    if body.stop_sequences is not None and len(body.stop_sequences) > limits.max_stop:
        raise bad_request(
            f"stop_sequences has {len(body.stop_sequences)} strings; at most {limits.max_stop} "
            "are allowed",
            "stop_sequences",
        )
    tools = await _tool_request(served, body)
    prompt = await _prompt(state, served, tools)
    params = sampling_params(body, body.max_tokens, structured_outputs=tools.constraint)
    generation = Generation(state, served, [EngineInput(prompt, params)])
    parse = tools.parse_calls
    forced = tools.constraint is not None
    return await respond(
        request,
        generation,
        stream=body.stream,
        n=1,
        stream_body=lambda: message_stream(
            served.name, generation, parse_tools=parse, forced_calls=forced
        ),
        render=lambda collected: message_response(served.name, collected, parse_tools=parse),
    )


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, CountTokensRequest)
    served = await state.model(body.model)
    prompt = await _prompt(state, served, await _tool_request(served, body))
    return JSONResponse({"input_tokens": len(prompt.token_ids)})
