"""A real Chromium drives the page: send a message, see four replies, move a slider, re-run, screenshot.

Uses Debian's chromium (``apt-get install -y chromium``, done by ``make browser``) through Playwright; never
``playwright install``. Runs on the shipped checkpoints when they are there (so the README screenshot shows real
replies), else on the tiny ones of conftest.py. The screenshot goes to pytest's tmp_path, so a test run leaves the
tree clean; ``ARENA_SCREENSHOT=docs/screenshot.png make test`` also copies it there (the README picture).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_ENV = "ARENA_SCREENSHOT"  # where to copy the screenshot too (e.g. docs/screenshot.png), if set
NAMES = ["greedy", "beam", "antilm", "rl"]
TIMEOUT_MS = 60_000
DIALOGS: list[str] = []  # any alert() would mean injected script ran

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Debian chromium at /usr/bin/chromium: run `make browser` "
                                                     "(apt-get install -y chromium) to run the real-browser test"),
]


@pytest.fixture(scope="module")
def app_url(app_checkpoints, free_port):
    import torch

    from core.bots import load_bots
    from demo_app.app import build_app, launch

    torch.set_num_threads(1)
    demo = build_app(load_bots(app_checkpoints, device="cpu"), checkpoint_dir=app_checkpoints)
    launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("dialog", lambda d: (DIALOGS.append(d.message), d.dismiss()))
        page.goto(app_url)
        page.locator("#message textarea").wait_for()
        yield page
        browser.close()


def replies_in(page, name: str):
    return page.locator(f"#chat-{name} .reply-meta")


def send(page, text: str) -> None:
    counts = [replies_in(page, n).count() for n in NAMES]
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    for name, before in zip(NAMES, counts):  # each column gets its reply, whenever it arrives
        replies_in(page, name).nth(before).wait_for()


def test_send_see_four_replies_move_a_slider_and_rerun(page, tmp_path):
    send(page, "hi, how are you today?")
    for name in NAMES:
        bubble = page.locator(f"#chat-{name} [data-testid='bot']").last
        text = bubble.inner_text()
        assert re.search(r"score -?[\d.]+ · \d+ ms", text), text
        assert text.split("score")[0].strip(), f"{name}: empty reply bubble"
    assert "beam K=10" in page.locator("#chat-beam [data-testid='bot']").last.inner_text()
    assert "All 4 replies" in page.locator("#status").inner_text()

    slider = page.locator("#ctl-beam_size input[type=range]")
    slider.focus()
    for _ in range(7):
        page.keyboard.press("ArrowLeft")  # 10 -> 3, one step at a time, as a user would
    assert page.locator("#ctl-beam_size input[type=number]").input_value() == "3"

    page.locator("#rerun").click()
    last_beam = page.locator("#chat-beam [data-testid='bot']").last
    last_beam.filter(has_text="beam K=3").wait_for()
    assert page.locator("#chat-beam [data-testid='bot']").count() == 1  # the reply was replaced, not added
    for name in ("antilm", "rl"):  # the other beam-search bots follow the slider too
        page.locator(f"#chat-{name} [data-testid='bot']").last.filter(has_text="K=3").wait_for()
    page.locator("#status").filter(has_text="All 4 replies").wait_for()
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_markup_is_shown_as_text_and_never_runs(page):
    page.evaluate("window.__xss = undefined")
    evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> <b>bold?</b>'
    send(page, evil)
    user = page.locator("#chat-greedy [data-testid='user']").last
    assert user.inner_text().strip() == evil  # displayed literally
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0 and page.locator("#chat-greedy b").count() == 0
    assert DIALOGS == []


def test_other_tabs_render(page):
    page.get_by_role("tab", name="Attention").click()
    page.locator("#attention-caption").filter(has_text="answered").wait_for()
    page.locator("img[src^='data:image/png']").first.wait_for()
    page.get_by_role("tab", name="Models").click()
    page.get_by_text("validation perplexity").first.wait_for()
    page.get_by_role("tab", name="Batch compare").click()
    page.locator("#batch-run").click()
    page.get_by_text("prompts x 4 bots").wait_for()
