"""Batch compare: every bot answers every prompt of a list or file; replies, metrics, a bar plot, CSV downloads."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core.metrics import METRICS
from demo_app import callbacks as cb
from demo_app.context import AppContext

TITLE = "Batch compare"
ID = "batch"


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    labels = [b.label for b in ctx.bots.values()]
    definitions = "; ".join(f"{m.label} = {m.definition}" for m in METRICS.values())
    gr.Markdown(f"Every bot answers every prompt with its bots.json settings (decoded in batches; at most "
                f"{cb.MAX_BATCH_PROMPTS} prompts). Metrics: {definitions}; latency = batch time / prompts.")
    with gr.Row():
        text = gr.Textbox(lines=8, label="Prompts, one per line", elem_id="batch-text",
                          value="\n".join(shared.get("examples", [])))
        file = gr.File(label="...or upload a text file (one prompt per line)", file_types=[".txt", ".csv"],
                       type="filepath")
    run = gr.Button("Compare", variant="primary", elem_id="batch-run")
    status = gr.Markdown()
    replies = gr.Dataframe(label="Replies (prompt x bot)", interactive=False, wrap=True)
    with gr.Row():
        metrics = gr.Dataframe(label="Metrics per bot", interactive=False, scale=3)
        with gr.Column(scale=2):
            names = list(cb.METRIC_COLUMNS.values())
            metric = gr.Dropdown(names, value=METRICS["distinct_2"].label, label="Plot")
            plot = gr.BarPlot(x="bot", y="value", label="Metric per bot", height=280, sort=labels,
                              x_label_angle=-20, x_title="", y_lim=[0, None])
    files = gr.File(label="CSV downloads", file_count="multiple", interactive=False)

    def on_batch(text, file, metric_name):
        result = cb.batch_compare(ctx, text, file)
        return (result.replies, result.metrics, cb.metric_plot(result.metrics, metric_name), result.files or None,
                result.status)

    run.click(on_batch, [text, file, metric], [replies, metrics, plot, files, status], api_name="batch",
              concurrency_id="models")
    metric.change(cb.metric_plot, [metrics, metric], plot, api_visibility="undocumented", queue=False)
