"""The Gradio app: four seq2seq bots side by side, attention view, batch compare, model cards.

    chatbot-arena serve                                     # shipped checkpoints, http://127.0.0.1:7860
    chatbot-arena serve --checkpoints runs/ckpt --device cuda --port 8000
    python -m demo_app.app --help                           # the same command

Layout only: the tabs are built in loops over the bot registry (checkpoints/bots.json) and the controls of
:data:`demo_app.callbacks.CONTROLS`; what happens on a click lives in :mod:`demo_app.callbacks`.

API (``gradio_client.Client(url).view_api()`` lists the parameters):
    /chat       message + chat histories + controls -> cleared box, histories, n-best lists, details JSON, status
    /rerun      answer the last message again with the current controls
    /attention  details JSON + bot name -> heatmap, per-token probabilities, caption
    /batch      prompts (text and/or file) -> replies table, metrics table, bar plot, CSV files, status
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import gradio as gr

from core.bots import Bot, default_checkpoint_dir, load_bots, missing_bots
from demo_app import callbacks as cb
from demo_app.model_info import checkpoint_infos, read_report

CONCURRENCY = 2  # model-running events at once, across all users: the Space has 2 vCPUs
MAX_QUEUE = 64
EXAMPLES = ["hi, how are you today?", "what do you do for fun?", "where are you from?", "do you have any pets?",
            "i just got back from a trip to paris", "what is your favourite movie?"]
CSS = """
.reply-meta { color: var(--body-text-color-subdued); font-size: 0.78em; }
.reply-error { color: var(--error-text-color); }
.bot-head { min-height: 8.5em; }
.bot-head p { margin: 0; font-size: 0.9em; color: var(--body-text-color-subdued); }
"""
INTRO = """# Seq2Seq Chatbot Arena
One message, four GRU seq2seq chatbots: the same kind of model decoded four ways. Each reply shows its search
score (log-probability plus modifiers), latency and the decoder settings that produced it. Each bot answers the
current message only (no dialogue memory); the columns keep the conversation for reading."""


def build_app(bots: Mapping[str, Bot], *, checkpoint_dir: str | Path | None = None,
              workers: int = cb.WORKERS, concurrency: int = CONCURRENCY,
              missing: Mapping[str, str] | None = None) -> gr.Blocks:
    """The Blocks app over ``bots`` (loaded once, shared read-only by every session); ``missing`` names bots of
    the registry that are not served (their checkpoints are not there) and why."""
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    models = dict(concurrency_id="models", concurrency_limit=concurrency)
    with gr.Blocks(title="Seq2Seq Chatbot Arena") as demo:
        gr.Markdown(INTRO)
        if missing:
            gr.Markdown("**Not served:** " + "; ".join(missing.values())
                        + ". Train them with `make checkpoints`.")
        with gr.Tabs():
            with gr.Tab("Side by side", id="chat"):
                chat_ui = _side_by_side(bots)
            with gr.Tab("Attention", id="attention") as attention_tab:
                attn_ui = _attention_tab(bots)
            with gr.Tab("Batch compare", id="batch"):
                batch_ui = _batch_tab([b.label for b in bots.values()])
            with gr.Tab("Models", id="models"):
                _models_tab(checkpoint_dir)

        # ---- side by side: send / re-run / clear stream one update per finished bot
        n = len(bots)
        outputs = [chat_ui["message"], chat_ui["last_prompt"], *chat_ui["chatbots"], *chat_ui["nbest"],
                   chat_ui["details"], chat_ui["status"]]
        controls = chat_ui["controls"]

        def on_chat(message, *rest):
            histories, values = rest[:n], dict(zip(cb.CONTROL_NAMES, rest[n:]))
            for turn in cb.chat(bots, message, histories, values, workers=workers):
                yield _outputs(turn)

        def on_rerun(last_prompt, *rest):
            histories, values = rest[:n], dict(zip(cb.CONTROL_NAMES, rest[n:]))
            for turn in cb.rerun(bots, last_prompt, histories, values, workers=workers):
                yield _outputs(turn)

        histories = [f"{name}_history" for name in bots]
        _name_params(on_chat, ["message", *histories, *cb.CONTROL_NAMES])
        _name_params(on_rerun, ["last_prompt", *histories, *cb.CONTROL_NAMES])
        gr.on([chat_ui["send"].click, chat_ui["message"].submit], on_chat,
              [chat_ui["message"], *chat_ui["chatbots"], *controls], outputs, api_name="chat",
              show_progress="hidden", **models)
        chat_ui["rerun"].click(on_rerun, [chat_ui["last_prompt"], *chat_ui["chatbots"], *controls], outputs,
                               api_name="rerun", show_progress="hidden", **models)
        chat_ui["clear"].click(lambda: cb.clear(bots).outputs(), None, outputs, api_name="clear",
                               api_visibility="undocumented", queue=False)

        # ---- attention: redrawn when the tab opens or another bot is picked
        def on_attention(details, bot_name):
            view = cb.attention_view(details, bot_name)
            return view.figure, view.tokens, view.caption

        gr.on([attention_tab.select, attn_ui["bot"].change], on_attention, [chat_ui["details"], attn_ui["bot"]],
              [attn_ui["plot"], attn_ui["tokens"], attn_ui["caption"]], api_name="attention")

        # ---- batch compare
        def on_batch(text, file, metric):
            result = cb.batch_compare(bots, text, file, workers=workers)
            return (result.replies, result.metrics, cb.metric_plot(result.metrics, metric), result.files or None,
                    result.status)

        batch_ui["run"].click(on_batch, [batch_ui["text"], batch_ui["file"], batch_ui["metric"]],
                              [batch_ui["replies"], batch_ui["metrics"], batch_ui["plot"], batch_ui["files"],
                               batch_ui["status"]], api_name="batch", **models)
        batch_ui["metric"].change(cb.metric_plot, [batch_ui["metrics"], batch_ui["metric"]], batch_ui["plot"],
                                  api_visibility="undocumented", queue=False)
    demo.queue(default_concurrency_limit=concurrency, max_size=MAX_QUEUE)
    return demo


def _outputs(turn: cb.Turn) -> tuple:
    return tuple(gr.skip() if v is cb.KEEP else v for v in turn.outputs())


def _name_params(fn, names: list[str]) -> None:
    """Give a ``*args`` callback named parameters, so the API lists them: ``predict(message=..., beam_size=3)``."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])


def _side_by_side(bots: Mapping[str, Bot]) -> dict:
    ui: dict = {"chatbots": [], "nbest": [], "controls": []}
    with gr.Row(equal_height=True):
        ui["message"] = gr.Textbox(placeholder="Say something to all four bots, then press Enter or Send",
                                   show_label=False, scale=6, max_lines=6, elem_id="message")
        ui["send"] = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        ui["rerun"] = gr.Button("Re-run", scale=1, elem_id="rerun")
        ui["clear"] = gr.Button("Clear", scale=1, elem_id="clear")
    gr.Examples(EXAMPLES, inputs=[ui["message"]], label="Examples")
    with gr.Row(equal_height=False):
        for bot in bots.values():
            with gr.Column(min_width=230, elem_id=f"col-{bot.name}"):
                gr.Markdown(f"### {bot.label}\n{bot.description}", elem_classes="bot-head")
                ui["chatbots"].append(gr.Chatbot(
                    label=bot.label, show_label=False, elem_id=f"chat-{bot.name}", height=380,
                    render_markdown=False, sanitize_html=True, feedback_options=None, buttons=["copy"],
                    placeholder=f"{bot.label} answers here"))
                with gr.Accordion("n-best list", open=False):
                    ui["nbest"].append(gr.Dataframe(headers=cb.NBEST_COLUMNS, interactive=False, wrap=True,
                                                    elem_id=f"nbest-{bot.name}", show_label=False))
    ui["status"] = gr.Markdown(elem_id="status")
    defaults = cb.default_settings(bots)
    widgets = {}

    def controls_row(group: str) -> None:
        with gr.Row():
            for c in cb.CONTROLS:
                if c.group == group:
                    widgets[c.name] = _control(c, bots, defaults[c.name])

    controls_row("main")
    with gr.Accordion("Advanced", open=False):
        controls_row("search")
        controls_row("sampling")
    ui["controls"] = [widgets[name] for name in cb.CONTROL_NAMES]  # the order the callbacks unpack
    gr.Markdown("Move a slider, then **Re-run** to answer the last message again. A moved slider acts on the "
                "bots it fits (listed under it); while a slider is where it started, each bot keeps its own "
                "bots.json setting.")
    with gr.Accordion("Reply details (JSON)", open=False):
        ui["details"] = gr.JSON(label="last turn", elem_id="details")
    ui["last_prompt"] = gr.State(None)
    return ui


def _control(c: cb.Control, bots: Mapping[str, Bot], value) -> gr.components.Component:
    fits = [b.label for b in bots.values() if cb.applies_to(b, c.name)]
    info = f"{c.info}. Acts on: {', '.join(fits) if fits else 'no bot (none has the model it needs)'}"
    if c.checkbox:
        return gr.Checkbox(value=value, label=c.label, info=info, elem_id=f"ctl-{c.name}")
    return gr.Slider(c.minimum, c.maximum, value=value, step=c.step, label=c.label, info=info,
                     elem_id=f"ctl-{c.name}", min_width=200, interactive=bool(fits))


def _attention_tab(bots: Mapping[str, Bot]) -> dict:
    ui = {}
    gr.Markdown("Where each reply token looked in the prompt (Luong attention weights), and how likely the "
                "model found each token. Shows the last turn of the **Side by side** tab.")
    ui["bot"] = gr.Dropdown([(b.label, name) for name, b in bots.items()], value=next(iter(bots)), label="Bot",
                            elem_id="attention-bot")
    ui["caption"] = gr.Markdown(elem_id="attention-caption")
    with gr.Row():
        ui["plot"] = gr.Plot(label="attention: reply tokens x prompt tokens", format="png", scale=3)
        ui["tokens"] = gr.HighlightedText(label="probability of each reply token", show_legend=True,
                                          combine_adjacent=False, scale=2)
    return ui


def _batch_tab(labels: list[str]) -> dict:
    ui = {}
    gr.Markdown(f"Every bot answers every prompt with its bots.json settings (one batched search per bot; at "
                f"most {cb.MAX_BATCH_PROMPTS} prompts). Metrics: distinct-1/2 = unique / all word n-grams pooled "
                "over the replies; length in words; dull rate = share of replies in a list of dull ones "
                "(\"i don't know\", ...); latency = batch time / prompts.")
    with gr.Row():
        ui["text"] = gr.Textbox(lines=8, label="Prompts, one per line", elem_id="batch-text",
                                value="\n".join(EXAMPLES))
        ui["file"] = gr.File(label="...or upload a text file (one prompt per line)", file_types=[".txt", ".csv"],
                             type="filepath")
    ui["run"] = gr.Button("Compare", variant="primary", elem_id="batch-run")
    ui["status"] = gr.Markdown()
    ui["replies"] = gr.Dataframe(label="Replies (prompt x bot)", interactive=False, wrap=True)
    with gr.Row():
        ui["metrics"] = gr.Dataframe(label="Metrics per bot", interactive=False, scale=3)
        with gr.Column(scale=2):
            metric_names = list(cb.METRIC_COLUMNS.values())
            ui["metric"] = gr.Dropdown(metric_names, value="distinct-2", label="Plot")
            ui["plot"] = gr.BarPlot(x="bot", y="value", label="Metric per bot", height=280, sort=labels,
                                    x_label_angle=-20, x_title="", y_lim=[0, None])
    ui["files"] = gr.File(label="CSV downloads", file_count="multiple", interactive=False)
    return ui


def _models_tab(checkpoint_dir: Path) -> None:
    try:
        infos = checkpoint_infos(checkpoint_dir)
    except (OSError, ValueError) as e:
        gr.Markdown(f"Cannot read the checkpoint registry: {cb.escape_text(str(e))}")
        return
    report = read_report(checkpoint_dir)
    gr.Markdown("### Evaluation\n" + ("Metrics per bot from `report.csv`." if report is not None else
                                      "No evaluation report (`report.csv`) in the checkpoint folder yet."))
    if report is not None:
        gr.Dataframe(report, interactive=False, show_label=False)
    with gr.Tabs():
        for info in infos:
            with gr.Tab(info.name):
                gr.Markdown(info.summary)
                if info.problems:
                    gr.Markdown("*" + "; ".join(cb.escape_text(p) for p in info.problems) + "*")
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


# ----------------------------------------------------------------------------- serving


def serve(checkpoints: str | Path | None = None, *, host: str | None = None, port: int | None = None,
          device: str = "auto", share: bool = False, workers: int = cb.WORKERS) -> None:
    """Load the bots once and serve the app until interrupted (host/port: Gradio's env defaults when None)."""
    import torch

    bots = load_bots(checkpoints, device=device, skip_missing=True)
    missing = missing_bots(checkpoints)
    for reason in missing.values():
        print(f"not serving {reason}", file=sys.stderr)
    first = next(iter(bots.values()))
    if next(first.model.parameters()).device.type == "cpu":  # ``workers`` bots decode at once: share the CPUs
        torch.set_num_threads(threads_per_worker(workers))
    demo = build_app(bots, checkpoint_dir=checkpoints, workers=workers, missing=missing)
    launch(demo, server_name=host, server_port=port, share=share)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a container's share, e.g. a Space's 2 vCPUs) where the
    OS has one; ``os.cpu_count()``, the host's cores, only as a fallback."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` bots decoding at once: the usable CPUs shared out, at least 1."""
    return max(1, usable_cpus() // max(1, workers))


def launch(demo: gr.Blocks, **kwargs):
    """``demo.launch(**kwargs)`` with the app's theme and CSS (Gradio 6 takes both in launch, not in Blocks)."""
    return demo.launch(theme=gr.themes.Soft(), css=CSS, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m demo_app.app [flags]`` is ``chatbot-arena serve [flags]``."""
    from core.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
