"""The web chat at ``/`` in a real headless browser (Debian's chromium driven by playwright): two full
streamed exchanges, each equal to the API's non-streamed reply to the same conversation, and user text
shown as text, never as HTML. ``.ci/run`` installs chromium; the browser is never downloaded."""

from __future__ import annotations

import shutil

import openai
import pytest
import torch
from playwright.sync_api import sync_playwright

from fastgpt.engine import Engine
from fastgpt.model import GPT, GPTConfig
from fastgpt.serve.background import serve_in_thread
from fastgpt.serve.protocol import Limits
from fastgpt.serve.server import ServeConfig, create_app
from fastgpt.tokenizer import Tokenizer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root in a sandboxed machine with no network: no sandbox, no GPU, no background connections
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NAME = "tiny"


@pytest.fixture(scope="module")
def served():
    tokenizer = Tokenizer.train(["Who are you? I am a small model. Hello there! " * 30], vocab_size=290)
    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=128
    )
    engine = Engine(GPT(config).eval(), tokenizer)
    app = create_app(engine, ServeConfig(model_name=NAME, limits=Limits(max_tokens=64)))
    with serve_in_thread(app) as url:
        yield url


def test_two_streamed_exchanges_in_the_browser(served, tmp_path):
    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(served + "/")
            page.wait_for_function(f"document.getElementById('model').textContent === {NAME!r}")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "24")
            history = []
            for turn, text in enumerate(["Who are you?", "<b>Hello</b> there"]):
                page.fill("#input", text)
                page.click("#send")
                bubble = page.locator(".msg.assistant").nth(turn)
                bubble.and_(page.locator("[data-done='true']")).wait_for(timeout=60_000)
                reply = bubble.evaluate("b => b.firstChild.textContent")
                history.append({"role": "user", "content": text})
                expected = client.chat.completions.create(
                    model=NAME, messages=history, temperature=0, max_tokens=24
                )
                assert reply == expected.choices[0].message.content
                history.append({"role": "assistant", "content": reply})
            users = page.locator(".msg.user")
            assert users.nth(1).text_content() == "<b>Hello</b> there"  # shown as text ...
            assert users.nth(1).locator("b").count() == 0  # ... not parsed as HTML
            assert page.locator(".msg.error").count() == 0
            page.screenshot(path=str(tmp_path / "chat.png"))
        finally:
            browser.close()
