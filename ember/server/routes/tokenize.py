"""/tokenize and /detokenize, in vLLM's shapes.

POST /tokenize {"prompt": "..."} or {"messages": [...]} ->
    {"tokens": [...], "count": n, "max_model_len": L} (+ "token_strs" on request)
POST /detokenize {"tokens": [...]} -> {"prompt": "..."}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic_core import from_json

from ember.server.encoding import JSONResponse
from ember.server.errors import bad_request
from ember.server.prompts import Prompt, chat_prompt, encode_text, require_tokenizer
from ember.server.protocol.openai import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from ember.server.routes.common import read_json, server_state

router = APIRouter()


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    state = server_state(request)
    body: TokenizeChatRequest | TokenizeCompletionRequest
    if _has_messages(await request.body()):
        body = await read_json(request, TokenizeChatRequest)
    else:
        body = await read_json(request, TokenizeCompletionRequest)
    served = await state.model(body.model)
    prompt: Prompt
    if isinstance(body, TokenizeChatRequest):
        prompt = await chat_prompt(
            state.tokenize_pool,
            served.tokenizer,
            served.name,
            [m.for_template(i) for i, m in enumerate(body.messages)],
            add_generation_prompt=body.add_generation_prompt,
            template_kwargs=body.chat_template_kwargs,
        )
    else:
        prompt = await encode_text(
            state.tokenize_pool,
            served.tokenizer,
            served.name,
            body.prompt,
            add_special=body.add_special_tokens,
        )
    result: dict[str, Any] = {
        "tokens": prompt.token_ids,
        "count": len(prompt.token_ids),
        "max_model_len": served.max_model_len,
    }
    if body.return_token_strs:
        tokenizer: Any = served.tokenizer
        result["token_strs"] = [tokenizer.id_to_piece(t) for t in prompt.token_ids]
    return JSONResponse(result)


def _has_messages(raw: bytes) -> bool:
    try:
        data = from_json(raw)  # bounded nesting, unlike json.loads
    except ValueError:
        return False  # read_json reports it
    return isinstance(data, dict) and "messages" in data


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, DetokenizeRequest)
    served = await state.model(body.model)
    tokenizer: Any = require_tokenizer(served.tokenizer, served.name)
    vocab = served.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", "tokens")
    return JSONResponse({"prompt": tokenizer.decode(body.tokens)})
