"""Run the app under uvicorn: bind first, start the engines, print one ready line, drain on
SIGTERM.

Shutdown (SIGTERM, or Ctrl-C): the server keeps listening but answers new requests 503 with
Retry-After, lets in-flight requests finish for up to the shutdown timeout, aborts the rest,
then closes its connections and stops the engines; the process exits 0. A second signal stops
at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn

from ember.errors import RequestError
from ember.server.state import ServerState

log = logging.getLogger("ember.server")

CONNECTION_CLOSE_TIMEOUT = 5
"""After the drain: how long open connections get to finish writing before they are cut."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port); one-line error on failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RequestError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise RequestError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    access = logging.StreamHandler(sys.stderr)
    access.setFormatter(logging.Formatter("%(message)s"))  # already a JSON object
    ember_log = logging.getLogger("ember")
    ember_log.handlers[:] = [handler]
    ember_log.setLevel(level.upper())
    ember_log.propagate = False
    access_log = logging.getLogger("ember.access")
    access_log.handlers[:] = [access]
    access_log.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_log = logging.getLogger(name)
        uvicorn_log.handlers[:] = [handler]
        uvicorn_log.setLevel(logging.WARNING)
        uvicorn_log.propagate = False


def run_server(state: ServerState, sock: socket.socket, log_level: str = "info") -> int:
    """Serve on `sock` (from listen()) until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(log_level)
    try:
        return asyncio.run(_serve(state, sock))
    finally:
        sock.close()


async def _serve(state: ServerState, sock: socket.socket) -> int:
    from ember.server.app import create_app

    # Engines start before uvicorn does, so a failure is a one-line error, not a lifespan trace.
    await state.start()
    config = uvicorn.Config(
        create_app(state),
        http="h11",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=CONNECTION_CLOSE_TIMEOUT,
        h11_max_incomplete_event_size=state.settings.max_header_bytes,
    )
    server = _Server(config, state, url_of(sock))
    await server.serve(sockets=[sock])
    if not server.started:
        return 1
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server with Ember's shutdown: drain on the first signal, stop on the second,
    and exit normally (uvicorn would re-raise the signal once it has shut down)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, url: str) -> None:
        super().__init__(config)
        self.state = state
        self.url = url
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            names = ", ".join(s.name for s in self.state.served)
            print(f"ember: serving {names} at {self.url} (OpenAI API at /v1)", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: runs between two bytecodes of the event loop's thread.
        loop = self._loop
        if self._draining is not None or loop is None or not self.started:
            self.force_exit = self._draining is not None
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        timeout = self.state.settings.shutdown_timeout
        log.info("%s: draining (up to %s s), then shutting down", signal.Signals(sig).name, timeout)
        try:
            aborted = await self.state.drain()
            if aborted:
                log.warning("aborted %d request(s) still running at the deadline", aborted)
        finally:
            self.should_exit = True
