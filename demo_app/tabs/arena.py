"""The Arena tab: a blind battle between two bots drawn by :class:`core.arena.Arena`; vote, then see who was who.

Layout: "Bot A" / "Bot B" chat columns (names hidden), a message box with examples, the vote buttons (enabled
once both replies are shown) and "New battle". A battle may run several turns before the vote; the names and
decoder settings are revealed only in the vote's answer. The bots' names stay on the server: the page and the
API only ever see the battle's state through ``gr.State`` (kept server-side), never a name before the vote.

API (``gradio_client.Client(url)``; each client is one session):
    /new_battle  ()             -> a fresh battle (chats cleared)
    /battle      (message)      -> both bots answer; starts a battle first when there is none (or it was voted)
    /vote        (winner)       -> model_a | model_b | tie | tie (bothbad); reveals the names and settings

The callbacks (:func:`new_battle`, :func:`send`, :func:`vote`) are plain functions of plain values; :func:`build`
wires them to components.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import gradio as gr

from core.arena import ArenaError
from core.decoding import DecodeConfig
from core.serving import Busy

TITLE = "Arena"
ID = "arena"
log = logging.getLogger(__name__)

EXAMPLES = ["hi, how are you today?", "what do you do for fun?", "do you have any pets?",
            "i just got back from a trip to paris", "what is your favourite movie?"]
BUTTONS = (("A is better", "model_a", "a"), ("B is better", "model_b", "b"), ("Tie", "tie", "tie"),
           ("Both bad", "tie (bothbad)", "bothbad"))  # label, vote, element id suffix
REPLY_TIMEOUT_S = 120.0
MAX_SHOWN_CHARS = 1000
VOTES_OFF = ("**Votes are off on this server** (it was started without a vote store). The other tabs work as "
             "usual.")
INTRO = ("### Blind battle\nTwo bots, drawn at random, answer each of your messages as **Bot A** and **Bot B**; "
         "each reads its own side's conversation. Chat as long as you like, then vote: the names and decoder "
         "settings are shown after the vote.")


@dataclass
class View:
    """Everything the tab shows after a callback."""

    chat_a: list[dict[str, str]] = field(default_factory=list)
    chat_b: list[dict[str, str]] = field(default_factory=list)
    status: str = ""
    reveal: str = ""
    can_vote: bool = False
    message: str = ""  # the message box's new value
    state: dict[str, Any] | None = None  # battle_id, turns, voted, chat_a/b, conv_a/b (server-side)


def _fresh(battle_id: str) -> dict[str, Any]:
    # conv_a / conv_b: each side's conversation as plain turns (the messages and that side's replies), which its
    # bot reads with the next message
    return {"battle_id": battle_id, "turns": 0, "voted": False, "chat_a": [], "chat_b": [], "conv_a": [],
            "conv_b": []}


def _view(state: dict[str, Any] | None, status: str, *, reveal: str = "", message: str = "") -> View:
    if state is None:
        return View(status=status, reveal=reveal, message=message)
    return View(chat_a=list(state["chat_a"]), chat_b=list(state["chat_b"]), status=status, reveal=reveal,
                can_vote=state["turns"] > 0 and not state["voted"], message=message, state=state)


def _shown(text: str) -> str:
    text = text[-MAX_SHOWN_CHARS:] if len(text) > MAX_SHOWN_CHARS else text
    return html.escape(text).replace("\n", "<br>")


# ----------------------------------------------------------------------------- callbacks


def new_battle(ctx: Any, session_id: str | None, state: dict[str, Any] | None = None) -> View:
    """Start a battle for this session (the old one, voted or not, is left as it is)."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    try:
        battle = ctx.arena.new_battle(session_id or "")
    except ArenaError as e:
        return _view(state, f"⚠ {e}")
    return _view(_fresh(battle.id), "New battle: two hidden bots are ready. Say something to both.")


def send(ctx: Any, session_id: str | None, message: Any, state: dict[str, Any] | None) -> View:
    """Both bots of the battle answer ``message`` (in parallel, through the scheduler), each after its own side's
    conversation; once both replies are there the turn is stored and votes open."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    if not isinstance(message, str) or not message.strip():
        return _view(state, "Type a message first (or pick an example).", message=message if
                     isinstance(message, str) else "")
    session = session_id or ""
    if state is None or state.get("voted"):
        started = new_battle(ctx, session)
        if started.state is None:
            return _view(state, started.status, message=message)
        state = started.state
    try:
        battle = ctx.arena.battle(state["battle_id"], session)
    except ArenaError as e:
        return _view(state, f"⚠ {e}", message=message)

    futures: list[Future] = []
    try:
        for name, side in ((battle.model_a, "conv_a"), (battle.model_b, "conv_b")):
            futures.append(ctx.scheduler.submit(name, message, {}, history=state.get(side) or None))
        reply_a, reply_b = (f.result(timeout=REPLY_TIMEOUT_S) for f in futures)
    except Busy:
        return _view(state, "⚠ The server is busy: send your message again in a moment.", message=message)
    except ValueError as e:  # the message itself (e.g. nothing left to answer once cleaned)
        hidden = str(e)
        for name in (battle.model_a, battle.model_b):
            hidden = hidden.replace(name, "a bot")
        return _view(state, f"⚠ This message cannot be answered: {html.escape(hidden)}", message=message)
    except Exception:  # noqa: BLE001 - a model failure must not reveal which bot it was
        log.exception("arena: a bot failed to answer")
        return _view(state, "⚠ A bot failed to answer: try again, or start a new battle.", message=message)

    stored = [r.to_json() for r in (reply_a, reply_b)]  # the one JSON form of a reply: a -inf score is null
    try:
        turn = ctx.arena.record_turn(battle.id, session, message,
                                     *({k: d[k] for k in ("text", "score", "latency_s")} for d in stored))
    except ArenaError as e:
        return _view(state, f"⚠ {e}", message=message)
    state = {**state, "turns": turn + 1,
             "conv_a": [*state.get("conv_a", []), message, reply_a.text],
             "conv_b": [*state.get("conv_b", []), message, reply_b.text],
             "chat_a": [*state["chat_a"], {"role": "user", "content": _shown(message)},
                        {"role": "assistant", "content": _shown(reply_a.text) or "<em>(empty reply)</em>"}],
             "chat_b": [*state["chat_b"], {"role": "user", "content": _shown(message)},
                        {"role": "assistant", "content": _shown(reply_b.text) or "<em>(empty reply)</em>"}]}
    return _view(state, f"Both replies are in (turn {turn + 1}): vote below, or keep chatting with both.")


def vote(ctx: Any, session_id: str | None, winner: str, state: dict[str, Any] | None) -> View:
    """Store the vote (committed before this returns) and reveal both bots."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    if state is None:
        return _view(None, "⚠ There is no battle to vote on yet: send a message first.")
    try:
        result = ctx.arena.vote(state["battle_id"], session_id or "", winner)
    except ArenaError as e:
        return _view(state, f"⚠ {e}")
    state = {**state, "voted": True}
    verdict = {"model_a": "Bot A is better", "model_b": "Bot B is better", "tie": "a tie",
               "tie (bothbad)": "both bad"}[result.winner]
    lines = [f"**Your vote: {verdict}.** Thank you! It is saved.", ""]
    for side, name, label, settings in (("A", result.model_a, result.label_a, result.settings_a),
                                        ("B", result.model_b, result.label_b, result.settings_b)):
        lines.append(f"- **Bot {side}** was **{html.escape(label)}** (`{html.escape(name)}`): "
                     f"{html.escape(settings_text(settings))}")
    lines += ["", "Press **New battle** (or send a message) for the next one."]
    return _view(state, "Vote saved.", reveal="\n".join(lines))


def settings_text(settings: Mapping[str, Any]) -> str:
    """The decoder settings that differ from DecodeConfig's defaults, plus the strategy."""
    if not settings:
        return "settings not recorded"
    defaults = asdict(DecodeConfig())
    shown = {k: v for k, v in settings.items() if k == "strategy" or defaults.get(k, object()) != v}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


# ----------------------------------------------------------------------------- layout


def build(ctx: Any, shared: dict, tab: gr.Tab) -> None:
    """The tab's components and events (called inside ``with gr.Tab(TITLE, id=ID)``)."""
    if ctx.arena is None:
        gr.Markdown(VOTES_OFF)
        return
    gr.Markdown(INTRO)
    state = gr.State(None)
    with gr.Row(equal_height=True):
        chats = [gr.Chatbot(label=f"Bot {side}", elem_id=f"arena-chat-{side.lower()}", height=380,
                            render_markdown=False, sanitize_html=True, feedback_options=None, buttons=["copy"],
                            placeholder=f"Bot {side} answers here") for side in ("A", "B")]
    with gr.Row(equal_height=True):
        message = gr.Textbox(placeholder="Say something to both bots, then press Enter or Send", show_label=False,
                             scale=6, max_lines=6, elem_id="arena-message")
        send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
    gr.Examples(EXAMPLES, inputs=[message], label="Examples")
    with gr.Row():
        buttons = [gr.Button(label, interactive=False, elem_id=f"arena-vote-{suffix}")
                   for label, _, suffix in BUTTONS]
    with gr.Row():
        new_btn = gr.Button("New battle", elem_id="arena-new")
    status = gr.Markdown(elem_id="arena-status")
    reveal = gr.Markdown(elem_id="arena-reveal")
    winner_box = gr.Textbox(visible=False)  # the API's /vote parameter
    outputs = [*chats, status, reveal, *buttons, message, state]

    def out(v: View) -> tuple:
        return (v.chat_a, v.chat_b, v.status, v.reveal, *[gr.update(interactive=v.can_vote)] * len(buttons),
                v.message, v.state)

    def session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or ""

    def on_new(state_value, request: gr.Request):
        return out(new_battle(ctx, session(request), state_value))

    def on_send(text, state_value, request: gr.Request):
        return out(send(ctx, session(request), text, state_value))

    def on_vote(winner, state_value, request: gr.Request):
        return out(vote(ctx, session(request), winner, state_value))

    new_btn.click(on_new, [state], outputs, api_name="new_battle")
    gr.on([send_btn.click, message.submit], on_send, [message, state], outputs, api_name="battle")
    vote_api = gr.Button(visible=False)
    vote_api.click(on_vote, [winner_box, state], outputs, api_name="vote")

    def vote_for(code: str):
        def on_click(state_value, request: gr.Request):
            return out(vote(ctx, session(request), code, state_value))
        return on_click

    for button, (_, code, suffix) in zip(buttons, BUTTONS):
        button.click(vote_for(code), [state], outputs, api_name=f"vote_{suffix}", api_visibility="private")
