"""Attention: where each reply token of the last side-by-side turn looked in the prompt, and how likely it was."""

from __future__ import annotations

from typing import Any

import gradio as gr

from demo_app import callbacks as cb
from demo_app.context import AppContext

TITLE = "Attention"
ID = "attention"


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
        view = cb.attention_view(records, bot_name)
        return view.figure, view.tokens, view.caption

    gr.on([tab.select, bot.change], on_attention, [shared["records"], bot], [plot, tokens, caption],
          api_name="attention")
