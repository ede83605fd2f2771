"""The Arena and Leaderboard tabs: their callbacks called directly on the tiny real bots, then both tabs launched
in a Blocks app and driven over HTTP with gradio_client.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_tabs.py
"""

from __future__ import annotations

import json
import re

import pytest

from core.arena.leaderboard import EMPTY_NOTE
from demo_app.context import AppContext
from demo_app.tabs import arena as arena_tab
from demo_app.tabs import leaderboard as board_tab


@pytest.fixture
def ctx(arena_ctx):
    return arena_ctx  # tests/conftest.py: the tiny bots, their scheduler and a fresh SQLite vote store


def secrets_of(ctx) -> list[str]:
    """Strings that would reveal a bot before the vote: names, labels, settings that tell decoders apart."""
    out = []
    for bot in ctx.bots.values():
        out += [bot.name, bot.label, arena_tab.settings_text(ctx.arena.entrants[bot.name].settings)]
    return out + ["beam_size", "antilm", "strategy"]


def shown_before_vote(view: arena_tab.View) -> str:
    """Everything a view sends to the page, except the bots' reply texts."""
    user_turns = [m for m in view.chat_a + view.chat_b if m["role"] == "user"]
    state = {k: v for k, v in (view.state or {}).items() if k not in ("chat_a", "chat_b", "conv_a", "conv_b")}
    return json.dumps([view.status, view.reveal, view.message, user_turns, state])


def test_arena_records_checkpoint_hashes_and_settings(ctx):
    entrants = ctx.arena.entrants
    assert re.fullmatch(r"[0-9a-f]{16}", entrants["greedy"].checkpoint)
    assert entrants["greedy"].checkpoint == entrants["beam"].checkpoint != entrants["rl"].checkpoint  # mle vs rl
    assert entrants["beam"].settings["beam_size"] == 10 and entrants["greedy"].settings["strategy"] == "greedy"


def test_a_battle_through_the_callbacks(ctx):
    session = "browser-session-1"
    view = arena_tab.new_battle(ctx, session)
    assert view.chat_a == view.chat_b == [] and not view.can_vote and "New battle" in view.status
    refused = arena_tab.vote(ctx, session, "model_a", view.state)
    assert "votes are possible once both replies are shown" in refused.status and not refused.can_vote

    for turn, message in enumerate(["hi, how are you?", "<b>what</b> do you do?"], start=1):
        view = arena_tab.send(ctx, session, message, view.state)
        assert view.can_vote and f"turn {turn}" in view.status
        assert len(view.chat_a) == len(view.chat_b) == 2 * turn
        shown = shown_before_vote(view)
        assert not [s for s in secrets_of(ctx) if s and s in shown], shown
    assert view.chat_a[-2]["content"] == "&lt;b&gt;what&lt;/b&gt; do you do?"  # markup shown as text
    battle = ctx.arena.store.battle(view.state["battle_id"])
    turns = ctx.arena.store.turns_of(battle.id)
    assert [t["message"] for t in turns] == ["hi, how are you?", "<b>what</b> do you do?"]
    assert view.chat_a[1]["content"].startswith(arena_tab.shown(turns[0]["reply_a"])[:20])

    voted = arena_tab.vote(ctx, session, "tie (bothbad)", view.state)
    assert not voted.can_vote and "both bad" in voted.reveal
    for name in (battle.model_a, battle.model_b):
        assert f"(`{name}`)" in voted.reveal and ctx.bots[name].label in voted.reveal
    assert "Bot A** was" in voted.reveal and ctx.arena.store.battle(battle.id).winner == "tie (bothbad)"
    again = arena_tab.vote(ctx, session, "model_a", voted.state)
    assert "already has its vote" in again.status
    other = arena_tab.vote(ctx, "another-session", "model_a", view.state)
    assert "served to another visitor" in other.status

    # each side's bot read its own side's conversation (the messages and its own replies)
    for side, name in (("a", battle.model_a), ("b", battle.model_b)):
        conv = view.state[f"conv_{side}"]
        assert conv == [turns[0]["message"], turns[0][f"reply_{side}"], turns[1]["message"], turns[1][f"reply_{side}"]]
        assert conv[3] == ctx.bots[name].respond(conv[2], history=conv[:2]).text
    # a message after the vote starts the next battle
    nxt = arena_tab.send(ctx, session, "hello again", voted.state)
    assert nxt.state["battle_id"] != battle.id and nxt.can_vote and len(nxt.chat_a) == 2


def test_bad_messages_and_votes_get_clear_messages(ctx):
    view = arena_tab.send(ctx, "s", "   ", None)
    assert "Type a message first" in view.status and view.state is None
    view = arena_tab.send(ctx, "s", "\x00\x01", None)  # nothing left to answer once cleaned
    assert "cannot be answered" in view.status and not view.can_vote
    assert "no battle to vote on" in arena_tab.vote(ctx, "s", "model_a", None).status
    view = arena_tab.send(ctx, "s", "hi", None)
    assert "a vote is one of" in arena_tab.vote(ctx, "s", "A wins", view.state).status


def test_votes_off_without_a_store(ctx):
    off = AppContext(bots=ctx.bots, scheduler=ctx.scheduler, checkpoint_dir=ctx.checkpoint_dir, arena=None)
    for view in (arena_tab.new_battle(off, "s"), arena_tab.send(off, "s", "hi", None),
                 arena_tab.vote(off, "s", "tie", None)):
        assert view.status == arena_tab.VOTES_OFF
    table, note, *figs = board_tab.leaderboard_view(None)
    assert table.empty and note == board_tab.VOTES_OFF and figs == [None, None]


def test_leaderboard_view(ctx):
    table, note, *figs = board_tab.leaderboard_view(ctx.arena)
    assert table.empty and note == EMPTY_NOTE and figs == [None, None]
    for k in range(6):
        view = arena_tab.send(ctx, f"s{k}", "hi", None)
        arena_tab.vote(ctx, f"s{k}", ["model_a", "model_b", "tie (bothbad)"][k % 3], view.state)
    table, note, win_rate, count = board_tab.leaderboard_view(ctx.arena, bootstrap=20)
    assert list(table.columns) == list(board_tab.SHOWN_COLUMNS.values())
    assert table["Votes"].sum() == 12 and table["Both bad"].sum() == 4 and "6 votes" in note
    assert set(table["Bot"]) <= set(ctx.bots) and win_rate is not None and count is not None


def test_both_tabs_over_http_with_gradio_client(ctx, free_port):
    import gradio as gr
    from gradio_client import Client

    with gr.Blocks() as demo, gr.Tabs():
        for module in (arena_tab, board_tab):
            with gr.Tab(module.TITLE, id=module.ID) as tab:
                module.build(ctx, {}, tab)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert {"/new_battle", "/battle", "/vote", "/leaderboard"} <= set(api)
        assert not [e for e in api if e.startswith("/vote_")]  # the buttons' own events stay private
        started = client.predict(api_name="/new_battle")
        answered = client.predict("hi there", api_name="/battle")
        before = json.dumps([started, answered[2:]])  # everything but the two chats
        assert not [s for s in secrets_of(ctx) if s and s in before], before
        assert len(answered[0]) == len(answered[1]) == 2
        revealed = client.predict("model_b", api_name="/vote")
        assert "Your vote: Bot B is better" in revealed[3]
        battle_id = ctx.arena.store.votes_frame()["question_id"].iloc[-1]
        rec = ctx.arena.store.battle(battle_id)
        assert f"(`{rec.model_a}`)" in revealed[3] and rec.winner == "model_b"
        assert "already has its vote" in client.predict("tie", api_name="/vote")[2]
        table, note, *_ = client.predict(api_name="/leaderboard")
        assert "1 votes, 2 bots" in note and len(table["data"]) == 2
    finally:
        demo.close()


@pytest.mark.parametrize("plotly", [True, False], ids=["plotly", "matplotlib"])
def test_heatmaps_with_and_without_plotly(plotly, monkeypatch):
    import pandas as pd

    if not plotly:
        monkeypatch.setitem(__import__("sys").modules, "plotly.graph_objects", None)  # import fails
    elif __import__("importlib").util.find_spec("plotly") is None:
        pytest.skip("plotly is not installed")
    m = pd.DataFrame([[float("nan"), 0.75], [0.25, float("nan")]], index=["x", "y"], columns=["x", "y"])
    fig = board_tab.heatmap(m, "Win rate", "%")
    kind = type(fig).__module__.split(".")[0]
    assert kind == ("plotly" if plotly else "matplotlib")
    if plotly:
        assert [list(r) for r in fig.data[0].text] == [["", "75%"], ["25%", ""]]
    else:
        assert [t.get_text() for t in fig.axes[0].texts] == ["", "75%", "25%", ""]
