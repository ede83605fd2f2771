"""The Arena tab: blind battles between two bots drawn by :class:`core.arena.Arena`; vote, then see who was who.

Two modes, one sub-tab each:
- **Chat battle**: "Bot A" / "Bot B" chat columns (names hidden), a message box with examples, the vote buttons
  (enabled once both replies are shown) and "New battle". By default a battle may run several turns before its one
  vote (each bot reads its own side's conversation). With **Judge every turn** (per-turn battles, ParlAI's per-turn
  pairwise evaluation) the visitor votes after each turn, and the chosen reply (a tie's: drawn) becomes the shared
  conversation both bots read next; **Reveal the bots** ends the series. Every per-turn choice is a stored vote.
- **Whole dialogues** (:mod:`demo_app.tabs.arena_dialogue`): two self-chats from one opening, judged whole.
The names and decoder settings are revealed only after the vote. The bots' names stay on the server: the page and
the API only ever see the battle's state through ``gr.State`` (kept server-side), never a name before the vote.

API (``gradio_client.Client(url)``; each client is one session):
    /new_battle  (per_turn=False)           -> a fresh battle (chats cleared); per_turn: one vote per turn
    /battle      (message, per_turn=False)  -> both bots answer; starts a battle first when there is none (or it was
                                               voted, or of the other mode); per-turn: goes on after the last vote
    /vote        (winner)                   -> model_a | model_b | tie | tie (bothbad); reveals the names (per-turn:
                                               the chosen reply goes on as both bots' conversation)
    /reveal      ()                         -> per-turn: ends the series and reveals the names
    /dialogue_opening, /dialogue_battle, /dialogue_vote: see :mod:`demo_app.tabs.arena_dialogue`

The callbacks (:func:`new_battle`, :func:`send`, :func:`vote`, :func:`reveal`) are plain functions of plain
values; :func:`build` wires them to components.
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
VERDICT = {"model_a": "Bot A is better", "model_b": "Bot B is better", "tie": "a tie", "tie (bothbad)": "both bad"}
REPLY_TIMEOUT_S = 120.0
MAX_SHOWN_CHARS = 1000
VOTES_OFF = ("**Votes are off on this server** (it was started without a vote store). The other tabs work as "
             "usual.")
INTRO = ("### Blind battle\nTwo bots, drawn at random, answer each of your messages as **Bot A** and **Bot B**; "
         "each reads its own side's conversation. Chat as long as you like, then vote: the names and decoder "
         "settings are shown after the vote. **Judge every turn**: vote after each reply instead; the reply you "
         "pick becomes the conversation both bots read next.")


@dataclass
class View:
    """Everything the tab shows after a callback."""

    chat_a: list[dict[str, str]] = field(default_factory=list)
    chat_b: list[dict[str, str]] = field(default_factory=list)
    status: str = ""
    reveal: str = ""
    can_vote: bool = False
    can_reveal: bool = False  # per-turn: a vote is in and the names are not shown yet
    message: str = ""  # the message box's new value
    state: dict[str, Any] | None = None  # battle_id, kind, turns, voted, pending, revealed, chat_a/b, conv_a/b


def _fresh(battle_id: str, kind: str) -> dict[str, Any]:
    # conv_a / conv_b: each side's conversation as plain turns (the messages and that side's replies), which its
    # bot reads with the next message; per-turn: the shared conversation (the chosen replies) on both sides
    return {"battle_id": battle_id, "kind": kind, "turns": 0, "voted": False, "pending": False, "revealed": False,
            "chat_a": [], "chat_b": [], "conv_a": [], "conv_b": []}


def _view(state: dict[str, Any] | None, status: str, *, reveal: str = "", message: str = "") -> View:
    if state is None:
        return View(status=status, reveal=reveal, message=message)
    per_turn = state.get("kind") == "per_turn"
    can_vote = state["pending"] if per_turn else state["turns"] > 0 and not state["voted"]
    return View(chat_a=list(state["chat_a"]), chat_b=list(state["chat_b"]), status=status, reveal=reveal,
                can_vote=can_vote, can_reveal=per_turn and state["voted"] and not state["revealed"],
                message=message, state=state)


def shown(text: str) -> str:
    """Text for a chat bubble: markup shown as text, the last MAX_SHOWN_CHARS characters."""
    text = text[-MAX_SHOWN_CHARS:] if len(text) > MAX_SHOWN_CHARS else text
    return html.escape(text).replace("\n", "<br>")


def _bubble(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": shown(text) or "<em>(empty reply)</em>"}


# ----------------------------------------------------------------------------- callbacks


def new_battle(ctx: Any, session_id: str | None, state: dict[str, Any] | None = None,
               per_turn: bool = False) -> View:
    """Start a battle for this session (the old one, voted or not, is left as it is)."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    kind = "per_turn" if per_turn else "single"
    try:
        battle = ctx.arena.new_battle(session_id or "", kind=kind)
    except ArenaError as e:
        return _view(state, f"⚠ {e}")
    how = "you vote after each turn" if per_turn else "vote whenever you like"
    return _view(_fresh(battle.id, kind), f"New battle: two hidden bots are ready ({how}). Say something to both.")


def _battle_for(ctx: Any, session: str, message: str, state: dict[str, Any] | None,
                per_turn: bool) -> tuple[Any, dict[str, Any] | None, View | None]:
    """(the battle that answers ``message``, its state, None) or (None, state, the refusal to show)."""
    kind = "per_turn" if per_turn else "single"
    if state is None or state.get("kind", "single") != kind or state.get("revealed") or \
            (kind == "single" and state.get("voted")):
        started = new_battle(ctx, session, per_turn=per_turn)
        if started.state is None:
            return None, state, _view(state, started.status, message=message)
        state = started.state
    try:
        if kind == "per_turn" and state["pending"]:
            return None, state, _view(state, "Pick the better reply first: each turn's vote chooses how the "
                                             "conversation goes on.", message=message)
        if kind == "per_turn" and state["voted"]:  # the next turn: a new battle of the series
            battle = ctx.arena.continue_series(state["battle_id"], session)
            state = {**state, "battle_id": battle.id, "voted": False}
        else:
            battle = ctx.arena.battle(state["battle_id"], session)
    except ArenaError as e:
        return None, state, _view(state, f"⚠ {e}", message=message)
    return battle, state, None


def send(ctx: Any, session_id: str | None, message: Any, state: dict[str, Any] | None,
         per_turn: bool = False) -> View:
    """Both bots of the battle answer ``message`` (in parallel, through the scheduler), each after its side's
    conversation (per-turn: the shared one); once both replies are there the turn is stored and votes open."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    if not isinstance(message, str) or not message.strip():
        return _view(state, "Type a message first (or pick an example).", message=message if
                     isinstance(message, str) else "")
    session = session_id or ""
    battle, state, refused = _battle_for(ctx, session, message, state, bool(per_turn))
    if refused is not None:
        return refused

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
    user = {"role": "user", "content": shown(message)}
    state = {**state, "turns": turn + 1, "pending": state["kind"] == "per_turn",
             "conv_a": [*state.get("conv_a", []), message, reply_a.text],
             "conv_b": [*state.get("conv_b", []), message, reply_b.text],
             "chat_a": [*state["chat_a"], user, _bubble(reply_a.text)],
             "chat_b": [*state["chat_b"], user, _bubble(reply_b.text)]}
    if state["kind"] == "per_turn":
        return _view(state, f"Both replies are in (turn {turn + 1}): pick the better one; it becomes the "
                            "conversation both bots read next.")
    return _view(state, f"Both replies are in (turn {turn + 1}): vote below, or keep chatting with both.")


def vote(ctx: Any, session_id: str | None, winner: str, state: dict[str, Any] | None) -> View:
    """Store the vote (committed before this returns) and reveal both bots (per-turn: the chosen reply becomes the
    shared conversation; the bots stay hidden until :func:`reveal`)."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    if state is None:
        return _view(None, "⚠ There is no battle to vote on yet: send a message first.")
    try:
        result = ctx.arena.vote(state["battle_id"], session_id or "", winner)
    except ArenaError as e:
        return _view(state, f"⚠ {e}")
    if result.kind == "per_turn":
        return _view(_continued(state, result.continued), _per_turn_status(result))
    state = {**state, "voted": True}
    lines = [f"**Your vote: {VERDICT[result.winner]}.** Thank you! It is saved.", "", *reveal_lines(result),
             "", "Press **New battle** (or send a message) for the next one."]
    return _view(state, "Vote saved.", reveal="\n".join(lines))


def _continued(state: dict[str, Any], side: str) -> dict[str, Any]:
    """The state after a per-turn vote: the chosen reply ends both sides' conversation and both chats."""
    chosen = state[f"conv_{side}"][-1]
    conv = [*state["conv_a"][:-1], chosen]
    chat = [*state["chat_a"][:-1], _bubble(chosen)]
    return {**state, "voted": True, "pending": False, "conv_a": conv, "conv_b": list(conv), "chat_a": chat,
            "chat_b": list(chat)}


def _per_turn_status(result: Any) -> str:
    picked = {"model_a": "Bot A's reply", "model_b": "Bot B's reply"}.get(
        result.winner, f"{'a tie' if result.winner == 'tie' else 'both bad'}: Bot {result.continued.upper()}'s "
                       "reply, drawn at random,")
    return (f"Vote saved (turn {result.turns}): {picked} goes on as both bots' conversation. Send the next "
            "message, or **Reveal the bots** to end this battle.")


def reveal(ctx: Any, session_id: str | None, state: dict[str, Any] | None) -> View:
    """End a per-turn battle: show who was who (once a vote is in)."""
    if ctx.arena is None:
        return View(status=VOTES_OFF)
    if state is None or not state.get("voted"):
        return _view(state, "⚠ The bots are revealed once a vote is in: vote first.")
    try:
        result = ctx.arena.reveal(state["battle_id"], session_id or "")
    except ArenaError as e:
        return _view(state, f"⚠ {e}")
    lines = [f"**This battle is over after {result.turns} turn(s).** Every turn's vote is saved.", "",
             *reveal_lines(result), "", "Press **New battle** (or send a message) for the next one."]
    return _view({**state, "revealed": True}, "Battle over.", reveal="\n".join(lines))


def reveal_lines(result: Any) -> list[str]:
    """One markdown line per side: its bot's label, name and decoder settings."""
    return [f"- **Bot {side}** was **{html.escape(label)}** (`{html.escape(name)}`): "
            f"{html.escape(settings_text(settings))}"
            for side, name, label, settings in (("A", result.model_a, result.label_a, result.settings_a),
                                                ("B", result.model_b, result.label_b, result.settings_b))]


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
    with gr.Tabs():
        with gr.Tab("Chat battle", id="arena-chat"):
            _build_chat(ctx)
        with gr.Tab("Whole dialogues", id="arena-dialogues"):
            from demo_app.tabs import arena_dialogue  # it builds on this module's helpers

            arena_dialogue.build(ctx)


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


def _build_chat(ctx: Any) -> None:
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
        per_turn = gr.Checkbox(False, label="Judge every turn (the reply you pick becomes both bots' conversation)",
                               elem_id="arena-per-turn")
        reveal_btn = gr.Button("Reveal the bots", interactive=False, elem_id="arena-reveal-btn")
        new_btn = gr.Button("New battle", elem_id="arena-new")
    status = gr.Markdown(elem_id="arena-status")
    revealed = gr.Markdown(elem_id="arena-reveal")
    winner_box = gr.Textbox(visible=False)  # the API's /vote parameter
    outputs = [*chats, status, revealed, *buttons, reveal_btn, message, state]

    def out(v: View) -> tuple:
        return (v.chat_a, v.chat_b, v.status, v.reveal, *[gr.update(interactive=v.can_vote)] * len(buttons),
                gr.update(interactive=v.can_reveal), v.message, v.state)

    def on_new(per_turn_value, state_value, request: gr.Request):
        return out(new_battle(ctx, _session(request), state_value, bool(per_turn_value)))

    def on_send(text, per_turn_value, state_value, request: gr.Request):
        return out(send(ctx, _session(request), text, state_value, bool(per_turn_value)))

    def on_vote(winner, state_value, request: gr.Request):
        return out(vote(ctx, _session(request), winner, state_value))

    def on_reveal(state_value, request: gr.Request):
        return out(reveal(ctx, _session(request), state_value))

    new_btn.click(on_new, [per_turn, state], outputs, api_name="new_battle")
    per_turn.input(on_new, [per_turn, state], outputs, api_visibility="private")  # a new mode: a new battle
    gr.on([send_btn.click, message.submit], on_send, [message, per_turn, state], outputs, api_name="battle")
    vote_api = gr.Button(visible=False)
    vote_api.click(on_vote, [winner_box, state], outputs, api_name="vote")
    reveal_btn.click(on_reveal, [state], outputs, api_name="reveal")

    def vote_for(code: str):
        def on_click(state_value, request: gr.Request):
            return out(vote(ctx, _session(request), code, state_value))
        return on_click

    for button, (_, code, suffix) in zip(buttons, BUTTONS):
        button.click(vote_for(code), [state], outputs, api_name=f"vote_{suffix}", api_visibility="private")
