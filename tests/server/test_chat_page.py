"""The chat page at /, clicked through in Debian's headless Chromium against a real `ember serve`.

Playwright drives the system browser (/usr/bin/chromium); it never downloads one of its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.process import ServerProcess, metric, smollm2

pytestmark = pytest.mark.server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps dialing Google's hosts, which this closed network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "page-key"
WAIT_MS = 60_000
"""Generous: two shared cores, and the answer is generated on one of them."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        # Playwright gives every launch a new empty profile (its own --user-data-dir).
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()  # fresh localStorage for each test
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: Any) -> None:
        # Chromium logs every non-2xx fetch; the tests provoke some on purpose.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.problems = problems  # type: ignore[attr-defined]
    yield page
    context.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--port", "0", "--threads", "1", "--max-model-len", "256", "--kv-cache-tokens", "1024"]
    process = ServerProcess(
        [smollm2(), *flags, "--api-key", KEY], tmp_path_factory.mktemp("page-secured")
    )
    yield process
    assert process.terminate() == 0


def open_chat(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.locator("#model option").first.wait_for(state="attached")


def aborted(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    return metric(text, "ember:request_success_total", finished_reason="abort")


def set_settings(page: Any, **values: str) -> None:
    """Fill settings fields (by id, underscores for dashes), opening the panel first."""
    if page.get_attribute("#settings", "open") is None:
        page.click("#settings summary")
    for name, value in values.items():
        page.fill("#" + name.replace("_", "-"), value)


def test_page_and_its_files_are_served_with_a_strict_policy(
    server: ServerProcess, http: httpx.Client
) -> None:
    index = http.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert index.headers["x-request-id"]  # still inside the request context (access log)
    script = http.get("/static/chat.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # model text only ever becomes DOM text
    assert http.get("/static/chat.css").headers["content-type"].startswith("text/css")
    # Only the page's own paths: the API and unknown paths answer as before.
    assert http.get("/v1/models").json()["object"] == "list"
    assert http.get("/static/other.js").status_code == 404
    assert http.post("/", json={}).status_code in (404, 405)


def test_chat_streams_an_answer_with_its_speed(server: ServerProcess, page: Any) -> None:
    open_chat(page, server.url)
    names = page.locator("#model option").all_inner_texts()
    assert any("smollm2" in name for name in names), names
    page.select_option("#model", label=next(n for n in names if "smollm2" in n))

    # A request the server refuses: one readable line, and the message stays to be re-sent.
    set_settings(page, max_tokens="100000")
    page.fill("#prompt", "Hello")
    page.click("#send")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "400" in error.inner_text() and "\n" not in error.inner_text()
    assert page.input_value("#prompt") == "Hello"
    assert page.locator(".message").count() == 0

    set_settings(page, temperature="0", max_tokens="24")
    page.fill("#prompt", "Name three <b>colors</b>.")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    page.wait_for_selector(".message.assistant[data-state=done]")
    assert error.is_hidden()
    # Shown as the literal text typed, never parsed as HTML.
    user = page.locator(".message.user .content").first
    assert user.inner_text() == "Name three <b>colors</b>."
    assert user.locator("b").count() == 0
    text = answer.locator(".content").inner_text()
    assert text.strip()
    # Each streamed piece is appended as its own text node: several means it arrived in pieces.
    pieces = answer.locator(".content").evaluate("node => node.childNodes.length")
    assert pieces > 1
    stats = answer.locator(".stats").inner_text()
    assert re.search(r"\d+ tokens · [\d.]+ tokens/s · TTFT \d+ ms", stats), stats

    # Enter sends; Shift+Enter is a new line in the box.
    page.click("#prompt")
    page.keyboard.type("one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("two")
    assert page.input_value("#prompt") == "one\ntwo"
    page.keyboard.press("Enter")
    page.locator(".message.assistant[data-state=done]").nth(1).wait_for()
    assert page.locator(".message.user .content").last.inner_text() == "one\ntwo"

    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    assert page.problems == []  # type: ignore[attr-defined]


def test_stop_aborts_the_request_mid_stream(
    server: ServerProcess, http: httpx.Client, page: Any
) -> None:
    aborted_before = aborted(http)
    open_chat(page, server.url)
    set_settings(page, temperature="0", max_tokens="128")
    page.fill("#prompt", "Write a long story about a dragon who learns to bake bread.")
    page.click("#send")
    streaming = ".message.assistant[data-state=streaming] .content"
    page.locator(streaming, has_text=re.compile(r"\S")).wait_for()
    page.click("#stop")
    page.wait_for_selector(".message.assistant[data-state=stopped]")
    assert "stopped" in page.locator(".message.assistant .stats").inner_text()
    assert page.is_enabled("#send") and page.is_disabled("#stop")

    # The server noticed the disconnect and aborted the request.
    deadline = time.monotonic() + 30
    while metric(http.get("/metrics").text, "ember:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the stopped request is still running"
        time.sleep(0.1)
    assert aborted(http) == aborted_before + 1
    assert page.problems == []  # type: ignore[attr-defined]


def test_a_server_with_a_key_asks_for_it(secured: ServerProcess, page: Any) -> None:
    page.goto(secured.url + "/")  # the page itself needs no key
    key_form = page.locator("#key-form")
    key_form.wait_for(state="visible")
    assert "needs an API key" in page.inner_text("#key-reason")
    assert page.locator("#model option").count() == 0

    page.fill("#api-key", "wrong")
    page.click("#save-key")
    page.locator("#key-reason", has_text="refused").wait_for()
    assert key_form.is_visible()

    page.fill("#api-key", KEY)
    page.click("#save-key")
    page.locator("#model option").first.wait_for(state="attached")
    assert key_form.is_hidden()
    assert page.evaluate("() => localStorage.getItem('ember.apiKey')") == KEY

    # Chat requests carry it as the Bearer token.
    set_settings(page, max_tokens="4")
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state=done]")
    assert page.locator("#error").is_hidden()
