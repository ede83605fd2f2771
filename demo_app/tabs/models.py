"""Models: the evaluation table, and per checkpoint its summary, training curves, config and model card."""

from __future__ import annotations

from typing import Any

import gradio as gr

from demo_app.context import AppContext
from demo_app.model_info import checkpoint_infos, read_report
from demo_app.render import escape_text

TITLE = "Models"
ID = "models"


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    try:
        infos = checkpoint_infos(ctx.checkpoint_dir)
    except (OSError, ValueError) as e:
        gr.Markdown(f"Cannot read the checkpoint registry: {escape_text(str(e))}")
        return
    report = read_report(ctx.checkpoint_dir)
    gr.Markdown("### Evaluation\n" + ("Metrics per bot from `report.csv`." if report is not None else
                                      "No evaluation report (`report.csv`) in the checkpoint folder yet."))
    if report is not None:
        gr.Dataframe(report, interactive=False, show_label=False)
    with gr.Tabs():
        for info in infos:
            with gr.Tab(info.name):
                gr.Markdown(info.summary)
                if info.problems:
                    gr.Markdown("*" + "; ".join(escape_text(p) for p in info.problems) + "*")
                with gr.Row():
                    if info.loss_curve is not None:
                        gr.LinePlot(info.loss_curve, x="step", y="value", color="series", label="training loss",
                                    height=260)
                    if info.ppl_curve is not None:
                        gr.LinePlot(info.ppl_curve, x="step", y="valid_ppl", label="validation perplexity",
                                    height=260)
                with gr.Accordion("config.json", open=False):
                    gr.JSON(info.config)
                if info.card:
                    with gr.Accordion("Model card", open=False):
                        gr.Markdown(info.card)
