"""Ollama's API: /api/generate, /api/chat (NDJSON streams by default), /api/embed,
/api/embeddings, /api/tags, /api/show, /api/pull, /api/ps, /api/version.

Models are named as Ollama names them (`name:tag`); `:latest` may be left out. Errors are
Ollama's {"error": "..."} (app.py picks the shape by path).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.errors import EmberError
from ember.server.encoding import JSONResponse
from ember.server.errors import ApiError, bad_request, not_found
from ember.server.generation import EngineInput, Generation, collect
from ember.server.models import parse_keep_alive
from ember.server.prompts import Prompt, chat_prompt, encode_text
from ember.server.protocol.ollama import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    LegacyEmbeddingsRequest,
    ModelRequest,
    sampling_params,
    wanted_max_tokens,
)
from ember.server.protocol.openai import default_max_tokens
from ember.server.render.ollama import (
    NDJSONResponse,
    Timing,
    Wrap,
    chat_piece,
    generate_piece,
    iso,
    line,
    now_iso,
    stream_lines,
    whole_response,
)
from ember.server.routes.common import (
    CLIENT_CLOSED,
    ClientGone,
    read_json,
    server_state,
    until_disconnected,
)
from ember.server.state import ServedModel, ServerState
from ember.server.tools import ToolRequest, prepare_tools

router = APIRouter()


async def _served(state: ServerState, name: str, keep_alive: Any) -> ServedModel:
    wanted = parse_keep_alive(keep_alive)
    served = await state.model(name)
    if state.models is not None:
        state.models.touch(served, wanted)
    return served


async def _unload_request(state: ServerState, served: ServedModel, name: str, wrap: Wrap) -> Any:
    """A request with no prompt only loads the model; with keep_alive 0 it unloads it."""
    slot = state.models.slot(served) if state.models is not None else None
    reason = "load"
    if state.models is not None and slot is not None and slot.keep_alive == 0:
        await state.models.unload_now(served)
        reason = "unload"
    return JSONResponse(
        {"model": name, "created_at": now_iso(), **wrap(""), "done": True, "done_reason": reason}
    )


async def _run(
    request: Request,
    state: ServerState,
    served: ServedModel,
    name: str,
    body: GenerateRequest | ChatRequest,
    prompt: Prompt,
    timing: Timing,
    wrap: Wrap,
    tools: ToolRequest | None = None,
) -> Response:
    """Generate and answer; with `tools` (/api/chat) a forced call's constraint applies and
    calls are parsed out of the output when tools were offered."""
    limits = state.settings.limits
    wanted = wanted_max_tokens(body.options)
    if wanted is not None and limits.max_tokens is not None and wanted > limits.max_tokens:
        raise bad_request(
            f"num_predict is {wanted}, but this server allows at most {limits.max_tokens}",
            "num_predict",
        )
    stops = body.options.stop if body.options is not None else None
    if isinstance(stops, list) and len(stops) > limits.max_stop:
        raise bad_request(f"stop has {len(stops)} strings; at most {limits.max_stop}", "stop")
    max_tokens = default_max_tokens(wanted, len(prompt.token_ids), served.max_model_len, limits)
    constraint = tools.constraint if tools is not None else None
    params = sampling_params(body, max_tokens, tool_constraint=constraint)
    parse = tools is not None and tools.parse_calls
    generation = Generation(state, served, [EngineInput(prompt, params)])
    handed_over = False
    try:
        await until_disconnected(request, generation.start())
        timing.token()  # start() returns with the first output: the prompt is evaluated
        if body.stream:
            handed_over = True
            lines = stream_lines(name, timing, generation, wrap, parse_tools=parse)
            return NDJSONResponse(lines)
        collected = await until_disconnected(request, collect(generation, 1))
        whole = whole_response(name, timing, generation, collected, wrap, parse_tools=parse)
        return JSONResponse(whole)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    finally:
        if not handed_over:
            await generation.close()


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, GenerateRequest)
    if body.images:
        raise bad_request("images are not supported (text models only)", "images")
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", "suffix")
    timing = Timing()
    served = await _served(state, body.model, body.keep_alive)
    timing.model_ready()
    if not body.prompt and not body.system:
        return await _unload_request(state, served, body.model, generate_piece)
    state.check_admitting(served)
    text = body.prompt or ""
    if body.raw:
        prompt = await encode_text(
            state.tokenize_pool, served.tokenizer, served.name, text, add_special=True
        )
    elif served.tokenizer is not None and served.tokenizer.chat_template:
        messages = [{"role": "system", "content": body.system}] if body.system else []
        messages.append({"role": "user", "content": text})
        prompt = await chat_prompt(state.tokenize_pool, served.tokenizer, served.name, messages)
    else:  # a base model: the system prompt (if any) then the prompt, as plain text
        joined = f"{body.system}\n\n{text}" if body.system else text
        prompt = await encode_text(state.tokenize_pool, served.tokenizer, served.name, joined)
    return await _run(request, state, served, body.model, body, prompt, timing, generate_piece)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, ChatRequest)
    messages = body.template_messages()
    timing = Timing()
    served = await _served(state, body.model, body.keep_alive)
    timing.model_ready()
    if not messages:
        return await _unload_request(state, served, body.model, chat_piece)
    state.check_admitting(served)
    tools = await prepare_tools(
        messages,
        getattr(served.tokenizer, "chat_template", None),
        body.openai_tools(),
        body.tool_choice,
    )
    prompt = await chat_prompt(
        state.tokenize_pool,
        served.tokenizer,
        served.name,
        tools.messages,
        tools=tools.template_tools,
    )
    return await _run(request, state, served, body.model, body, prompt, timing, chat_piece, tools)


# -- embeddings ------------------------------------------------------------------------------


async def _embed(
    request: Request, state: ServerState, served: ServedModel, texts: list[str], truncate: bool
) -> tuple[list[list[float]], int]:
    from ember.engine.embeddings import embed

    limit = served.max_model_len
    prompts = []
    for index, text in enumerate(texts):
        prompt = await encode_text(state.tokenize_pool, served.tokenizer, served.name, text)
        ids = prompt.token_ids
        if not ids:
            raise bad_request(f"input {index} is empty", "input")
        if len(ids) > limit:
            if not truncate:
                raise bad_request(
                    f"input {index} has {len(ids)} tokens, but the context holds {limit}", "input"
                )
            ids = ids[:limit]
        prompts.append(ids)
    loop = asyncio.get_running_loop()

    async def run() -> list[list[float]]:
        vectors = []
        for ids in prompts:
            vector = await loop.run_in_executor(state.embed_pool, embed, served.loaded.model, ids)
            vectors.append(vector.tolist())
        return vectors

    return await until_disconnected(request, run()), sum(len(p) for p in prompts)


@router.post("/api/embed")
async def embed_route(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, EmbedRequest)
    timing = Timing()
    served = await _served(state, body.model, body.keep_alive)
    timing.model_ready()
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if len(texts) > state.settings.limits.max_prompts:
        raise bad_request(
            f"input has {len(texts)} texts; at most {state.settings.limits.max_prompts}"
        )
    vectors, tokens = await _embed(request, state, served, texts, body.truncate)
    durations = timing.fields(tokens, 0)
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": durations["total_duration"],
            "load_duration": durations["load_duration"],
            "prompt_eval_count": tokens,
        }
    )


@router.post("/api/embeddings")
async def legacy_embeddings(request: Request) -> Response:
    state = server_state(request)
    body = await read_json(request, LegacyEmbeddingsRequest)
    served = await _served(state, body.model, body.keep_alive)
    if not body.prompt:
        return JSONResponse({"embedding": []})
    vectors, _ = await _embed(request, state, served, [body.prompt], True)
    return JSONResponse({"embedding": vectors[0]})


# -- models ----------------------------------------------------------------------------------


def _tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _details(path: Path | None) -> dict[str, Any]:
    details: dict[str, Any] = {
        "parent_model": "",
        "format": "gguf",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
    if path is None or not path.is_file():
        return details
    from ember.registry.show import show

    try:
        facts = show(str(path))
    except EmberError:
        return details
    family = str(facts.get("architecture") or "")
    params = int(facts.get("parameters") or 0)
    types = facts.get("tensor_types") or {}
    details.update(
        family=family,
        families=[family] if family else None,
        parameter_size=f"{params / 1e6:.0f}M" if params < 1e9 else f"{params / 1e9:.1f}B",
        quantization_level=_main_type(types),
    )
    return details


def _main_type(types: dict[str, int]) -> str:
    """The most common tensor type that is not a plain float (norms are f32 in every file)."""
    names = [str(t).upper() for t in types]
    quantized = [n for n in names if n not in ("F32", "F16", "BF16")]
    return (quantized or names or [""])[0]


def _digest(text: str) -> str:
    # Ollama's digests are of the manifest; ours is of the file's identity (sha256 from the
    # library where known).
    return hashlib.sha256(text.encode()).hexdigest()


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    from ember.registry.cache import list_models

    state = server_state(request)
    models = []
    seen = set()
    for manifest in await asyncio.to_thread(list_models):
        path = manifest.path()
        seen.add(path)
        models.append(
            {
                "name": _tag(manifest.alias),
                "model": _tag(manifest.alias),
                "modified_at": manifest.pulled_at,
                "size": manifest.size,
                "digest": manifest.sha256,
                "details": await asyncio.to_thread(_details, path),
            }
        )
    if state.models is not None:  # loaded models that are not library downloads (a .gguf path)
        for slot in state.models.loaded():
            if slot.path in seen:
                continue
            seen.add(slot.path)
            name = _tag(slot.served.name)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": iso(slot.path.stat().st_mtime),
                    "size": slot.path.stat().st_size,
                    "digest": _digest(str(slot.path)),
                    "details": await asyncio.to_thread(_details, slot.path),
                }
            )
    return JSONResponse({"models": models})


def _path_of(state: ServerState, name: str) -> Path:
    if state.models is None:
        raise not_found(f"model {name!r} not found")
    _, path = state.models.locate(name)
    return path


@router.post("/api/show")
async def show_route(request: Request) -> Response:
    from ember.registry.show import chat_template, show

    state = server_state(request)
    body = await read_json(request, ModelRequest)
    name = body.model_name
    path = _path_of(state, name)
    facts = await asyncio.to_thread(show, str(path))
    template = await asyncio.to_thread(chat_template, str(path))
    info = {
        "general.architecture": facts.get("architecture"),
        "general.parameter_count": facts.get("parameters"),
        "context_length": facts.get("context_length"),
        "embedding_length": facts.get("embedding_length"),
        "block_count": facts.get("layers"),
    }
    capabilities = ["completion", "embedding"]
    return JSONResponse(
        {
            "license": "",
            "modelfile": f"FROM {path}\n",
            "parameters": "",
            "template": template or "",
            "details": await asyncio.to_thread(_details, path),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": iso(path.stat().st_mtime),
        }
    )


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    from ember.registry.library import find_entry
    from ember.registry.pull import pull_entry

    state = server_state(request)
    body = await read_json(request, ModelRequest)
    name = body.model_name
    try:
        entry = find_entry(name)
    except EmberError as exc:
        raise not_found(str(exc)) from None
    if entry is None:
        raise not_found(f"model {name!r} is not in Ember's model library")
    del state

    async def work() -> None:
        try:
            await asyncio.to_thread(pull_entry, entry, progress=False)
        except EmberError as exc:
            raise ApiError(
                500, f"pull of {entry.name} failed: {exc}", type="server_error"
            ) from None

    if not body.stream:
        await work()
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        yield line({"status": "pulling manifest"})
        try:
            yield line({"status": f"pulling {entry.file_name}", "total": entry.size})
            await work()
            yield line({"status": "verifying sha256 digest"})
            yield line({"status": "writing manifest"})
            yield line({"status": "success"})
        except ApiError as error:
            yield line({"error": error.message})

    return NDJSONResponse(lines())


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    state = server_state(request)
    models = []
    if state.models is not None:
        for slot in state.models.loaded():
            name = _tag(slot.served.name)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": slot.size,
                    "digest": _digest(str(slot.path)),
                    "details": await asyncio.to_thread(_details, slot.path),
                    "expires_at": iso(state.models.expires_at(slot)),
                    "size_vram": 0,
                    "context_length": slot.served.max_model_len,
                }
            )
    return JSONResponse({"models": models})


@router.get("/api/version")
async def version() -> Response:
    from ember import __version__

    return JSONResponse({"version": __version__})
