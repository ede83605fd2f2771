"""The Self-chat tab: two bots (or one bot twice) talk from an opening, turn by turn, each turn with its score, until
a dull turn, an agent repeating its own previous turn, or the turn limit: the evaluation's simulated dialogues
(:func:`core.evaluation.evaluate.converse`), decoded through the app's scheduler (:mod:`demo_app.self_chat`). A batch
mode runs bot pairs over K held-out openings and plots the dialogue lengths and end reasons per pair.

API (``gradio_client.Client(url)``):
    /self_chat        (bot_a, bot_b, opening, max_turns) -> chat, status, dialogue JSON (turns and end reason)
    /self_chat_batch  (pairs, k, max_turns, seed)        -> status, plot, summary table, dialogues table

The callbacks (:func:`on_self_chat`, :func:`on_batch`) are generators of plain values; :func:`build` wires them.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from core.evaluation.evaluate import AGENTS, END_REASONS, MAX_TURNS, Dialogue, DialogueTurn
from core.serving import Busy
from demo_app import self_chat as sc
from demo_app.context import AppContext
from demo_app.render import META_START, escape_text

TITLE = "Self-chat"
ID = "self_chat"
MODELS = "models"  # the concurrency id of every event that decodes (see demo_app.tabs.side_by_side)
log = logging.getLogger(__name__)
INTRO = ("### Two bots talk\nAgent **A** answers the opening, agent **B** answers A, and so on, each reading the "
         "conversation so far. The dialogue ends at a dull (or empty) turn, when an agent's turn shares more than "
         "80% of its words with that agent's previous turn (the opening counts as B's), or at the turn limit: the "
         "rules and the code of the evaluation's simulated dialogues. The turn that ends it is shown struck "
         "through and is not counted.")
BATCH_INTRO = ("### Batch: K held-out openings\nEvery chosen pair talks from the same K openings of the test split "
               "(drawn with the seed); the K dialogues of a pair advance together, one batched search per turn.")

ChatOut = tuple[list[dict[str, str]], str, dict[str, Any]]


# ----------------------------------------------------------------------------- rendering


def _label(ctx: AppContext, name: str) -> str:
    bot = ctx.bots.get(name)
    return bot.label if bot is not None else name


def _score(turn: DialogueTurn) -> str:
    return "–" if turn.score is None else f"{turn.score:.2f}"


def turn_message(ctx: AppContext, turn: DialogueTurn, *, ended: str | None = None) -> dict[str, str]:
    """A turn as a chat bubble: agent A on the left, B (and the opening) on the right; its agent, bot and score in
    small print; a turn that ended the dialogue struck through, with the reason."""
    text = escape_text(turn.text) or "(empty turn)"
    meta = f"{AGENTS[turn.agent]} · {_label(ctx, turn.bot)} · score {_score(turn)}"
    if ended:
        text, meta = f"<s>{text}</s>", f"{meta} · ended the dialogue: {END_REASONS[ended]}, not counted"
    return {"role": "assistant" if turn.agent == 0 else "user",
            "content": f"{text}{META_START}{html.escape(meta)}</small>"}


def chat_messages(ctx: AppContext, dialogue: Dialogue) -> list[dict[str, str]]:
    """The dialogue as chat bubbles: the opening, every turn said, the turn that ended it."""
    opening = {"role": "user", "content": f"{escape_text(dialogue.opening)}{META_START}opening (B's turn)</small>"}
    out = [opening, *(turn_message(ctx, t) for t in dialogue.said)]
    if dialogue.ending is not None:
        out.append(turn_message(ctx, dialogue.ending, ended=dialogue.end))
    return out


def end_status(ctx: AppContext, dialogue: Dialogue) -> str:
    """Why the dialogue ended, in words: the rule, who triggered it and what they said."""
    n = len(dialogue.said)
    head = f"**Ended after {n} turn{'s' if n != 1 else ''}:** "
    if dialogue.end == "limit":
        return head + f"the turn limit ({n} turns) was reached."
    t = dialogue.ending
    who = f"agent {AGENTS[t.agent]} ({html.escape(_label(ctx, t.bot))})" if t else "an agent"
    said = f" “{escape_text(t.text.strip())}”" if t and t.text.strip() else ""
    if dialogue.end == "repetition":
        return head + f"{who} repeated its own previous turn (more than 80% of the words):{said}."
    return head + f"{who} said a dull turn{':' + said if said else ' (empty)'}."


def _json(dialogue: Dialogue, bot_a: str, bot_b: str) -> dict[str, Any]:
    return {"bot_a": bot_a, "bot_b": bot_b, **dialogue.to_json()}


# ----------------------------------------------------------------------------- callbacks


def on_self_chat(ctx: AppContext, bot_a: Any, bot_b: Any, opening: Any, max_turns: Any = MAX_TURNS
                 ) -> Iterator[ChatOut]:
    """Stream a self-chat: (chat bubbles, status, dialogue JSON) after the opening and after each turn. Bad input
    yields one message naming the field; a busy or slow server stops the dialogue with a message."""
    try:
        dialogue, steps = sc.self_chat(ctx, bot_a, bot_b, opening, max_turns)
    except ValueError as e:
        yield [], f"⚠ {html.escape(str(e))}", {"error": str(e), "param": getattr(e, "field", None)}
        return
    a, b = bot_a, bot_b if bot_b not in (None, "") else bot_a
    yield chat_messages(ctx, dialogue), f"{html.escape(_label(ctx, a))} (A) is answering…", _json(dialogue, a, b)
    try:
        for step in steps:
            if dialogue.end is None:
                nxt = b if step.turn.agent == 0 else a
                status = (f"Turn {len(dialogue.said)} done; {html.escape(_label(ctx, nxt))} "
                          f"({AGENTS[1 - step.turn.agent]}) is answering…")
            else:
                status = end_status(ctx, dialogue)
            yield chat_messages(ctx, dialogue), status, _json(dialogue, a, b)
    except (Busy, TimeoutError, ValueError) as e:
        why = _why(e)
        yield (chat_messages(ctx, dialogue), f"⚠ Stopped after {len(dialogue.said)} turns: {why}. Start again in a "
               "moment.", {**_json(dialogue, a, b), "error": why})


def _why(error: Exception) -> str:
    if isinstance(error, Busy):
        return "the server is busy"
    if isinstance(error, TimeoutError):
        return "a reply took too long"
    return html.escape(str(error))


def on_draw(ctx: AppContext) -> tuple[str, str]:
    """(a held-out opening, status) for the Draw button."""
    try:
        return sc.draw_opening(ctx), ""
    except ValueError as e:
        return "", f"⚠ {html.escape(str(e))}"


BatchOut = tuple[str, Any, pd.DataFrame, pd.DataFrame]


def on_batch(ctx: AppContext, pairs: Any, k: Any, max_turns: Any, seed: Any = 0) -> Iterator[BatchOut]:
    """Stream a batch run: (status, plot, summary table, dialogues table) after each pair."""
    empty = (None, pd.DataFrame(), pd.DataFrame())
    try:
        chosen = sc.parse_pairs(ctx, pairs)
        seed = int(seed) if isinstance(seed, (int, float)) and float(seed).is_integer() else 0
        runs = sc.run_batch(ctx, chosen, k=k, max_turns=max_turns, seed=seed)
        yield f"Running {len(chosen)} pair(s)…", *empty
        done = 0
        for run in runs:
            done += 1
            note = "Done" if done == len(chosen) else f"{done}/{len(chosen)} pairs done, running the next…"
            status = f"{note}: {len(run.openings)} held-out openings (seed {seed}), at most {run.max_turns} turns."
            yield status, sc.length_figure(run), sc.summary_table(run), sc.dialogue_table(run)
    except (ValueError, Busy, TimeoutError) as e:
        yield f"⚠ {_why(e)}", *empty


# ----------------------------------------------------------------------------- components


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    """The tab's components and events (called inside ``with gr.Tab(TITLE, id=ID)``)."""
    bots = [(b.label, name) for name, b in ctx.bots.items()]
    first = bots[0][1] if bots else None
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        bot_a = gr.Dropdown(bots, value=first, label="Agent A (answers the opening)", elem_id="selfchat-bot-a")
        bot_b = gr.Dropdown(bots, value=first, label="Agent B", elem_id="selfchat-bot-b")
        lo, hi = sc.TURN_RANGE
        max_turns = gr.Slider(lo, hi, value=MAX_TURNS, step=1, label="Max turns", elem_id="selfchat-max-turns")
    with gr.Row(equal_height=True):
        opening = gr.Textbox(placeholder="Type an opening, or draw one held out from training", show_label=False,
                             scale=6, max_lines=4, elem_id="selfchat-opening")
        draw = gr.Button("Draw a held-out opening", scale=1, elem_id="selfchat-draw")
        start = gr.Button("Start", variant="primary", scale=1, elem_id="selfchat-run")
    chat = gr.Chatbot(show_label=False, elem_id="selfchat-chat", height=None, min_height=300, max_height=1100,
                      render_markdown=False, sanitize_html=True, feedback_options=None, buttons=["copy"],
                      placeholder="Agent A on the left, agent B (and the opening) on the right")
    status = gr.Markdown(elem_id="selfchat-status")
    with gr.Accordion("Dialogue (JSON)", open=False):
        details = gr.JSON(show_label=False, elem_id="selfchat-json")

    gr.Markdown(BATCH_INTRO)
    with gr.Row(equal_height=True):
        choices = sc.pair_choices(ctx)
        pairs = gr.Dropdown(choices, value=[key for _, key in choices[: len(ctx.bots)]], multiselect=True,
                            label="Pairs (A ↔ B)", scale=4, elem_id="selfchat-pairs")
        k = gr.Slider(*sc.K_RANGE, value=sc.DEFAULT_K, step=1, label="Openings K", scale=2, elem_id="selfchat-k")
        seed = gr.Number(0, precision=0, label="Seed", scale=1, elem_id="selfchat-seed")
        run_batch = gr.Button("Run batch", scale=1, elem_id="selfchat-batch-run")
    batch_status = gr.Markdown(elem_id="selfchat-batch-status")
    plot = gr.Plot(show_label=False, elem_id="selfchat-plot")
    summary = gr.Dataframe(label="Per pair", interactive=False, elem_id="selfchat-summary")
    with gr.Accordion("Dialogues", open=False):
        dialogues = gr.Dataframe(show_label=False, interactive=False, wrap=True, elem_id="selfchat-dialogues")

    def self_chat(bot_a, bot_b, opening, max_turns):
        yield from on_self_chat(ctx, bot_a, bot_b, opening, max_turns)

    def batch(pairs, k, max_turns, seed):
        yield from on_batch(ctx, pairs, k, max_turns, seed)

    gr.on([start.click, opening.submit], self_chat, [bot_a, bot_b, opening, max_turns], [chat, status, details],
          api_name="self_chat", concurrency_id=MODELS, show_progress="hidden")
    draw.click(lambda: on_draw(ctx), None, [opening, status], api_name="self_chat_draw",
               api_visibility="undocumented")
    run_batch.click(batch, [pairs, k, max_turns, seed], [batch_status, plot, summary, dialogues],
                    api_name="self_chat_batch", concurrency_id=MODELS)
