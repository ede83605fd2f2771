"""The Search tab's callbacks, without a browser, on the tiny bots: the traced search, the tree figure, the
plain-beam baseline, the table, and clear messages for bad requests; the tab builds into a Blocks; every search
goes through the batching scheduler (in its decode process when it has one; a busy or slow one gets a message)."""

import html
from collections import Counter

import pandas as pd
import plotly.graph_objects as go
import pytest

from demo_app.tabs import search


def test_the_tab_declares_its_title_and_id():
    assert (search.TITLE, search.ID) == ("Search", "search")


def test_a_bot_with_its_own_settings(tiny_ctx):
    result = search.run_search(tiny_ctx, "antilm", "hello there, how are you?")
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
def test_any_strategy_on_a_bots_checkpoint(tiny_ctx, strategy, values, tag):
    result = search.run_search(tiny_ctx, "beam", "what do you do for fun?", strategy, {**values, "max_len": 8})
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
def test_bad_requests_get_a_clear_message(tiny_ctx, bot, message, strategy, values, expected):
    result = search.run_search(tiny_ctx, bot, message, strategy, values)
    assert expected in result.status
    assert result.table.empty and isinstance(result.figure, go.Figure)


def test_the_table_of_no_reply_is_empty():
    assert search.trace_table(None).equals(pd.DataFrame(columns=search.TABLE_COLUMNS))
    assert search.tree_figure(None).layout.annotations[0].text == "nothing traced yet"


def test_the_tab_builds_with_its_search_event(tiny_ctx):
    import gradio as gr

    with gr.Blocks() as demo:
        with gr.Tab(search.TITLE, id=search.ID) as tab:
            search.build(tiny_ctx, {}, tab)
    api = [d.get("api_name") for d in demo.config["dependencies"]]
    assert "search" in api
    fn = next(f for f in demo.fns.values() if f.api_name == "search")
    defaults = [c.default for c in search.controls()]
    outputs = fn.fn("antilm", "hello there", search.BOT_SETTINGS, "", "", search.PRUNED_PER_STEP, *defaults)
    assert isinstance(outputs[0], go.Figure) and len(outputs[2]) > 0
    assert outputs[4].reply.text and outputs[4].steps  # the session's traced search, for branching
    none_drawn = fn.fn("antilm", "hello there", search.BOT_SETTINGS, "", "", 0, *defaults)  # the slider is wired
    assert len(points(none_drawn[0], "pruned")) == 0 and "pruned" in set(none_drawn[2]["status"])


def test_the_search_reads_the_conversation_typed_before_the_message(tiny_bots, tiny_ctx):
    history = search.history_lines("  do you like tea?\n\nyes, green tea\n")
    assert history == ["do you like tea?", "yes, green tea"]
    result = search.run_search(tiny_ctx, "beam", "why green?", search.BOT_SETTINGS, {}, history)
    reply = tiny_bots["beam"].respond("why green?", history=history, trace=True)
    assert f"*{html.escape(reply.text) or '(empty reply)'}*" in result.status
    assert "⏎" in result.status and "why green" in result.status.split("The bot read:")[1]
    assert len(result.table) == len(reply.trace)  # the traced search is the one after the conversation
    typed = search.run_search(tiny_ctx, "beam", "what does </s> mean?", search.BOT_SETTINGS, {}, history)
    read = html.unescape(typed.status.split("The bot read:")[1])
    separators = typed.reply.source_tokens.count("</s>")  # the window's own, cut to max_src_len tokens
    assert separators >= 1 and read.count("⏎") == separators and "</s> mean" in read  # the typed one stays text


@pytest.fixture(scope="module")
def k10_reply(tiny_bots):
    """A beam search K=10 over 20 steps, traced (the tiny models never say </s> early)."""
    reply = tiny_bots["antilm"].respond("hello there, how are you?", trace=True, strategy="beam", beam_size=10,
                                        max_len=20)
    assert max(x["step"] for x in reply.trace) == 19 and Counter(x["status"] for x in reply.trace)["pruned"] > 60
    return reply


def points(fig: go.Figure, name: str) -> list[tuple[float, float, str | None]]:
    """(x, y, label) of each point of the figure's trace named ``name``."""
    t = next(t for t in fig.data if t.name == name)
    return list(zip(t.x, t.y, t.text if t.text is not None else [None] * len(t.x)))


def test_pruned_candidates_are_unlabelled_and_the_best_path_is_labelled(k10_reply):
    fig = search.tree_figure(k10_reply, pruned_per_step=25)
    pruned = next(t for t in fig.data if t.name == "pruned")
    assert pruned.mode == "markers" and pruned.text is None  # hover only
    assert len(pruned.x) == sum(x["status"] == "pruned" for x in k10_reply.trace)  # 25 per step: all drawn
    assert len(pruned.hovertext) == len(pruned.x) and all("(pruned)" in h for h in pruned.hovertext)
    limit = search.label_chars(20)
    best = search.best_path(k10_reply)
    for status in ("kept", "finished"):  # drawn in trace order: kept ones labelled on the best path only
        nodes = [x for x in k10_reply.trace if x["status"] == status]
        labels = [text for _, _, text in points(fig, status)]
        expected = [search._label(x["text"], limit) if x["id"] in best or status == "finished" else ""
                    for x in nodes]
        assert labels == expected
    path = [search._label(x["text"], limit) for x in k10_reply.trace if x["id"] in best]
    assert len(path) == 20 and all(path)  # the reply, token by token
    assert points(fig, "start")[0][2] == "&lt;s&gt;"  # shown as text, not read as a strike-through tag
    sides = next(t for t in fig.data if t.name == "kept").textposition  # neighbouring steps: opposite sides
    assert {(x % 2, side) for (x, _, _), side in zip(points(fig, "kept"), sides)} == {(0, "top center"),
                                                                                      (1, "bottom center")}


@pytest.mark.parametrize("n", [0, 1, 3, 25])
def test_pruned_per_step_draws_the_best_scored_pruned_candidates_of_each_step(k10_reply, n):
    fig = search.tree_figure(k10_reply, pruned_per_step=n)
    pruned = [x for x in k10_reply.trace if x["status"] == "pruned"]
    per_step = Counter(x["step"] for x in pruned)
    drawn = Counter(int(x) - 1 for x, _, _ in points(fig, "pruned"))  # x = step + 1
    assert drawn == Counter({step: min(n, count) for step, count in per_step.items() if n})
    best_scored = [x for x in pruned if sum(y["step"] == x["step"] and y["score"] > x["score"] for y in pruned) < n]
    assert set(next(t for t in fig.data if t.name == "pruned").hovertext) == {search._hover(x) for x in best_scored}
    for name in ("kept", "finished"):  # always all drawn
        assert len(points(fig, name)) == sum(x["status"] == name for x in k10_reply.trace)


def test_the_table_lists_every_candidate_whatever_is_drawn(tiny_bots, tiny_ctx):
    result = search.run_search(tiny_ctx, "beam", "hello there", "beam", {"beam_size": 10, "max_len": 6},
                               pruned_per_step=0)
    reply = tiny_bots["beam"].respond("hello there", trace=True, strategy="beam", beam_size=10, max_len=6)
    assert len(result.table) == len(reply.trace) and (result.table["status"] == "pruned").sum() > 0
    for fig in (result.figure, result.baseline):
        assert len(points(fig, "pruned")) == 0


def test_the_figure_grows_with_the_ranks_drawn(k10_reply):
    heights = {}
    for n in (0, 3, 10):
        fig = search.tree_figure(k10_reply, pruned_per_step=n)
        ranks = max(-y for name in ("kept", "pruned", "finished") for _, y, _ in points(fig, name)) + 1
        assert ranks == 10 + n  # ten kept (or finished) and n pruned at every step
        lo, hi = fig.layout.yaxis.range
        plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
        assert plot_px / (hi - lo) >= search.ROW_PX and lo < -(ranks - 1) and hi > 0  # each rank its ROW_PX
        heights[n] = fig.layout.height
    assert heights[0] < heights[3] < heights[10]


def test_labels_fit_two_steps_of_the_narrowest_plot():
    """Labels on one side of their markers are two steps apart: at most label_chars(n) characters of CHAR_PX
    (and a gap) fit in two step widths of a MIN_PLOT_PX wide plot; and a label and the one below it fit in a
    row."""
    for n in (1, 5, 10, 20, 30):
        step_px = search.MIN_PLOT_PX / (n + 2 * search.X_PAD)
        assert search.label_chars(n) * search.CHAR_PX + search.LABEL_GAP_PX <= 2 * step_px
    assert search.label_chars(20) >= 5 and search.label_chars(10) >= 10
    assert search.ROW_PX >= 2 * (1.3 * search.LABEL_FONT["size"] + 11 / 2 + 4)  # two lines and marker + pad


@pytest.mark.parametrize("text, limit, expected", [
    (" hello", 6, "hello"),
    ("wonderful", 6, "wonde…"),
    ("wonderful", 9, "wonderful"),
    ("日本語です", 6, "日本…"),  # wide characters count two
    (" ", 6, "␣"),
    ("\x11", 6, "·"),
    ("</s>", 6, "&lt;/s&gt;"),
])
def test_a_label_is_the_token_cut_to_its_width(text, limit, expected):
    assert search._label(text, limit) == expected


# ----------------------------------------------------------------------------- through the scheduler


def test_the_searches_go_through_the_scheduler(tiny_ctx):
    """The traced search and its plain-beam baseline are two requests of ``ctx.scheduler``, a branch one more;
    the token view is no search (a teacher-forced pass here)."""
    from demo_app.tabs import search_branch

    stats = tiny_ctx.scheduler.stats
    before = stats()["requests"]
    result = search.run_search(tiny_ctx, "antilm", "hello there", search.BOT_SETTINGS, {})
    assert result.reply is not None and stats()["requests"] == before + 2
    state = search_branch.traced_search(tiny_ctx, "antilm", "hello there", search.BOT_SETTINGS, {}, [], "",
                                        result.reply)
    assert state.steps and stats()["requests"] == before + 2
    pruned = next(x for x in state.reply.trace if x["status"] == "pruned")
    view = search_branch.branch_from_node(tiny_ctx, state, pruned["id"], state.key)
    assert "| branch |" in view.status and stats()["requests"] == before + 3
    assert search_branch.traced_search(tiny_ctx, "antilm", "hello there", search.BOT_SETTINGS, {}, [], "").reply
    assert stats()["requests"] == before + 4  # no reply given: traced through the scheduler


@pytest.fixture(scope="module")
def process_ctx(tiny_checkpoints):
    """An app context whose scheduler decodes in a child process that loads the tiny checkpoints itself."""
    import functools

    import torch

    from core.bots import bots_of_folders
    from core.serving import BatchScheduler
    from demo_app.context import AppContext

    bots = bots_of_folders([tiny_checkpoints], "cpu")
    scheduler = BatchScheduler(bots, threads=1, process_loader=functools.partial(bots_of_folders, [tiny_checkpoints],
                                                                                  "cpu"))
    yield AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints)
    scheduler.close()
    torch.set_num_threads(1)


def test_the_search_tab_decodes_in_the_decode_process(process_ctx, tiny_bots, monkeypatch):
    """With decode processes, the web process never searches: its bots' respond_batch fails, and the search, the
    traced state and both kinds of branch still work, with the replies this process would give."""
    from demo_app.tabs import search_branch

    def no_search_here(*args, **kwargs):
        raise AssertionError("a search ran in the web process")

    for bot in process_ctx.bots.values():
        monkeypatch.setattr(bot, "respond_batch", no_search_here)
    message = "what do you do for fun?"
    result = search.run_search(process_ctx, "antilm", message, history=["hi", "hello"], prefix="i")
    alone = tiny_bots["antilm"].respond(message, history=["hi", "hello"], trace=True, prefix="i")
    assert result.reply.tokens == alone.tokens and len(result.reply.trace) == len(alone.trace), result.status
    state = search_branch.traced_search(process_ctx, "antilm", message, search.BOT_SETTINGS, {}, ["hi", "hello"],
                                        "i", result.reply)
    pruned = next(x for x in state.reply.trace if x["status"] == "pruned" and x["step"] == 1)
    view = search_branch.branch_from_node(process_ctx, state, pruned["id"], state.key)
    assert "| branch |" in view.status, view.status
    pick = int(search_branch.token_table(state, 0)["id"][1])
    assert "| branch |" in search_branch.branch_from_token(process_ctx, state, 0, pick, state.key).status
    assert process_ctx.scheduler.stats()["decoded"] == 4 and process_ctx.scheduler.stats()["decode_processes"] == 1


def test_a_busy_or_slow_server_gets_a_message_in_the_page(tiny_bots, tiny_checkpoints, tiny_ctx, monkeypatch):
    """The worker is held: two searches do not fit a queue of one (Busy: the queued one is cancelled), and a
    branch that waits longer than the app's timeout is cancelled with a message."""
    import threading

    from core.serving import BatchScheduler
    from demo_app.context import AppContext
    from demo_app.tabs import search_branch

    started, released = threading.Event(), threading.Event()
    real = tiny_bots["greedy"].respond_batch

    def held(prompts, **kwargs):
        started.set()
        assert released.wait(60)
        return real(prompts, **kwargs)

    state = search_branch.traced_search(tiny_ctx, "beam", "hello there", search.BOT_SETTINGS, {}, [], "")
    monkeypatch.setattr(tiny_bots["greedy"], "respond_batch", held)
    scheduler = BatchScheduler(tiny_bots, threads=1, max_queue=1, max_wait_s=0)
    ctx = AppContext(bots=tiny_bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints,
                     extra={"api_timeout_s": 0.05})
    try:
        holder = scheduler.submit("greedy", "hi", {})
        assert started.wait(60)
        busy = search.run_search(ctx, "beam", "hello there")
        assert busy.status.startswith("⚠ the server is busy") and busy.reply is None and busy.table.empty
        slow = search_branch.branch_from_node(ctx, state, 3, state.key)
        assert slow.status.startswith("⚠ no reply within 0.05 s: the server is busy") and slow.parts.empty
        assert scheduler.stats()["busy"] == 1
        released.set()
        holder.result(60)
        assert scheduler.stats()["decoded"] == 1  # the refused search's first request and the branch: cancelled
    finally:
        released.set()
        scheduler.close()
        import torch

        torch.set_num_threads(1)
