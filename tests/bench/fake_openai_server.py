"""A tiny OpenAI-compatible server for `ember bench serve` tests (standard library only).

It runs on 127.0.0.1 in a thread with its own event loop, speaks HTTP/1.1 with keep-alive,
streams a fixed number of content chunks with controlled sleeps, lists one model, exposes
prefix-cache counters on /metrics and records every request it gets.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

STRUCTURED_ANSWER = '{"name": "Ada Berg", "age": 41, "city": "Oslo", "skills": ["piano"]}'


@dataclass
class Behaviour:
    first_token_delay: float = 0.05
    """Seconds between the response headers and the first content chunk."""
    token_delay: float = 0.02
    """Seconds between consecutive content chunks."""
    tokens: int = 4
    """Content chunks per answer (one token each)."""
    include_usage: bool = True
    """Send a usage chunk when the request asks for it."""
    api_key: str | None = None
    """When set, requests without `Authorization: Bearer <key>` get a 401."""
    reject_response_format: bool = False
    """Answer 400 to requests with response_format, as a server without grammars would."""
    metrics: str | None = "vllm"
    """/metrics flavour: vllm counters, an ember hit-rate gauge, llamacpp, or None for 404."""
    html: bool = False
    """Answer every route with a 200 HTML page: not an OpenAI server at all."""
    stream_error: bool = False
    """Send an error event in the middle of each stream."""
    drop_reused: bool = False
    """Close a kept-alive connection, without answering, when a second request arrives on it
    (what llama-server's close-after-stream looks like to a client that races it)."""


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeOpenAIServer:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[Recorded] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)
    """("start", i) when request i arrives, ("end", i) when its answer is complete."""
    hits: int = 0
    queries: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v1/")]

    # --- serving ---------------------------------------------------------------------------

    def _serve(self) -> None:
        # asyncio.run cancels the connection handlers still running when _main returns.
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = line.decode("latin-1").split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(length) if length else b""
                if served and self.behaviour.drop_reused:
                    break
                served += 1
                await self._route(method, target, headers, raw, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _route(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        behaviour = self.behaviour
        if behaviour.html:
            await _send(writer, 200, b"<html><body>hello</body></html>", "text/html")
            return
        if path == "/metrics":
            await self._metrics(writer)
            return
        if behaviour.api_key and headers.get("authorization") != f"Bearer {behaviour.api_key}":
            await _send_json(writer, 401, {"error": {"message": "invalid api key"}})
            return
        if method == "GET" and path == "/v1/models":
            await _send_json(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await _send_json(writer, 404, {"error": {"message": f"no route {path}"}})
            return
        body = json.loads(raw)
        with self._lock:
            index = len(self.requests)
            self.requests.append(Recorded(path, headers, body))
            self.events.append(("start", index))
        if behaviour.reject_response_format and "response_format" in body:
            message = "response_format json_schema is not supported"
            await _send_json(writer, 400, {"error": {"message": message}})
        else:
            await self._stream(writer, path, body)
        with self._lock:
            self.events.append(("end", index))
            self.queries += 100
            self.hits += 50

    async def _metrics(self, writer: asyncio.StreamWriter) -> None:
        flavour = self.behaviour.metrics
        if flavour is None:
            await _send_json(writer, 404, {"detail": "Not Found"})
            return
        lines = ["# HELP something", "# TYPE something counter"]
        if flavour == "vllm":
            # Split over two label sets: the reader must sum them.
            lines += [
                f'vllm:prefix_cache_queries_total{{engine="0"}} {self.queries / 2}',
                f'vllm:prefix_cache_queries_total{{engine="1"}} {self.queries / 2}',
                f'vllm:prefix_cache_hits_total{{engine="0",model_name="a b"}} {self.hits}',
            ]
        elif flavour == "ember":
            lines.append("ember:prefix_cache_hit_rate 0.25")
        elif flavour == "llamacpp":
            lines += [
                f"llamacpp:prompt_tokens_total {self.queries - self.hits}",
                f"llamacpp:prompt_tokens_cached_total {self.hits}",
            ]
        await _send(writer, 200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def _stream(self, writer: asyncio.StreamWriter, path: str, body: dict[str, Any]) -> None:
        behaviour = self.behaviour
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        chat = path == "/v1/chat/completions"
        pieces = _pieces(body, behaviour.tokens)
        await asyncio.sleep(behaviour.first_token_delay)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(behaviour.token_delay)
            if behaviour.stream_error and i == 1:
                await _event(writer, {"error": {"message": "engine crashed", "code": 500}})
                break
            choice = {"index": 0, "finish_reason": None}
            choice.update({"delta": {"content": piece}} if chat else {"text": piece})
            await _event(writer, {"object": "chunk", "choices": [choice]})
        last = {"index": 0, "finish_reason": "length"}
        last.update({"delta": {}} if chat else {"text": ""})
        await _event(writer, {"object": "chunk", "choices": [last]})
        if behaviour.include_usage and body.get("stream_options", {}).get("include_usage"):
            usage = {
                "prompt_tokens": 100,
                "completion_tokens": len(pieces),
                "total_tokens": 100 + len(pieces),
                "prompt_tokens_details": {"cached_tokens": 50},
            }
            await _event(writer, {"object": "chunk", "choices": [], "usage": usage})
        await _chunk(writer, b"data: [DONE]\n\n")
        await _chunk(writer, b"")


def _pieces(body: dict[str, Any], count: int) -> list[str]:
    if "response_format" not in body:
        return [f"tok{i} " for i in range(count)]
    # The answer of a structured request: valid JSON cut into `count` pieces.
    size = -(-len(STRUCTURED_ANSWER) // count)
    return [STRUCTURED_ANSWER[i : i + size] for i in range(0, len(STRUCTURED_ANSWER), size)]


async def _event(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    await _chunk(writer, f"data: {json.dumps(payload)}\n\n".encode())


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, data: bytes, kind: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    await _send(writer, status, json.dumps(payload).encode(), "application/json")
