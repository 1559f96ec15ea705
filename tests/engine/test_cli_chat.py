"""`ember run` as a person uses it: one-shot prompts, a pipe, and the interactive chat."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.parity

EMBER = [sys.executable, "-m", "ember.cli"]


def test_run_answers_a_prompt_with_the_chat_template() -> None:
    done = subprocess.run(
        [
            *EMBER,
            "run",
            "smollm2-135m-instruct",
            "Name three fruits.",
            "--temperature",
            "0",
            "-n",
            "40",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # llama.cpp's greedy reply to this chat starts "1. Bananas" (llamacpp-chat.json).
    assert done.stdout.startswith("1.")
    assert "tok/s" in done.stderr


def test_run_reads_the_prompt_from_a_pipe() -> None:
    done = subprocess.run(
        [*EMBER, "run", "smollm2-135m-instruct", "--temperature", "0", "-n", "8"],
        input="What is the capital of France?",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {data[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_interactive_chat_keeps_history_and_quits() -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*EMBER, "run", "smollm2-135m-instruct", "--temperature", "0", "-n", "24"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    try:
        _read_until(leader, b">>> ", 300)
        os.write(leader, b"My name is Ada. Say hello to me.\n")
        first = _read_until(leader, b">>> ", 300)
        assert len(first.strip()) > len(b">>>")
        os.write(leader, b"/clear\n")
        assert b"cleared" in _read_until(leader, b">>> ", 60)
        os.write(leader, b"/bye\n")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


def test_prompt_longer_than_the_context_is_one_line() -> None:
    done = subprocess.run(
        [*EMBER, "generate", "smollm2-135m-instruct", "word " * 40, "--ctx", "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    # A first run may also announce the one-time kernel build on its own line.
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("ember: compiling")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "16" in lines[0] and "prompt" in lines[0]


def test_bench_prints_a_table() -> None:
    done = subprocess.run(
        [*EMBER, "bench", "smollm2-135m-instruct", "-p", "16", "-n", "4", "--no-peer"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("| pp16") or line.startswith("| tg4")
    ]
    assert len(rows) == 2 and all("n/a" in row for row in rows)
