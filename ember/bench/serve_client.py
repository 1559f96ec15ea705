"""The HTTP side of `ember bench serve`: one streamed request measured, the model list, /metrics.

Works against any OpenAI-compatible server (Ember, llama-server, vLLM). Timing starts just
before the request is sent; a "content" event is a streamed chunk carrying text, reasoning text
or a tool-call delta. TTFT is the time to the first such event, the inter-token latencies are
the gaps between consecutive ones (a chunk may carry more than one token: that is the server's
streaming granularity, and what a client sees).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ember.bench.traffic import Turn, flatten_messages
from ember.errors import EmberError

ENDPOINTS = ("chat", "completions")


class ServeBenchError(EmberError):
    """The benchmark cannot run: the server is unreachable, refuses us or is not OpenAI-like."""


@dataclass(frozen=True)
class Target:
    """Where and how to send requests; `root` is the server root, without /v1."""

    root: str
    model: str
    endpoint: str = "chat"
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds."""

    ok: bool
    error: str | None = None
    started: float = 0.0
    """Seconds since the start of the run."""
    ttft: float | None = None
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    text: str = ""
    json_valid: bool | None = None
    """For structured requests: the answer parsed as a JSON object with the required keys."""
    retries: int = 0
    """Times it was sent again because a stale kept-alive connection got no answer at all."""

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
        if not self.ok or self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def normalize_base_url(base_url: str) -> str:
    """The server root: `http://host:8000/v1/` and `http://host:8000` both give the latter."""
    url = base_url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ServeBenchError(f"--base-url must look like http://127.0.0.1:8000, got {base_url!r}")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_body(target: Target, turn: Turn) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of one streamed request."""
    body: dict[str, Any] = {
        "model": target.model,
        "max_tokens": target.max_tokens,
        "temperature": target.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.ignore_eos:
        body["ignore_eos"] = True  # an extension vLLM and llama-server understand
    if target.endpoint == "chat":
        body["messages"] = turn.messages
        body.update(turn.extra)
        return "/v1/chat/completions", body
    body["prompt"] = flatten_messages(turn)
    if "response_format" in turn.extra:
        body["response_format"] = turn.extra["response_format"]
    return "/v1/completions", body


class SSEDecoder:
    """Server-sent events: feed lines, get each event's data once its blank line arrives."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[str]:
        line = line.rstrip("\r\n")
        if not line:
            yield from self.flush()
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # comments (":"), event:, id: and retry: lines carry nothing we measure

    def flush(self) -> Iterator[str]:
        if self._data:
            data = "\n".join(self._data)
            self._data = []
            yield data


async def send_request(
    client: httpx.AsyncClient, target: Target, turn: Turn, clock_zero: float
) -> RequestResult:
    """Send one streamed request and measure it; failures come back as ok=False, never raise."""
    path, body = request_body(target, turn)
    for attempt in range(_STALE_CONNECTION_RETRIES + 1):
        started = time.perf_counter()
        result = RequestResult(ok=False, started=started - clock_zero, retries=attempt)
        answered = False
        try:
            async with client.stream("POST", target.root + path, json=body) as response:
                answered = True
                await _read_response(response, result, started)
        except httpx.TimeoutException:
            result.error = "timed out"
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # Some servers (llama-server) close a kept-alive connection after a stream without
            # saying so; a request sent on it in that instant gets no answer at all. It never
            # reached the server: send it again on a fresh connection, with a fresh clock.
            if not answered and attempt < _STALE_CONNECTION_RETRIES:
                continue
            result.error = _exception_text(exc)
        except httpx.HTTPError as exc:
            result.error = _exception_text(exc)
        break
    result.e2e = time.perf_counter() - started
    if result.ok and turn.json_keys:
        result.json_valid = _is_json_with(result.text, turn.json_keys)
    return result


_STALE_CONNECTION_RETRIES = 2


def _exception_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _read_response(response: httpx.Response, result: RequestResult, started: float) -> None:
    if response.status_code != 200:
        await response.aread()
        result.error = describe_http_error(response)
    elif "text/event-stream" not in response.headers.get("content-type", ""):
        await response.aread()
        kind = response.headers.get("content-type", "no content type")
        result.error = f"the server did not stream server-sent events ({kind})"
    else:
        await _read_stream(response, result, started)


async def _read_stream(response: httpx.Response, result: RequestResult, started: float) -> None:
    decoder = SSEDecoder()
    last_content: float | None = None
    chunks_with_content = 0
    usage_tokens: int | None = None
    done = False
    finished_at: float | None = None
    pieces: list[str] = []

    def handle(data: str, now: float) -> None:
        nonlocal last_content, chunks_with_content, usage_tokens, done, finished_at
        if data.strip() == "[DONE]":
            done = True
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise _StreamError(f"a streamed event is not JSON: {data[:80]!r}") from None
        if not isinstance(event, dict):
            raise _StreamError(f"a streamed event is not a JSON object: {data[:80]!r}")
        if "error" in event:
            raise _StreamError(f"error in the stream: {_error_text(event)}")
        usage = event.get("usage")
        if isinstance(usage, dict):
            usage_tokens = _read_usage(usage, result, usage_tokens)
        if finished_at is None and _finish_reason(event) is not None:
            finished_at = now
        text = _content_of(event)
        if text is None:
            return
        pieces.append(text)
        chunks_with_content += 1
        if last_content is None:
            result.ttft = now - started
        else:
            result.itl.append(now - last_content)
        last_content = now

    try:
        async for line in response.aiter_lines():
            now = time.perf_counter()
            for data in decoder.feed(line):
                handle(data, now)
        for data in decoder.flush():
            handle(data, time.perf_counter())
    except _StreamError as exc:
        result.error = str(exc)
        return
    result.text = "".join(pieces)
    result.output_tokens = usage_tokens if usage_tokens is not None else chunks_with_content
    if chunks_with_content == 0 and finished_at is not None:
        # An empty answer (the model stopped at once): its one token is the end of the stream.
        result.ttft = finished_at - started
    if chunks_with_content == 0 and finished_at is None:
        result.error = "the stream ended without any content or finish_reason"
    elif not done:
        result.error = "the stream ended before data: [DONE]"
    else:
        result.ok = True


class _StreamError(Exception):
    pass


def _read_usage(usage: dict[str, Any], result: RequestResult, previous: int | None) -> int | None:
    if isinstance(usage.get("prompt_tokens"), int):
        result.prompt_tokens = usage["prompt_tokens"]
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        result.cached_tokens = details["cached_tokens"]
    completion = usage.get("completion_tokens")
    return completion if isinstance(completion, int) else previous


def _finish_reason(event: dict[str, Any]) -> str | None:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    reason = choices[0].get("finish_reason")
    return reason if isinstance(reason, str) else None


def _content_of(event: dict[str, Any]) -> str | None:
    """The text a chunk carries (chat delta or completion text), None when it carries none."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        parts = [delta.get(key) for key in ("content", "reasoning_content", "reasoning")]
        text = "".join(part for part in parts if isinstance(part, str))
        if delta.get("tool_calls"):
            text += json.dumps(delta["tool_calls"])
        return text or None
    completion = choice.get("text")
    return completion if isinstance(completion, str) and completion else None


def _is_json_with(text: str, keys: tuple[str, ...]) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and all(key in value for key in keys)


def _error_text(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error is not None:
        return str(error)
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return json.dumps(payload)[:200]


def describe_http_error(response: httpx.Response) -> str:
    """`<status> <reason>: <the server's message>` on one line."""
    try:
        message = _error_text(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = response.text
    message = " ".join(message.split())[:200]
    head = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{head}: {message}" if message else head


async def get_with_retry(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET, sent again when a stale kept-alive connection gave no answer (see send_request)."""
    for _ in range(_STALE_CONNECTION_RETRIES):
        try:
            return await client.get(url)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            continue
    return await client.get(url)


async def list_models(client: httpx.AsyncClient, root: str) -> list[str] | None:
    """The ids GET /v1/models lists; None when the server has no such route (404).

    Raises ServeBenchError for what no benchmark can get past: no server, a refused key, or an
    answer that is not OpenAI-shaped.
    """
    url = f"{root}/v1/models"
    try:
        response = await get_with_retry(client, url)
    except httpx.ConnectError:
        raise ServeBenchError(f"cannot reach {root}: connection refused or no route") from None
    except httpx.TimeoutException:
        raise ServeBenchError(f"{root} did not answer GET /v1/models in time") from None
    except httpx.HTTPError as exc:
        raise ServeBenchError(f"cannot talk to {root}: {type(exc).__name__}: {exc}") from None
    if response.status_code in (401, 403):
        raise ServeBenchError(
            f"{root} refused the request ({describe_http_error(response)}); "
            "pass the right --api-key"
        )
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ServeBenchError(f"GET {url} failed: {describe_http_error(response)}")
    try:
        payload = response.json()
        ids = [str(entry["id"]) for entry in payload["data"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        kind = response.headers.get("content-type", "no content type")
        raise ServeBenchError(
            f"{url} did not answer like an OpenAI-compatible server ({kind}, "
            f"{' '.join(response.text.split())[:60]!r})"
        ) from None
    return ids
