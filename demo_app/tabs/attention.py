"""Attention: where each reply token of the last side-by-side turn looked in the prompt, and how likely it was.

:func:`attention_view` (a plain function of the side-by-side tab's reply records, tested without a browser) gives the
heatmap and the per-token probabilities; :func:`build` wires it to the tab's components.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from demo_app.context import AppContext
from demo_app.render import escape_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Attention"
ID = "attention"


@dataclass
class AttentionView:
    figure: Any  # matplotlib Figure, or None
    tokens: list[tuple[str, float]]  # (token, probability) for gr.HighlightedText
    caption: str


def attention_view(details: Mapping[str, Any] | None, bot_name: str) -> AttentionView:
    """Heatmap of the attention (reply tokens x prompt tokens) and per-token probabilities of one bot's reply."""
    bots = details.get("bots") if isinstance(details, Mapping) else None
    record = bots.get(bot_name) if isinstance(bots, Mapping) and isinstance(bot_name, str) else None
    if not record:
        return AttentionView(None, [], "Send a message in the **Side by side** tab first; its replies show here.")
    if "error" in record:
        return AttentionView(None, [], f"This bot gave no reply: {escape_text(str(record['error']))}")
    if not all(isinstance(record.get(k), list) for k in ("tokens", "logprobs", "attention", "source_tokens")):
        return AttentionView(None, [], "These reply details have no attention weights to draw.")
    tokens = [(t, round(math.exp(lp), 3) if lp is not None else 0.0)
              for t, lp in zip(record["tokens"], record["logprobs"])]
    known = [lp for lp in record["logprobs"] if lp is not None]
    mean_lp = sum(known) / len(known) if known else float("nan")
    caption = (f"**{html.escape(record['label'])}** answered *{escape_text(record['text']) or '(empty)'}*: "
               f"{len(tokens)} tokens, mean log p {mean_lp:.2f}, score {record['score']}. "
               "Colour = probability of each token given the prompt and the tokens before it.")
    try:
        figure = attention_figure(record["attention"], record["source_tokens"], record["tokens"])
    except (KeyError, TypeError, ValueError):
        return AttentionView(None, [], "These reply details have no attention weights to draw.")
    return AttentionView(figure, tokens, caption)


def _axis_label(piece: str) -> str:
    """A token as an axis label: visible spaces and control bytes, no mathtext."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in piece.replace(" ", "·"))
    return shown.replace("$", r"\$") or "∅"


def attention_figure(attention: Sequence[Sequence[float]], source: Sequence[str], target: Sequence[str]
                     ) -> Figure:
    """A matplotlib Figure (no pyplot state, safe in threads) of attention rows (T) over source tokens (S)."""
    from matplotlib.figure import Figure

    T, S = len(attention), len(source)
    fig = Figure(figsize=(min(14, 2.5 + 0.45 * S), min(12, 1.8 + 0.32 * T)), dpi=100)
    ax = fig.add_subplot()
    if T == 0 or S == 0:
        ax.text(0.5, 0.5, "no attention to show", ha="center", va="center")
        ax.set_axis_off()
        return fig
    im = ax.imshow(attention, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(S), labels=[_axis_label(p) for p in source], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(T), labels=[_axis_label(p) for p in target[:T]], fontsize=8)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("reply tokens")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig



def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    bots = ctx.bots
    gr.Markdown("Where each reply token looked in the prompt (Luong attention weights), and how likely the "
                "model found each token. Shows the last turn of the **Side by side** tab.")
    bot = gr.Dropdown([(b.label, name) for name, b in bots.items()], value=next(iter(bots)), label="Bot",
                      elem_id="attention-bot")
    caption = gr.Markdown(elem_id="attention-caption")
    with gr.Row():
        plot = gr.Plot(label="attention: reply tokens x prompt tokens", format="png", scale=3)
        tokens = gr.HighlightedText(label="probability of each reply token", show_legend=True,
                                    combine_adjacent=False, scale=2)

    def on_attention(records, bot_name):
        view = attention_view(records, bot_name)
        return view.figure, view.tokens, view.caption

    gr.on([tab.select, bot.change], on_attention, [shared["records"], bot], [plot, tokens, caption],
          api_name="attention")
