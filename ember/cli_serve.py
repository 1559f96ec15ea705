"""`ember serve`: load a model and serve it over HTTP (OpenAI-compatible API)."""

from __future__ import annotations

import argparse
from typing import Any

from ember.errors import RequestError


def add_command(commands: Any) -> None:
    from ember.registry.library import DEFAULT_MODEL

    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible API)",
        description="Load MODEL and serve it on HOST:PORT: /v1/chat/completions, "
        "/v1/completions, /v1/embeddings, /v1/models, /tokenize, /detokenize, /health, /metrics; "
        "Anthropic's /v1/messages; Ollama's /api/generate, /api/chat, /api/tags, /api/ps, ... "
        "Other downloaded library models load on first use (see --keep-alive, "
        "--max-loaded-models, --memory-budget). "
        "SIGTERM drains in-flight requests, then exits 0.",
    )
    serve.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"library name, .gguf path, HF folder or hf:owner/repo (default: {DEFAULT_MODEL})",
    )
    net = serve.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    net.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: EMBER_API_KEY); required when "
        "--host is not a loopback address",
    )
    net.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback address without an API key",
    )
    net.add_argument(
        "--allowed-origins",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="enable CORS for this origin (repeatable, or comma-separated; '*' for any)",
    )
    net.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM (default 30)",
    )
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    model = serve.add_argument_group("model and engine")
    model.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="name(s) clients use for the model (default: the model's library name)",
    )
    model.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    model.add_argument(
        "--max-model-len",
        "--ctx",
        type=int,
        default=None,
        dest="max_model_len",
        help="context length per request (default: the model's, at most 8192)",
    )
    model.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=None,
        help="KV-cache size in tokens across all requests (default: 10%% of free memory)",
    )
    model.add_argument("--kv-cache-dtype", default="fp16", choices=["bf16", "fp16", "fp32", "int8"])
    model.add_argument("--max-num-seqs", type=int, default=64, help="most requests per step")
    model.add_argument(
        "--max-num-batched-tokens", type=int, default=512, help="token budget of one step"
    )
    model.add_argument(
        "--max-waiting",
        type=int,
        default=1024,
        help="waiting requests beyond this get 429 (default 1024)",
    )
    model.add_argument("--no-prefix-caching", action="store_true")
    model.add_argument(
        "--keep-alive",
        default="5m",
        help="how long a model loaded on first use stays loaded when idle: a duration (5m, "
        "30s, 1h), seconds, 0 (unload when idle) or negative (forever); default 5m",
    )
    model.add_argument(
        "--max-loaded-models",
        type=int,
        default=None,
        help="most models loaded at once; loading one more unloads the least recently used idle",
    )
    model.add_argument(
        "--memory-budget",
        type=int,
        default=None,
        help="bytes all loaded models may use (weights file + KV pool, estimated)",
    )
    model.add_argument(
        "--deterministic",
        action="store_true",
        help="a request's output does not depend on the rest of the batch (slower)",
    )

    limits = serve.add_argument_group("request limits (past them: 400, or 413 for the body)")
    limits.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    limits.add_argument("--max-header-bytes", type=int, default=16 * 1024)
    limits.add_argument("--max-n", type=int, default=16)
    limits.add_argument(
        "--max-tokens-limit",
        type=int,
        default=None,
        help="largest max_tokens a request may ask (default: the context length)",
    )
    limits.add_argument("--max-logprobs", type=int, default=20)
    limits.add_argument("--max-stop", type=int, default=16)
    limits.add_argument("--max-logit-bias", type=int, default=1024)
    limits.add_argument("--max-prompts", type=int, default=64, help="prompts or inputs per request")
    serve.set_defaults(handler=_cmd_serve)


def _origins(values: list[str] | None) -> tuple[str, ...]:
    return tuple(o.strip() for value in values or () for o in value.split(",") if o.strip())


def _settings(args: argparse.Namespace) -> Any:
    from ember.envs import api_key
    from ember.server.settings import Limits, ServerSettings, is_loopback

    key = args.api_key if args.api_key is not None else api_key()
    if key is None and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise RequestError(
            f"--host {args.host} accepts connections from other machines: give --api-key "
            "(or EMBER_API_KEY), or --allow-unauthenticated to serve without one"
        )
    try:
        return ServerSettings(
            host=args.host,
            port=args.port,
            api_key=key,
            allowed_origins=_origins(args.allowed_origins),
            shutdown_timeout=args.shutdown_timeout,
            max_header_bytes=args.max_header_bytes,
            limits=Limits(
                max_body_bytes=args.max_request_bytes,
                max_n=args.max_n,
                max_tokens=args.max_tokens_limit,
                max_logprobs=args.max_logprobs,
                max_stop=args.max_stop,
                max_logit_bias=args.max_logit_bias,
                max_prompts=args.max_prompts,
            ),
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def _engine_config(args: argparse.Namespace) -> Any:
    from ember.config import EngineConfig

    try:
        return EngineConfig(
            max_model_len=args.max_model_len,
            kv_cache_tokens=args.kv_cache_tokens,
            kv_cache_dtype=args.kv_cache_dtype,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_waiting=args.max_waiting,
            enable_prefix_caching=not args.no_prefix_caching,
            deterministic=args.deterministic,
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    # Every flag is checked before the model loads: a typo costs no waiting.
    settings = _settings(args)
    engine_config = _engine_config(args)
    _check_model_flags(args)
    names = tuple(args.served_model_name or ())
    if any(not name.strip() for name in names):
        raise RequestError("--served-model-name: names must not be empty")

    from ember.engine.async_engine import AsyncEngine
    from ember.models.loader import load_model_path
    from ember.registry.resolve import resolve_model
    from ember.runtime import set_threads
    from ember.server.serve import listen, run_server
    from ember.server.state import ServedModel, ServerState

    set_threads(args.threads)
    source = resolve_model(args.model)
    # Bound before the model loads: a port in use is reported at once.
    sock = listen(settings.host, settings.port)
    try:
        loaded = load_model_path(source.path)
        served = ServedModel(names or (source.name,), loaded, AsyncEngine(loaded, engine_config))
        try:
            state = ServerState(settings, [served])
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        state.models = _model_manager(args, state, engine_config, {served: source.path})
        return run_server(state, sock, log_level=args.log_level)
    finally:
        sock.close()


def _check_model_flags(args: argparse.Namespace) -> None:
    from ember.server.errors import ApiError
    from ember.server.models import parse_keep_alive

    try:
        parse_keep_alive(args.keep_alive)
    except ApiError as exc:
        raise RequestError(f"--keep-alive: {exc.message}") from None
    for flag, value in (
        ("--max-loaded-models", args.max_loaded_models),
        ("--memory-budget", args.memory_budget),
    ):
        if value is not None and value < 1:
            raise RequestError(f"{flag} must be positive, got {value}")


def _model_manager(
    args: argparse.Namespace, state: Any, engine_config: Any, startup_paths: dict[Any, Any]
) -> Any:
    from ember.server.models import ModelManager, parse_keep_alive

    keep_alive = parse_keep_alive(args.keep_alive)
    return ModelManager(
        state,
        engine_config,
        startup_paths=startup_paths,
        keep_alive=None if keep_alive is False else keep_alive,
        max_loaded_models=args.max_loaded_models,
        memory_budget=args.memory_budget,
    )
