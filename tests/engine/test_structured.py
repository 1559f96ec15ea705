"""Structured outputs (grammar-constrained decoding) through the serving engine.

Validity is checked on the real SmolLM2 (a random model would rarely finish a JSON document);
the mechanics that need exact comparisons - preemption, padded vocabularies, the vocabulary
adapter - also run on a tiny random model with a byte-level BPE tokenizer. Tests taking the
`backend` fixture run once per installed grammar library (llguidance, xgrammar); the others use
the default ("auto") one.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from ember.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.errors import RequestError
from ember.models.loader import LoadedModel, load_model_path
from ember.sampling_params import SamplingParams, StructuredOutputs
from ember.structured import GrammarMasker, StructuredCompiler, check_structured_outputs
from ember.structured.backend import BACKEND_NAMES, Vocabulary
from ember.structured.bitmask import unpack_bitmask
from ember.structured.vocab import grammar_vocab
from ember.tokenizer.base import Tokenizer
from ember.tokenizer.chat_template import render_chat_template
from tests.conftest import real_model_path
from tests.models.tiny import build_hf_model, save_gguf, save_hf, write_byte_level_tokenizer
from tests.unit.test_structured_backends import BACKENDS

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "age", "address"],
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
            "in_stock": {"type": "boolean"},
        },
        "required": ["color", "size", "in_stock"],
    },
    "bounded_array": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 3,
            },
        },
        "required": ["tags"],
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer", "minimum": 1, "maximum": 999},
                        "label": {"type": "string", "maxLength": 12},
                    },
                    "required": ["id", "label"],
                },
                "minItems": 1,
                "maxItems": 2,
            },
        },
        "required": ["items"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 10},
            "price": {"type": "number", "minimum": 0, "maximum": 1000},
        },
        "required": ["count", "price"],
    },
}
SCHEMA_PROMPT = "Reply with a JSON object for this schema: {schema}"

REGEXES = {
    "phone": r"\d{3}-\d{4}",
    "answer": r"(yes|no): [a-z]{3,8}",
    "names": r"[A-Z][a-z]{2,10}( [A-Z][a-z]{2,10}){0,2}",
}
CHOICES = ["positive", "negative", "neutral"]
ARITHMETIC = """
root ::= expr
expr ::= term (("+" | "-") term){0,3}
term ::= factor (("*" | "/") factor){0,2}
factor ::= [1-9] [0-9]{0,2} | "(" expr ")"
"""
ARITHMETIC_NODES = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The grammar library under test, chosen the way a deployment does: what "auto" means."""
    monkeypatch.setenv("EMBER_GRAMMAR_BACKEND", request.param)
    return str(request.param)


@dataclass
class Finished:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    error: str | None = None


def run_engine(
    engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]
) -> dict[str, list[Finished]]:
    texts: dict[str, list[str]] = {}
    tokens: dict[str, list[list[int]]] = {}
    reasons: dict[str, list[str | None]] = {}
    errors: dict[str, str | None] = {}
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
        texts[request_id] = [""] * params.n
        tokens[request_id] = [[] for _ in range(params.n)]
        reasons[request_id] = [None] * params.n
    steps = 0
    while engine.has_unfinished_requests():
        for delta in engine.step():
            errors[delta.request_id] = delta.error
            for piece in delta.completions:
                texts[delta.request_id][piece.index] += piece.text
                tokens[delta.request_id][piece.index] += piece.token_ids
                if piece.finish_reason is not None:
                    reasons[delta.request_id][piece.index] = piece.finish_reason
        steps += 1
        assert steps < 2000, "the engine did not finish"
    return {
        rid: [
            Finished(texts[rid][i], tokens[rid][i], reasons[rid][i], errors.get(rid))
            for i in range(len(texts[rid]))
        ]
        for rid in requests
    }


# -- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model_path(real_model_path("smollm2"))


def chat_prompt(loaded: LoadedModel, text: str) -> list[int]:
    tokenizer = loaded.tokenizer
    assert tokenizer is not None and tokenizer.chat_template
    rendered = render_chat_template(
        tokenizer.chat_template,
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
    )
    return tokenizer.encode(rendered, add_special=False)


def real_engine(loaded: LoadedModel, **overrides: Any) -> LLMEngine:
    settings: dict[str, Any] = {"kv_cache_tokens": 8192, "max_num_seqs": 16}
    settings.update(overrides)
    return LLMEngine(loaded, EngineConfig(**settings))


def json_params(schema: dict[str, Any], **sampling: Any) -> SamplingParams:
    spec = StructuredOutputs(json=schema, any_whitespace=False)
    return SamplingParams(max_tokens=96, structured_outputs=spec, **sampling)


def assert_valid_json(name: str, result: Finished, schema: dict[str, Any]) -> None:
    assert result.finish_reason == "stop" and result.error is None, f"{name}: {result}"
    document = json.loads(result.text)
    jsonschema.validate(document, schema)


SAMPLED_SCHEMAS = ("array_of_objects",)


@pytest.mark.parity
def test_json_schemas_greedy_and_sampled_parse_and_validate(
    smollm2: LoadedModel, backend: str
) -> None:
    requests = {}
    for name, schema in SCHEMAS.items():
        prompt = chat_prompt(smollm2, SCHEMA_PROMPT.format(schema=json.dumps(schema)))
        requests[f"{name}/greedy"] = (prompt, json_params(schema, temperature=0.0))
        if name in SAMPLED_SCHEMAS:
            # n=2: one grammar matcher per completion
            params = json_params(schema, temperature=0.9, seed=5, n=2)
            requests[f"{name}/sampled"] = (prompt, params)
    # json_object with the default (any) whitespace
    requests["json_object"] = (
        chat_prompt(smollm2, "Describe a book as a small JSON object with a title and a year."),
        SamplingParams(temperature=0.0, max_tokens=96, structured_outputs={"json_object": True}),
    )
    free = (chat_prompt(smollm2, "Name a river."), SamplingParams(temperature=0.0, max_tokens=16))
    got = run_engine(real_engine(smollm2), {**requests, "free": free})
    # an unconstrained neighbour runs as usual (exact equality: the tiny-model test below)
    assert got.pop("free")[0].finish_reason in ("stop", "length")
    eos = smollm2.tokenizer.eos_token_ids  # type: ignore[union-attr]
    for request_id, results in got.items():
        name = request_id.split("/")[0]
        schema = SCHEMAS.get(name, {"type": "object"})
        assert len(results) == (2 if request_id.endswith("sampled") else 1)
        for result in results:
            assert_valid_json(request_id, result, schema)
            assert result.token_ids[-1] not in eos  # the grammar's end, not EOS, ended it


@pytest.mark.parity
def test_regex_choice_and_grammar_outputs_match(smollm2: LoadedModel, backend: str) -> None:
    requests: dict[str, tuple[list[int], SamplingParams]] = {}
    for mode, temperature in (("greedy", 0.0), ("sampled", 0.8)):
        for name, pattern in REGEXES.items():
            requests[f"regex/{name}/{mode}"] = (
                chat_prompt(smollm2, "Give an example, nothing else."),
                SamplingParams(
                    max_tokens=48,
                    seed=3,
                    structured_outputs={"regex": pattern},
                    temperature=temperature,
                ),
            )
        requests[f"choice/{mode}"] = (
            chat_prompt(smollm2, "Is 'I love this film' positive, negative or neutral?"),
            SamplingParams(
                max_tokens=16,
                seed=4,
                structured_outputs={"choice": CHOICES},
                temperature=temperature,
            ),
        )
        requests[f"grammar/{mode}"] = (
            chat_prompt(smollm2, "Write an arithmetic expression that equals 42."),
            SamplingParams(
                max_tokens=64,
                seed=5,
                structured_outputs={"grammar": ARITHMETIC},
                temperature=temperature,
            ),
        )
    got = run_engine(real_engine(smollm2), requests)
    for request_id, [result] in got.items():
        assert result.finish_reason == "stop", f"{request_id}: {result}"
        kind, *rest = request_id.split("/")
        if kind == "regex":
            assert re.fullmatch(REGEXES[rest[0]], result.text), f"{request_id}: {result.text!r}"
        elif kind == "choice":
            assert result.text in CHOICES
        else:
            tree = ast.parse(result.text, mode="eval")
            assert all(isinstance(node, ARITHMETIC_NODES) for node in ast.walk(tree)), result.text


@pytest.mark.parity
def test_grammar_end_is_a_stop_even_with_ignore_eos_or_at_max_tokens(
    smollm2: LoadedModel, backend: str
) -> None:
    prompt = chat_prompt(smollm2, "Pick a colour.")
    colours = ["red", "green", "blue"]
    requests = {
        "ignore_eos": (
            prompt,
            SamplingParams(
                temperature=0.0,
                max_tokens=32,
                ignore_eos=True,
                structured_outputs={"choice": colours},
            ),
        ),
        # each colour is one token: the grammar completes on the only token max_tokens allows
        "last_token": (
            prompt,
            SamplingParams(temperature=0.0, max_tokens=1, structured_outputs={"choice": colours}),
        ),
    }
    got = run_engine(real_engine(smollm2), requests)
    for request_id, [result] in got.items():
        assert result.text in colours, request_id
        assert result.finish_reason == "stop", request_id
        assert len(result.token_ids) == 1


@pytest.mark.parity
def test_preemption_mid_generation_keeps_outputs_valid(smollm2: LoadedModel) -> None:
    names = ["nested", "array_of_objects", "enums"]
    requests = {
        name: (
            chat_prompt(smollm2, SCHEMA_PROMPT.format(schema=json.dumps(SCHEMAS[name]))),
            json_params(SCHEMAS[name], temperature=0.0),
        )
        for name in names
    }
    # Room for about one request at full length: the others are preempted and resumed.
    engine = real_engine(smollm2, kv_cache_tokens=320, block_size=16, max_num_batched_tokens=128)
    got = run_engine(engine, requests)
    assert engine.stats().num_preemptions > 0
    for name in names:
        assert_valid_json(name, got[name][0], SCHEMAS[name])


WEATHER_ARGUMENTS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}


@pytest.mark.parity
def test_tool_call_arguments_follow_the_function_schema(smollm2: LoadedModel, backend: str) -> None:
    # How a server constrains tool_choice={"type": "function", ...} (or "required"): xgrammar
    # builds the model family's tool-call format as a structural tag (here Hermes/Qwen style).
    xgr = pytest.importorskip("xgrammar", reason="the server builds structural tags with xgrammar")
    tools = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_ARGUMENTS}}]
    named = {"type": "function", "function": {"name": "weather"}}
    tag = xgr.get_model_structural_tag("qwen_3", tools=tools, tool_choice=named, reasoning=False)
    params = SamplingParams(
        temperature=0.0,
        max_tokens=128,
        structured_outputs={"structural_tag": tag.model_dump_json()},
    )
    prompt = chat_prompt(smollm2, "What is the weather in Paris?")
    [result] = run_engine(real_engine(smollm2), {"call": (prompt, params)})["call"]
    assert result.finish_reason == "stop", result.text
    match = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", result.text, re.DOTALL)
    assert match, result.text
    call = json.loads(match.group(1))
    assert call["name"] == "weather"
    jsonschema.validate(call["arguments"], WEATHER_ARGUMENTS)


BAD_SPECS: list[dict[str, Any]] = [
    {"json": {"type": "objekt"}},
    {"json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}},
    {"regex": "a(b"},
    {"grammar": 'root ::= "a" | undefined_rule'},
    {"grammar": "no rules here"},
    {"structural_tag": {"type": "no_such_format"}},
]


@pytest.mark.parity
@pytest.mark.parametrize("spec", BAD_SPECS, ids=[next(iter(s)) for s in BAD_SPECS])
def test_a_bad_spec_is_a_one_line_request_error_at_add_request(
    smollm2: LoadedModel, spec: dict[str, Any], backend: str
) -> None:
    engine = real_engine(smollm2, kv_cache_tokens=256)
    params = SamplingParams(max_tokens=8, structured_outputs=spec)
    with pytest.raises(RequestError) as info:
        engine.add_request("bad", [1, 2, 3], params)
    message = str(info.value)
    assert "\n" not in message and message.startswith("structured_outputs.")
    assert not engine.has_unfinished_requests()
    with pytest.raises(RequestError):
        check_structured_outputs(params.structured_outputs)  # type: ignore[arg-type]


# -- the vocabulary adapter ----------------------------------------------------------------------


def check_vocabulary(tokenizer: Tokenizer, backend: str) -> None:
    """The library's vocabulary holds exactly Ember's token bytes; special tokens never match."""
    eos = sorted(tokenizer.eos_token_ids)
    if backend == "xgrammar":
        from ember.structured.backend_xgrammar import tokenizer_info

        info = tokenizer_info(tokenizer, tokenizer.vocab_size, eos)
        decoded = info.decoded_vocab
        assert len(decoded) == tokenizer.vocab_size
        for token_id, piece in enumerate(decoded):
            expected = b"" if tokenizer.is_special(token_id) else tokenizer.token_bytes(token_id)
            assert piece == expected, token_id
        assert sorted(info.stop_token_ids) == eos
        return
    from ember.structured.backend_llguidance import ll_tokenizer

    view = ll_tokenizer(Vocabulary(tokenizer, tokenizer.vocab_size, eos))
    assert view.vocab_size == tokenizer.vocab_size and sorted(view.eos_tokens) == eos
    for token_id in range(tokenizer.vocab_size):
        if tokenizer.is_special(token_id):
            assert view.is_special_token(token_id), token_id
        elif not tokenizer.token_bytes(token_id).startswith(b"\xff"):
            # (llguidance reads a leading 0xFF, which UTF-8 text never holds, as its special mark)
            assert view.decode_bytes([token_id]) == tokenizer.token_bytes(token_id), token_id


def check_adapter(tokenizer: Tokenizer, sample: str, backend: str) -> None:
    check_vocabulary(tokenizer, backend)
    # The grammar's masks admit Ember's own tokenization of a matching text, token by token.
    compiler = StructuredCompiler(
        tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids, grammar_backend=backend
    )
    state = compiler.compile(StructuredOutputs(json_object=True)).new_state()
    tokens = tokenizer.encode(sample, add_special=False)
    while not b"".join(map(tokenizer.token_bytes, tokens)).startswith(sample.encode()):
        tokens = tokens[1:]  # a SentencePiece prefix space (its own token) is not the sample's
    bitmask = torch.empty((1, state.bitmask_width), dtype=torch.int32)
    for token in tokens:
        assert not state.ended
        state.fill_mask(bitmask, 0)
        assert unpack_bitmask(bitmask, tokenizer.vocab_size)[0, token], tokenizer.token_bytes(token)
        state.accept(token)
    assert state.ended and state.error is None  # the object is closed: nothing may follow


SAMPLE_JSON = '{"name": "Zoë", "tags": ["naïve", "日本"], "n": -12.5e3, "ok": true}'


@pytest.mark.parity
def test_adapter_is_exact_for_byte_level_bpe(smollm2: LoadedModel, backend: str) -> None:
    assert smollm2.tokenizer is not None
    check_adapter(smollm2.tokenizer, SAMPLE_JSON, backend)


@pytest.mark.parity
def test_adapter_is_exact_for_sentencepiece_byte_fallback(backend: str) -> None:
    from ember.loader.gguf_file import read_gguf
    from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata

    tokenizer = tokenizer_from_gguf_metadata(read_gguf(real_model_path("gemma3")).metadata)
    check_adapter(tokenizer, SAMPLE_JSON, backend)
    # byte-fallback pieces become their byte, "▁" a space
    pieces = {tokenizer.id_to_piece(i): i for i in range(tokenizer.vocab_size)}
    vocab = grammar_vocab(tokenizer, tokenizer.vocab_size)
    assert vocab[pieces["<0xE6>"]] == b"\xe6"
    assert vocab[pieces["▁the"]] == b" the"


# -- tiny random model: exact mechanics -----------------------------------------------------------

TINY_REGEX = r"[a-z]{3,6}( [a-z]{3,6}){2}"
TINY_PADDING = 37


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    directory = tmp_path_factory.mktemp("tiny-structured")
    write_byte_level_tokenizer(directory, vocab_size=400)
    from tokenizers import Tokenizer as RustTokenizer

    size = RustTokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size()
    # logits wider than the tokenizer: the padding columns must never be sampled
    save_hf(build_hf_model("qwen3", vocab_size=size + TINY_PADDING), directory)
    loaded = load_model_path(directory)
    assert loaded.tokenizer is not None
    assert loaded.config.vocab_size == loaded.tokenizer.vocab_size + TINY_PADDING
    return loaded


def no_padding(tiny: LoadedModel) -> dict[int, float]:
    """A logit_bias that keeps unconstrained requests off the padding columns, which a random
    model would sample and no tokenizer can decode."""
    first = tiny.tokenizer.vocab_size  # type: ignore[union-attr]
    return dict.fromkeys(range(first, tiny.config.vocab_size), -100.0)


def tiny_requests(count: int) -> dict[str, tuple[list[int], SamplingParams]]:
    requests = {}
    for index in range(count):
        prompt = [(7 * index + 3 * k) % 200 + 5 for k in range(10 + index)]
        temperature = 0.0 if index % 2 == 0 else 1.0
        params = SamplingParams(
            temperature=temperature,
            seed=index,
            max_tokens=40,
            structured_outputs={"regex": TINY_REGEX},
        )
        requests[str(index)] = (prompt, params)
    return requests


@pytest.mark.models
def test_tiny_preemption_changes_no_constrained_token(tiny: LoadedModel, backend: str) -> None:
    common: dict[str, Any] = {"kv_cache_dtype": "fp32", "block_size": 4, "max_num_seqs": 8}
    roomy = LLMEngine(tiny, EngineConfig(kv_cache_tokens=2048, **common))
    cramped = LLMEngine(tiny, EngineConfig(kv_cache_tokens=96, max_num_batched_tokens=24, **common))
    expected = run_engine(roomy, tiny_requests(6))
    got = run_engine(cramped, tiny_requests(6))
    assert cramped.stats().num_preemptions > 0
    tokenizer_size = tiny.tokenizer.vocab_size  # type: ignore[union-attr]
    for request_id, [result] in got.items():
        assert result.token_ids == expected[request_id][0].token_ids, request_id
        assert result.finish_reason == "stop" and re.fullmatch(TINY_REGEX, result.text)
        assert max(result.token_ids) < tokenizer_size


@pytest.mark.models
def test_unconstrained_tokens_do_not_change_beside_constrained_requests(
    tiny: LoadedModel, backend: str
) -> None:
    config = EngineConfig(
        kv_cache_dtype="fp32", block_size=4, kv_cache_tokens=2048, deterministic=True
    )
    free = {
        f"free/{i}": (
            [(11 * i + 5 * k) % 300 + 3 for k in range(8 + 3 * i)],
            SamplingParams(
                temperature=0.0 if i == 0 else 0.7,
                seed=i,
                max_tokens=12,
                logit_bias=no_padding(tiny),
            ),
        )
        for i in range(2)
    }
    alone = run_engine(LLMEngine(tiny, config), free)
    mixed = run_engine(LLMEngine(tiny, config), {**free, **tiny_requests(4)})
    for request_id in free:
        assert mixed[request_id][0].token_ids == alone[request_id][0].token_ids, request_id
    for request_id in tiny_requests(4):
        assert re.fullmatch(TINY_REGEX, mixed[request_id][0].text)


@pytest.mark.models
@pytest.mark.parametrize("ignore_eos", [False, True])
def test_eos_where_the_grammar_may_end_stops_even_with_ignore_eos(
    tiny: LoadedModel, ignore_eos: bool, backend: str
) -> None:
    eos = min(tiny.tokenizer.eos_token_ids)  # type: ignore[union-attr]
    params = SamplingParams(
        temperature=0.0,
        max_tokens=10,
        ignore_eos=ignore_eos,
        logit_bias={eos: 100.0},  # EOS wins wherever the grammar allows it
        structured_outputs={"regex": "[a-z]{1,8}"},
    )
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=256))
    [result] = run_engine(engine, {"r": ([5, 6, 7], params)})["r"]
    assert result.finish_reason == "stop"
    assert re.fullmatch("[a-z]{1,8}", result.text)
    assert result.token_ids[-1] == eos and len(result.token_ids) == 2


@pytest.mark.models
def test_a_grammar_that_must_stop_outranks_min_tokens(tiny: LoadedModel, backend: str) -> None:
    params = SamplingParams(
        temperature=0.0, max_tokens=6, min_tokens=3, structured_outputs={"grammar": 'root ::= ""'}
    )
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=256))
    [result] = run_engine(engine, {"empty": ([5, 6, 7], params)})["empty"]
    assert (result.text, result.finish_reason) == ("", "stop")
    assert len(result.token_ids) == 1
    assert result.token_ids[0] in tiny.tokenizer.eos_token_ids  # type: ignore[union-attr]


@pytest.mark.models
def test_add_request_does_not_wait_for_the_compile(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=512))
    assert engine.structured is not None
    gate = threading.Event()
    compile_now = engine.structured._compile

    def held_compile(grammar: Any) -> Any:
        assert gate.wait(60), "the test never released the compile"
        return compile_now(grammar)

    monkeypatch.setattr(engine.structured, "_compile", held_compile)
    spec = StructuredOutputs(regex=TINY_REGEX)
    params = SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=spec)
    engine.add_request("a", [5, 6, 7], params)
    engine.add_request("b", [8, 9], params)  # the same spec: one compile for both
    pending = engine.structured.compile(spec)
    assert not pending.is_ready  # add_request came back while the compile is held
    gate.set()
    texts = {"a": "", "b": ""}
    while engine.has_unfinished_requests():
        for delta in engine.step():
            texts[delta.request_id] += "".join(piece.text for piece in delta.completions)
    assert all(re.fullmatch(TINY_REGEX, text) for text in texts.values()), texts


@pytest.mark.models
def test_a_failed_compile_ends_only_its_own_request(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=512))
    assert engine.structured is not None

    def failing_compile(grammar: Any) -> Any:
        raise MemoryError("out of memory\nwhile compiling")

    monkeypatch.setattr(engine.structured, "_compile", failing_compile)
    constrained = SamplingParams(max_tokens=8, structured_outputs={"regex": "[a-z]+"})
    free = SamplingParams(temperature=0.0, max_tokens=4, logit_bias=no_padding(tiny))
    got = run_engine(engine, {"bad": ([5, 6], constrained), "free": ([7, 8], free)})
    [bad] = got["bad"]
    assert bad.finish_reason == "error" and bad.token_ids == []
    assert bad.error is not None and "\n" not in bad.error and "out of memory" in bad.error
    assert got["free"][0].finish_reason == "length"


@pytest.mark.models
def test_adapter_is_exact_for_a_hugging_face_tokenizer(tiny: LoadedModel, backend: str) -> None:
    assert tiny.tokenizer is not None
    check_adapter(tiny.tokenizer, SAMPLE_JSON, backend)


@pytest.mark.models
def test_padding_columns_are_masked_and_free_rows_untouched(
    tiny: LoadedModel, backend: str
) -> None:
    tokenizer = tiny.tokenizer
    assert tokenizer is not None
    vocab = tiny.config.vocab_size
    compiler = StructuredCompiler(
        tokenizer, vocab, tokenizer.eos_token_ids, grammar_backend=backend
    )
    pending = compiler.compile(StructuredOutputs(choice=["{", "x"]))
    assert compiler.compile(StructuredOutputs(choice=["{", "x"])) is pending  # cached
    masks = GrammarMasker().start([pending.new_state(), None])
    assert masks is not None
    logits = torch.zeros(2, vocab)
    masks.apply(logits)
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert {tokenizer.token_bytes(t) for t in allowed} == {b"{", b"x"}
    assert torch.isinf(logits[0, tokenizer.vocab_size :]).all()
    assert torch.equal(logits[1], torch.zeros(vocab))
    assert GrammarMasker().start([None, None]) is None


@pytest.mark.models
def test_structured_outputs_need_a_tokenizer(tmp_path: Path) -> None:
    path = save_gguf(build_hf_model("llama"), tmp_path / "model.gguf")
    engine = LLMEngine(
        load_model_path(path, with_tokenizer=False), EngineConfig(kv_cache_tokens=64)
    )
    params = SamplingParams(max_tokens=4, structured_outputs={"regex": "a+"})
    with pytest.raises(RequestError, match="tokenizer"):
        engine.add_request("x", [1, 2], params)


def test_without_the_grammar_library_a_constrained_request_gets_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.delenv("EMBER_GRAMMAR_BACKEND", raising=False)
    for library in BACKEND_NAMES:
        monkeypatch.setitem(sys.modules, library, None)  # as if the extra were not installed
    with pytest.raises(RequestError, match=r"pip install llguidance"):
        check_structured_outputs(StructuredOutputs(regex="[a-z]+x"))


@pytest.mark.models
def test_a_slow_compile_never_stalls_unconstrained_requests(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """While a grammar compiles, its request waits outside the scheduler and the others run."""
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=512))
    assert engine.structured is not None
    gate = threading.Event()
    compile_now = engine.structured._compile

    def held_compile(grammar: Any) -> Any:
        assert gate.wait(60), "the test never released the compile"
        return compile_now(grammar)

    monkeypatch.setattr(engine.structured, "_compile", held_compile)
    constrained = SamplingParams(
        temperature=0.0, max_tokens=20, structured_outputs={"regex": TINY_REGEX}
    )
    free = SamplingParams(temperature=0.0, max_tokens=5, logit_bias=no_padding(tiny))
    engine.add_request("constrained", [5, 6, 7], constrained)
    engine.add_request("free", [8, 9], free)
    finished: set[str] = set()
    for _ in range(50):
        finished |= {d.request_id for d in engine.step() if d.finished}
        if "free" in finished:
            break
    assert finished == {"free"}  # done while the compile is still held
    assert engine.has_unfinished_requests()
    gate.set()
    text = ""
    while engine.has_unfinished_requests():
        for delta in engine.step():
            text += "".join(piece.text for piece in delta.completions)
    assert re.fullmatch(TINY_REGEX, text), text


@pytest.mark.models
def test_aborting_a_request_whose_grammar_is_compiling(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=512))
    assert engine.structured is not None
    gate = threading.Event()
    compile_now = engine.structured._compile

    def held_compile(grammar: Any) -> Any:
        assert gate.wait(60), "the test never released the compile"
        return compile_now(grammar)

    monkeypatch.setattr(engine.structured, "_compile", held_compile)
    params = SamplingParams(max_tokens=4, structured_outputs={"regex": "[a-c]+z"})
    engine.add_request("x", [5, 6], params)
    assert engine.abort_request("x")
    gate.set()
    assert not engine.has_unfinished_requests()
    engine.step()
    assert engine.stats().num_waiting == engine.stats().num_running == 0


@pytest.mark.models
def test_padding_columns_are_never_sampled_even_unconstrained(tiny: LoadedModel) -> None:
    """Columns past the tokenizer's vocabulary: even a huge bias cannot make them come out."""
    padding = tiny.tokenizer.vocab_size  # type: ignore[union-attr]
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=6, logit_bias={padding: 100.0})
    engine = LLMEngine(tiny, EngineConfig(kv_cache_dtype="fp32", kv_cache_tokens=256))
    [result] = run_engine(engine, {"free": ([5, 6, 7], params)})["free"]
    assert len(result.token_ids) == 6
    assert all(token < padding for token in result.token_ids)
