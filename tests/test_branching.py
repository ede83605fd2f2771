"""Branching from a traced node and the token view (issue 27), on real parts: the shipped checkpoints when they are
there (else the tiny ones of conftest.py), core.branching, and the Search tab's callbacks without a browser; the
reply prefix in the Search and side-by-side tabs.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_branching.py
"""

from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from core.bots import load_bots
from core.branching import branch, node_path, token_view
from core.serving import BatchScheduler
from core.tokenizer import EOS_ID
from demo_app import controls
from demo_app.context import AppContext
from demo_app.tabs import search, search_branch, side_by_side

torch.set_num_threads(1)
MESSAGES = ["hi, how are you today?", "what do you do for fun?", "where are you from?"]


@pytest.fixture(scope="module")
def bots(app_checkpoints):
    return load_bots(app_checkpoints, device="cpu")


@pytest.fixture(scope="module")
def ctx(bots, app_checkpoints):
    """The app's context over these bots: the Search tab decodes through its scheduler."""
    scheduler = BatchScheduler(bots, threads=1)
    yield AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=app_checkpoints)
    scheduler.close()
    torch.set_num_threads(1)


def traced(bots, name, message, **overrides):
    return bots[name].respond(message, trace=True, **overrides)


def on_best_path(reply):
    """The best reply's trace rows, step by step."""
    rows = {x["id"]: x for x in reply.trace}
    return sorted((rows[i] for i in search.best_path(reply)), key=lambda x: x["step"])


# ----------------------------------------------------------------------------- core: branching


def test_a_nodes_path_is_the_tokens_from_the_start_to_it(bots):
    reply = traced(bots, "beam", MESSAGES[0])
    for row in on_best_path(reply):
        assert node_path(reply.trace, row["id"]) == reply.tokens[: row["step"] + 1]
    pruned = next(x for x in reply.trace if x["status"] == "pruned" and x["step"] > 0)
    assert node_path(reply.trace, pruned["id"])[-1] == pruned["token"]
    assert node_path(reply.trace, float(pruned["id"])) == node_path(reply.trace, str(pruned["id"]))


@pytest.mark.parametrize("node, message", [
    (None, "is not a node id"), ("first", "is not a node id"), (1.5, "is not a node id"), (True, "not a node id"),
    (math.nan, "is not a node id"), (0, "0 is the start"), (10**6, "is not in this trace"),
    (-3, "is not in this trace"),
])
def test_a_node_not_in_the_trace_is_a_clear_error(bots, node, message):
    reply = traced(bots, "beam", MESSAGES[0], max_len=5)
    with pytest.raises(ValueError, match=message):
        node_path(reply.trace, node)
    with pytest.raises(ValueError, match="no traced search"):
        node_path(None, 1)


def test_greedy_branched_from_any_node_of_its_reply_says_it_again(bots):
    for message in MESSAGES:
        reply = traced(bots, "greedy", message)
        for row in on_best_path(reply):
            b = branch(bots["greedy"], message, node_path(reply.trace, row["id"]), original=reply)
            assert b.branch.tokens == reply.tokens and b.score_difference == pytest.approx(0.0, abs=1e-4)
            assert all(d.difference == pytest.approx(0.0, abs=1e-4) for d in b.parts)


@pytest.mark.parametrize("name", ["greedy", "beam", "antilm", "rl"])
def test_branching_from_the_best_replys_last_node_reproduces_it(bots, name):
    """The best path's last node forces the whole reply (its </s> included): the same reply, score and parts.
    (From an earlier node of the path a beam search keeps all K beams under that node, so it may end elsewhere.)"""
    for message in MESSAGES:
        reply = traced(bots, name, message)
        last = on_best_path(reply)[-1]
        b = branch(bots[name], message, node_path(reply.trace, last["id"]), original=reply)
        assert b.branch.tokens == reply.tokens and b.branch.text == reply.text
        assert b.branch.score == pytest.approx(reply.score, abs=1e-4)
        assert [d.part for d in b.parts] == list(reply.nbest[0].parts)
        assert all(d.difference == pytest.approx(0.0, abs=1e-4) for d in b.parts)


@pytest.mark.parametrize("name", ["beam", "antilm"])
def test_branching_from_a_pruned_node_starts_the_reply_with_its_path(bots, name):
    reply = traced(bots, name, MESSAGES[1])
    pruned = [x for x in reply.trace if x["status"] == "pruned"]
    best_per_step = {}
    for x in sorted(pruned, key=lambda x: -x["score"]):
        best_per_step.setdefault(x["step"], x)
    for row in list(best_per_step.values())[:3]:
        path = node_path(reply.trace, row["id"])
        b = branch(bots[name], MESSAGES[1], path, original=reply)
        assert b.branch.tokens[: len(path)] == path and b.path == path
        assert b.original is reply
        assert sum(d.difference for d in b.parts) == pytest.approx(b.score_difference, abs=1e-4)
        assert sum(d.branch for d in b.parts) == pytest.approx(b.branch.score, abs=1e-4)
        table = search_branch.parts_table(b)
        assert list(table["part"]) == [*reply.nbest[0].parts, "score"]
        assert table["difference"].iloc[-1] == pytest.approx(round(b.score_difference, 3))


def test_a_forced_path_that_cannot_be_said_is_a_clear_error(bots):
    bot = bots["beam"]
    with pytest.raises(ValueError, match="start node"):
        branch(bot, "hi", [])
    hi = bot.tokenizer.encode("hi")
    for path, message in [([10**7], "ints in 0.."), ([1, *hi], "cannot hold"), ([EOS_ID, *hi], "before its end"),
                          (hi * 40, "longer than max_len=30"), ([EOS_ID], "before min_len=1")]:
        with pytest.raises(ValueError, match=message):
            bot.respond("hi", prefix_ids=path)
    with pytest.raises(ValueError, match="not both"):
        bot.respond("hi", prefix_ids=hi, prefix="hello")
    with pytest.raises(ValueError, match="no reply can start with"):  # its second token is blocked there
        branch(bot, "hi", hi * 2, overrides={"no_repeat_ngram": 1})


# ----------------------------------------------------------------------------- core: the token view


def test_the_token_views_top_token_is_greedys_choice(bots):
    for message in MESSAGES:
        reply = bots["greedy"].respond(message)
        steps = token_view(bots["greedy"], message, reply.tokens)
        assert [s.top[0].token for s in steps] == reply.tokens
        assert [s.chosen.rank for s in steps] == [1] * len(reply.tokens)
        assert [s.chosen.logp for s in steps] == pytest.approx(reply.logprobs, abs=1e-4)  # the search's numbers
        for s in steps:
            ps = [c.p for c in s.top]
            assert len(ps) == 10 and all(0 < p <= 1 for p in ps) and ps == sorted(ps, reverse=True)
            assert [c.rank for c in s.top] == list(range(1, 11)) and s.path == reply.tokens[: s.step]
            assert all(c.lm_logp is None and c.penalised is None for c in s.top)  # the greedy bot has no LM


def test_the_token_view_shows_the_anti_lm_modifiers_score(bots):
    bot = bots["antilm"]
    cfg = bot.settings()
    for message in MESSAGES:
        reply = bot.respond(message)
        steps = token_view(bot, message, reply.tokens)
        for s in steps:
            for c in [*s.top, s.chosen]:
                if c.penalty_applies:
                    assert c.penalised == pytest.approx(c.logp - cfg.antilm * c.lm_logp, abs=1e-4)
                else:
                    assert c.penalised == pytest.approx(c.logp, abs=1e-6)
            if s.step >= cfg.gamma:  # the penalty covers the first gamma tokens only
                assert not any(c.penalty_applies for c in s.top)
        # what the penalty added along the reply is the reply's anti-LM part
        added = sum(s.chosen.penalised - s.chosen.logp for s in steps)
        assert added == pytest.approx(reply.nbest[0].parts["antilm"], abs=1e-3)
        assert any(c.penalty_applies for c in steps[0].top)


def test_a_token_view_choice_branches_with_the_tokens_before_it(bots):
    bot, message = bots["antilm"], MESSAGES[2]
    reply = traced(bots, "antilm", message)
    step = token_view(bot, message, reply.tokens)[1]
    other = next(c for c in step.top if c.token != step.chosen.token and c.token != EOS_ID)
    b = branch(bot, message, [*step.path, other.token], original=reply)
    assert b.branch.tokens[:2] == [reply.tokens[0], other.token]
    assert token_view(bot, message, []) == []


# ----------------------------------------------------------------------------- the Search tab, no browser


@pytest.fixture(scope="module")
def state(ctx):
    """The Search tab's traced search: the anti-LM bot on its own settings."""
    return search_branch.traced_search(ctx, "antilm", MESSAGES[1], search.BOT_SETTINGS, {}, [], "")


def test_the_tab_branches_from_a_pruned_node(ctx, state):
    node = next(x for x in state.reply.trace if x["status"] == "pruned" and x["step"] == 1)
    view = search_branch.branch_from_node(ctx, state, node["id"], state.key)
    assert view.status.startswith(f"**Branch from node {node['id']} (step 1, pruned")
    assert "| original |" in view.status and "| branch |" in view.status and "Score difference" in view.status
    assert list(view.parts.columns) == search_branch.PART_COLUMNS and view.parts["part"].iloc[-1] == "score"
    assert isinstance(view.figure, go.Figure) and len(view.figure.data) > 1


def test_the_tabs_token_view_and_its_branch(ctx, state):
    choices = search_branch.step_choices(state)
    assert [step for _, step in choices] == list(range(len(state.reply.tokens)))
    table = search_branch.token_table(state, 0)
    assert list(table.columns) == search_branch.TOKEN_COLUMNS  # the anti-LM columns: this bot has an LM
    assert list(table["rank"][:10]) == list(range(1, 11)) and (table["reply"] == "✓").sum() == 1
    pick = int(table["id"][1])
    view = search_branch.branch_from_token(ctx, state, 0, pick, state.key)
    assert view.status.startswith("**Branch from step 0 with") and len(view.parts) == 7
    greedy = search_branch.traced_search(ctx, "greedy", MESSAGES[0], search.BOT_SETTINGS, {}, [], "")
    assert "anti-LM score" not in search_branch.token_table(greedy, 0).columns


def test_every_bad_branch_request_gets_a_message(bots, ctx, state):
    other = search_branch.request_key(bots, "antilm", "something else", search.BOT_SETTINGS, {}, [], "")
    wider = search_branch.request_key(bots, "antilm", MESSAGES[1], "beam", {"beam_size": 3}, [], "")
    node = search_branch.branch_from_node
    cases = [
        (node(ctx, None, 3, state.key), "Trace a search first"),
        (node(ctx, state, 3, other), "changed since the search was traced"),  # a stale trace
        (node(ctx, state, 3, wider), "changed since the search was traced"),
        (node(ctx, state, 3, None), "changed since the search was traced"),
        (node(ctx, state, None, state.key), "Pick a node first"),
        (node(ctx, state, math.nan, state.key), "Pick a node first"),
        (node(ctx, state, 10**6, state.key), "is not in this trace"),
        (node(ctx, state, "x", state.key), "is not a node id"),
        (search_branch.branch_from_token(ctx, state, None, 5, state.key), "Pick a step"),
        (search_branch.branch_from_token(ctx, state, 99, 5, state.key), "Pick a step"),
        (search_branch.branch_from_token(ctx, state, 0, None, state.key), "Pick one of the tokens listed"),
        (search_branch.branch_from_token(ctx, state, 0, 10**7, state.key), "Pick one of the tokens listed"),
        (search_branch.branch_from_token(ctx, None, 0, 5, state.key), "Trace a search first"),
    ]
    for view, message in cases:
        assert view.status.startswith("⚠") and message in view.status, view.status
        assert view.parts.empty
    assert search_branch.token_table(None, 0).empty and search_branch.step_choices(None) == []
    assert search_branch.traced_search(ctx, "nobody", "hi", search.BOT_SETTINGS, {}, [], "") is None


def test_the_search_tab_takes_a_reply_prefix(bots, ctx):
    result = search.run_search(ctx, "antilm", "what do you like to eat?", prefix="i love")
    assert result.reply.text.startswith("i love") and html.escape("starts with 'i love'") in result.status
    assert "Plain beam: *i love" in result.status  # the baseline starts with it too
    forced = bots["antilm"].tokenizer.encode("i love")
    assert [x["token"] for x in result.reply.trace if x["step"] < len(forced)] == forced  # one candidate a step
    for bad, message in [("   \x00 ", "nothing left"), ("word " * 40, "longer than max_len"),
                         ("x" * 401, "at most 400")]:
        out = search.run_search(ctx, "antilm", "hi", prefix=bad)
        assert out.status.startswith("⚠") and message in out.status and out.reply is None
    assert search.run_search(ctx, "antilm", "hi", prefix="   ").reply.settings["prefix"] == ""  # blank: none
    # a traced search with a prefix branches with the prefix inside the node's path
    st = search_branch.traced_search(ctx, "beam", "hi", search.BOT_SETTINGS, {}, [], "i am")
    last = on_best_path(st.reply)[-1]["id"]
    view = search_branch.branch_from_node(ctx, st, last, st.key)
    assert view.parts["difference"].abs().max() < 1e-3


# ----------------------------------------------------------------------------- the side-by-side tab's prefix


def test_the_side_by_side_prefix_applies_to_every_column(bots, ctx):
    def run_chat(message: str, **values):
        return list(side_by_side.chat(ctx, message, [[] for _ in bots], values))

    prefix = next(c for c in controls.CONTROLS if c.name == "prefix")
    assert prefix.text and prefix.group == "main" and prefix.label == "Reply starts with"
    assert all(controls.applies_to(b, "prefix") for b in bots.values())
    assert controls.default_settings(bots)["prefix"] == ""
    assert controls.resolve_settings({"prefix": "  "}, controls.default_settings(bots))[0]["prefix"] == ""
    settings, notes = controls.resolve_settings({"prefix": 5}, controls.default_settings(bots))
    assert settings["prefix"] == "" and "is not text" in notes[0]
    last = run_chat("what do you do for fun?", prefix="i like")[-1]
    for name, record in last.details["bots"].items():
        assert record["text"].startswith("i like") and record["settings"]["prefix"] == "i like", name
    bad = run_chat("hi", prefix="word " * 40)[-1]  # every column says why, the page stays up
    assert all("longer than max_len" in r["error"] for r in bad.details["bots"].values())
    assert all('class="reply-error"' in h[-1]["content"] for h in bad.histories)
    assert isinstance(pd.DataFrame(bad.nbest[0]["data"]), pd.DataFrame)
