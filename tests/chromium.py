"""The real-browser harness shared by the browser tests: Debian's chromium through Playwright, the full server,
a fresh page per test, screenshots. Its fixtures are registered in conftest.py; a browser test module sets
``pytestmark = BROWSER_MARKS`` and imports the helpers it uses:

    from chromium import BROWSER_MARKS, keep_file, send

    pytestmark = BROWSER_MARKS

    def test_something(page, served): ...

Uses Debian's chromium (``apt-get install -y chromium``, done by ``make browser``); never ``playwright install``.
Runs on the shipped checkpoints when they are there (so the README screenshots show real replies), else on the
tiny ones of conftest.py. Screenshots go to pytest's tmp_path, so a test run leaves the tree clean;
``ARENA_SCREENSHOTS=docs make test`` also copies them there (the README pictures).

Where Chromium is missing the tests skip, except under ``CI=true``, where a missing browser is a failure: the
only real-browser check must not vanish from CI silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

Served = tuple[str, Any]  # (URL, the server's AppContext)

CHROMIUM = Path("/usr/bin/chromium")  # the binary `make browser` checks for
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS_ENV = "ARENA_SCREENSHOTS"  # a folder to copy the screenshots to (e.g. docs), if set
TIMEOUT_MS = 60_000
IN_CI = os.environ.get("CI", "").lower() == "true"

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI,
                       reason="no Debian chromium at /usr/bin/chromium: run `make browser` (apt-get install -y "
                              "chromium) to run the real-browser tests"),
]


@pytest.fixture(scope="module")
def served(app_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """(URL, context) of the full server on the shipped bots (or the tiny ones), with a fresh vote store."""
    import torch

    from demo_app.app import build_app
    from demo_app.server import make_context, start_server

    torch.set_num_threads(1)
    ctx = make_context(app_checkpoints, device="cpu", data_dir=tmp_path_factory.mktemp("arena_data"),
                       threads=1)
    handle = start_server(ctx, build_app(ctx))
    try:
        yield handle.url, ctx
    finally:
        handle.close()
        ctx.scheduler.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, once per test module (a failure under CI=true when it is missing)."""
    if not CHROMIUM.exists():
        pytest.fail(f"CI=true and no browser at {CHROMIUM}: `make browser` must install Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    """A fresh page (its own Gradio session) for each test: no test depends on what another one did."""
    url, _ = served
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.locator("#message textarea").wait_for()
    yield page
    context.close()


def names(served: Served) -> list[str]:
    """The bots' names as the page's element ids spell them."""
    return [n.replace("/", "_") for n in served[1].bots]


def replies_in(page: Page, name: str) -> Locator:
    """The small print under each reply of the column of bot ``name`` (one per answered message)."""
    return page.locator(f"#chat-{name} .reply-meta")


def send(page: Page, served: Served, text: str) -> None:
    """Type ``text``, press Send and wait until every column has its new reply."""
    counts = [replies_in(page, n).count() for n in names(served)]
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    for name, before in zip(names(served), counts):  # each column gets its reply, whenever it arrives
        replies_in(page, name).nth(before).wait_for()


def keep_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot named ``name``, checked and kept (see :func:`keep_file`)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    keep_file(shot)


def keep_file(shot: Path) -> None:
    """Check a screenshot and copy it to $ARENA_SCREENSHOTS (the README's pictures) when that is set."""
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(os.environ[SCREENSHOTS_ENV]) / shot.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
