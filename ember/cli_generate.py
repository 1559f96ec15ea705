"""`ember run`, `ember generate` and `ember perplexity`: the commands that load a model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ember.errors import RequestError


def add_commands(commands: Any) -> None:
    from ember.registry.library import DEFAULT_MODEL

    run = commands.add_parser(
        "run",
        help="chat with a model (one prompt, or interactive without one)",
        description="Stream the model's answer to PROMPT, applying its chat template when it "
        "has one. Without PROMPT: an interactive chat (or read the prompt from a pipe).",
    )
    run.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"library name, .gguf path, HF folder or hf:owner/repo (default: {DEFAULT_MODEL})",
    )
    run.add_argument("prompt", nargs="*", help="the prompt (words are joined by spaces)")
    run.add_argument("--system", help="system prompt for chat models")
    run.add_argument("--verbose", action="store_true", help="print timings after each answer")
    _add_model_options(run)
    _add_sampling_options(run, max_tokens=1024, temperature=0.8)
    run.set_defaults(handler=_cmd_run)

    generate = commands.add_parser(
        "generate",
        help="raw completion of a prompt (no chat template)",
        description="Continue PROMPT as raw text (no chat template), streaming the result.",
    )
    generate.add_argument("model", help="library name, .gguf path, HF folder or hf:owner/repo")
    generate.add_argument("prompt", nargs="+", help="the text to continue")
    generate.add_argument(
        "--json",
        action="store_true",
        help="print the whole result as JSON (token ids, logprobs, ...)",
    )
    generate.add_argument(
        "--logprobs",
        type=int,
        default=None,
        metavar="N",
        help="with --json: top-N logprobs of each generated token",
    )
    generate.add_argument(
        "--prompt-logprobs",
        type=int,
        default=None,
        metavar="N",
        help="with --json: top-N logprobs of each prompt token",
    )
    _add_model_options(generate)
    _add_sampling_options(generate, max_tokens=128, temperature=0.0)
    generate.set_defaults(handler=_cmd_generate)

    ppl = commands.add_parser(
        "perplexity",
        help="perplexity of a text file, computed as llama-perplexity does",
    )
    ppl.add_argument("model", help="library name, .gguf path, HF folder or hf:owner/repo")
    ppl.add_argument("file", type=Path, help="UTF-8 text file")
    ppl.add_argument("-c", "--ctx-size", type=int, default=512, help="chunk size (default 512)")
    ppl.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    _add_model_options(ppl)
    ppl.set_defaults(handler=_cmd_perplexity)

    bench = commands.add_parser(
        "bench",
        help="prefill and decode speed (llama-bench style), beside llama.cpp's",
        description="Prints ppN (prompt tokens/s) and tgN (generated tokens/s) for MODEL, with "
        "llama-bench's figures on the same file when llama.cpp is built.",
        epilog="`ember bench serve --help`: load-test an OpenAI-compatible server instead.",
    )
    bench.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="(or `serve`: see below)")
    bench.add_argument("-p", "--prompt", default="512", help="prompt sizes, e.g. 512,4096")
    bench.add_argument("-n", "--gen", type=int, default=128, help="tokens to generate (0: none)")
    bench.add_argument("-t", "--threads", type=int, default=None)
    bench.add_argument(
        "--llama-bin",
        type=Path,
        default=None,
        help="llama.cpp bin folder (default: EMBER_LLAMA_BIN or the peer cache)",
    )
    bench.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    bench.set_defaults(handler=_cmd_bench)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t", "--threads", type=int, default=None, help="CPU threads (default: the cores available)"
    )
    parser.add_argument(
        "--ctx",
        type=int,
        default=None,
        dest="max_model_len",
        help="context length to allow (default: the model's)",
    )


def _add_sampling_options(
    parser: argparse.ArgumentParser, *, max_tokens: int, temperature: float
) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "-n",
        "--max-tokens",
        type=int,
        default=max_tokens,
        help=f"most tokens to generate (default {max_tokens})",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0 is greedy (default {temperature})",
    )
    group.add_argument("--top-k", type=int, default=40 if temperature else 0)
    group.add_argument("--top-p", type=float, default=0.95 if temperature else 1.0)
    group.add_argument("--min-p", type=float, default=0.05 if temperature else 0.0)
    group.add_argument("--repeat-penalty", type=float, default=1.0, dest="repetition_penalty")
    group.add_argument("--presence-penalty", type=float, default=0.0)
    group.add_argument("--frequency-penalty", type=float, default=0.0)
    group.add_argument("--seed", type=int, default=None, help="same seed, same text")
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling_params(args: argparse.Namespace, **extra: Any) -> Any:
    from ember.sampling_params import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=args.stop,
        **extra,
    )


def _load(args: argparse.Namespace) -> Any:
    from ember.llm import LLM

    return LLM(args.model, threads=args.threads, max_model_len=args.max_model_len)


def _stream(llm: Any, prompt_ids: list[int], params: Any, verbose: bool) -> str:
    """Print the answer as it comes; returns its text."""
    started = time.perf_counter()
    first_token_at = None
    pieces: list[str] = []
    count = 0
    finish = None
    for delta in llm.stream(prompt_ids, params):
        if first_token_at is None:
            first_token_at = time.perf_counter()
        count += len(delta.token_ids)
        pieces.append(delta.text)
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        finish = delta.finish_reason
    sys.stdout.write("\n")
    sys.stdout.flush()
    if verbose and first_token_at is not None:
        done = time.perf_counter()
        decode = done - first_token_at
        rate = (count - 1) / decode if count > 1 and decode > 0 else 0.0
        print(
            f"prompt: {len(prompt_ids)} tokens, first token after "
            f"{first_token_at - started:.2f} s; {count} tokens at {rate:.1f} tok/s; "
            f"finish: {finish}",
            file=sys.stderr,
        )
    return "".join(pieces)


def _cmd_run(args: argparse.Namespace) -> int:
    params = _sampling_params(args)
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise RequestError("the prompt read from standard input is empty")
    llm = _load(args)
    has_template = bool(llm.get_tokenizer().chat_template)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if prompt:
        if has_template:
            _, ids = llm.chat_prompt_ids([*system, {"role": "user", "content": prompt}])
        else:
            ids = llm.get_tokenizer().encode(prompt)
        _stream(llm, ids, params, args.verbose)
        return 0
    return _interactive(llm, params, system, has_template, args.verbose)


def _interactive(
    llm: Any, params: Any, system: list[dict[str, str]], has_template: bool, verbose: bool
) -> int:
    mode = "chat" if has_template else "completion (the model has no chat template)"
    print(
        f"{llm.model_name}: {mode}. /clear forgets the conversation, /bye (or Ctrl-D) quits.",
        file=sys.stderr,
    )
    history: list[dict[str, str]] = list(system)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            if has_template:
                history.append({"role": "user", "content": line})
                _, ids = llm.chat_prompt_ids(history)
            else:
                ids = llm.get_tokenizer().encode(line)
            answer = _stream(llm, ids, params, verbose)
        except RequestError as exc:
            # e.g. the conversation outgrew the context: say so and keep the session alive.
            if has_template:
                history.pop()
            print(f"error: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            if has_template:
                history.pop()
            continue
        if has_template:
            history.append({"role": "assistant", "content": answer})


def _cmd_generate(args: argparse.Namespace) -> int:
    extra = {}
    if args.json:
        extra = {"logprobs": args.logprobs, "prompt_logprobs": args.prompt_logprobs}
    elif args.logprobs is not None or args.prompt_logprobs is not None:
        raise RequestError("--logprobs and --prompt-logprobs need --json")
    params = _sampling_params(args, **extra)
    llm = _load(args)
    prompt = " ".join(args.prompt)
    if not args.json:
        _stream(llm, llm.get_tokenizer().encode(prompt), params, verbose=False)
        return 0
    [result] = llm.generate(prompt, params, use_tqdm=False)
    print(json.dumps(_jsonable(asdict(result)), ensure_ascii=False, indent=1))
    return 0


def _jsonable(value: Any) -> Any:
    # dict keys of logprob maps are token ids: JSON needs strings
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from ember.bench.perplexity import perplexity

    try:
        text = args.file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RequestError(f"{args.file}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise RequestError(f"{args.file}: not a UTF-8 text file ({exc})") from None
    llm = _load(args)

    def report(done: int, total: int, running: float) -> None:
        print(f"[{done}/{total}] {running:.4f}", file=sys.stderr, flush=True)

    result = perplexity(
        llm.loaded, text, n_ctx=args.ctx_size, max_chunks=args.chunks, on_chunk=report
    )
    print(
        f"PPL = {result.perplexity:.4f} ({result.chunks} chunks of {args.ctx_size} tokens, "
        f"{result.tokens_scored} tokens scored)"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ember.bench.speed import default_llama_bin, speed_table
    from ember.models.loader import load_model_path
    from ember.registry.resolve import resolve_model
    from ember.runtime import set_threads

    try:
        sizes = [int(size) for size in args.prompt.split(",") if size.strip()]
    except ValueError:
        raise RequestError(f"--prompt takes sizes like 512,4096, got {args.prompt!r}") from None
    if any(size < 1 for size in sizes) or args.gen < 0:
        raise RequestError("prompt sizes must be positive and --gen at least 0")
    threads = set_threads(args.threads)
    source = resolve_model(args.model)
    loaded = load_model_path(source.path, with_tokenizer=False)
    longest = max([*sizes, args.gen + 1])
    if longest > loaded.config.context_length:
        raise RequestError(
            f"{longest} tokens exceed the model's context of {loaded.config.context_length}"
        )
    peer_dir = None if args.no_peer else (args.llama_bin or default_llama_bin())
    print(f"{source.name}, {threads} threads")
    speed_table(
        loaded, source.path, threads, sizes, args.gen, peer_dir, lambda row: print(row, flush=True)
    )
    return 0


def build_bench_serve_parser() -> argparse.ArgumentParser:
    """`ember bench serve`: its own parser, chosen by cli.main when `serve` follows `bench`."""
    from ember.bench.serve import add_arguments, run_command

    parser = argparse.ArgumentParser(
        prog="ember bench serve",
        description="Load-test an OpenAI-compatible server (Ember, llama-server, vLLM) with a "
        "traffic shape; report TTFT, TPOT, ITL and end-to-end latency percentiles, throughput, "
        "goodput and the server's prefix-cache hit rate.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_command)
    return parser
