from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ember.errors import RequestError
from ember.sampling_params import (
    MAX_LOGPROBS,
    SamplingParams,
    SamplingParamsError,
    SamplingType,
    StructuredOutputs,
)


def test_defaults_follow_vllm() -> None:
    params = SamplingParams()
    assert params.n == 1
    assert params.temperature == 1.0
    assert (params.top_p, params.top_k, params.min_p) == (1.0, 0, 0.0)
    assert (params.repetition_penalty, params.presence_penalty, params.frequency_penalty) == (
        1.0,
        0.0,
        0.0,
    )
    assert params.seed is None
    assert params.stop == [] and params.stop_token_ids == []
    assert params.max_tokens is None and params.min_tokens == 0
    assert params.logprobs is None and params.prompt_logprobs is None
    assert params.ignore_eos is False
    assert params.include_stop_str_in_output is False
    assert params.skip_special_tokens is True
    assert params.logit_bias is None
    assert params.sampling_type is SamplingType.RANDOM
    assert not params.is_greedy
    assert not params.uses_penalties


def test_stop_is_normalised_to_a_list() -> None:
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop=None).stop == []


def test_stop_token_ids_drop_repeats_and_keep_order() -> None:
    assert SamplingParams(stop_token_ids=[5, 2, 5, 9]).stop_token_ids == [5, 2, 9]


def test_disabled_spellings_are_canonical() -> None:
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(seed=-1).seed is None


def test_int_values_are_accepted_for_floats() -> None:
    params = SamplingParams(temperature=1, top_p=1, presence_penalty=1)
    assert isinstance(params.temperature, float) and params.temperature == 1.0


def test_logit_bias_accepts_json_string_keys() -> None:
    assert SamplingParams(logit_bias={"42": -100, "7": 2.5}).logit_bias == {42: -100.0, 7: 2.5}


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_zero_temperature_is_greedy_and_drops_truncation(temperature: float) -> None:
    params = SamplingParams(temperature=temperature, top_k=5, top_p=0.5, min_p=0.3, seed=1)
    assert params.is_greedy
    assert params.sampling_type is SamplingType.GREEDY
    assert (params.top_p, params.top_k, params.min_p) == (1.0, 0, 0.0)


def test_sampling_type_seeded() -> None:
    assert SamplingParams(seed=0).sampling_type is SamplingType.RANDOM_SEED


def test_uses_penalties() -> None:
    assert SamplingParams(repetition_penalty=1.1).uses_penalties
    assert SamplingParams(presence_penalty=-0.5).uses_penalties
    assert SamplingParams(frequency_penalty=0.1).uses_penalties


def test_limits_are_inclusive() -> None:
    SamplingParams(presence_penalty=-2, frequency_penalty=2, min_p=1.0, top_p=1.0)
    SamplingParams(logprobs=0, prompt_logprobs=MAX_LOGPROBS, min_tokens=4, max_tokens=4)
    SamplingParams(seed=2**64 - 1)
    SamplingParams(seed=-(2**63))


BAD_VALUES = [
    ("n", 0),
    ("n", 1.5),
    ("n", True),
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "0.7"),
    ("temperature", None),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", math.nan),
    ("top_k", -2),
    ("top_k", 2.0),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", math.nan),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.inf),
    ("presence_penalty", 2.01),
    ("presence_penalty", -2.5),
    ("presence_penalty", math.nan),
    ("frequency_penalty", 3.0),
    ("frequency_penalty", -math.inf),
    ("seed", 1.5),
    ("seed", "7"),
    ("seed", 2**64),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", [3]),
    ("stop", 5),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [1.0]),
    ("stop_token_ids", "12"),
    ("ignore_eos", "yes"),
    ("include_stop_str_in_output", 1),
    ("skip_special_tokens", None),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 2.0),
    ("min_tokens", -1),
    ("logprobs", -1),
    ("logprobs", MAX_LOGPROBS + 1),
    ("logprobs", 1.0),
    ("prompt_logprobs", -1),
    ("prompt_logprobs", MAX_LOGPROBS + 1),
    ("logit_bias", {-1: 1.0}),
    ("logit_bias", {"x": 1.0}),
    ("logit_bias", {3: math.nan}),
    ("logit_bias", {3: math.inf}),
    ("logit_bias", [1, 2]),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_value_raises_one_line_error_naming_field(field: str, value: object) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    error = info.value
    assert isinstance(error, RequestError) and isinstance(error, ValueError)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(field)


def test_min_tokens_above_max_tokens() -> None:
    with pytest.raises(SamplingParamsError, match=r"min_tokens must be <= max_tokens \(3\), got 4"):
        SamplingParams(min_tokens=4, max_tokens=3)


def test_message_shows_the_value() -> None:
    with pytest.raises(SamplingParamsError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        SamplingParams(top_p=1.5)


def test_greedy_with_several_completions_is_rejected() -> None:
    with pytest.raises(SamplingParamsError, match="^n must be 1 when sampling greedily"):
        SamplingParams(temperature=0.0, n=2)


def test_verify_vocab_size() -> None:
    SamplingParams(logit_bias={9: 1.0}, stop_token_ids=[9]).verify_vocab_size(10)
    with pytest.raises(SamplingParamsError, match="^logit_bias .*got 10$"):
        SamplingParams(logit_bias={10: 1.0}).verify_vocab_size(10)
    with pytest.raises(SamplingParamsError, match="^stop_token_ids .*got 12$"):
        SamplingParams(stop_token_ids=[12]).verify_vocab_size(10)


def test_frozen_and_replace_revalidates() -> None:
    params = SamplingParams(temperature=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 2.0  # type: ignore[misc]
    assert dataclasses.replace(params, top_k=3).top_k == 3
    with pytest.raises(SamplingParamsError):
        dataclasses.replace(params, top_k=-3)


# -- structured outputs ---------------------------------------------------------------------------


def test_structured_outputs_default_to_none_and_accept_a_dict() -> None:
    assert SamplingParams().structured_outputs is None
    params = SamplingParams(structured_outputs={"regex": r"\d+", "any_whitespace": False})
    spec = params.structured_outputs
    assert isinstance(spec, StructuredOutputs)
    assert (spec.kind, spec.spec, spec.any_whitespace, spec.strict) == (
        "regex",
        r"\d+",
        False,
        True,
    )


def test_structured_outputs_kinds_and_spec_texts() -> None:
    schema = {"type": "object", "properties": {"b": {}, "a": {}}}
    assert StructuredOutputs(json=schema).spec == json.dumps(schema)  # key order kept
    assert StructuredOutputs(json='{"type": "object"}').spec == '{"type": "object"}'
    assert StructuredOutputs(json_object=True).kind == "json_object"
    assert StructuredOutputs(grammar='root ::= "x"').kind == "grammar"
    choice = StructuredOutputs(choice=("yes", "no"))
    assert choice.choice == ["yes", "no"] and choice.spec == '["yes", "no"]'
    assert StructuredOutputs(structural_tag={"type": "structural_tag"}).kind == "structural_tag"


def test_structured_outputs_keep_a_copy_of_the_schema() -> None:
    schema: dict[str, object] = {"type": "object"}
    spec = StructuredOutputs(json=schema)
    schema["type"] = "array"
    assert spec.json == {"type": "object"} and spec.spec == '{"type": "object"}'


def test_structured_outputs_survive_replace() -> None:
    params = SamplingParams(seed=1, structured_outputs={"choice": ["a", "b"]})
    assert dataclasses.replace(params, seed=2).structured_outputs == params.structured_outputs


BAD_STRUCTURED = [
    ({}, "exactly one of"),
    ({"regex": "a", "choice": ["a"]}, "got regex and choice"),
    ({"json_object": False}, "got none"),
    ({"json": "{"}, "structured_outputs.json must be valid JSON"),
    ({"json": "[1]"}, "structured_outputs.json must be a JSON object"),
    ({"json": [1]}, "structured_outputs.json must be a JSON object"),
    ({"json": {"x": {1, 2}}}, "structured_outputs.json must be JSON-serialisable"),
    ({"json": {"x": math.nan}}, "structured_outputs.json must be JSON-serialisable"),
    ({"regex": ""}, "structured_outputs.regex must be a non-empty string"),
    ({"grammar": 3}, "structured_outputs.grammar must be a non-empty string"),
    ({"choice": "ab"}, "structured_outputs.choice must be a non-empty list"),
    ({"choice": []}, "structured_outputs.choice must be a non-empty list"),
    ({"choice": ["a", ""]}, "structured_outputs.choice must be non-empty strings"),
    ({"choice": ["a", 1]}, "structured_outputs.choice must be non-empty strings"),
    ({"json_object": 1}, "structured_outputs.json_object must be True or False"),
    ({"regex": "a", "strict": "yes"}, "structured_outputs.strict must be True or False"),
    ({"regex": "a", "any_whitespace": None}, "structured_outputs.any_whitespace must be"),
    ({"regexp": "a"}, "structured_outputs has no field 'regexp'"),
]


@pytest.mark.parametrize(("value", "message"), BAD_STRUCTURED, ids=[m for _, m in BAD_STRUCTURED])
def test_bad_structured_outputs_raise_one_line_errors(value: dict, message: str) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(structured_outputs=value)
    text = str(info.value)
    assert "\n" not in text and text.startswith("structured_outputs")
    assert message in text


def test_structured_outputs_must_be_the_class_or_a_dict() -> None:
    with pytest.raises(
        SamplingParamsError, match="^structured_outputs must be a StructuredOutputs"
    ):
        SamplingParams(structured_outputs="json")  # type: ignore[arg-type]


def test_a_huge_schema_is_cut_short_in_the_error() -> None:
    with pytest.raises(SamplingParamsError) as info:
        StructuredOutputs(json="[" + "1," * 500 + "1]")
    assert len(str(info.value)) < 300
