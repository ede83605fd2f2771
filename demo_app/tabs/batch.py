"""Batch compare: every bot answers every prompt of a list or file; replies, metrics, a bar plot, CSV downloads.

:func:`batch_compare` and :func:`metric_plot` are plain functions (tested without a browser); every request goes
through the batching scheduler. :func:`build` wires them to the tab's components.
"""

from __future__ import annotations

import csv
import html
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.corpora import read_prompts
from core.evaluation.metrics import METRICS, reply_metrics
from core.serving import Busy
from demo_app.context import AppContext
from demo_app.render import escape_text

log = logging.getLogger(__name__)

TITLE = "Batch compare"
ID = "batch"
MAX_BATCH_PROMPTS = 100
# core.evaluation.metrics.reply_metrics keys -> column names: every metric of the registry, then the latency
METRIC_COLUMNS = {**{name: m.label for name, m in METRICS.items()}, "mean_latency_s": "latency per reply (s)"}


@dataclass
class BatchResult:
    replies: pd.DataFrame  # prompt x bot
    metrics: pd.DataFrame  # one row per bot
    files: list[str]  # CSV downloads: replies, metrics
    status: str


def _prompt_bytes(text: str | None, file_path: str | Path | None) -> bytes:
    """The pasted text, then the uploaded file, as one UTF-8 text for :func:`core.corpora.read_prompts`."""
    data = (text or "").encode("utf-8", errors="replace")  # lone surrogates -> "?"
    if file_path:
        data += b"\n" + Path(file_path).read_bytes()
    return data


def batch_compare(ctx: AppContext, text: str | None, file_path: str | Path | None = None, *,
                  max_prompts: int = MAX_BATCH_PROMPTS, out_dir: str | Path | None = None) -> BatchResult:
    """Every bot answers every prompt with its bots.json settings. Each bot's prompts go through the batching
    scheduler together (so they are decoded in batches, and visitors' chat requests still get their turn); the
    bots follow one another."""
    bots = ctx.bots
    labels = [b.label for b in bots.values()]
    empty = pd.DataFrame(columns=["prompt", *labels])
    try:
        prompts = read_prompts(_prompt_bytes(text, file_path), limit=max_prompts)
    except ValueError as e:  # over the limit: "N prompts; at most M at a time"
        return BatchResult(empty, pd.DataFrame(), [],
                           f"Too many prompts: {html.escape(str(e))}. Compare them in parts of at most "
                           f"{max_prompts}.")
    except OSError as e:
        return BatchResult(empty, pd.DataFrame(), [], f"Cannot read the uploaded file: {escape_text(str(e))}")
    if not prompts:
        return BatchResult(empty, pd.DataFrame(), [], "Paste prompts (one per line) or upload a text file first.")
    notes = []
    columns: dict[str, list[str]] = {"prompt": prompts}
    rows = []
    for name, bot in bots.items():
        t0 = time.perf_counter()
        futures = []
        try:
            futures = [ctx.scheduler.submit(name, p, {}) for p in prompts]
            texts = [f.result().text for f in futures]
        except Exception as e:  # reported in the status; the other bots still count
            for f in futures:
                f.cancel()
            if not isinstance(e, (ValueError, Busy)):
                log.exception("batch compare: bot %s failed", name)
            notes.append(f"{html.escape(bot.label)} failed: {escape_text(str(e))}")
            continue
        seconds = time.perf_counter() - t0
        columns[bot.label] = texts
        m = reply_metrics(texts, latencies=[seconds / len(prompts)] * len(prompts))  # core.evaluation.metrics
        rows.append({"bot": bot.label, **{METRIC_COLUMNS[k]: round(v, 4) for k, v in m.items()}})
    replies = pd.DataFrame(columns)
    metrics = pd.DataFrame(rows)
    files = _write_csvs(replies, metrics, out_dir)
    status = f"{len(prompts)} prompts x {len(rows)} bots. Lengths in words; latency = batch time / prompts."
    return BatchResult(replies, metrics, files, "\n\n".join([status, *notes]))


def _write_csvs(replies: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path | None) -> list[str]:
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="arena-batch-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "replies.csv", folder / "metrics.csv"]
    replies.to_csv(paths[0], index=False, quoting=csv.QUOTE_NONNUMERIC)
    metrics.to_csv(paths[1], index=False)
    return [str(p) for p in paths]


def metric_plot(metrics: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """(bot, value) rows of one metric column, for the bar plot."""
    if metrics is None or metrics.empty or metric not in metrics or "bot" not in metrics:
        return pd.DataFrame({"bot": [], "value": []})
    return pd.DataFrame({"bot": metrics["bot"], "value": pd.to_numeric(metrics[metric], errors="coerce")})


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    labels = [b.label for b in ctx.bots.values()]
    definitions = "; ".join(f"{m.label} = {m.definition}" for m in METRICS.values())
    gr.Markdown(f"Every bot answers every prompt with its bots.json settings (decoded in batches; at most "
                f"{MAX_BATCH_PROMPTS} prompts). Metrics: {definitions}; latency = batch time / prompts.")
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
            names = list(METRIC_COLUMNS.values())
            metric = gr.Dropdown(names, value=METRICS["distinct_2"].label, label="Plot")
            plot = gr.BarPlot(x="bot", y="value", label="Metric per bot", height=280, sort=labels,
                              x_label_angle=-20, x_title="", y_lim=[0, None])
    files = gr.File(label="CSV downloads", file_count="multiple", interactive=False)

    def on_batch(text, file, metric_name):
        result = batch_compare(ctx, text, file)
        return (result.replies, result.metrics, metric_plot(result.metrics, metric_name), result.files or None,
                result.status)

    run.click(on_batch, [text, file, metric], [replies, metrics, plot, files, status], api_name="batch",
              concurrency_id="models")
    metric.change(metric_plot, [metrics, metric], plot, api_visibility="undocumented", queue=False)
