"""The web chat page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def test_chat_page_streams_a_reply(browser, embedded_server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(embedded_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.locator("#model option").first.inner_text().endswith("(base)")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "48")
    page.fill("#message", "What is the capital of France?")
    page.keyboard.press("Enter")
    reply = page.locator(".msg.assistant .content").first
    # The stop button shows while the reply streams and the text grows before the stream ends.
    page.wait_for_function("document.querySelector('.msg.assistant .content').textContent.length > 0")
    page.wait_for_selector("#send:not([hidden])", timeout=60_000)
    text = reply.inner_text()
    assert "Paris" in text, text
    page.fill("#message", "Và thủ đô của Việt Nam là gì?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2")
    page.wait_for_selector("#send:not([hidden])", timeout=60_000)
    second = page.locator(".msg.assistant .content").nth(1).inner_text()
    assert second.strip() and "\ufffd" not in second
    assert page.locator(".msg.assistant .copy").count() == 2
    shot = tmp_path / "web_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert all(u.startswith(embedded_server.url) for u in requests), requests  # nothing leaves the machine
    page.close()


def test_stop_button_aborts_a_reply(browser, tiny_server):
    page = browser.new_page()
    page.goto(tiny_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 3")
    page.select_option("#model", "beta")
    page.fill("#max-tokens", "2000")
    page.fill("#message", "Write a very long story.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant .content').textContent.length > 20")
    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])", timeout=10_000)
    assert page.inner_text("#status") == "stopped"
    page.close()
