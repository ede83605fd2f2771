"""A real Chromium drives the page: send a message, see every bot's reply, move a slider and see the replies
change live, the other tabs, an arena battle with its vote, the search tree; screenshots (the harness:
tests/chromium.py).
"""

from __future__ import annotations

import re

import pytest
from chromium import BROWSER_MARKS, TIMEOUT_MS, keep_file, keep_screenshot, names, replies_in, send

pytestmark = BROWSER_MARKS


def test_send_see_every_reply_and_a_released_slider_answers_again(page, served, tmp_path):
    n = len(served[1].bots)
    page.locator("#ctl-beam_size input[type=range]").focus()
    page.keyboard.press("ArrowLeft")  # before the first message a slider does nothing
    page.wait_for_timeout(800)
    assert replies_in(page, "beam").count() == 0
    page.keyboard.press("ArrowRight")

    send(page, served, "hi, how are you today?")
    for name in names(served):
        bubble = page.locator(f"#chat-{name} [data-testid='bot']").last
        text = bubble.inner_text()
        assert re.search(r"score -?[\d.]+ · \d+ ms", text), text
        assert text.split("score")[0].strip(), f"{name}: empty reply bubble"
    assert "beam K=10" in page.locator("#chat-beam [data-testid='bot']").last.inner_text()
    page.locator("#status").filter(has_text=f"All {n} replies").wait_for()
    page.get_by_text("Reply details (JSON)").click()  # built from streamed diffs: one reply added per update
    details = page.locator("#details").inner_text()
    for name in names(served):
        reply = page.locator(f"#chat-{name} [data-testid='bot']").last.inner_text().split("score")[0].strip()
        assert reply in details, (name, reply)

    slider = page.locator("#ctl-beam_size input[type=range]")
    slider.focus()
    for _ in range(7):
        page.keyboard.press("ArrowLeft")  # 10 -> 3, one step at a time, as a user would; no button pressed
    assert page.locator("#ctl-beam_size input[type=number]").input_value() == "3"
    slider.dispatch_event("pointerup")  # the end of a drag (keyboard steps end with keyup)
    last_beam = page.locator("#chat-beam [data-testid='bot']").last
    last_beam.filter(has_text="beam K=3").wait_for()
    assert page.locator("#chat-beam [data-testid='bot']").count() == 1  # the reply was replaced, not added
    for name in ("antilm", "rl"):  # the other beam-search bots follow the slider too
        page.locator(f"#chat-{name} [data-testid='bot']").last.filter(has_text="K=3").wait_for()
    page.locator("#status").filter(has_text=f"All {n} replies").wait_for()

    page.locator("#ctl-beam_size input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    page.locator("#rerun").click()  # the button stays, and answers with the current sliders
    page.locator("#chat-beam [data-testid='bot']").last.filter(has_text="beam K=4").wait_for()
    keep_screenshot(page, tmp_path, "screenshot.png")


def test_each_column_holds_a_conversation_and_a_new_one_forgets_it(page, served):
    """Two messages in a row: each column's second reply is its bot's answer after that column's first exchange
    (what Bot.respond gives with that history); "New conversation" empties every column."""
    bots = served[1].bots
    send(page, served, "do you like to cook?")
    first = page.locator("#chat-greedy [data-testid='bot']").last.inner_text().split("score")[0].strip()
    send(page, served, "why not?")
    second = page.locator("#chat-greedy [data-testid='bot']").last.inner_text().split("score")[0].strip()
    assert page.locator("#chat-greedy [data-testid='bot']").count() == 2
    expected = bots["greedy"].respond("why not?", history=["do you like to cook?", first]).text
    assert second == expected.strip()
    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelectorAll('#chat-greedy [data-testid=\"bot\"]').length === 0")
    send(page, served, "why not?")
    alone = page.locator("#chat-greedy [data-testid='bot']").last.inner_text().split("score")[0].strip()
    assert alone == bots["greedy"].respond("why not?").text.strip()


def test_markup_is_shown_as_text_and_never_runs(page, served):
    page.evaluate("window.__xss = undefined")
    evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> <b>bold?</b>'
    send(page, served, evil)
    user = page.locator("#chat-greedy [data-testid='user']").last
    assert user.inner_text().strip() == evil  # displayed literally
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0 and page.locator("#chat-greedy b").count() == 0
    assert page.dialogs == []


def test_attention_models_and_batch_tabs(page, served):
    send(page, served, "do you like music?")  # this test's own turn for the attention tab
    page.get_by_role("tab", name="Attention").click()
    page.locator("#attention-caption").filter(has_text="answered").wait_for()
    page.locator("img[src^='data:image/png']").first.wait_for()
    page.get_by_role("tab", name="Models").click()
    page.get_by_text("validation perplexity").first.wait_for()
    page.get_by_role("tab", name="Batch compare").click()
    page.locator("#batch-run").click()
    page.get_by_text(f"prompts x {len(served[1].bots)} bots").wait_for()


def test_an_arena_battle_vote_reveal_and_leaderboard(page, served, tmp_path):
    labels = [b.label for b in served[1].bots.values()]
    page.get_by_role("tab", name="Arena").click()
    vote_a = page.locator("#arena-vote-a")
    assert vote_a.is_disabled()  # no vote before both replies are shown
    page.locator("#arena-message textarea").fill("what do you do for fun?")
    page.locator("#arena-send").click()
    for side in ("a", "b"):
        page.locator(f"#arena-chat-{side} [data-testid='bot']").last.wait_for()
    page.wait_for_function("() => !document.querySelector('#arena-vote-a').disabled")
    shown = page.locator("#arena-chat-a").inner_text() + page.locator("#arena-chat-b").inner_text()
    assert not [label for label in labels if label in shown]  # names hidden until the vote
    keep_screenshot(page, tmp_path, "arena.png")
    first = {side: page.locator(f"#arena-chat-{side} [data-testid='bot']").last.inner_text().strip()
             for side in ("a", "b")}
    page.locator("#arena-message textarea").fill("why?")  # a second turn: each side reads its own conversation
    page.locator("#arena-send").click()
    page.locator("#arena-status").filter(has_text="turn 2").wait_for()
    vote_a.click()
    page.locator("#arena-status").filter(has_text="Vote saved").wait_for()
    revealed = page.locator("#arena-reveal").inner_text()
    assert sum(n in revealed for n in served[1].bots) >= 2  # both bots named
    for side in ("a", "b"):
        name = re.search(rf"Bot {side.upper()} was [^\n]*\(([^()\s]+)\):", revealed).group(1)
        second = page.locator(f"#arena-chat-{side} [data-testid='bot']").last.inner_text().strip()
        expected = served[1].bots[name].respond("why?", history=["what do you do for fun?", first[side]]).text
        assert second == (expected.strip() or "(empty reply)"), (side, name)
    page.get_by_role("tab", name="Leaderboard").click()  # refreshes on select: the vote just cast is counted
    page.locator("#leaderboard-note").filter(has_text="1 votes, 2 bots").wait_for()  # this vote, counted
    page.locator("#leaderboard-winrate .js-plotly-plot").first.wait_for()
    keep_screenshot(page, tmp_path, "leaderboard.png")


def test_the_search_tab_draws_the_tree(page, served, tmp_path):
    page.get_by_role("tab", name="Search").click()
    page.locator("#search-run").click()
    page.locator("#search-status").filter(has_text="Plain beam").wait_for()
    page.locator("#search-tree .js-plotly-plot").first.wait_for()
    page.locator("#search-status").filter(has_text="candidates in").wait_for()
    keep_screenshot(page, tmp_path, "search.png")


LABEL_BOXES_JS = """() => [...document.querySelectorAll('#search-tree .textpoint text')]
    .map(t => [t.textContent, t.getBoundingClientRect().toJSON()])
    .filter(([text, r]) => text && r.width > 0 && r.height > 0)"""


def overlapping(boxes: list) -> list[tuple[str, str]]:
    """The pairs of labels whose bounding boxes intersect (touching edges do not count)."""
    return [(a, b) for i, (a, r) in enumerate(boxes) for b, q in boxes[i + 1:]
            if r["left"] < q["right"] and q["left"] < r["right"] and r["top"] < q["bottom"] and q["top"] < r["bottom"]]


def test_the_search_trees_labels_never_overlap_at_beam_10(page, served):
    """Beam search K=10, at most 20 steps (a length bonus keeps the search going), traced in the Search tab:
    the tree labels the best path and the finished replies only, and no two labels' boxes in the drawn SVG
    intersect. (The old drawing, every candidate labelled, fails here on the shipped bots: neighbouring steps'
    words collide.)"""
    page.get_by_role("tab", name="Search").click()
    page.locator("#search-strategy input").click()
    page.get_by_role("option", name="beam", exact=True).click()
    page.get_by_role("button", name="Decoder settings (used when").click()
    page.locator("#search-message textarea").fill("what did you do last weekend?")
    for name, value in (("beam_size", 10), ("max_len", 20), ("n_bonus", 1)):
        number = page.locator(f"#search-ctl-{name} input[type=number]")
        number.fill(str(value))
        number.press("Enter")
    page.locator("#search-run").click()
    page.locator("#search-status").filter(has_text="beam K=10 · bonus 1 · max 20").wait_for()
    page.locator("#search-tree .textpoint text").first.wait_for()
    boxes = page.evaluate(LABEL_BOXES_JS)
    assert len(boxes) >= 2  # at least the start and the reply's last token
    assert overlapping(boxes) == []
    assert "<s>" in [text for text, _ in boxes]  # shown as text, not read as a strike-through tag


def test_branch_from_a_pruned_node_and_from_the_token_view(page, served, tmp_path):
    """Trace the anti-LM bot's search, click a pruned candidate's row: the search runs again from that node and the
    branch's reply shows beside the original, with the score difference in parts; the token view lists the top
    tokens of each step with the anti-LM score, and clicking one branches from it; a node id not in the trace and a
    stale trace get a message. The branch view is the README's screenshot (docs/search-branch.png)."""
    bot = next((n for n in served[1].bots if served[1].bots[n].lm is not None), None)
    if bot is None:
        pytest.skip("no bot with a language model in this registry")
    page.get_by_role("tab", name="Search").click()
    page.locator("#search-bot input").click()
    page.get_by_role("option", name=bot, exact=True).click()
    page.locator("#search-message textarea").fill("what do you do for fun?")
    page.locator("#search-run").click()
    page.locator("#search-status").filter(has_text="candidates in").wait_for()
    page.locator("#search-token-table [role=gridcell]").filter(has_text="✓").first.wait_for()
    assert "anti-LM score" in page.locator("#search-token-table").inner_text()
    # a click on a pruned candidate's row branches from it
    row = page.locator("#search-table [role=row]").filter(has_text="pruned").nth(1)
    node = row.locator("[data-col='1']").inner_text().strip()
    row.locator("[data-col='3']").click()
    status = page.locator("#search-branch-status")
    status.filter(has_text=f"Branch from node {node} (step").wait_for()
    text = status.inner_text()
    assert "original" in text and "branch" in text and "Score difference" in text
    assert "logp" in page.locator("#search-branch-parts").inner_text()
    page.locator("#search-branch-tree .js-plotly-plot").first.wait_for()
    shot = tmp_path / "search-branch.png"
    page.locator("#search-branch").screenshot(path=str(shot))
    keep_file(shot)
    # the token view: a click on another token of step 0 branches with it
    other = page.locator("#search-token-table [role=row]").filter(has_not_text="✓").nth(1)
    piece = other.locator("[data-col='1']").inner_text().strip()
    other.locator("[data-col='1']").click()
    status.filter(has_text=f"Branch from step 0 with {piece}").wait_for()
    # bad input: a node that is not in the trace, then a stale trace
    page.locator("#search-branch-node input").fill("999999")
    page.locator("#search-branch-run").click()
    status.filter(has_text="is not in this trace").wait_for()
    page.locator("#search-message textarea").fill("something else entirely")
    page.locator("#search-branch-node input").fill(node)
    page.locator("#search-branch-run").click()
    status.filter(has_text="changed since the search was traced").wait_for()


@pytest.mark.parametrize("size", [3, 5])
def test_three_and_five_bot_registries_in_the_browser(browser, tiny_checkpoints, tmp_path, size):
    """The page is built from bots.json: three or five bots give three or five columns, each with its reply."""
    import torch
    from helpers import registry

    from demo_app.app import build_app
    from demo_app.server import make_context, start_server

    torch.set_num_threads(1)
    ctx = make_context(registry(tiny_checkpoints, tmp_path, size), device="cpu", arena=False, threads=1)
    handle = start_server(ctx, build_app(ctx))
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(handle.url)
        page.locator("#message textarea").fill("hello there")
        page.locator("#send").click()
        for name in ctx.bots:
            page.locator(f"#chat-{name} .reply-meta").first.wait_for()
        assert page.locator("[id^='chat-'] .reply-meta").count() == size
        page.locator("#status").filter(has_text=f"All {size} replies").wait_for()
    finally:
        context.close()
        handle.close()
        ctx.scheduler.close()
