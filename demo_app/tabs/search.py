"""The "Search" tab: see why a decoder said it. One bot (or any strategy on a bot's checkpoint) answers one message
with the search traced; the tab draws the search tree (steps left to right, kept paths strong, the best few pruned
candidates of each step faint, finished replies marked, the best reply's tokens labelled, score parts on hover)
beside the same message under plain beam search, and lists the trace as a table (every candidate). "Reply starts
with" forces the reply's start (the ``prefix`` setting) in both searches. Under them, :mod:`.search_branch` branches
the traced search from any node and shows the reply's token view.

    chatbot-arena serve            # then open the "Search" tab
    >>> ctx = demo_app.server.make_context()     # the bots and the batching scheduler
    >>> result = run_search(ctx, "antilm", "how are you?", "diverse_beam", {"num_groups": 2})
    >>> result.figure.show(); result.table.head()

Both searches go through the batching scheduler (``ctx.scheduler``; in its decode processes when it has them), as
every decode of the app does; a busy server or a reply that takes too long gets a message in the page.
Callbacks are plain functions of plain values; :func:`build` only wires them to components (event ``search``, then
the branching part's events).
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.bots import Bot
from core.decoding import STRATEGIES, DecodeConfig, Reply, describe_settings, fields_for, ui_controls
from core.serving import Ticket
from demo_app.context import AppContext
from demo_app.scheduled import problem, results, timeout_s

TITLE = "Search"
ID = "search"
BOT_SETTINGS = "the bot's own settings"  # the strategy choice that keeps the bot's bots.json decoder
TABLE_COLUMNS = ["step", "id", "parent", "token", "status", "step log p", "score", "logp", "antilm", "bonus",
                 "diversity", "repetition"]
PLAIN_BEAM = dict(strategy="beam", antilm=0.0, n_bonus=0.0, mmi_lambda=0.0, no_repeat_ngram=0,
                  repetition_penalty=1.0, length_penalty=0.0, length_norm=False)
STYLE = {"kept": ("#1f77b4", 2.5, 1.0), "pruned": ("#9aa5b1", 1.0, 0.35), "finished": ("#d62728", 2.5, 1.0)}
PREFIX_FIELD = DecodeConfig.__dataclass_fields__["prefix"]  # the "Reply starts with" setting
PRUNED_PER_STEP = 3  # pruned candidates drawn per step by default, best-scored first (the table lists them all)
LABEL_FONT = dict(family="DejaVu Sans Mono, Menlo, Consolas, monospace", size=10)  # monospace: widths known
CHAR_PX = 6.2  # the advance of one LABEL_FONT character (0.6 em, and a little spare)
LABEL_GAP_PX = 6  # the least gap between two labels of one row
MIN_PLOT_PX = 500  # the narrowest plot area the labels are sized for (half of a 1280 px wide page)
ROW_PX = 46  # the height of one drawn rank: a label above a marker and one below the marker above, apart
X_PAD, Y_PAD = 0.6, 0.6  # axis room, in steps and ranks, beyond the outermost nodes (for their labels)
TOP_PX, BOTTOM_PX = 80, 50  # the title and legend above the plot area; the step axis below it


@dataclass
class SearchResult:
    figure: go.Figure  # the traced decoder's search tree
    baseline: go.Figure  # the same message under plain beam search
    table: pd.DataFrame  # the trace, one row per candidate
    status: str
    reply: Reply | None = None  # the traced reply (None after a bad request)
    overrides: dict[str, Any] = field(default_factory=dict)  # the DecodeConfig overrides it was decoded with


def controls() -> list[Any]:
    """The setting controls of the tab: every DecodeConfig control but the sample checkbox (the strategy
    dropdown chooses the decoder here)."""
    return [c for c in ui_controls() if c.name != "sample"]


def overrides_for(bot: Bot, strategy: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The DecodeConfig overrides the tab's controls mean: none for the bot's own settings, else the chosen
    strategy with the values of the fields it reads (:func:`core.decoding.fields_for`)."""
    if strategy in (None, "", BOT_SETTINGS):
        return {}
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    used = set(fields_for(strategy))
    out: dict[str, Any] = {"strategy": strategy}
    for c in controls():
        if c.name in used and values.get(c.name) is not None:
            v = values[c.name]
            out[c.name] = int(round(float(v))) if c.kind == "int" else v
    if "antilm" in out and bot.lm is None:
        out["antilm"] = 0.0
    if "mmi_lambda" in out and bot.backward is None:
        out["mmi_lambda"] = 0.0
    return out


def history_lines(text: Any) -> list[str]:
    """The conversation typed before the message: one turn per line, oldest first (blank lines skipped)."""
    if not isinstance(text, str):
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def request_overrides(bot: Bot, strategy: str, values: Mapping[str, Any], prefix: Any = "") -> dict[str, Any]:
    """:func:`overrides_for`, plus the reply ``prefix`` ("Reply starts with"; blank: none), which applies with the
    bot's own settings and with any strategy."""
    out = overrides_for(bot, strategy, values)
    if prefix is not None and not isinstance(prefix, str):
        raise ValueError(f"the reply's start must be text, not {type(prefix).__name__}")
    if prefix and prefix.strip():
        out["prefix"] = prefix
    return out


def run_search(ctx: AppContext, bot_name: str, message: Any, strategy: str = BOT_SETTINGS,
               values: Mapping[str, Any] | None = None, history: Sequence[str] | None = None, *,
               pruned_per_step: int = PRUNED_PER_STEP, prefix: Any = "") -> SearchResult:
    """Decode ``message`` after ``history`` (the earlier turns, oldest first) with the trace on, with
    ``bot_name``'s settings or ``strategy`` and ``values`` applied, and under plain beam search, both starting
    with ``prefix`` when one is given, both through ``ctx.scheduler``; never raises (a bad request, a prefix that
    cannot be forced, a busy server or a reply that takes too long gets its message in ``status``). The trace,
    like the reply, covers the whole window the bot read. Both trees draw ``pruned_per_step`` pruned candidates
    per step; the table lists every candidate."""
    empty = SearchResult(tree_figure(None), tree_figure(None), pd.DataFrame(columns=TABLE_COLUMNS), "")
    bots = ctx.bots
    if bot_name not in bots:
        empty.status = f"Unknown bot {html.escape(str(bot_name))!r}; pick one of {', '.join(bots)}."
        return empty
    if not isinstance(message, str) or not message.strip():
        empty.status = "Type a message first."
        return empty
    bot = bots[bot_name]
    tickets: list[Ticket] = []  # both queued at once: with two workers they decode side by side
    try:
        overrides = request_overrides(bot, strategy, values or {}, prefix)
        cfg = bot.settings(**overrides)
        plain_overrides = {**PLAIN_BEAM, "prefix": cfg.prefix, "beam_size": cfg.beam_size,
                           "nbest": min(cfg.nbest, cfg.beam_size)}
        for asked in (overrides, plain_overrides):
            tickets.append(ctx.scheduler.submit(bot_name, message, asked, history=history, trace=True))
        reply, plain = results(tickets, timeout_s(ctx))
    except Exception as e:  # noqa: BLE001 - a bad request, a busy server, a slow or failed decode: a message
        for t in tickets:  # the first one queued when the second was refused (Busy)
            t.cancel()
        empty.status = f"⚠ {html.escape(problem(e))}"
        return empty
    status = (f"**{html.escape(bot.label)}**, {html.escape(describe_settings(reply.settings))}: "
              f"*{html.escape(reply.text) or '(empty reply)'}* (score {reply.score:.2f}). "
              f"Plain beam: *{html.escape(plain.text) or '(empty reply)'}* (score {plain.score:.2f}). "
              f"{len(reply.trace or [])} candidates in {max((x['step'] for x in reply.trace or []), default=-1) + 1} "
              f"steps. The bot read: *{html.escape(_window_text(reply))}*.")
    pruned = int(pruned_per_step)
    return SearchResult(tree_figure(reply, f"{bot.label}: {describe_settings(reply.settings)}", pruned_per_step=pruned),
                        tree_figure(plain, f"plain beam K={cfg.beam_size}", pruned_per_step=pruned),
                        trace_table(reply), status, reply, overrides)


def _window_text(reply: Reply) -> str:
    """The source the bot read, its turns separated by ' ⏎ ' (the separator tokens; a "</s>" a visitor typed is
    several ordinary pieces, so it stays text)."""
    turns, current = [], []
    for piece in reply.source_tokens:
        if piece in ("</s>", "<s>"):
            turns.append(current)
            current = []
        else:
            current.append(piece)
    return " ⏎ ".join("".join(t).replace("Ġ", " ").strip() for t in [*turns, current])


def trace_table(reply: Reply | None) -> pd.DataFrame:
    """One row per traced candidate, rounded for reading."""
    rows = []
    for x in (reply.trace or []) if reply else []:
        p = x["parts"]
        rows.append([x["step"], x["id"], x["parent"], x["text"], x["status"], round(x["logp"], 3),
                     round(x["score"], 3), *(round(p[k], 3) for k in ("logp", "antilm", "bonus", "diversity",
                                                                       "repetition"))])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def best_path(reply: Reply) -> set[int]:
    """Trace ids on the path of the reply's best hypothesis (the finished row whose tokens are the reply's)."""
    rows = {x["id"]: x for x in reply.trace or []}

    def tokens(i: int) -> list[int]:
        out = []
        while i:
            out.append(rows[i]["token"])
            i = rows[i]["parent"]
        return out[::-1]

    for x in rows.values():
        if x["status"] == "finished" and tokens(x["id"]) == reply.tokens:
            path, i = set(), x["id"]
            while i:
                path.add(i)
                i = rows[i]["parent"]
            return path
    return set()


def _hover(x: Mapping[str, Any]) -> str:
    parts = " · ".join(f"{k} {v:+.3f}" for k, v in x["parts"].items() if v)
    return (f"<b>{html.escape(x['text'])}</b> ({x['status']})<br>step {x['step']}, log p {x['logp']:.3f}<br>"
            f"score {x['score']:.3f}<br>{parts or 'no parts'}")


def drawn_nodes(trace: Sequence[Mapping[str, Any]], pruned_per_step: int = PRUNED_PER_STEP) -> list[Mapping[str, Any]]:
    """The candidates the tree draws: every kept and finished one, and the ``pruned_per_step`` best-scored pruned
    ones of each step (none for 0); in trace order. (Pruned candidates have no children, so every drawn node's
    parent is drawn.)"""
    pruned: dict[int, list[Mapping[str, Any]]] = {}
    for x in trace:
        if x["status"] == "pruned":
            pruned.setdefault(x["step"], []).append(x)
    shown = {x["id"] for rows in pruned.values()
             for x in sorted(rows, key=lambda row: -row["score"])[:max(int(pruned_per_step), 0)]}
    return [x for x in trace if x["status"] != "pruned" or x["id"] in shown]


def label_chars(n_steps: int) -> int:
    """How many character widths a label may take in a tree of ``n_steps`` steps: labels on the same side of
    their markers are two steps apart (or on different rows), so a label narrower than two step widths of the
    narrowest plot (MIN_PLOT_PX) cannot reach its neighbour's. At least 3 (a tree of over ~35 steps may then
    crowd), at most 16."""
    step_px = MIN_PLOT_PX / (n_steps + 2 * X_PAD)
    return min(16, max(3, int((2 * step_px - LABEL_GAP_PX) / CHAR_PX)))


def _label(text: str, limit: int) -> str:
    """A node's label: its token in at most ``limit`` character widths (wide East Asian characters count two),
    cut with "…"; blank shows as "␣", unprintable characters as "·"; escaped for plotly's HTML-like text."""
    text = "".join(c if c.isprintable() else "·" for c in text.strip()) or "␣"
    widths = [2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text]
    if sum(widths) > limit:
        keep, used = 0, 0
        while used + widths[keep] <= limit - 1:
            used += widths[keep]
            keep += 1
        text = text[:keep] + "…"
    return html.escape(text, quote=False)


def tree_figure(reply: Reply | None, title: str = "", *, pruned_per_step: int = PRUNED_PER_STEP) -> go.Figure:
    """The search tree of a traced reply: x = step, y = rank of the candidate among the drawn ones of its step;
    edges from the parent; kept paths strong, pruned candidates faint (the ``pruned_per_step`` best-scored of
    each step drawn), finished replies as stars, the best reply's path thick.

    No two labels overlap (in a plot at least MIN_PLOT_PX wide, up to ~35 steps): only the best path and the
    finished replies carry their token as a label (every node shows it on hover); labels sit above their marker
    at even x and below it at odd x, so the labels of neighbouring steps lie on different sides of a row; each
    drawn rank gets ROW_PX pixels, room for a label above a marker and one below the marker above it; and labels
    on the same side, two steps apart, are at most :func:`label_chars` characters of a monospace font wide."""
    fig = go.Figure()
    fig.update_layout(title=title, height=520, margin=dict(l=10, r=10, t=40, b=30), showlegend=True,
                      xaxis=dict(title="step", dtick=1), yaxis=dict(visible=False),
                      plot_bgcolor="rgba(0,0,0,0)")
    trace = (reply.trace or []) if reply else []
    if not trace:
        fig.add_annotation(text="nothing traced yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    # 1. what is drawn where: rows ranked by score within each step, over the drawn candidates only
    nodes = drawn_nodes(trace, pruned_per_step)
    pos: dict[int, tuple[float, float]] = {0: (0.0, 0.0)}
    rank: dict[int, int] = {}
    for x in sorted(nodes, key=lambda x: (x["step"], -x["score"])):
        rank[x["step"]] = rank.get(x["step"], -1) + 1
        pos[x["id"]] = (x["step"] + 1.0, -float(rank[x["step"]]))
    n_steps, n_rows = max(x["step"] for x in trace) + 1, max(rank.values(), default=0) + 1
    best = best_path(reply)
    limit = label_chars(n_steps)

    def side(i: int) -> str:
        return "top center" if int(pos[i][0]) % 2 == 0 else "bottom center"

    # 2. the frame: every rank ROW_PX high, half a row spare above the first and below the last
    fig.update_layout(height=math.ceil((n_rows + 2 * Y_PAD - 1) * ROW_PX) + TOP_PX + BOTTOM_PX,
                      margin=dict(l=10, r=10, t=TOP_PX, b=BOTTOM_PX),
                      legend=dict(orientation="h", x=0, y=1, xanchor="left", yanchor="bottom"),
                      xaxis=dict(title="step", dtick=1, range=[-X_PAD, n_steps + X_PAD]),
                      yaxis=dict(visible=False, range=[-(n_rows - 1) - Y_PAD, Y_PAD]))
    # 3. edges, by status, then the best path on top
    for status, (color, width, opacity) in STYLE.items():
        xs: list[float | None] = []
        ys: list[float | None] = []
        for x in nodes:
            if x["status"] == status and x["id"] not in best:
                (x0, y0), (x1, y1) = pos[x["parent"]], pos[x["id"]]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=width), opacity=opacity,
                                 hoverinfo="skip", showlegend=False))
    xs, ys = [], []
    parents = {x["id"]: x["parent"] for x in trace}
    for i in sorted(best, key=lambda i: pos[i][0]):
        xs += [pos[parents[i]][0], pos[i][0], None]
        ys += [pos[parents[i]][1], pos[i][1], None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#2ca02c", width=5), name="best reply",
                             hoverinfo="skip"))
    # 4. nodes: pruned ones unlabelled, kept ones labelled on the best path only, finished ones labelled
    for status, (color, _, opacity) in STYLE.items():
        group = [x for x in nodes if x["status"] == status]
        labelled = [status == "finished" or x["id"] in best for x in group]
        text = dict(text=[_label(x["text"], limit) if on else "" for x, on in zip(group, labelled)],
                    textposition=[side(x["id"]) for x in group], textfont=LABEL_FONT, cliponaxis=False)
        fig.add_trace(go.Scatter(
            x=[pos[x["id"]][0] for x in group], y=[pos[x["id"]][1] for x in group],
            mode="markers+text" if any(labelled) else "markers", name=status,
            marker=dict(color=color, size=11 if status == "finished" else 7, opacity=opacity,
                        symbol="star" if status == "finished" else "circle"),
            hovertext=[_hover(x) for x in group], hoverinfo="text", **(text if any(labelled) else {})))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers+text", text=[_label("<s>", limit)], textposition=side(0),
                             textfont=LABEL_FONT, cliponaxis=False, marker=dict(color="black", size=9),
                             name="start", hoverinfo="skip"))
    return fig


def control_values(names: Sequence[str], args: Sequence[Any]) -> dict[str, Any]:
    """The controls' values by name, leaving out the empty ones (None, NaN)."""
    return {n: v for n, v in zip(names, args) if v is not None and not (isinstance(v, float) and math.isnan(v))}


def build(ctx: AppContext, shared: dict[str, Any], tab: Any) -> None:
    """The tab's components and its ``search`` event (called inside ``with gr.Tab(TITLE, id=ID)``)."""
    import gradio as gr

    from demo_app.tabs import search_branch  # it imports this module's helpers

    bots = ctx.bots
    names = list(bots)
    gr.Markdown("See why a decoder said it: every candidate the search considered, kept, pruned or finished. "
                "Hover a node for its score parts (log p, anti-LM penalty, bonus, ...).")
    with gr.Row():
        bot = gr.Dropdown(names, value=names[0] if names else None, label="Bot (its checkpoint and models)",
                          elem_id="search-bot")
        strategy = gr.Dropdown([BOT_SETTINGS, *STRATEGIES], value=BOT_SETTINGS, label="Decoder",
                               elem_id="search-strategy")
        message = gr.Textbox(label="Message", value="hi, how are you today?", scale=2, elem_id="search-message")
        history = gr.Textbox("", label="Conversation before it (one turn per line, oldest first; optional)",
                             lines=2, scale=2, elem_id="search-history")
        prefix = gr.Textbox("", label=PREFIX_FIELD.metadata["label"], elem_id="search-prefix", max_lines=1,
                            info="optional: the reply (and the plain beam search) must start with this text")
        pruned = gr.Slider(0, 20, value=PRUNED_PER_STEP, step=1, label="Pruned candidates drawn per step",
                           info="best-scored first; the table lists them all", elem_id="search-pruned")
        run = gr.Button("Trace the search", variant="primary", elem_id="search-run")
    inputs = []
    with gr.Accordion("Decoder settings (used when a decoder other than the bot's own is chosen)", open=False):
        with gr.Row():
            for c in controls():
                if c.kind == "bool":
                    inputs.append(gr.Checkbox(value=c.default, label=c.label, info=c.help,
                                              elem_id=f"search-ctl-{c.name}"))
                else:
                    inputs.append(gr.Slider(c.lo, c.hi, value=min(max(c.default, c.lo), c.hi), step=c.step,
                                            label=c.label, info=c.help, elem_id=f"search-ctl-{c.name}"))
    status = gr.Markdown(elem_id="search-status")
    with gr.Row():
        tree = gr.Plot(label="Search tree", elem_id="search-tree")
        baseline = gr.Plot(label="Plain beam search, same message")
    table = gr.Dataframe(label="Trace (click a row to branch from that node)", headers=TABLE_COLUMNS, wrap=True,
                         elem_id="search-table")
    control_names = [c.name for c in controls()]
    traced = gr.State(None)  # the session's last traced search (search_branch.TracedSearch), for branching

    def on_run(bot_name: str, msg: str, strat: str, earlier: str, start: str, n_pruned: float | None,
               *args: Any) -> tuple[Any, ...]:
        values, turns = control_values(control_names, args), history_lines(earlier)
        result = run_search(ctx, bot_name, msg, strat, values, turns, prefix=start,
                            pruned_per_step=PRUNED_PER_STEP if n_pruned is None else int(n_pruned))
        state = search_branch.traced_search(ctx, bot_name, msg, strat, values, turns, start, result.reply) \
            if result.reply is not None else None
        return result.figure, result.baseline, result.table, result.status, state

    search_branch.named(on_run, ["bot", "message", "strategy", "history", "prefix", "pruned_per_step",
                                 *control_names])
    event = run.click(on_run, [bot, message, strategy, history, prefix, pruned, *inputs],
                      [tree, baseline, table, status, traced], api_name="search", concurrency_id="models")
    search_branch.build(ctx, [bot, message, strategy, history, prefix, *inputs], control_names, traced, event,
                        table)
