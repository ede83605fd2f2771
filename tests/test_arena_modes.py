"""The Arena's per-turn and whole-dialogue modes and the Leaderboard's categories and style control: their callbacks
called directly on the tiny real bots, then the tabs launched in a Blocks app and driven over HTTP with
gradio_client.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_modes.py
"""

from __future__ import annotations

import json
import random

import pytest

from core.arena.dialogues import Openings
from core.arena.interchange import export_records
from core.evaluation.evaluate import simulate
from demo_app.tabs import arena as arena_tab
from demo_app.tabs import arena_dialogue as dialogue_tab
from demo_app.tabs import leaderboard as board_tab


@pytest.fixture
def ctx(arena_ctx):
    return arena_ctx  # tests/conftest.py: the tiny bots, their scheduler and a fresh SQLite vote store


def leaks(ctx, *texts: str) -> list[str]:
    """Names, labels and settings that would reveal a bot, found in ``texts`` (what the page got before a vote)."""
    secrets = ["beam_size", "antilm", "strategy"]
    for bot in ctx.bots.values():
        secrets += [bot.name, bot.label, arena_tab.settings_text(ctx.arena.entrants[bot.name].settings)]
    return [s for s in secrets if s and any(s in t for t in texts)]


def test_a_per_turn_battle_through_the_callbacks(ctx):
    session = "per-turn-session"
    view = arena_tab.new_battle(ctx, session, per_turn=True)
    assert view.state["kind"] == "per_turn" and "vote after each turn" in view.status and not view.can_reveal
    view = arena_tab.send(ctx, session, "hi, how are you?", view.state, per_turn=True)
    assert view.can_vote and "pick the better one" in view.status
    refused = arena_tab.send(ctx, session, "and you?", view.state, per_turn=True)
    assert "Pick the better reply first" in refused.status and refused.message == "and you?"
    first_id = view.state["battle_id"]
    reply_b = view.state["conv_b"][-1]

    voted = arena_tab.vote(ctx, session, "model_b", view.state)
    assert "Bot B's reply goes on as both bots' conversation" in voted.status
    assert not voted.can_vote and voted.can_reveal and voted.reveal == ""  # the bots stay hidden
    assert voted.state["conv_a"] == voted.state["conv_b"] == ["hi, how are you?", reply_b]
    assert voted.chat_a == voted.chat_b and voted.chat_a[-1]["content"] == arena_tab.shown(reply_b)
    assert not leaks(ctx, json.dumps([voted.status, voted.reveal]))

    nxt = arena_tab.send(ctx, session, "what do you do?", voted.state, per_turn=True)
    battle = ctx.arena.battle(nxt.state["battle_id"], session)
    assert battle.id != first_id and battle.series_id == first_id
    shared = ["hi, how are you?", reply_b]
    for side, name in (("a", battle.model_a), ("b", battle.model_b)):  # both read the same conversation
        assert nxt.state[f"conv_{side}"][-1] == ctx.bots[name].respond("what do you do?", history=shared).text
    tie = arena_tab.vote(ctx, session, "tie", nxt.state)
    assert "drawn at random" in tie.status and tie.state["conv_a"] == tie.state["conv_b"]

    shown = arena_tab.reveal(ctx, session, tie.state)
    assert "over after 2 turn(s)" in shown.reveal and f"(`{battle.model_a}`)" in shown.reveal
    assert not shown.can_reveal and not shown.can_vote
    frame = ctx.arena.store.votes_frame()
    assert frame["kind"].tolist() == ["per_turn", "per_turn"] and frame["winner"].tolist() == ["model_b", "tie"]
    again = arena_tab.send(ctx, session, "hello", shown.state, per_turn=True)  # after the reveal: a new battle
    assert again.state["battle_id"] not in frame["question_id"].tolist() and again.state["turns"] == 1
    single = arena_tab.send(ctx, session, "hello", again.state, per_turn=False)  # the other mode: a new battle
    assert single.state["kind"] == "single" and single.can_vote
    assert "a vote is in" in arena_tab.reveal(ctx, session, None).status


def test_a_whole_dialogue_vote_through_the_callbacks(ctx):
    session = "dialogue-session"
    assert "no dialogues to judge yet" in dialogue_tab.vote(ctx, session, "model_a", None).status
    assert "Type an opening" in dialogue_tab.start(ctx, session, "   ", None).status
    assert "at most 500 characters" in dialogue_tab.start(ctx, session, "x" * 501, None).status
    assert "cannot be answered" in dialogue_tab.start(ctx, session, "\x00\x01", None).status

    view = dialogue_tab.start(ctx, session, "do you like dogs?", None)
    assert view.can_vote and dialogue_tab.QUESTION in view.status
    rec = ctx.arena.store.battle(view.state["battle_id"])
    stored = ctx.arena.store.dialogue_of(rec.id)
    assert stored["opening_source"] == "typed" and rec.kind == "dialogue"
    for side, name in (("a", rec.model_a), ("b", rec.model_b)):  # the evaluation's simulate(), one dialogue each
        expected = simulate(ctx.bots[name], ["do you like dogs?"], max_turns=dialogue_tab.DIALOGUE_TURNS)[0]
        assert [stored[f"turns_{side}"], stored[f"end_{side}"]] == [expected.turns[1:], expected.end]
        chat = view.dialogue_a if side == "a" else view.dialogue_b
        assert len(chat) == len(expected.turns) and chat[0] == {"role": "user", "content": "do you like dogs?"}
    assert not leaks(ctx, json.dumps([view.status, view.reveal, view.opening,
                                      {k: v for k, v in view.state.items() if k not in ("chat_a", "chat_b")}]))

    voted = dialogue_tab.vote(ctx, session, "model_b", view.state)
    assert "Your answer: Dialogue B" in voted.reveal and f"(`{rec.model_b}`)" in voted.reveal
    assert "**Dialogue A** was" in voted.reveal and "after the opening and ended at" in voted.reveal
    assert "already has its vote" in dialogue_tab.vote(ctx, session, "model_a", voted.state).status
    record = next(r for r in export_records(ctx.arena.store) if r["question_id"] == rec.id)
    assert record["kind"] == "dialogue" and record["winner"] == "model_b"
    assert [m["content"] for m in record["conversation_a"]] == ["do you like dogs?", *stored["turns_a"]]

    drawn = dialogue_tab.draw_opening(Openings(next(iter(ctx.bots.values()))), random.Random(0), voted.state)
    assert drawn.opening and "held-out opening" in drawn.status
    again = dialogue_tab.start(ctx, session, drawn.opening, drawn.state)
    assert ctx.arena.store.dialogue_of(again.state["battle_id"])["opening_source"] == "held_out"


def test_a_drawn_opening_always_fits_the_opening_box(ctx):
    """The held-out openings include some longer than the box takes; a drawn one is never one of them (a drawn
    opening the battle then refused was a flaky failure of the HTTP test below)."""
    from core.evaluation.evaluate import held_out_openings

    bot = next(iter(ctx.bots.values()))
    assert max(map(len, held_out_openings(bot))) > dialogue_tab.MAX_OPENING_CHARS
    openings, rng = Openings(bot), random.Random(0)
    assert all(len(openings.draw(rng, max_chars=40)) <= 40 for _ in range(200))
    view = dialogue_tab.draw_opening(openings, rng, None)
    assert len(view.opening) <= dialogue_tab.MAX_OPENING_CHARS and view.state["drawn"] == view.opening


def test_leaderboard_categories_and_style_control(ctx):
    for k in range(4):
        view = arena_tab.send(ctx, f"s{k}", "hi", None)
        arena_tab.vote(ctx, f"s{k}", "model_a", view.state)
    view = dialogue_tab.start(ctx, "d", "what is your favourite food?", None)
    dialogue_tab.vote(ctx, "d", "tie", view.state)
    table, note, *_ = board_tab.leaderboard_view(ctx.arena, bootstrap=10)
    assert "5 votes" in note and "every vote" in note and set(table["Provisional"]) == {"yes"}
    table, note, *_ = board_tab.leaderboard_view(ctx.arena, category="dialogue", bootstrap=10)
    assert "1 votes, 2 bots (whole-dialogue votes)" in note and table["Votes"].sum() == 2
    table, note, *_ = board_tab.leaderboard_view(ctx.arena, category="single_turn", style_control=True,
                                                 bootstrap=10)
    assert list(table.columns) == list(board_tab.STYLE_SHOWN_COLUMNS.values()) and "Style control" in note
    table, note, *figs = board_tab.leaderboard_view(ctx.arena, category="per_turn")
    assert table.empty and note == "No per-turn votes yet." and figs == [None, None]
    assert "Unknown category" in board_tab.leaderboard_view(ctx.arena, category="long")[1]


def test_the_modes_over_http_with_gradio_client(ctx, free_port):
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
        assert {"/reveal", "/dialogue_opening", "/dialogue_battle", "/dialogue_vote"} <= set(api)
        opening = client.predict(api_name="/dialogue_opening")[4]  # chats, status, reveal, the opening
        assert opening
        shown = client.predict(opening, api_name="/dialogue_battle")
        assert len(shown[0]) >= 1 and len(shown[1]) >= 1, shown
        assert not leaks(ctx, json.dumps(shown[2:4]))
        revealed = client.predict("model_a", api_name="/dialogue_vote")
        assert "Your answer: Dialogue A" in revealed[3]

        client.predict(True, api_name="/new_battle")
        answered = client.predict("hi there", True, api_name="/battle")
        assert "pick the better one" in answered[2]
        voted = client.predict("model_a", api_name="/vote")
        assert "goes on as both bots' conversation" in voted[2] and voted[3] == ""
        assert "over after 1 turn(s)" in client.predict(api_name="/reveal")[3]

        table, note, *_ = client.predict("dialogue", True, api_name="/leaderboard")
        assert "1 votes, 2 bots (whole-dialogue votes)" in note and "Rank (style controlled)" in table["headers"]
        kinds = ctx.arena.store.votes_frame()["kind"].tolist()
        assert kinds == ["dialogue", "per_turn"]
        assert ctx.arena.store.dialogue_of(ctx.arena.store.votes_frame()["question_id"][0])["opening_source"] == \
            "held_out"
    finally:
        demo.close()
