"""Structured-output grammar backends side by side: llguidance vs xgrammar (issue 5).

For each model's real tokenizer (only the tokenizer is loaded, never the weights) and each
grammar backend, through Ember's own backend interface (ember/structured/backend.py):
  (a) import and vocabulary set-up: the library's first import and its view of the vocabulary
      (StructuredCompiler's first-request cost);
  (b) compile: spec -> compiled grammar (the tokenizer-free build plus the vocabulary-dependent
      compile, caches cleared), for JSON schemas of varied difficulty, a regex, a GBNF grammar
      and a choice list;
  (c) per-token masks: a valid instance of each grammar is generated token by token (Ember's
      tokenization of it while the mask allows, see Walk; "detours" counts the exceptions):
      the mask fill before each token (first, mean, p99) and the accept after it;
  (d) peak extra RSS over the process with the tokenizer loaded (the library import included),
      from checkpoints between the timed sections and the kernel's high-water mark.
Each (model, backend) pair runs in a fresh child process, so imports and memory are its own.

Usage: .venv/bin/python benchmarks/bench_grammar.py [--backends llguidance,xgrammar]
       [--models smollm2,gemma3] [--repeats 3]
Times are medians over the repeats (per-token figures pool every repeat). Run on an idle
machine; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

MODELS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
BACKENDS = ("llguidance", "xgrammar")
WORKER_TIMEOUT_S = 600


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


STRING = {"type": "string", "maxLength": 24}
ADDRESS = _object(
    {"street": STRING, "city": STRING, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}
)
# name -> (StructuredOutputs fields, a valid instance). JSON instances are laid out as
# json.dumps does (", " and ": "), which is what any_whitespace=False allows.
CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "json flat": (
        {
            "json": _object(
                {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "active": {"type": "boolean"},
                    "score": {"type": "number"},
                }
            )
        },
        {"id": 4182, "name": "Ada Lovelace", "active": True, "score": 97.25},
    ),
    "json nested": (
        {
            "json": _object(
                {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "address": _object(
                        {
                            "city": {"type": "string", "maxLength": 20},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                        }
                    ),
                }
            )
        },
        {"name": "Jean Dupont", "age": 42, "address": {"city": "Lyon", "zip": "69001"}},
    ),
    "json enums": (
        {
            "json": _object(
                {
                    "color": {"enum": ["red", "green", "blue"]},
                    "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
                    "in_stock": {"type": "boolean"},
                }
            )
        },
        {"color": "green", "size": "XL", "in_stock": False},
    ),
    "json bounded array": (
        {
            "json": _object(
                {
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 12},
                        "minItems": 2,
                        "maxItems": 3,
                    }
                }
            )
        },
        {"tags": ["python", "grammar", "speed"]},
    ),
    "json array of objects": (
        {
            "json": _object(
                {
                    "items": {
                        "type": "array",
                        "items": _object(
                            {
                                "id": {"type": "integer", "minimum": 1, "maximum": 999},
                                "label": {"type": "string", "maxLength": 12},
                            }
                        ),
                        "minItems": 1,
                        "maxItems": 4,
                    }
                }
            )
        },
        {
            "items": [
                {"id": 7, "label": "bolt"},
                {"id": 12, "label": "nut"},
                {"id": 300, "label": "gear"},
            ]
        },
    ),
    "json numbers": (
        {
            "json": _object(
                {
                    "count": {"type": "integer", "minimum": 1, "maximum": 10},
                    "price": {"type": "number", "minimum": 0, "maximum": 1000},
                }
            )
        },
        {"count": 3, "price": 149.99},
    ),
    "json string patterns": (
        {
            "json": _object(
                {
                    "email": {"type": "string", "pattern": "^[a-z]{2,12}@[a-z]{2,10}\\.(com|org)$"},
                    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                }
            )
        },
        {"email": "grace@navy.org", "date": "1906-12-09", "code": "COB-1959"},
    ),
    "json order ($ref, anyOf)": (
        {
            "json": {
                "$defs": {
                    "address": ADDRESS,
                    "line": _object(
                        {
                            "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 100},
                            "price": {"type": "number", "minimum": 0},
                        }
                    ),
                },
                **_object(
                    {
                        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
                        "customer": _object({"name": STRING, "email": {"type": "string"}}),
                        "lines": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/line"},
                            "minItems": 1,
                            "maxItems": 5,
                        },
                        "status": {"enum": ["new", "paid", "shipped", "cancelled"]},
                        "shipping": {
                            "anyOf": [
                                _object({"method": {"const": "pickup"}}),
                                _object(
                                    {
                                        "method": {"const": "delivery"},
                                        "address": {"$ref": "#/$defs/address"},
                                    }
                                ),
                            ]
                        },
                        "notes": {"type": "string", "maxLength": 40},
                    },
                    ["order_id", "customer", "lines", "status", "shipping"],
                ),
            }
        },
        {
            "order_id": "ORD-004211",
            "customer": {"name": "Linus", "email": "linus@example.com"},
            "lines": [
                {"sku": "AB1234", "qty": 2, "price": 9.5},
                {"sku": "ZX0042", "qty": 10, "price": 0.99},
            ],
            "status": "paid",
            "shipping": {
                "method": "delivery",
                "address": {"street": "1 Main St", "city": "Springfield", "zip": "12345"},
            },
            "notes": "leave at the door",
        },
    ),
    "regex datetime": (
        {"regex": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})"},
        "2026-11-22T06:05:00.125+01:00",
    ),
    "gbnf arithmetic": (
        {
            "grammar": (
                "root ::= expr\n"
                'expr ::= term (("+" | "-") term){0,3}\n'
                'term ::= factor (("*" | "/") factor){0,2}\n'
                'factor ::= [1-9] [0-9]{0,2} | "(" expr ")"\n'
            )
        },
        "12*(3+4)-5/(6+78)",
    ),
    "choice": ({"choice": ["positive", "negative", "neutral"]}, "neutral"),
}


# -- the child: one model, one backend -------------------------------------------------------------


class PeakRss:
    """The highest RSS seen at the checkpoints (taken between timed sections, never during
    them) and in the kernel's high-water mark, over the RSS when it was created."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self._high_water_before = _max_rss()
        self.peak = self.baseline

    def checkpoint(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def extra(self) -> int:
        self.checkpoint()
        # the high-water mark counts only once it passes what the process had already reached
        return max(self.peak, _max_rss()) - max(self.baseline, self._high_water_before)


def _max_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def load_tokenizer(model: str) -> Any:
    from ember.loader.gguf_file import read_gguf
    from ember.registry.resolve import resolve_model
    from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata

    path = resolve_model(MODELS.get(model, model)).path
    return tokenizer_from_gguf_metadata(read_gguf(path, with_tensors=False).metadata)


def instance_text(instance: Any) -> str:
    """The instance as generated text: JSON laid out as json.dumps does (", " and ": ")."""
    return instance if isinstance(instance, str) else json.dumps(instance, ensure_ascii=False)


def instance_tokens(tokenizer: Any, text: str) -> list[int]:
    tokens = tokenizer.encode(text, add_special=False)
    while not b"".join(map(tokenizer.token_bytes, tokens)).startswith(text.encode()):
        tokens = tokens[1:]  # a SentencePiece prefix space (its own token) is not the text's
    return list(tokens)


def clear_build_caches(backend_name: str) -> None:
    """The tokenizer-free build is cached per spec in Ember; time it afresh every repeat."""
    if backend_name == "llguidance":
        from ember.structured import backend_llguidance

        backend_llguidance._grammar.cache_clear()
    else:
        from ember.structured import backend_xgrammar

        backend_xgrammar._grammar.cache_clear()


class Walk:
    """Chooses the tokens that generate a text under a grammar, as a model would: Ember's own
    tokenization while the mask allows it, else the longest allowed token that continues the
    text (a detour: llguidance, for one, only allows the canonical tokenization of text the
    grammar forces, which may split differently from the whole document's), after which the
    rest is tokenized again."""

    def __init__(self, tokenizer: Any, pieces: dict[bytes, int], text: str, planned: list[int]):
        self._tokenizer = tokenizer
        self._pieces = pieces
        self._longest = max(map(len, pieces))
        self._remaining = text.encode()
        self._planned = list(planned)
        self.detours = 0

    @staticmethod
    def pieces(tokenizer: Any) -> dict[bytes, int]:
        """Token bytes -> a token id with those bytes (special tokens left out)."""
        size = tokenizer.vocab_size
        ids = (i for i in range(size) if not tokenizer.is_special(i))
        return {piece: i for i in ids if (piece := tokenizer.token_bytes(i))}

    @property
    def done(self) -> bool:
        return not self._remaining

    def next_token(self, bitmask: Any) -> int | None:
        def allowed(token: int) -> bool:
            return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)

        token = self._planned[0] if self._planned else None
        if token is not None and allowed(token):
            self._planned.pop(0)
        else:
            token = self._longest_allowed(allowed)
            if token is None:
                return None
            self.detours += 1
            self._planned = []
        self._remaining = self._remaining[len(self._tokenizer.token_bytes(token)) :]
        if not self._planned and self._remaining:
            try:
                rest = self._remaining.decode()
            except UnicodeDecodeError:  # inside a character: go on token by allowed token
                return token
            self._planned = instance_tokens(self._tokenizer, rest)
        return token

    def _longest_allowed(self, allowed: Any) -> int | None:
        for length in range(min(self._longest, len(self._remaining)), 0, -1):
            token = self._pieces.get(self._remaining[:length])
            if token is not None and allowed(token):
                return token
        return None


def run_worker(model: str, backend_name: str, repeats: int) -> dict[str, Any]:
    import torch

    from ember.sampling_params import StructuredOutputs
    from ember.structured import StructuredCompiler

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(model)
    vocab_size = tokenizer.vocab_size
    stops = sorted(tokenizer.eos_token_ids)
    rss = PeakRss()
    started = time.perf_counter()
    __import__(backend_name)
    import_ms = (time.perf_counter() - started) * 1e3

    setup_ms: list[float] = []
    compile_ms: dict[str, list[float]] = {name: [] for name in CASES}
    first_us: dict[str, list[float]] = {name: [] for name in CASES}
    fill_us: dict[str, list[float]] = {name: [] for name in CASES}
    accept_us: dict[str, list[float]] = {name: [] for name in CASES}
    failures: dict[str, str] = {}
    tokens = {
        name: instance_tokens(tokenizer, instance_text(case[1])) for name, case in CASES.items()
    }
    pieces = Walk.pieces(tokenizer)
    walked: dict[str, tuple[int, int]] = {}
    for _ in range(repeats):
        compiler = StructuredCompiler(tokenizer, vocab_size, stops, grammar_backend=backend_name)
        backend = compiler.backend
        started = time.perf_counter()
        backend.prepare()
        setup_ms.append((time.perf_counter() - started) * 1e3)
        rss.checkpoint()
        clear_build_caches(backend_name)
        for name, (fields, _) in CASES.items():
            spec = StructuredOutputs(any_whitespace=False, **fields)
            started = time.perf_counter()
            compiled = backend.compile(backend.build(spec))
            compile_ms[name].append((time.perf_counter() - started) * 1e3)
            rss.checkpoint()
            matcher = backend.new_matcher(compiled)
            walk = Walk(tokenizer, pieces, instance_text(CASES[name][1]), tokens[name])
            bitmask = torch.empty((1, (vocab_size + 31) // 32), dtype=torch.int32)
            position = 0
            while not walk.done:
                started = time.perf_counter()
                matcher.fill_next_token_bitmask(bitmask, 0)
                elapsed_us = (time.perf_counter() - started) * 1e6
                (first_us if position == 0 else fill_us)[name].append(elapsed_us)
                token = walk.next_token(bitmask)
                if token is None:
                    failures[name] = f"no allowed token continues the text at token {position}"
                    break
                started = time.perf_counter()
                ok = matcher.accept_token(token)
                accept_us[name].append((time.perf_counter() - started) * 1e6)
                if not ok:
                    failures[name] = f"token {position} refused"
                    break
                position += 1
            else:
                if not matcher.is_completed():
                    failures[name] = "instance incomplete"
            walked[name] = (position, walk.detours)
            rss.checkpoint()
    return {
        "model": model,
        "backend": backend_name,
        "vocab_size": vocab_size,
        "import_ms": import_ms,
        "setup_ms": setup_ms,
        "extra_rss_mb": rss.extra() / 2**20,
        "tokens": walked,
        "compile_ms": compile_ms,
        "first_us": first_us,
        "fill_us": fill_us,
        "accept_us": accept_us,
        "failures": failures,
    }


# -- the parent: run the children, print the tables ------------------------------------------------


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def shown(value: float, digits: int = 0) -> str:
    """`value` rounded, or "-" when there is none (a one-token instance has no later masks)."""
    return "-" if value != value else f"{value:.{digits}f}"


def print_tables(results: list[dict[str, Any]]) -> None:
    print("| model | vocab | backend | import ms | vocab setup ms | peak extra RSS MB |")
    print("|---|---:|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['vocab_size']} | {r['backend']} | {r['import_ms']:.0f} | "
            f"{median(r['setup_ms']):.0f} | {r['extra_rss_mb']:.0f} |"
        )
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]
        print(f"\n### {model}: compile (ms, median) and per-token mask fill (µs)\n")
        head = "| grammar |"
        rule = "|---|"
        for r in runs:
            name = r["backend"]
            head += (
                f" {name} tokens (detours) | {name} compile | {name} first | {name} mean |"
                f" {name} p99 | {name} accept |"
            )
            rule += "---:|---:|---:|---:|---:|---:|"
        print(head)
        print(rule)
        for case in CASES:
            line = f"| {case} |"
            for r in runs:
                count, detours = r["tokens"].get(case, (0, 0))
                line += f" {count} ({detours}) | {median(r['compile_ms'][case]):.1f} |"
                if case in r["failures"]:
                    line += f" FAILED: {r['failures'][case]} | | | |"
                    continue
                line += (
                    f" {shown(median(r['first_us'][case]))} | {shown(mean(r['fill_us'][case]))} |"
                    f" {shown(p99(r['fill_us'][case]))} | {shown(mean(r['accept_us'][case]))} |"
                )
            print(line)
        line = "| **all** |"
        for r in runs:
            fills = [v for case in CASES for v in r["fill_us"][case]]
            firsts = [v for case in CASES for v in r["first_us"][case]]
            accepts = [v for case in CASES for v in r["accept_us"][case]]
            total = sum(median(r["compile_ms"][case]) for case in CASES)
            count = sum(walked for walked, _ in r["tokens"].values())
            line += (
                f" {count} | {total:.1f} (sum) | {mean(firsts):.0f} | {mean(fills):.0f} |"
                f" {p99(fills):.0f} | {mean(accepts):.0f} |"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    if args.repeats < 1 or not set(backends) <= set(BACKENDS):
        parser.error(f"--repeats must be >= 1 and --backends a subset of {','.join(BACKENDS)}")

    if args.worker:  # one model, one backend: JSON on stdout
        print(json.dumps(run_worker(models[0], backends[0], args.repeats)))
        return

    results = []
    for model in models:
        for backend in backends:
            print(f"running {model} / {backend} ...", file=sys.stderr, flush=True)
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--models", model]
            command += ["--backends", backend, "--repeats", str(args.repeats)]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                print(f"{model} / {backend}: timed out", file=sys.stderr)
                continue
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{model} / {backend}: failed: {last}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not results:
        sys.exit("no backend ran")
    versions = {}
    for library in backends:
        try:
            from importlib.metadata import version

            versions[library] = version(library)
        except Exception:  # noqa: BLE001 - a missing library is reported by its run
            versions[library] = "not installed"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC)
    machine = platform.processor() or platform.machine()
    libraries = ", ".join(f"{name} {number}" for name, number in versions.items())
    print(
        f"\n{now:%Y-%m-%d %H:%M} UTC, {machine}, {os.cpu_count()} CPUs, load {load}; "
        f"{libraries}; repeats {args.repeats}\n"
    )
    print_tables(results)


if __name__ == "__main__":
    main()
