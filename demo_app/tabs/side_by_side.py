"""Side by side: one message, every bot of the registry in its own column (each column its own conversation, which
its bot reads), decoder controls that act live.

The callbacks (:func:`chat`, :func:`rerun`, :func:`live_rerun`, :func:`clear`) are plain functions of plain values
that yield :class:`Turn`s, tested without a browser; every request goes through the batching scheduler. The
controls and what a moved one does to each bot are :mod:`demo_app.controls`; the bubbles and tables
:mod:`demo_app.render`. :func:`build` wires the callbacks to components.

    >>> ctx = demo_app.server.make_context()            # the bots and the batching scheduler
    >>> for turn in chat(ctx, "how are you?", [[] for _ in ctx.bots], default_settings(ctx.bots)):
    ...     print(turn.status)      # one update per wave of finished bots, in the order they finish
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import pydantic

from core.bots import Bot
from core.corpora import normalize_text
from core.serving import BatchScheduler, Busy
from demo_app.context import AppContext
from demo_app.controls import (
    BOT_DECODER,
    CONTROL_NAMES,
    CONTROLS,
    Control,
    applies_to,
    changed_settings,
    default_settings,
    overrides_for,
    picker_choices,
    resolve_settings,
)
from demo_app.render import (
    MAX_SHOWN_CHARS,
    NBEST_COLUMNS,
    PENDING,
    bot_message,
    conversation_of,
    nbest_table,
    user_message,
)

log = logging.getLogger(__name__)

TITLE = "Side by side"
ID = "chat"
EXAMPLES = ["hi, how are you today?", "what do you do for fun?", "where are you from?", "do you have any pets?",
            "i just got back from a trip to paris", "what is your favourite movie?"]
MODELS = "models"  # concurrency id of every event that decodes; the scheduler decides how many decode at once
KEEP = type("Keep", (), {"__repr__": lambda self: "KEEP"})()  # an output to leave as it is (gr.skip() in the app)

# ----------------------------------------------------------------------------- answering


def reply_record(bot: Bot, future: Future) -> dict[str, Any]:
    """A JSON-safe record of one bot's finished request: its reply, or ``{"error": message}``; never raises."""
    record: dict[str, Any] = {"bot": bot.name, "label": bot.label}
    try:
        reply = future.result()
    except (ValueError, Busy) as e:  # bad prompt or settings, or a full queue: the message says what to do
        return {**record, "error": str(e)}
    except Exception as e:  # a failing bot must not take the others (or the page) down
        log.exception("bot %s failed", bot.name)
        return {**record, "error": f"{type(e).__name__}: {e}"}
    return {**record, **reply.to_json(digits=4)}  # the one JSON form of a reply: a -inf score is None


def _failed(error: Exception) -> Future:
    fut: Future = Future()
    fut.set_exception(error)
    return fut


def submit_all(scheduler: BatchScheduler, bots: Mapping[str, Bot], prompt: str,
               settings: Mapping[str, Any], decoders: Mapping[str, str] | None = None,
               conversations: Mapping[str, list[str]] | None = None) -> dict[Future, str]:
    """Queue ``prompt`` for every bot (each with the control values that fit it, after its own conversation in
    ``conversations``: bot name -> earlier turns, oldest first); future -> bot name. A request refused at once (bad
    settings, a full queue) is a future that already holds its error."""
    futures: dict[Future, str] = {}
    for name, bot in bots.items():
        try:
            fut = scheduler.submit(name, prompt, overrides_for(bot, settings, (decoders or {}).get(name)),
                                   history=(conversations or {}).get(name))
        except (ValueError, Busy) as e:
            fut = _failed(e)
        futures[fut] = name
    return futures


def answer_in_waves(scheduler: BatchScheduler, bots: Mapping[str, Bot], prompt: str, settings: Mapping[str, Any],
                    decoders: Mapping[str, str] | None = None,
                    conversations: Mapping[str, list[str]] | None = None) -> Iterator[dict[str, dict[str, Any]]]:
    """The records of every bot, in waves ({name: record}) as they finish: the replies that are ready together
    come together, so under load, when batches finish several bots at once, the page gets one update instead of
    one per bot. Every request goes through the batching scheduler. ``settings``: the control values to apply
    (see :func:`changed_settings`), a bot keeps the rest of its own; ``decoders``: bot name -> the strategy picked
    for its column. Closing the iterator early (the visitor left, or a newer slider move replaced this run)
    cancels the requests that have not been decoded yet."""
    futures = submit_all(scheduler, bots, prompt, settings, decoders, conversations)
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield {futures[f]: reply_record(bots[futures[f]], f) for f in done}
    finally:
        for fut in futures:
            fut.cancel()



# ----------------------------------------------------------------------------- turns


@dataclass
class Turn:
    """Everything the side-by-side tab shows after an event (one yield of :func:`chat` / :func:`rerun`).

    The first update shows the user message with a placeholder per bot, then one update per wave of finished bots
    (the bots a batch finished together come in one update), the last one with the full records for the
    attention tab. Gradio sends each streamed update as a diff of the previous one, so a reply crosses the wire
    about once; the full records (attention weights) stay in session state and are never sent."""

    message: str | Any  # the message box, or KEEP
    last_prompt: str | None | Any  # what re-run answers again, or KEEP
    histories: list[Any]  # one chat history per bot, or KEEP each
    nbest: list[dict[str, list]] | list[Any]  # n-best tables (nbest_table), or KEEP each
    details: dict[str, Any] | Any  # {"prompt": ..., "bots": {name: record without attention}}, or KEEP
    records: dict[str, Any] | Any  # the full records (attention included) for the attention tab, or KEEP
    status: str = ""

    def outputs(self) -> tuple[Any, ...]:
        """Flat, in the order of the app's outputs: message, last prompt, histories, n-best lists, details, status,
        records."""
        return (self.message, self.last_prompt, *self.histories, *self.nbest, self.details, self.status,
                self.records)


HEAVY_FIELDS = ("attention", "source_tokens", "token_ids")  # kept server-side (records), not sent as details


@dataclass
class _TurnBuilder:
    """Streams one turn: placeholders first, then each bot's reply as it arrives."""

    ctx: AppContext
    prompt: str
    histories: list[list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # n-best table per bot, built once a turn

    def run(self, settings: Mapping[str, Any], decoders: Mapping[str, str] | None = None) -> Iterator[Turn]:
        names = list(self.ctx.bots)
        n = len(names)
        # each column is its own conversation: its bot reads the turns before this message in that column
        conversations = {name: conversation_of(h)[:-1] for name, h in zip(names, self.histories)}
        for h in self.histories:
            h.append({"role": "assistant", "content": PENDING})
        records: dict[str, dict[str, Any]] = {}
        yield self._turn(records, "Thinking…")
        t0 = time.perf_counter()
        for wave in answer_in_waves(self.ctx.scheduler, self.ctx.bots, self.prompt, settings, decoders,
                                    conversations):
            records.update(wave)
            for name, record in wave.items():
                self.histories[names.index(name)][-1] = bot_message(record)
                self.tables[name] = nbest_table(record)
            if len(records) < n:
                yield self._turn(records, f"{len(records)} of {n} replies…")
        yield self._turn(records, f"All {n} replies in {time.perf_counter() - t0:.2f} s.", final=True)

    def _turn(self, records: dict[str, dict[str, Any]], status: str, *, final: bool = False) -> Turn:
        """The tab after the replies in ``records``: every output a value (a skipped output costs Gradio more
        than a value it can diff), the heavy records (attention) only once, at the end, into session state."""
        done = {name: records[name] for name in self.ctx.bots if name in records}
        details = {"prompt": self.prompt,
                   "bots": {k: {f: v for f, v in r.items() if f not in HEAVY_FIELDS} for k, r in done.items()}}
        return Turn("", self.prompt, [list(h) for h in self.histories],
                    [self.tables.get(name) or nbest_table(None) for name in self.ctx.bots], details,
                    {"prompt": self.prompt, "bots": done} if final else KEEP, self._status(status))

    def _status(self, line: str) -> str:
        return "\n\n".join([line, *self.notes])


def _histories(bots: Mapping[str, Bot], histories: Sequence[Any] | None) -> list[list[dict[str, Any]]]:
    """Copies of the chat histories, one per bot (None or missing -> empty; anything but a list of message
    dicts -> empty, so a malformed history sent to the API is replaced, never a crash)."""
    given = list(histories) if isinstance(histories, (list, tuple)) else []
    out = []
    for i in range(len(bots)):
        h = given[i] if i < len(given) else None
        ok = isinstance(h, list) and all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in h)
        out.append(list(h) if ok else [])
    return out


def _unchanged(bots: Mapping[str, Bot], histories: list[list[dict[str, Any]]], message: str, status: str) -> Turn:
    """Only a status line: the last turn (its prompt, n-best lists and details) stays as it was."""
    return Turn(message, KEEP, histories, [KEEP for _ in bots], KEEP, KEEP, status)


def _requested(bots: Mapping[str, Bot], values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the controls moved from where they started, notes on clamped values); the rest stay per bot."""
    initial = default_settings(bots)
    settings, notes = resolve_settings(values, initial)
    return changed_settings(settings, initial), notes


def chat(ctx: AppContext, message: Any, histories: Sequence[Any] | None, values: Mapping[str, Any],
         decoders: Mapping[str, str] | None = None) -> Iterator[Turn]:
    """Send ``message`` to every bot; yields the tab after the user message is shown and after each reply.
    ``decoders``: bot name -> strategy picked for its column (missing or "": the bot's own)."""
    bots = ctx.bots
    hist = _histories(bots, histories)
    message = message if isinstance(message, str) else ""
    if not normalize_text(message):
        yield _unchanged(bots, hist, message,
                         "Type a message first: an empty message (or only spaces and control characters) "
                         "has nothing to answer.")
        return
    settings, notes = _requested(bots, values)
    if len(message) > MAX_SHOWN_CHARS:
        reads = max(b.max_src_len for b in bots.values())
        notes.append(f"Long message ({len(message):,} characters): the bots read only its last {reads} tokens.")
    for h in hist:
        h.append(user_message(message))
    yield from _TurnBuilder(ctx, message, hist, notes).run(settings, decoders)


def rerun(ctx: AppContext, last_prompt: str | None, histories: Sequence[Any] | None,
          values: Mapping[str, Any], decoders: Mapping[str, str] | None = None) -> Iterator[Turn]:
    """Answer the last message again with the current settings, replacing each bot's last reply."""
    bots = ctx.bots
    hist = _histories(bots, histories)
    if not last_prompt or not isinstance(last_prompt, str):
        yield _unchanged(bots, hist, KEEP, "Nothing to re-run yet: send a message first.")
        return
    settings, notes = _requested(bots, values)
    for h in hist:
        while h and h[-1].get("role") == "assistant":
            h.pop()
        if not h:  # cleared since: show the prompt again
            h.append(user_message(last_prompt))
    yield from _TurnBuilder(ctx, last_prompt, hist, notes).run(settings, decoders)


class LiveRuns:
    """Which live re-run of each browser session is the newest: a slider released again supersedes the run the
    previous release started, which then stops (and its queued requests are cancelled)."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def begin(self, key: str) -> int:
        with self._lock:
            self._counter += 1
            self._latest[key] = self._counter
            if len(self._latest) > 10_000:  # forget the oldest sessions
                for old in list(self._latest)[:5_000]:
                    del self._latest[old]
            return self._counter

    def is_latest(self, key: str, token: int) -> bool:
        with self._lock:
            return self._latest.get(key) == token


LIVE_DEBOUNCE_S = 0.15  # a release waits this long for a newer one before it decodes


def live_rerun(ctx: AppContext, live: LiveRuns, key: str, last_prompt: str | None, histories: Sequence[Any] | None,
               values: Mapping[str, Any], decoders: Mapping[str, str] | None = None, *,
               debounce_s: float = LIVE_DEBOUNCE_S) -> Iterator[Turn]:
    """A slider was released: answer the last message again with the new values (as :func:`rerun`), unless a
    newer release of the same session (``key``) comes within ``debounce_s`` or while this one is streaming, in
    which case this run stops. Before the first message nothing happens."""
    token = live.begin(key)
    nothing = Turn(KEEP, KEEP, [KEEP for _ in ctx.bots], [KEEP for _ in ctx.bots], KEEP, KEEP, KEEP)
    if not last_prompt or not isinstance(last_prompt, str):
        yield nothing
        return
    time.sleep(debounce_s)
    if not live.is_latest(key, token):
        yield nothing
        return
    for turn in rerun(ctx, last_prompt, histories, values, decoders):
        if not live.is_latest(key, token):
            return  # closing rerun() cancels its queued requests
        yield turn


def clear(bots: Mapping[str, Bot]) -> Turn:
    return Turn("", None, [[] for _ in bots], [nbest_table(None) for _ in bots], {}, {}, "")



# ----------------------------------------------------------------------------- the tab


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    bots = ctx.bots
    n = len(bots)
    ui = _layout(ctx)
    shared["records"] = ui["records"]
    shared["examples"] = EXAMPLES
    outputs = [ui["message"], ui["last_prompt"], *ui["chatbots"], *ui["nbest"], ui["details"], ui["status"],
               ui["records"]]
    controls = ui["controls"]
    live = LiveRuns()

    c = len(CONTROL_NAMES)

    def unpack(rest: tuple) -> tuple[tuple, dict, dict]:
        """(histories, control values, picked decoder per bot) from the inputs after the first one."""
        return rest[:n], dict(zip(CONTROL_NAMES, rest[n : n + c])), dict(zip(bots, rest[n + c : n + c + n]))

    send = _Serializer(outputs)

    def on_chat(message, *rest):
        histories, values, decoders = unpack(rest)
        for turn in chat(ctx, message, histories, values, decoders):
            yield send(turn)

    def on_rerun(last_prompt, *rest):
        histories, values, decoders = unpack(rest)
        for turn in rerun(ctx, last_prompt, histories, values, decoders):
            yield send(turn)

    def on_release(last_prompt, *rest):  # rest: histories, controls, pickers, then the gr.Request Gradio passes in
        (histories, values, decoders), request = unpack(rest[:-1]), rest[-1]
        key = getattr(request, "session_hash", None) or "anonymous"
        for turn in live_rerun(ctx, live, key, last_prompt, histories, values, decoders):
            yield send(turn)

    histories = [f"{_param(name)}_history" for name in bots]
    pickers = [f"{_param(name)}_decoder" for name in bots]
    _name_params(on_chat, ["message", *histories, *CONTROL_NAMES, *pickers])
    _name_params(on_rerun, ["last_prompt", *histories, *CONTROL_NAMES, *pickers])
    _name_params(on_release, ["last_prompt", *histories, *CONTROL_NAMES, *pickers], request=True)
    events = dict(show_progress="hidden", concurrency_id=MODELS, postprocess=False)  # send() postprocesses
    state = [*ui["chatbots"], *controls, *ui["pickers"]]
    gr.on([ui["send"].click, ui["message"].submit], on_chat, [ui["message"], *state], outputs,
          api_name="chat", **events)
    ui["rerun"].click(on_rerun, [ui["last_prompt"], *state], outputs, api_name="rerun", **events)
    releases = [_moved(w) for w in [*controls, *ui["pickers"]]]
    gr.on(releases, on_release, [ui["last_prompt"], *state], outputs, api_name="live_rerun",
          api_visibility="undocumented", trigger_mode="multiple", **events)
    ui["clear"].click(lambda: send(clear(bots)), None, outputs, api_name="clear",
                      api_visibility="undocumented", queue=False, postprocess=False)


class _Serializer:
    """A Turn as the values Gradio sends, each output already postprocessed by its component (what Gradio would do
    after the callback), for events registered with ``postprocess=False``. Gradio postprocesses each output in a
    thread of its own pool: a dozen thread hand-offs per streamed update (five updates a turn), the largest share of
    the web server's CPU per turn at one visitor. Here it happens in the callback's thread, once per update; what
    reaches the page and the API is the same. Every model is sent as plain data: Gradio diffs an update against
    the last one only through lists, dicts and strings, so a model object (the details JSON) would be replaced
    whole in every update, each bot's record crossing the wire again with each later reply."""

    def __init__(self, components: list[gr.components.Component]) -> None:
        self.components = components

    def __call__(self, turn: Turn) -> tuple:
        out = []
        for comp, value in zip(self.components, turn.outputs(), strict=True):
            if value is KEEP:
                out.append(gr.skip())
            elif isinstance(comp, gr.State):
                out.append(value)  # session state: stored as is, never sent
            elif isinstance(comp, gr.Dataframe) and isinstance(value, dict):
                out.append(table_payload(value, comp.headers))
            else:
                value = comp.postprocess(value)  # a pydantic model for most components (JSON's is not a Gradio one)
                out.append(value.model_dump() if isinstance(value, pydantic.BaseModel) else value)
        return tuple(out)


def table_payload(value: dict[str, Any], default_headers: list[str]) -> dict[str, Any]:
    """What ``gr.Dataframe.postprocess(value).model_dump()`` gives for a ``{"headers", "data"}`` table, without its
    checks for the other value types: each of those looks for the polars package on disk under Python's import
    lock, twice per table, which serialised the server's threads (60% of its busy samples at 32 visitors)."""
    headers = list(value.get("headers") or default_headers)
    data = value.get("data", [[]])
    if len(data) == 0:
        return {"headers": headers, "data": [], "metadata": None}
    width = len(data[0])
    headers = headers[:width] + [str(i) for i in range(len(headers) + 1, width + 1)]
    return {"headers": headers, "data": [list(row) for row in data], "metadata": value.get("metadata")}


def _param(name: str) -> str:
    """A bot name as a Python identifier for the API's parameter names (``mine/beam`` -> ``mine_beam``)."""
    return "".join(c if c.isalnum() else "_" for c in name)


def _name_params(fn, names: list[str], *, request: bool = False) -> None:
    """Give a ``*args`` callback named parameters, so the API lists them: ``predict(message=..., beam_size=3)``;
    ``request``: a last ``gr.Request`` parameter, which Gradio fills with the caller's request."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in names]
    if request:
        params.append(inspect.Parameter("request", kind, annotation=gr.Request))
        fn.__annotations__ = {"request": gr.Request}  # Gradio reads the type hints, not the signature
    fn.__signature__ = inspect.Signature(params)


def _layout(ctx: AppContext) -> dict:
    bots = ctx.bots
    ui: dict = {"chatbots": [], "nbest": [], "controls": [], "pickers": []}
    with gr.Row(equal_height=True):
        ui["message"] = gr.Textbox(placeholder=f"Say something to all {len(bots)} bots, then press Enter or Send",
                                   show_label=False, scale=6, max_lines=6, elem_id="message")
        ui["send"] = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        ui["rerun"] = gr.Button("Re-run", scale=1, elem_id="rerun")
        ui["clear"] = gr.Button("New conversation", scale=1, elem_id="clear")
    gr.Examples(EXAMPLES, inputs=[ui["message"]], label="Examples")
    with gr.Row(equal_height=False):
        for bot in bots.values():
            with gr.Column(min_width=230, elem_id=f"col-{_param(bot.name)}"):
                gr.Markdown(f"### {bot.label}\n{bot.description}", elem_classes="bot-head")
                ui["pickers"].append(gr.Dropdown(picker_choices(), value=BOT_DECODER, label="Decoder",
                                                 elem_id=f"decoder-{_param(bot.name)}", container=False,
                                                 info="any strategy on this bot's model; sliders below set it"))
                ui["chatbots"].append(gr.Chatbot(
                    label=bot.label, show_label=False, elem_id=f"chat-{_param(bot.name)}", height=380,
                    render_markdown=False, sanitize_html=True, feedback_options=None, buttons=["copy"],
                    placeholder=f"{bot.label} answers here"))
                with gr.Accordion("n-best list", open=False):
                    ui["nbest"].append(gr.Dataframe(headers=NBEST_COLUMNS, interactive=False, wrap=True,
                                                    elem_id=f"nbest-{_param(bot.name)}", show_label=False))
    ui["status"] = gr.Markdown(elem_id="status")
    defaults = default_settings(bots)
    widgets = {}

    def controls_row(group: str) -> None:
        with gr.Row():
            for c in CONTROLS:
                if c.group == group:
                    widgets[c.name] = _control(c, ctx, defaults[c.name])

    controls_row("main")
    with gr.Accordion("Advanced", open=False):
        controls_row("search")
        controls_row("sampling")
    ui["controls"] = [widgets[name] for name in CONTROL_NAMES]  # the order the callbacks unpack
    gr.Markdown("Move a slider (or press Enter in a text box) and the last message is answered again with it (or "
                "press **Re-run**). A moved slider acts on the bots it fits (listed under it); while a slider is "
                "where it started, each bot keeps its own bots.json setting.")
    with gr.Accordion("Reply details (JSON)", open=False):
        ui["details"] = gr.JSON(label="last turn", elem_id="details")
    ui["last_prompt"] = gr.State(None)
    ui["records"] = gr.State({})
    return ui


def _moved(widget: gr.components.Component):
    """The event of a control that answers the last message again: a slider released, a text box's Enter, any
    other control's input."""
    if isinstance(widget, gr.Slider):
        return widget.release
    return widget.submit if isinstance(widget, gr.Textbox) else widget.input


def _control(c: Control, ctx: AppContext, value) -> gr.components.Component:
    fits = [b.label for b in ctx.bots.values() if applies_to(b, c.name)]
    info = f"{c.info}. Acts on: {', '.join(fits) if fits else 'no bot (none has the model it needs)'}"
    if c.text:
        return gr.Textbox(value=value, label=c.label, info=f"{info}. Press Enter to answer again with it",
                          elem_id=f"ctl-{c.name}", min_width=200, max_lines=1)
    if c.checkbox:
        return gr.Checkbox(value=value, label=c.label, info=info, elem_id=f"ctl-{c.name}")
    return gr.Slider(c.minimum, c.maximum, value=value, step=c.step, label=c.label, info=info,
                     elem_id=f"ctl-{c.name}", min_width=200, interactive=bool(fits))
