"""The Leaderboard tab: Bradley–Terry ratings of the stored votes, 95% intervals, rank, and two heatmaps.

A category selector (every vote, single-turn battles, battles of 3+ turns, per-turn votes, whole-dialogue votes)
and a style-control toggle (reply length and questions as covariates, as Chatbot Arena does; the table then shows
the style-controlled ranking beside the plain one, and the note says what style bought). The rating shown is the
fit on all the category's votes with its bootstrap interval; bots with fewer than 30 votes in the category are
marked provisional. Refreshed each time the tab is opened, by its Refresh button and by the selectors (API:
``/leaderboard (category="all", style_control=False)`` -> table, note, win-rate heatmap, battle-count heatmap). The
page uses 200 bootstrap resamples to stay quick; the command line runs the full 1000:
``chatbot-arena leaderboard --bootstrap 1000 [--category dialogue] [--style-control]``.

:func:`leaderboard_view` is a plain function (store -> table, note, figures); :func:`build` wires it.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import pandas as pd

from core.arena import CATEGORIES, compute_leaderboard, votes_with_style

TITLE = "Leaderboard"
ID = "leaderboard"
UI_BOOTSTRAP = 200
SHOWN_COLUMNS = {"rank": "Rank", "bot": "Bot", "rating": "Rating", "ci_low": "95% CI low", "ci_high": "95% CI high",
                 "votes": "Votes", "both_bad": "Both bad", "provisional": "Provisional"}
STYLE_SHOWN_COLUMNS = {"sc_rank": "Rank (style controlled)", "bot": "Bot", "sc_rating": "Rating (style controlled)",
                       "sc_ci_low": "95% CI low", "sc_ci_high": "95% CI high", "rank": "Rank without",
                       "rating": "Rating without", "votes": "Votes", "both_bad": "Both bad",
                       "provisional": "Provisional"}
CATEGORY_CHOICES = [(label[0].upper() + label[1:], key) for key, (label, _) in CATEGORIES.items()]
VOTES_OFF = "**Votes are off on this server** (it was started without a vote store), so there is no leaderboard."


def leaderboard_view(arena: Any, *, category: str = "all", style_control: bool = False,
                     bootstrap: int = UI_BOOTSTRAP, seed: int = 0) -> tuple[pd.DataFrame, str, Any, Any]:
    """(table to show, note, win-rate heatmap, battle-count heatmap) of the arena's stored votes in ``category``,
    with style control or without; the figures are None while there are no votes."""
    columns = STYLE_SHOWN_COLUMNS if style_control else SHOWN_COLUMNS
    empty = pd.DataFrame(columns=list(columns.values()))
    if arena is None:
        return empty, VOTES_OFF, None, None
    if category not in CATEGORIES:
        return empty, f"⚠ Unknown category {str(category)[:40]!r}: one of {', '.join(CATEGORIES)}.", None, None
    votes = votes_with_style(arena.store) if style_control else arena.store.votes_frame()
    board = compute_leaderboard(votes, bootstrap=bootstrap, seed=seed, category=category,
                                style_control=bool(style_control))
    if board.table.empty:
        return empty, board.note, None, None
    table = board.table[list(columns)].rename(columns=columns)
    table = table.round({c: 0 for c in table.columns if "Rating" in c or "CI" in c})
    table["Provisional"] = table["Provisional"].map({True: "yes", False: ""})
    note = (f"{board.note} This page uses {bootstrap} resamples; `chatbot-arena leaderboard --bootstrap 1000` "
            "gives the full run.")
    return (table, note, heatmap(board.win_rate, "Win rate of the row bot against the column bot (ties: half)", "%"),
            heatmap(board.battle_count, "Battles between the two bots", "d"))


def heatmap(matrix: pd.DataFrame, title: str, fmt: str) -> Any:
    """A plotly heatmap when plotly is installed, else a matplotlib Figure (both shown by gr.Plot)."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        go = None
    labels = [str(x) for x in matrix.index]
    if go is not None:
        text = [[_cell(v, fmt) for v in row] for row in matrix.to_numpy()]
        fig = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=labels, y=labels, text=text, texttemplate="%{text}",
                                   colorscale="RdBu" if fmt == "%" else "Blues", zmid=0.5 if fmt == "%" else None))
        fig.update_layout(title=title, xaxis_title="against", yaxis_title="bot", yaxis_autorange="reversed")
        return fig
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(1.2 + 0.9 * n, 0.9 + 0.7 * n), layout="constrained")
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    im = ax.imshow(values, cmap="RdBu" if fmt == "%" else "Blues", vmin=0 if fmt == "%" else None,
                   vmax=1 if fmt == "%" else None)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("against")
    ax.set_title(title, fontsize=10)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, _cell(values[i, j], fmt), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _cell(v: float, fmt: str) -> str:
    if math.isnan(v):
        return ""
    return f"{v:.0%}" if fmt == "%" else f"{int(v)}"


def build(ctx: Any, shared: dict, tab: gr.Tab) -> None:
    """The tab's components and events (called inside ``with gr.Tab(TITLE, id=ID)``)."""
    if ctx.arena is None:
        gr.Markdown(VOTES_OFF)
        return
    gr.Markdown("### Leaderboard\nBradley–Terry ratings from the Arena's votes (mean 1000; 400 points = 10:1 odds), "
                "each the fit on all the category's votes, with its 95% bootstrap interval. A bot's rank is 1 + the "
                "number of bots surely better than it (their lower bound above its upper bound). **Style control** "
                "fits reply length and the share of replies ending with a question alongside the bots, so the "
                "ranking shows what is left once style is accounted for.")
    with gr.Row(equal_height=True):
        category = gr.Dropdown(CATEGORY_CHOICES, value="all", label="Votes", elem_id="leaderboard-category",
                               scale=3)
        style = gr.Checkbox(False, label="Style control (length, questions)", elem_id="leaderboard-style",
                            scale=2)
        refresh = gr.Button("Refresh", elem_id="leaderboard-refresh", scale=1)
    table = gr.Dataframe(interactive=False, elem_id="leaderboard-table", show_label=False)
    note = gr.Markdown(elem_id="leaderboard-note")
    with gr.Row():
        win_rate = gr.Plot(label="Win rate", elem_id="leaderboard-winrate")
        battles = gr.Plot(label="Battle count", elem_id="leaderboard-count")
    outputs = [table, note, win_rate, battles]

    def show(category_value: str, style_value: bool) -> tuple:
        return leaderboard_view(ctx.arena, category=category_value, style_control=bool(style_value))

    refresh.click(show, [category, style], outputs, api_name="leaderboard")
    gr.on([category.change, style.change, tab.select], show, [category, style], outputs, api_visibility="private")
