"""The chat page end to end: Debian's headless Chromium (driven by Playwright's Python package, never a downloaded
browser) opens the page the server serves at /, types a message, sends it, and the answer streams into the page.

Reference: the same request through the API (non-streaming): the text the page shows must be its content, and
the page must have updated the answer more than once while it streamed. Without Chromium or Playwright the test
skips locally and fails under CI (the CI image installs Debian's `chromium`).
"""

from __future__ import annotations

import httpx
import pytest

from llmlab.serve.engine import Engine
from tests.browser import chromium
from tests.serve.live_server import MODEL_NAME, serving, tiny_model, tiny_tokenizer

TIMEOUT_MS = 30_000
MESSAGE = "Shall I compare thee to a summer's day?"


@pytest.fixture(scope="module")
def browser():
    yield from chromium(TIMEOUT_MS)


@pytest.fixture(scope="module")
def url():
    with serving(Engine(tiny_model(), tiny_tokenizer(), max_batch_size=4, device="cpu")) as base:
        yield base


def test_chat_page_streams_an_answer(browser, url):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"off-host request {r.url}") if not r.url.startswith(url) else None)
    page.goto(f"{url}/")
    page.wait_for_function(f"document.getElementById('model').textContent.startsWith({MODEL_NAME!r})")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    # count the answer's updates as tokens arrive
    page.evaluate("""() => { window.updates = 0; new MutationObserver(() => window.updates++).observe(
        document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#prompt", MESSAGE)
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state=done]")
    shown = page.text_content(".msg.assistant .text")
    updates = page.evaluate("window.updates")
    assert page.inner_text(".msg.user") == MESSAGE
    assert page.query_selector(".msg.error") is None and errors == []
    page.close()

    expected = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": MESSAGE}], "temperature": 0, "top_p": 0.95,
        "max_tokens": 24}).json()["choices"][0]["message"]["content"]
    assert shown.strip() and shown == expected
    assert updates > 3  # user message, empty answer, several streamed pieces, the final meta line
