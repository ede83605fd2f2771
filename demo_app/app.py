"""The Gradio app: every bot of the registry side by side, the arena, the search tree, attention, batch compare,
model cards. Each tab is one module of :mod:`demo_app.tabs`; this file only lists them.

    chatbot-arena serve                                     # shipped checkpoints, http://127.0.0.1:7860
    chatbot-arena serve --checkpoints runs/ckpt --device cuda --port 8000

Gradio API (``gradio_client.Client(url).view_api()`` lists the parameters):
    /chat       message + chat histories + controls -> cleared box, histories, n-best lists, details JSON, status
    /rerun      answer the last message again with the current controls
    /attention  bot name -> heatmap, per-token probabilities, caption (of this session's last turn)
    /batch      prompts (text and/or file) -> replies table, metrics table, bar plot, CSV files, status
    /battle /vote /new_battle /leaderboard   the Arena and Leaderboard tabs
    /search     the Search tab (the search tree of one reply)
    /search_branch, /search_branch_token   branch the session's traced search from a node, or from a token of
                the token view (:mod:`demo_app.tabs.search_branch`)
    /self_chat /self_chat_batch   two bots talk from an opening (or K held-out ones): turns, scores, end reason
The JSON and OpenAI-compatible APIs live beside the app on the same server (:mod:`demo_app.server`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import gradio as gr
import torch

from core.bots import Bot, default_checkpoint_dir
from core.serving import BatchScheduler
from demo_app.context import AppContext
from demo_app.tabs import arena, attention, batch, leaderboard, models, search, self_chat, side_by_side

# The tabs, in page order; adding a tab is one module in demo_app/tabs and one entry here.
TABS: tuple[ModuleType, ...] = (side_by_side, arena, leaderboard, self_chat, search, attention, batch,
                                 models)
MAX_EVENTS = 128  # events running at once (most of them wait on the scheduler); more wait in Gradio's queue
MAX_QUEUE = 512
# Gradio's queue looks for new events every millisecond while it has none (its ``sleep_when_free``): ~9% of a core
# at idle for this server, and GIL hand-offs under load. Every 5 ms halves the idle cost (~5%, measured with
# /proc/PID/stat over 20 s) for at most 5 ms more before an event starts.
QUEUE_POLL_S = 0.005
INTRO = """# Seq2Seq Chatbot Arena
One message, {n} GRU seq2seq chatbots: the same kind of model decoded {n} ways. Each reply shows its search
score (log-probability plus modifiers), latency and the decoder settings that produced it. Each column is its own
conversation: its bot reads the message with the turns before it (as many as its model was trained on; see the
Models tab); **New conversation** starts all columns afresh."""


def build_app(ctx: AppContext | Mapping[str, Bot], *, checkpoint_dir: str | Path | None = None,
              missing: Mapping[str, str] | None = None, mcp: bool = False) -> gr.Blocks:
    """The Blocks app over ``ctx`` (bots loaded once, shared read-only by every session). A plain mapping of bots
    gets a context of its own (a batching scheduler with the caller's torch threads, no arena)."""
    if not isinstance(ctx, AppContext):
        bots = dict(ctx)
        ctx = AppContext(bots=bots, scheduler=BatchScheduler(bots, threads=torch.get_num_threads()),
                         checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(),
                         missing=dict(missing or {}))
    shared: dict = {}
    with gr.Blocks(title="Seq2Seq Chatbot Arena") as demo:
        gr.Markdown(INTRO.format(n=len(ctx.bots)))
        if ctx.missing:
            gr.Markdown("**Not served:** " + "; ".join(ctx.missing.values())
                        + ". Train them with `make checkpoints`.")
        with gr.Tabs():
            for mod in TABS:
                with gr.Tab(mod.TITLE, id=mod.ID) as tab:
                    mod.build(ctx, shared, tab)
        if mcp:
            from demo_app.mcp import add_mcp_tools

            add_mcp_tools(ctx)
    demo.queue(default_concurrency_limit=MAX_EVENTS, max_size=MAX_QUEUE)
    demo._queue.sleep_when_free = QUEUE_POLL_S
    demo.max_threads = max(demo.max_threads, MAX_EVENTS + 8)  # each running event may hold a worker thread
    return demo
