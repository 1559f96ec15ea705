"""A real `ember serve` process on 127.0.0.1 for black-box tests, and reading its metrics.

The server picks a free port itself (--port 0) and prints its URL on the ready line; its stdout
and stderr go to files (no pipe can fill up), and the tests read the access log from there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import real_model_path

READY = re.compile(r"ember: serving .* at (http://\S+) ")
START_TIMEOUT = 180.0
"""Generous: CI may also be pulling the model or building the native kernels."""


class ServerProcess:
    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.stdout_path = workdir / "stdout.txt"
        self.stderr_path = workdir / "stderr.txt"
        command = [sys.executable, "-m", "ember.cli", "serve", *args]
        environment = {**os.environ, **(env or {})}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=environment
            )
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = READY.search(self.stdout_path.read_text(errors="replace"))
            if match:
                url = match.group(1)
                try:
                    self._wait_healthy(url, deadline)
                except AssertionError:
                    self.kill()
                    raise
                return url
            if self.process.poll() is not None:
                raise AssertionError(f"ember serve exited early:\n{self.stderr()[-3000:]}")
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"ember serve did not start:\n{self.stderr()[-3000:]}")

    @staticmethod
    def _wait_healthy(url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("/health never answered 200")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def smollm2() -> str:
    return str(real_model_path("smollm2"))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (
            key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items())
        ):
            return float(value)
    return 0.0
