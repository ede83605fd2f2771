"""The Arena's whole-dialogue mode (ACUTE-Eval): two self-chats from the same opening, blind, judged whole.

Bot X talks with itself and bot Y with itself from one opening (typed, or drawn from the held-out openings: the
first turns of the test split's conversations), by the evaluation's rules (:mod:`core.arena.dialogues`), every
turn decoded through the app's batching scheduler (:class:`demo_app.self_chat.Scheduled`); the page
shows both as *Dialogue A* and *Dialogue B* and asks ACUTE's question, "Who would you prefer to talk to for a long
conversation?". The vote is stored with both dialogues; then the bots, their settings and why each dialogue ended
are revealed.

API (``gradio_client.Client(url)``; each client is one session):
    /dialogue_opening  ()          -> a held-out opening (put in the opening box; a battle from it counts as held-out)
    /dialogue_battle   (opening)   -> a new battle: both self-chats
    /dialogue_vote     (winner)    -> model_a | model_b | tie | tie (bothbad); reveals the bots

:func:`draw_opening`, :func:`start` and :func:`vote` are plain functions of plain values; :func:`build` wires them.
"""

from __future__ import annotations

import html
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from core.arena import ArenaError
from core.arena.dialogues import DIALOGUE_TURNS, QUESTION, Openings, play_dialogues
from core.evaluation.evaluate import END_REASONS
from core.serving import Busy
from demo_app.self_chat import Scheduled
from demo_app.tabs.arena import VOTES_OFF, reveal_lines, shown

log = logging.getLogger(__name__)

BUTTONS = (("A", "model_a", "a"), ("B", "model_b", "b"), ("Tie", "tie", "tie"),
           ("Both bad", "tie (bothbad)", "bothbad"))  # label, vote, element id suffix
VERDICT = {"model_a": "Dialogue A", "model_b": "Dialogue B", "tie": "a tie", "tie (bothbad)": "both bad"}
MAX_OPENING_CHARS = 500
INTRO = (f"### Whole dialogues\nTwo hidden bots each talk **with themselves** from the same opening, up to "
         f"{DIALOGUE_TURNS} turns, by the rules of the evaluation's simulated dialogues (a dialogue stops before a "
         "dull turn or a speaker repeating its own previous turn). Read both, then answer: "
         f"**{QUESTION}**")


@dataclass
class DialogueView:
    """Everything the whole-dialogue mode shows after a callback."""

    dialogue_a: list[dict[str, str]] = field(default_factory=list)
    dialogue_b: list[dict[str, str]] = field(default_factory=list)
    status: str = ""
    reveal: str = ""
    can_vote: bool = False
    opening: str = ""  # the opening box's new value
    state: dict[str, Any] | None = None  # battle_id, voted, opening, drawn (the last held-out opening), ends, chats


def _view(state: dict[str, Any] | None, status: str, *, reveal: str = "", opening: str = "") -> DialogueView:
    if state is None:
        return DialogueView(status=status, reveal=reveal, opening=opening)
    return DialogueView(dialogue_a=list(state.get("chat_a", [])), dialogue_b=list(state.get("chat_b", [])),
                        status=status, reveal=reveal, can_vote=bool(state.get("battle_id")) and not state["voted"],
                        opening=opening, state=state)


def _messages(turns: list[str]) -> list[dict[str, str]]:
    """A self-chat as chat bubbles: the opening on the right, then the two speakers (both the same bot) in turn."""
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": shown(t) or "<em>(empty)</em>"}
            for k, t in enumerate(turns)]


def draw_opening(openings: Openings, rng: random.Random, state: dict[str, Any] | None) -> DialogueView:
    """A held-out opening for the opening box (remembered, so a battle from it counts as held-out)."""
    try:
        opening = openings.draw(rng, max_chars=MAX_OPENING_CHARS)  # one the battle below accepts
    except Exception as e:  # noqa: BLE001 - a corpus that cannot be read must not break the page
        log.warning("arena: no held-out openings: %s", e)
        return _view(state, "⚠ No held-out openings on this server: type an opening.")
    state = {**(state or {"battle_id": None, "voted": False}), "drawn": opening}
    return _view(state, "A held-out opening (the first turn of a test conversation): press **Start the "
                        "dialogues**, or edit it.", opening=opening)


def start(ctx: Any, session_id: str | None, opening: Any, state: dict[str, Any] | None) -> DialogueView:
    """A new whole-dialogue battle from ``opening``: both self-chats, stored before they are shown."""
    if ctx.arena is None:
        return DialogueView(status=VOTES_OFF)
    if not isinstance(opening, str) or not opening.strip():
        return _view(state, "Type an opening (or draw a held-out one) first.")
    opening = opening.strip()
    if len(opening) > MAX_OPENING_CHARS:
        return _view(state, f"⚠ An opening has at most {MAX_OPENING_CHARS} characters; this one has "
                            f"{len(opening)}.", opening=opening)
    source = "held_out" if state and state.get("drawn") == opening else "typed"
    session = session_id or ""
    speakers = {name: Scheduled(ctx.scheduler, bot) for name, bot in ctx.bots.items()}  # batched with the rest
    try:
        battle = ctx.arena.new_battle(session, kind="dialogue")
        dialogue_a, dialogue_b = play_dialogues(ctx.arena, speakers, battle, session, opening, source)
    except ArenaError as e:
        return _view(state, f"⚠ {e}", opening=opening)
    except (Busy, TimeoutError):
        return _view(state, "⚠ The server is busy: start the dialogues again in a moment.", opening=opening)
    except ValueError as e:  # the opening itself
        return _view(state, f"⚠ This opening cannot be answered: {html.escape(str(e))}", opening=opening)
    except Exception:  # noqa: BLE001 - a model failure must not reveal which bot it was
        log.exception("arena: a self-chat failed")
        return _view(state, "⚠ A bot failed to answer: try again.", opening=opening)
    state = {"battle_id": battle.id, "voted": False, "drawn": (state or {}).get("drawn"), "opening": opening,
             "ends": [dialogue_a.end, dialogue_b.end], "lengths": [len(dialogue_a.turns) - 1,
                                                                   len(dialogue_b.turns) - 1],
             "chat_a": _messages(dialogue_a.turns), "chat_b": _messages(dialogue_b.turns)}
    return _view(state, f"Both dialogues are in. {QUESTION}", opening=opening)


def vote(ctx: Any, session_id: str | None, winner: str, state: dict[str, Any] | None) -> DialogueView:
    """Store the vote on the two dialogues (committed before this returns) and reveal both bots."""
    if ctx.arena is None:
        return DialogueView(status=VOTES_OFF)
    if not state or not state.get("battle_id"):
        return _view(state, "⚠ There are no dialogues to judge yet: start the dialogues first.")
    try:
        result = ctx.arena.vote(state["battle_id"], session_id or "", winner)
    except ArenaError as e:
        return _view(state, f"⚠ {e}", opening=state.get("opening", ""))
    state = {**state, "voted": True}
    lines = [f"**Your answer: {VERDICT[result.winner]}.** Thank you! It is saved.", "",
             *[line.replace("**Bot ", "**Dialogue ") for line in reveal_lines(result)], ""]
    for side, end, n in zip("AB", state["ends"], state["lengths"]):
        lines.append(f"- Dialogue {side} lasted {n} turn(s) after the opening and ended at "
                     f"{END_REASONS.get(end, end)}.")
    lines += ["", "Start new dialogues (type or draw an opening) for the next one."]
    return _view(state, "Vote saved.", reveal="\n".join(lines), opening=state.get("opening", ""))


# ----------------------------------------------------------------------------- layout


def build(ctx: Any) -> None:
    """The mode's components and events (inside the Arena tab's "Whole dialogues" sub-tab)."""
    openings = Openings(next(iter(ctx.bots.values())))
    rng = random.Random()
    gr.Markdown(INTRO)
    state = gr.State(None)
    with gr.Row(equal_height=True):
        opening = gr.Textbox(placeholder="An opening message for both dialogues", show_label=False, scale=6,
                             max_lines=3, elem_id="arena-opening")
        draw_btn = gr.Button("Draw a held-out opening", scale=2, elem_id="arena-draw")
        start_btn = gr.Button("Start the dialogues", variant="primary", scale=2, elem_id="arena-start")
    with gr.Row(equal_height=True):
        chats = [gr.Chatbot(label=f"Dialogue {side}", elem_id=f"arena-dialogue-{side.lower()}", height=600,
                            autoscroll=False, render_markdown=False, sanitize_html=True, feedback_options=None,
                            buttons=["copy"],
                            placeholder=f"Dialogue {side}: a hidden bot talking with itself")
                 for side in ("A", "B")]
    gr.Markdown(f"**{QUESTION}**")
    with gr.Row():
        buttons = [gr.Button(label, interactive=False, elem_id=f"arena-dvote-{suffix}")
                   for label, _, suffix in BUTTONS]
    status = gr.Markdown(elem_id="arena-dialogue-status")
    revealed = gr.Markdown(elem_id="arena-dialogue-reveal")
    winner_box = gr.Textbox(visible=False)  # the API's /dialogue_vote parameter
    outputs = [*chats, status, revealed, *buttons, opening, state]

    def out(v: DialogueView) -> tuple:
        return (v.dialogue_a, v.dialogue_b, v.status, v.reveal, *[gr.update(interactive=v.can_vote)] * len(buttons),
                v.opening, v.state)

    def session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or ""

    def on_draw(state_value):
        return out(draw_opening(openings, rng, state_value))

    def on_start(text, state_value, request: gr.Request):
        return out(start(ctx, session(request), text, state_value))

    def on_vote(winner, state_value, request: gr.Request):
        return out(vote(ctx, session(request), winner, state_value))

    draw_btn.click(on_draw, [state], outputs, api_name="dialogue_opening")
    gr.on([start_btn.click, opening.submit], on_start, [opening, state], outputs, api_name="dialogue_battle")
    vote_api = gr.Button(visible=False)
    vote_api.click(on_vote, [winner_box, state], outputs, api_name="dialogue_vote")

    def vote_for(code: str):
        def on_click(state_value, request: gr.Request):
            return out(vote(ctx, session(request), code, state_value))
        return on_click

    for button, (_, code, suffix) in zip(buttons, BUTTONS):
        button.click(vote_for(code), [state], outputs, api_name=f"dialogue_vote_{suffix}",
                     api_visibility="private")
