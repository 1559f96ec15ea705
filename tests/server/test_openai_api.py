"""OpenAI's API through the official client against a real `ember serve` (SmolLM2-135M)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.server

MODEL = "smol"
CHAT = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
PROMPT = "The three primary colors are"


def test_models_lists_every_served_name(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    # The served names first, then downloaded library models (they load on first use).
    assert ids[:2] == ["smol", "smollm2-135m-instruct"]
    from ember.registry.cache import list_models

    assert set(ids[2:]) == {m.alias for m in list_models()} - {"smollm2-135m-instruct"}
    assert all(m.object == "model" and m.owned_by == "ember" for m in models.data)
    assert client.models.retrieve("smol").id == "smol"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0
    )
    assert response.object == "chat.completion"
    assert response.model == MODEL
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None and usage.prompt_tokens > 10
    assert 1 <= usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens is not None


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=CHAT, max_tokens=2)
    assert "gpt-4" in str(caught.value)


def _stream_chat(
    client: openai.OpenAI, **kwargs: Any
) -> tuple[dict[int, str], dict[int, str], Any]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    roles = set()
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role is not None:
                assert choice.index not in roles, "role only in a choice's first chunk"
                roles.add(choice.index)
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return texts, finish, usage


def test_chat_stream_equals_non_stream_for_greedy(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {"messages": CHAT, "max_tokens": 24, "temperature": 0}
    # A first request fills the prefix cache, so the two compared below both reuse it and run
    # the same kernels: a cache hit and a miss may part ways at a near-tie of the small model
    # (--deterministic makes them agree; tests/server/test_batching.py).
    client.chat.completions.create(model=MODEL, **options)
    whole = client.chat.completions.create(model=MODEL, **options)
    texts, finish, usage = _stream_chat(client, stream_options={"include_usage": True}, **options)
    assert texts == {0: whole.choices[0].message.content}
    assert finish == {0: whole.choices[0].finish_reason}
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    texts, finish, usage = _stream_chat(client, messages=CHAT, max_tokens=4, temperature=0)
    assert usage is None and set(finish) == {0} and texts[0]


def test_completions_stream_equals_non_stream_for_greedy(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {
        "prompt": PROMPT,
        "max_tokens": 20,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    # A first request fills the prefix cache, so the two compared below both reuse it and run
    # the same kernels: a cache hit and a miss may part ways at a near-tie of the small model
    # (--deterministic makes them agree; tests/server/test_batching.py).
    client.completions.create(model=MODEL, **options)
    whole = client.completions.create(model=MODEL, **options)
    assert whole.object == "text_completion"
    [choice] = whole.choices
    assert choice.finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 20
    pieces, finish, usage = [], None, None
    for chunk in client.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, **options
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for part in chunk.choices:
            pieces.append(part.text)
            finish = part.finish_reason or finish
    assert "".join(pieces) == choice.text
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 20


def test_stop_string_ends_with_finish_reason_stop(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    words = free.split()
    assert len(words) >= 4, free
    stop = " " + words[2]
    expected = free[: free.index(stop)]
    result = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "\u2603"]
    )
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True
        )
        if c.choices
    )
    assert streamed == expected


def test_max_completion_tokens_and_min_tokens(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_completion_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    forced = client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=6, temperature=0, extra_body={"min_tokens": 6}
    )
    assert forced.usage is not None and forced.usage.completion_tokens == 6


def test_n_completions_with_a_seed(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {
        "messages": CHAT,
        "max_tokens": 8,
        "temperature": 1.0,
        "n": 2,
        "seed": 7,
    }
    first = client.chat.completions.create(model=MODEL, **options)
    again = client.chat.completions.create(model=MODEL, **options)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    texts, finish, usage = _stream_chat(client, stream_options={"include_usage": True}, **options)
    assert set(texts) == {0, 1} and set(finish) == {0, 1}
    assert texts == {c.index: c.message.content for c in first.choices}
    assert usage is not None and first.usage is not None
    assert usage.completion_tokens == first.usage.completion_tokens


def test_completions_take_strings_and_token_ids(client: openai.OpenAI, http: httpx.Client) -> None:
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    options: dict[str, Any] = {"max_tokens": 6, "temperature": 0}
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, **options)
    by_ids = client.completions.create(model=MODEL, prompt=ids, **options)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model=MODEL, prompt=[PROMPT, "Once upon a time"], **options)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == by_text.choices[0].text
    batch_ids = client.completions.create(model=MODEL, prompt=[ids, ids], **options)
    assert [c.text for c in batch_ids.choices] == [by_text.choices[0].text] * 2
    assert batch_ids.usage is not None and batch_ids.usage.prompt_tokens == 2 * len(ids)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {
        "messages": CHAT,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    response = client.chat.completions.create(model=MODEL, **options)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert response.usage is not None
    assert len(logprobs.content) == response.usage.completion_tokens
    for entry in logprobs.content:
        assert entry.logprob <= 0 and entry.bytes
        tops = entry.top_logprobs
        assert len(tops) == 3
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert tops[0].token == entry.token  # greedy picks the top token
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **options):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [e.token for e in streamed] == [e.token for e in logprobs.content]
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_and_echo(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    echoed = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, echo=True
    )
    choice = echoed.choices[0]
    assert choice.text == PROMPT + response.choices[0].text
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    assert echoed.usage is not None
    total = echoed.usage.prompt_tokens + 4
    assert len(choice.logprobs.token_logprobs) == total
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None for lp in choice.logprobs.token_logprobs[1:])
    streamed_text, streamed_tokens = "", []
    for chunk in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, echo=True, stream=True
    ):
        for part in chunk.choices:
            streamed_text += part.text
            if part.logprobs is not None and part.logprobs.tokens:
                streamed_tokens.extend(part.logprobs.tokens)
    assert streamed_text == choice.text
    assert streamed_tokens == choice.logprobs.tokens
    plain_echo = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True
    )
    assert plain_echo.choices[0].text == choice.text


def test_prompt_logprobs_extension(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 1}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    positions = choice["prompt_logprobs"]
    assert positions[0] is None and len(positions) == response.json()["usage"]["prompt_tokens"]
    assert all(1 <= len(p) <= 2 for p in positions[1:])
    streamed = http.post("/v1/completions", json={**body, "stream": True})
    assert streamed.status_code == 400


def test_cached_prompt_tokens_are_reported(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Remember this list: " + ", ".join(map(str, range(60)))},
        {"role": "user", "content": "What is the last number?"},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 16  # at least one whole KV block came from the cache
    assert details.cached_tokens < second.usage.prompt_tokens


def test_every_sampling_field_is_accepted(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=3,
        stop=["\n\n"],
        user="tester",
        response_format={"type": "text"},
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "min_tokens": 1,
            "stop_token_ids": [2],
            "ignore_eos": False,
            "include_stop_str_in_output": False,
            "skip_special_tokens": True,
        },
    )
    assert response.choices[0].finish_reason in ("stop", "length")


def test_logit_bias_bans_a_token(client: openai.OpenAI, http: httpx.Client) -> None:
    options: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    token = client.completions.create(model=MODEL, **options).choices[0].text
    ids = http.post("/tokenize", json={"prompt": token, "add_special_tokens": False}).json()
    assert len(ids["tokens"]) == 1
    banned = client.completions.create(
        model=MODEL, logit_bias={str(ids["tokens"][0]): -100}, **options
    )
    assert banned.choices[0].text != token


def test_embeddings(client: openai.OpenAI, http: httpx.Client) -> None:
    result = client.embeddings.create(model=MODEL, input=["hello there", "general kenobi"])
    assert [d.index for d in result.data] == [0, 1]
    for item in result.data:
        assert len(item.embedding) == 576
        assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-4)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 2
    as_floats = http.post(
        "/v1/embeddings", json={"input": "hello there", "encoding_format": "float"}
    ).json()
    vector = as_floats["data"][0]["embedding"]
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(vector, result.data[0].embedding, strict=True)
    )
    ids = http.post("/tokenize", json={"prompt": "hello there"}).json()["tokens"]
    by_ids = http.post("/v1/embeddings", json={"input": ids}).json()["data"][0]["embedding"]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vector, by_ids, strict=True))
    different = result.data[1].embedding
    assert math.fsum(a * b for a, b in zip(vector, different, strict=True)) < 0.9999
    bad = http.post("/v1/embeddings", json={"input": "x", "dimensions": 8})
    assert bad.status_code == 400 and "dimensions" in bad.json()["error"]["message"]


def test_tokenize_and_detokenize(http: httpx.Client, client: openai.OpenAI) -> None:
    tokenized = http.post("/tokenize", json={"prompt": "Hello, world!"}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) > 0
    assert tokenized["max_model_len"] == 512
    back = http.post("/detokenize", json={"tokens": tokenized["tokens"]}).json()
    assert back["prompt"] == "Hello, world!"
    chat = http.post("/tokenize", json={"messages": CHAT, "return_token_strs": True}).json()
    assert len(chat["token_strs"]) == chat["count"]
    response = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert response.usage is not None and response.usage.prompt_tokens == chat["count"]
    assert http.post("/detokenize", json={"tokens": [10**9]}).status_code == 400
