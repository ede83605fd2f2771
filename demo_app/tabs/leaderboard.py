"""The Leaderboard tab: Bradley–Terry ratings of the stored votes, 95% intervals, rank, and two heatmaps.

Refreshed each time the tab is opened and by its Refresh button (API: ``/leaderboard`` -> table, note, win-rate
heatmap, battle-count heatmap). The page uses 200 bootstrap resamples to stay quick; the command line runs the
full 1000: ``chatbot-arena leaderboard --bootstrap 1000``.

:func:`leaderboard_view` is a plain function (store -> table, note, figures); :func:`build` wires it.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import pandas as pd

from core.arena import compute_leaderboard

TITLE = "Leaderboard"
ID = "leaderboard"
UI_BOOTSTRAP = 200
SHOWN_COLUMNS = {"rank": "Rank", "bot": "Bot", "rating": "Rating", "ci_low": "95% CI low", "ci_high": "95% CI high",
                 "votes": "Votes", "both_bad": "Both bad"}
VOTES_OFF = "**Votes are off on this server** (it was started without a vote store), so there is no leaderboard."


def leaderboard_view(arena: Any, *, bootstrap: int = UI_BOOTSTRAP, seed: int = 0) -> tuple[pd.DataFrame, str, Any,
                                                                                              Any]:
    """(table to show, note, win-rate heatmap, battle-count heatmap) of the arena's stored votes; the figures
    are None while there are no votes."""
    empty = pd.DataFrame(columns=list(SHOWN_COLUMNS.values()))
    if arena is None:
        return empty, VOTES_OFF, None, None
    board = compute_leaderboard(arena.store.votes_frame(), bootstrap=bootstrap, seed=seed)
    if board.table.empty:
        return empty, board.note, None, None
    table = board.table[list(SHOWN_COLUMNS)].rename(columns=SHOWN_COLUMNS)
    table = table.round({"Rating": 0, "95% CI low": 0, "95% CI high": 0})
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
                "with 95% bootstrap intervals. A bot's rank is 1 + the number of bots surely better than it "
                "(their lower bound above its upper bound).")
    refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
    table = gr.Dataframe(interactive=False, elem_id="leaderboard-table", show_label=False)
    note = gr.Markdown(elem_id="leaderboard-note")
    with gr.Row():
        win_rate = gr.Plot(label="Win rate", elem_id="leaderboard-winrate")
        battles = gr.Plot(label="Battle count", elem_id="leaderboard-count")
    outputs = [table, note, win_rate, battles]

    def show() -> tuple:
        return leaderboard_view(ctx.arena)

    refresh.click(show, None, outputs, api_name="leaderboard")
    tab.select(show, None, outputs, api_visibility="private")
