"""A real Chromium judges whole dialogues and runs a per-turn battle in the Arena of the launched app; the votes land
in the store with their kind (and the dialogues), and the Leaderboard's category selector shows them. Screenshot:
``arena_dialogue.png`` (the README's, with ``ARENA_SCREENSHOTS=docs``).

    OMP_NUM_THREADS=1 ARENA_SCREENSHOTS=docs .venv/bin/python -m pytest -q tests/test_arena_browser.py

The browser, the server (on the shipped checkpoints when they are there) and the screenshot helper are those of
tests/test_app_browser.py.
"""

from __future__ import annotations

from chromium import BROWSER_MARKS, keep_file

from core.arena.dialogues import QUESTION
from core.arena.interchange import export_records

pytestmark = BROWSER_MARKS


def bubbles(page, elem_id: str) -> list[str]:  # noqa: F811 (the page fixture)
    found = page.locator(f"#{elem_id} [data-testid='user'], #{elem_id} [data-testid='bot']")
    return [found.nth(i).inner_text().strip() for i in range(found.count())]


def test_a_whole_dialogue_vote_in_the_browser(page, served, tmp_path):  # noqa: F811
    ctx = served[1]
    store = ctx.arena.store
    before = set(store.votes_frame()["question_id"])
    page.get_by_role("tab", name="Arena").click()
    page.get_by_role("tab", name="Whole dialogues").click()
    assert page.locator("#arena-dvote-a").is_disabled()
    page.locator("#arena-draw").click()
    page.locator("#arena-dialogue-status").filter(has_text="held-out opening").wait_for()
    opening = page.locator("#arena-opening textarea").input_value()
    assert opening
    page.locator("#arena-start").click()
    page.locator("#arena-dialogue-status").filter(has_text=QUESTION).wait_for()
    page.wait_for_function("() => !document.querySelector('#arena-dvote-a').disabled")
    shown = {side: bubbles(page, f"arena-dialogue-{side}") for side in ("a", "b")}
    assert all(s[0] == opening for s in shown.values())  # both from the same opening
    labels = [b.label for b in ctx.bots.values()]
    assert not [x for x in labels if x in page.locator("#arena-dialogue-status").inner_text()]

    page.locator("#arena-dvote-a").click()
    page.locator("#arena-dialogue-status").filter(has_text="Vote saved").wait_for()
    revealed = page.locator("#arena-dialogue-reveal").inner_text()
    assert "Your answer: Dialogue A" in revealed and "ended at" in revealed
    shot = tmp_path / "arena_dialogue.png"
    page.screenshot(path=str(shot), full_page=True)
    keep_file(shot)

    (new,) = set(store.votes_frame()["question_id"]) - before
    record = next(r for r in export_records(store) if r["question_id"] == new)
    assert (record["kind"], record["winner"]) == ("dialogue", "model_a")
    dialogue = store.dialogue_of(new)
    assert dialogue["opening_source"] == "held_out" and dialogue["opening"] == opening
    for side in ("a", "b"):  # what the page showed is what was stored and exported
        texts = [m["content"].strip() or "(empty)" for m in record[f"conversation_{side}"]]
        assert shown[side] == texts, side
    page.get_by_role("tab", name="Leaderboard").click()
    page.locator("#leaderboard-category input").click()
    page.get_by_role("option", name="Whole-dialogue votes").click()
    page.keyboard.press("Escape")
    page.locator("#leaderboard-note").filter(has_text="(whole-dialogue votes)").wait_for()


def test_a_per_turn_battle_in_the_browser(page, served):  # noqa: F811
    ctx = served[1]
    store = ctx.arena.store
    page.get_by_role("tab", name="Arena").click()
    page.locator("#arena-per-turn input").check()
    page.locator("#arena-status").filter(has_text="vote after each turn").wait_for()
    for turn, (message, button) in enumerate([("hi, how are you?", "a"), ("what do you do for fun?", "b")], 1):
        page.locator("#arena-message textarea").fill(message)
        page.locator("#arena-send").click()
        page.locator("#arena-status").filter(has_text=f"(turn {turn}): pick the better one").wait_for()
        page.wait_for_function("() => !document.querySelector('#arena-vote-a').disabled")
        picked = bubbles(page, f"arena-chat-{button}")[-1]
        page.locator(f"#arena-vote-{button}").click()
        page.locator("#arena-status").filter(has_text=f"Vote saved (turn {turn})").wait_for()
        page.wait_for_function("() => !document.querySelector('#arena-reveal-btn').disabled")
        chats = [bubbles(page, f"arena-chat-{side}") for side in ("a", "b")]
        assert chats[0] == chats[1] and chats[0][-1] == picked  # the chosen reply, now both bots' conversation
    page.locator("#arena-reveal-btn").click()
    page.locator("#arena-status").filter(has_text="Battle over").wait_for()
    assert "over after 2 turn(s)" in page.locator("#arena-reveal").inner_text()

    votes = store.votes_frame()
    series = votes[votes["kind"] == "per_turn"]
    assert len(series) == 2 and series["winner"].tolist() == ["model_a", "model_b"]
    assert series["series_id"].iloc[1] == series["question_id"].iloc[0]  # one series: the second battle goes on
