"""The Search tab's callbacks, without a browser, on the tiny bots: the traced search, the tree figure, the
plain-beam baseline, the table, and clear messages for bad requests; and the tab builds into a Blocks."""

import html

import pandas as pd
import plotly.graph_objects as go
import pytest

from demo_app.tabs import search


def test_the_tab_declares_its_title_and_id():
    assert (search.TITLE, search.ID) == ("Search", "search")


def test_a_bot_with_its_own_settings(tiny_bots):
    result = search.run_search(tiny_bots, "antilm", "hello there, how are you?")
    assert isinstance(result.figure, go.Figure) and isinstance(result.baseline, go.Figure)
    assert "anti-LM" in result.figure.layout.title.text and "plain beam K=10" in result.baseline.layout.title.text
    table = result.table
    assert list(table.columns) == search.TABLE_COLUMNS and len(table) > 0
    assert set(table["status"]) <= {"kept", "pruned", "finished"} and "finished" in set(table["status"])
    assert (table.groupby("step").size() <= 20).all()  # at most 2K candidates per step
    assert table["antilm"].max() > 0  # the penalty shows in the parts
    assert "Plain beam:" in result.status and "candidates in" in result.status
    names = {t.name for t in result.figure.data}
    assert {"kept", "pruned", "finished", "best reply", "start"} <= names
    finished = next(t for t in result.figure.data if t.name == "finished")
    assert finished.marker.symbol == "star" and "score" in finished.hovertext[0]


def test_the_best_path_ends_in_the_reply(tiny_bots):
    reply = tiny_bots["beam"].respond("do you have any pets?", trace=True, max_len=6)
    path = search.best_path(reply)
    rows = {x["id"]: x for x in reply.trace}
    ordered = sorted(path, key=lambda i: rows[i]["step"])
    assert [rows[i]["token"] for i in ordered] == reply.tokens  # the reply, token by token, step by step
    assert [rows[i]["step"] for i in ordered] == list(range(len(reply.tokens)))
    assert all(rows[b]["parent"] == a for a, b in zip(ordered, ordered[1:]))
    assert rows[ordered[-1]]["status"] == "finished"  # the path ends in the finished reply


@pytest.mark.parametrize("strategy, values, tag", [
    ("diverse_beam", {"beam_size": 4, "num_groups": 2, "diversity_penalty": 1.0}, "diverse beam K=4 in 2 groups"),
    ("contrastive", {"top_k": 4, "penalty_alpha": 0.6}, "contrastive top-k=4"),
    ("sample", {"beam_size": 3, "temperature": 0.8, "min_p": 0.1}, "sample x3"),
    ("greedy", {"beam_size": 7}, "greedy"),
])
def test_any_strategy_on_a_bots_checkpoint(tiny_bots, strategy, values, tag):
    result = search.run_search(tiny_bots, "beam", "what do you do for fun?", strategy, {**values, "max_len": 8})
    assert tag in result.figure.layout.title.text, result.status
    assert len(result.table) > 0 and result.table["step"].max() <= 7


def test_overrides_keep_only_the_fields_a_strategy_reads(tiny_bots):
    values = {"beam_size": 4.0, "temperature": 0.5, "antilm": 0.3, "num_groups": 2}
    beam = search.overrides_for(tiny_bots["beam"], "beam", values)
    assert beam == {"strategy": "beam", "beam_size": 4, "antilm": 0.0}  # no LM on the beam bot: antilm off
    assert "temperature" in search.overrides_for(tiny_bots["antilm"], "sample", values)
    assert search.overrides_for(tiny_bots["antilm"], search.BOT_SETTINGS, values) == {}
    with pytest.raises(ValueError, match="unknown strategy"):
        search.overrides_for(tiny_bots["beam"], "nucleus", values)


@pytest.mark.parametrize("bot, message, strategy, values, expected", [
    ("nobody", "hi", search.BOT_SETTINGS, {}, "Unknown bot"),
    ("beam", "   ", search.BOT_SETTINGS, {}, "Type a message first"),
    ("beam", None, search.BOT_SETTINGS, {}, "Type a message first"),
    ("beam", "hi", "contrastive", {"top_k": 0}, "set top_k &gt;= 1"),
    ("beam", "hi", "diverse_beam", {"beam_size": 5, "num_groups": 2}, "multiple of num_groups"),
    ("beam", "hi", "nucleus", {}, "unknown strategy"),
])
def test_bad_requests_get_a_clear_message(tiny_bots, bot, message, strategy, values, expected):
    result = search.run_search(tiny_bots, bot, message, strategy, values)
    assert expected in result.status
    assert result.table.empty and isinstance(result.figure, go.Figure)


def test_the_table_of_no_reply_is_empty():
    assert search.trace_table(None).equals(pd.DataFrame(columns=search.TABLE_COLUMNS))
    assert search.tree_figure(None).layout.annotations[0].text == "nothing traced yet"


def test_the_tab_builds_with_its_search_event(tiny_bots, tiny_checkpoints):
    import gradio as gr

    from core.serving import BatchScheduler
    from demo_app.context import AppContext

    ctx = AppContext(bots=tiny_bots, scheduler=BatchScheduler(tiny_bots), checkpoint_dir=tiny_checkpoints)
    with gr.Blocks() as demo:
        with gr.Tab(search.TITLE, id=search.ID) as tab:
            search.build(ctx, {}, tab)
    api = [d.get("api_name") for d in demo.config["dependencies"]]
    assert "search" in api
    fn = next(f for f in demo.fns.values() if f.api_name == "search")
    outputs = fn.fn("antilm", "hello there", search.BOT_SETTINGS, *[c.default for c in search.controls()])
    assert isinstance(outputs[0], go.Figure) and len(outputs[2]) > 0


def test_the_search_reads_the_conversation_typed_before_the_message(tiny_bots):
    history = search.history_lines("  do you like tea?\n\nyes, green tea\n")
    assert history == ["do you like tea?", "yes, green tea"]
    result = search.run_search(tiny_bots, "beam", "why green?", search.BOT_SETTINGS, {}, history)
    reply = tiny_bots["beam"].respond("why green?", history=history, trace=True)
    assert f"*{html.escape(reply.text) or '(empty reply)'}*" in result.status
    assert "⏎" in result.status and "why green" in result.status.split("The bot read:")[1]
    assert len(result.table) == len(reply.trace)  # the traced search is the one after the conversation
