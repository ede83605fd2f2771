"""A real Chromium runs a self-chat in the Self-chat tab and sees its turns, each with its agent, bot and score, and
why it ended; then a batch run's plot and table. The dialogue shown is the one ``core.evaluation.evaluate.simulate``
gives for the same bots and opening (one implementation). Screenshot: ``self_chat.png`` (the README's, with
``ARENA_SCREENSHOTS=docs``).

    OMP_NUM_THREADS=1 ARENA_SCREENSHOTS=docs .venv/bin/python -m pytest -q tests/test_self_chat_browser.py

The browser, the server (on the shipped checkpoints when they are there) and the screenshot helper are those of
tests/test_app_browser.py.
"""

from __future__ import annotations

from chromium import BROWSER_MARKS, keep_file

from core.evaluation.evaluate import AGENTS, END_REASONS, simulate

pytestmark = BROWSER_MARKS

OPENING = "hi, how are you today?"
PHRASES = {"dull": "said a dull turn", "repetition": "repeated its own previous turn", "limit": "the turn limit"}


def pick(page, elem_id: str, label: str) -> None:  # noqa: F811 (the page fixture)
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=label, exact=True).click()
    page.keyboard.press("Escape")


def test_a_self_chat_streams_its_turns_and_says_why_it_ended(page, served, tmp_path):  # noqa: F811
    ctx = served[1]
    names = list(ctx.bots)
    a = "rl" if "rl" in names else names[0]
    b = "antilm" if "antilm" in names else names[-1]
    page.get_by_role("tab", name="Self-chat").click()
    pick(page, "selfchat-bot-a", ctx.bots[a].label)
    pick(page, "selfchat-bot-b", ctx.bots[b].label)
    page.locator("#selfchat-opening textarea").fill(OPENING)
    page.locator("#selfchat-run").click()
    status = page.locator("#selfchat-status")
    status.filter(has_text="Ended after").wait_for()

    expected = simulate(ctx.bots[a], [OPENING], bot_b=ctx.bots[b])[0]
    assert PHRASES[expected.end] in status.inner_text()
    bubbles = page.locator("#selfchat-chat [data-testid='user'], #selfchat-chat [data-testid='bot']")
    shown = [bubbles.nth(i).inner_text().strip() for i in range(bubbles.count())]
    assert len(shown) == 1 + len(expected.said) + (expected.ending is not None)
    assert shown[0].startswith(OPENING) and "opening (B's turn)" in shown[0]
    for text, turn in zip(shown[1:], [*expected.said, *([expected.ending] if expected.ending else [])]):
        assert text.startswith(turn.text.strip() or "(empty turn)"), (text, turn)
        assert f"{AGENTS[turn.agent]} · {ctx.bots[turn.bot].label} · score {turn.score:.2f}" in text
    if expected.ending is not None:
        assert f"ended the dialogue: {END_REASONS[expected.end]}" in shown[-1]
        assert page.locator("#selfchat-chat s").count() == 1  # the ending turn, struck through

    # batch mode: two pairs over 6 held-out openings; the plot and the per-pair table appear
    page.locator("#selfchat-pairs").get_by_role("button", name="Remove").nth(0).wait_for()
    number = page.locator("#selfchat-k input[type=number]")
    number.fill("6")
    number.press("Enter")
    page.locator("#selfchat-batch-run").click()
    page.locator("#selfchat-batch-status").filter(has_text="Done: 6 held-out openings").wait_for()
    page.locator("#selfchat-plot .js-plotly-plot").first.wait_for()
    summary = page.locator("#selfchat-summary").inner_text()
    assert all(f"{n} ↔ {n}" in summary for n in names)  # every bot with itself, the default pairs
    shot = tmp_path / "self_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    keep_file(shot)
