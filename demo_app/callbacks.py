"""Callbacks of the side-by-side, attention and batch tabs: plain functions of plain values (dicts, lists, pandas
frames), no gradio import.

The tab modules of :mod:`demo_app.tabs` wire them to components; tests call them directly. A chat history is a
list of message dicts ``{"role": "user" | "assistant", "content": str}`` (Gradio 6 hands contents back as lists of
``{"type": "text", "text": ...}`` parts; both forms are accepted).

Texts shown in the chat are HTML-escaped here, so markup typed by a user (or produced by a byte-level model)
is displayed as text and never reaches the page as HTML.

    >>> ctx = demo_app.server.make_context()            # the bots and the batching scheduler
    >>> for turn in chat(ctx, "how are you?", [[] for _ in ctx.bots], default_settings(ctx.bots)):
    ...     print(turn.status)      # one update per finished bot, in the order they finish
"""

from __future__ import annotations

import csv
import html
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.bots import Bot
from core.corpora import normalize_text, read_prompts
from core.decoding import STRATEGIES, describe_settings, fields_for, ui_controls
from core.metrics import METRICS, reply_metrics
from core.serving import BatchScheduler, Busy
from demo_app.context import AppContext

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MAX_SHOWN_CHARS = 1000  # a longer message is shown by its tail (the part the bots read)
MAX_BATCH_PROMPTS = 100
PENDING = "…"
EMPTY_REPLY = "<em>(empty reply)</em>"
KEEP = type("Keep", (), {"__repr__": lambda self: "KEEP"})()  # an output to leave as it is (gr.skip() in the app)

# ----------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class Control:
    """One decoder control of the side-by-side tab. ``name`` is a DecodeConfig field, or ``sample``;
    ``group``: ``main`` (always shown), ``search`` or ``sampling`` (under "Advanced"); ``text``: a text box (a
    free-text setting such as the reply prefix; ``maximum`` is its most characters), else a slider or checkbox."""

    name: str
    label: str
    info: str
    minimum: float = 0
    maximum: float = 1
    step: float = 0.05
    integer: bool = False
    group: str = "main"
    checkbox: bool = False
    text: bool = False


CONTROLS: tuple[Control, ...] = tuple(  # generated from DecodeConfig: its defaults, ranges and help are the truth
    Control(c.name, c.label, c.help, c.lo, c.hi, c.step, integer=c.kind == "int", group=c.group or "main",
            checkbox=c.kind == "bool", text=c.kind == "text")
    # the shared controls, then the free-text settings (the reply prefix), which every strategy reads
    for c in [*ui_controls(), *(c for c in ui_controls(every_field=True) if c.kind == "text")])
CONTROL_NAMES = tuple(c.name for c in CONTROLS)
# A moved control that switches a bot's strategy: control -> (the bot's strategy, the strategy it switches to)
SWITCHES = {"sample": ("beam", "sample"), "num_groups": ("beam", "diverse_beam"),
            "diversity_penalty": ("beam", "diverse_beam"), "penalty_alpha": ("greedy", "contrastive")}
CONTRASTIVE_TOP_K = 4  # candidates per step when the contrastive slider turns a greedy bot contrastive


def _models_allow(bot: Bot, name: str) -> bool:
    """Anti-LM settings need the bot's language model, MMI its backward model."""
    if name in ("antilm", "gamma", "gamma_words", "antilm_min_p"):
        return bot.lm is not None
    if name == "mmi_lambda":
        return bot.backward is not None
    return True


def applies_to(bot: Bot, name: str) -> bool:
    """Whether control ``name`` changes ``bot``: a setting its strategy reads (or one that switches its strategy:
    sampling for beam bots, diverse beam for beam bots, contrastive for greedy bots); anti-LM needs an LM, MMI a
    backward model."""
    if not _models_allow(bot, name):
        return False
    strategy = bot.defaults.strategy
    if name in SWITCHES:
        return strategy in SWITCHES[name]
    reachable = {strategy} | {to for frm, to in SWITCHES.values() if frm == strategy}
    return any(name in fields_for(s) for s in reachable)


def strategy_for(bot: Bot, settings: Mapping[str, Any], picked: str | None = None) -> str:
    """The strategy ``bot`` decodes with: the one picked for its column (else its bots.json one), switched by
    the moved controls ``settings`` (the sample checkbox, diverse-beam groups, contrastive alpha)."""
    strategy = picked or bot.defaults.strategy
    if "sample" in settings and strategy in ("beam", "sample"):
        strategy = "sample" if settings["sample"] else "beam"
    if strategy == "beam" and settings.get("num_groups", 1) > 1:
        strategy = "diverse_beam"
    if strategy == "greedy" and settings.get("penalty_alpha", 0) > 0:
        strategy = "contrastive"
    return strategy


def picker_choices() -> list[tuple[str, str]]:
    """The choices of each column's decoder picker: the bot's own decoder, or any registered strategy."""
    return [("as in bots.json", BOT_DECODER), *[(name.replace("_", " "), name) for name in STRATEGIES]]


BOT_DECODER = ""  # the picker value meaning "the bot's own bots.json decoder"


def default_settings(bots: Mapping[str, Bot]) -> dict[str, Any]:
    """Each control starts at the bots.json value of the first bot it applies to (e.g. the beam size of the first
    beam bot, the anti-LM weight of the first bot with a language model)."""
    out: dict[str, Any] = {}
    for c in CONTROLS:
        if c.checkbox:
            out[c.name] = any(b.defaults.strategy == "sample" for b in bots.values())
            continue
        owner = next((b for b in bots.values() if applies_to(b, c.name)), None)
        value = getattr(owner.defaults if owner else next(iter(bots.values())).defaults, c.name)
        out[c.name] = value if c.text else min(max(value, c.minimum), c.maximum)
    return out


def resolve_settings(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Control values as sent by a browser or a Gradio API client -> (usable settings, notes on what was changed).

    Gradio has already refused values outside a slider's range and values that are not numbers, with its own
    message naming the bound ("Value 35 is greater than maximum value 20."), so what is left to do here: a
    fractional value of an integer control is rounded, and a checkbox value that is not true/false is replaced by
    the default; each adds a note. A text box left blank (or only spaces) means the setting is off ("").
    A missing control keeps its default.
    """
    settings, notes = {}, []
    for c in CONTROLS:
        v = values.get(c.name, defaults[c.name])
        if c.text:
            settings[c.name] = v if isinstance(v, str) and v.strip() else ""
            if v is not None and not isinstance(v, str):
                notes.append(f"{c.label}: {_show(v)} is not text; left empty")
            continue
        if c.checkbox:
            settings[c.name] = v if isinstance(v, bool) else defaults[c.name]
            if not isinstance(v, bool):
                notes.append(f"{c.label}: {_show(v)} is not true/false; used {defaults[c.name]}")
            continue
        x = float(v)
        if c.integer and x != int(math.floor(x + 0.5)):
            notes.append(f"{c.label}: {x:g} rounded to {int(math.floor(x + 0.5))}")
        settings[c.name] = int(math.floor(x + 0.5)) if c.integer else x
    return settings, notes


def changed_settings(settings: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """The controls whose value differs from the value they started with (:func:`default_settings`).

    Only these override a bot's bots.json settings: a control's starting value is the setting of the first bot
    it fits, so sending every value would give that bot's setting to the other bots as well."""
    return {name: value for name, value in settings.items() if name not in initial or value != initial[name]}


def overrides_for(bot: Bot, settings: Mapping[str, Any], picked: str | None = None) -> dict[str, Any]:
    """The DecodeConfig overrides the (changed) control values ``settings`` mean for ``bot``: its strategy (the
    one ``picked`` for its column, or its own, switched by a control), then every moved setting that strategy reads
    (controls that do not fit the bot are left out, e.g. temperature while a bot does not sample)."""
    picked = picked if picked in STRATEGIES else None
    strategy = strategy_for(bot, settings, picked)
    out: dict[str, Any] = {"strategy": strategy} if strategy != bot.defaults.strategy else {}
    for name, value in settings.items():
        fits = applies_to(bot, name) or (picked is not None and _models_allow(bot, name))
        if name != "sample" and fits and name in fields_for(strategy):
            out[name] = value
    if strategy == "contrastive" and out.get("top_k", bot.defaults.top_k) < 1:
        out["top_k"] = CONTRASTIVE_TOP_K
    return out


def _show(value: Any) -> str:
    """A user-supplied value, quoted and HTML-escaped for a status line."""
    return html.escape(repr(value)[:60])


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


# ----------------------------------------------------------------------------- formatting


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message in either content form (str, or Gradio 6's list of parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def escape_text(text: str) -> str:
    """HTML-escaped, newlines kept as <br>: shown as typed, never interpreted."""
    return html.escape(text).replace("\n", "<br>")


def unescape_text(shown: str) -> str:
    """The text :func:`escape_text` showed."""
    return html.unescape(shown.replace("<br>", "\n"))


META_START = '<br><small class="reply-meta">'
_HIDDEN_PREFIX = re.compile(r"^\[[\d,]+ earlier characters not shown\] …")


def conversation_of(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The plain turns of a chat column (its user messages and the bot's replies, oldest first), read back from
    the bubbles this module writes: a reply's small print, placeholders and error bubbles are left out (a failed
    reply is no turn of the conversation), an empty reply is an empty turn."""
    turns: list[str] = []
    for m in history:
        content = message_text(m)
        if m.get("role") == "user":
            turns.append(unescape_text(_HIDDEN_PREFIX.sub("", content)))
        elif content == PENDING or 'class="reply-error"' in content:
            continue
        else:
            shown = content.split(META_START, 1)[0]
            turns.append("" if shown == EMPTY_REPLY else unescape_text(shown))
    return turns


def user_message(prompt: str) -> dict[str, str]:
    shown = prompt
    if len(prompt) > MAX_SHOWN_CHARS:
        hidden = len(prompt) - MAX_SHOWN_CHARS
        shown = f"[{hidden:,} earlier characters not shown] …{prompt[-MAX_SHOWN_CHARS:]}"
    return {"role": "user", "content": escape_text(shown)}


def bot_message(record: Mapping[str, Any]) -> dict[str, str]:
    """The chat bubble of one reply: its text, then score, latency and settings in small print."""
    if "error" in record:
        return {"role": "assistant", "content": f'<span class="reply-error">⚠ {escape_text(record["error"])}</span>'}
    score = "-inf" if record["score"] is None else f"{record['score']:.2f}"
    meta = f"score {score} · {record['latency_s'] * 1000:.0f} ms · {describe_settings(record['settings'])}"
    text = escape_text(record["text"]) or EMPTY_REPLY
    return {"role": "assistant", "content": f'{text}{META_START}{html.escape(meta)}</small>'}


PART_COLUMNS = ["logp", "antilm", "bonus", "diversity", "repetition", "mmi"]  # core.decoding's score parts
NBEST_COLUMNS = ["rank", "reply", "score", *PART_COLUMNS]


def nbest_table(record: Mapping[str, Any] | None) -> dict[str, list]:
    """The n-best list as a table value (``{"headers", "data"}``, what ``gr.Dataframe`` takes and sends): each
    hypothesis, its score and the parts that add up to it (model log p, anti-LM penalty, length bonus, diversity
    and repetition penalties, MMI term). A plain table costs Gradio a quarter of a pandas DataFrame to send."""
    rows = [[i + 1, h["text"], h["score"], *((h.get("parts") or {}).get(p) for p in PART_COLUMNS)]
            for i, h in enumerate((record or {}).get("nbest", []))]
    return {"headers": list(NBEST_COLUMNS), "data": rows}


# ----------------------------------------------------------------------------- side-by-side events


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


# ----------------------------------------------------------------------------- attention view


@dataclass
class AttentionView:
    figure: Any  # matplotlib Figure, or None
    tokens: list[tuple[str, float]]  # (token, probability) for gr.HighlightedText
    caption: str


def attention_view(details: Mapping[str, Any] | None, bot_name: str) -> AttentionView:
    """Heatmap of the attention (reply tokens x prompt tokens) and per-token probabilities of one bot's reply."""
    bots = details.get("bots") if isinstance(details, Mapping) else None
    record = bots.get(bot_name) if isinstance(bots, Mapping) and isinstance(bot_name, str) else None
    if not record:
        return AttentionView(None, [], "Send a message in the **Side by side** tab first; its replies show here.")
    if "error" in record:
        return AttentionView(None, [], f"This bot gave no reply: {escape_text(str(record['error']))}")
    if not all(isinstance(record.get(k), list) for k in ("tokens", "logprobs", "attention", "source_tokens")):
        return AttentionView(None, [], "These reply details have no attention weights to draw.")
    tokens = [(t, round(math.exp(lp), 3) if lp is not None else 0.0)
              for t, lp in zip(record["tokens"], record["logprobs"])]
    known = [lp for lp in record["logprobs"] if lp is not None]
    mean_lp = sum(known) / len(known) if known else float("nan")
    caption = (f"**{html.escape(record['label'])}** answered *{escape_text(record['text']) or '(empty)'}*: "
               f"{len(tokens)} tokens, mean log p {mean_lp:.2f}, score {record['score']}. "
               "Colour = probability of each token given the prompt and the tokens before it.")
    try:
        figure = attention_figure(record["attention"], record["source_tokens"], record["tokens"])
    except (KeyError, TypeError, ValueError):
        return AttentionView(None, [], "These reply details have no attention weights to draw.")
    return AttentionView(figure, tokens, caption)


def _label(piece: str) -> str:
    """A token as an axis label: visible spaces and control bytes, no mathtext."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in piece.replace(" ", "·"))
    return shown.replace("$", r"\$") or "∅"


def attention_figure(attention: Sequence[Sequence[float]], source: Sequence[str], target: Sequence[str]
                     ) -> Figure:
    """A matplotlib Figure (no pyplot state, safe in threads) of attention rows (T) over source tokens (S)."""
    from matplotlib.figure import Figure

    T, S = len(attention), len(source)
    fig = Figure(figsize=(min(14, 2.5 + 0.45 * S), min(12, 1.8 + 0.32 * T)), dpi=100)
    ax = fig.add_subplot()
    if T == 0 or S == 0:
        ax.text(0.5, 0.5, "no attention to show", ha="center", va="center")
        ax.set_axis_off()
        return fig
    im = ax.imshow(attention, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(S), labels=[_label(p) for p in source], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(T), labels=[_label(p) for p in target[:T]], fontsize=8)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("reply tokens")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- batch compare

# core.metrics.reply_metrics keys -> column names: every metric of the registry, then the latency
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
        m = reply_metrics(texts, latencies=[seconds / len(prompts)] * len(prompts))  # core.metrics
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
