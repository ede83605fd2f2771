"""Callbacks of the arena: plain functions of plain values (dicts, lists, pandas frames), no gradio import.

:mod:`demo_app.app` wires them to components; tests call them directly. A chat history is a list of message
dicts ``{"role": "user" | "assistant", "content": str}`` (Gradio 6 hands contents back as lists of
``{"type": "text", "text": ...}`` parts; both forms are accepted).

Texts shown in the chat are HTML-escaped here, so markup typed by a user (or produced by a byte-level model)
is displayed as text and never reaches the page as HTML.

    >>> bots = load_bots()
    >>> for turn in chat(bots, "how are you?", [[] for _ in bots], default_settings(bots)):
    ...     print(turn.status)      # one update per finished bot, in the order they finish
"""

from __future__ import annotations

import csv
import html
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from core.bots import Bot
from core.corpora import normalize_text, read_prompts
from core.metrics import reply_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

WORKERS = 2  # bots answering at once within one request (the Space has 2 vCPUs)
MAX_SHOWN_CHARS = 1000  # a longer message is shown by its tail (the part the bots read)
MAX_BATCH_PROMPTS = 100
PENDING = "…"
KEEP = type("Keep", (), {"__repr__": lambda self: "KEEP"})()  # an output to leave as it is (gr.skip() in the app)

# ----------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class Control:
    """One decoder control of the side-by-side tab. ``name`` is a DecodeConfig field, or ``sample``;
    ``group``: ``main`` (always shown), ``search`` or ``sampling`` (under "Advanced")."""

    name: str
    label: str
    info: str
    minimum: float = 0
    maximum: float = 1
    step: float = 0.05
    integer: bool = False
    group: str = "main"
    checkbox: bool = False


CONTROLS: tuple[Control, ...] = (
    Control("beam_size", "Beam size K", "partial replies kept per step", 1, 20, 1, integer=True),
    Control("antilm", "Anti-LM weight", "subtract weight x log p_LM(token) from the first gamma tokens"),
    Control("n_bonus", "Length bonus", "score added per generated token"),
    Control("gamma", "Anti-LM span gamma", "how many first tokens the anti-LM penalises", 0, 20, 1,
            integer=True, group="search"),
    Control("max_len", "Max reply length", "tokens", 1, 100, 1, integer=True, group="search"),
    Control("mmi_lambda", "MMI-bidi weight", "rerank the n-best by (1 - w) log p(T|S) + w log p(S|T)",
            group="search"),
    Control("no_repeat_ngram", "No-repeat n-gram", "never repeat an n-gram of this size (0: off)", 0, 4, 1,
            integer=True, group="search"),
    Control("sample", "Sample instead of beam search", "K samples, best score wins", group="sampling",
            checkbox=True),
    Control("temperature", "Temperature", "sampling only", 0.05, 2.0, 0.05, group="sampling"),
    Control("top_k", "Top-k", "sampling only; 0: off", 0, 100, 1, integer=True, group="sampling"),
    Control("top_p", "Top-p", "sampling only; 1: off", 0.05, 1.0, 0.05, group="sampling"),
)
CONTROL_NAMES = tuple(c.name for c in CONTROLS)
_SAMPLING = ("temperature", "top_k", "top_p")
_BEAM_ONLY = ("beam_size", "sample", *_SAMPLING)


def applies_to(bot: Bot, name: str) -> bool:
    """Whether control ``name`` changes ``bot``: greedy has no beam, anti-LM needs an LM, MMI a backward model."""
    if name in _BEAM_ONLY:
        return bot.defaults.strategy != "greedy"
    if name in ("antilm", "gamma"):
        return bot.lm is not None
    if name == "mmi_lambda":
        return bot.backward is not None
    return True


def default_settings(bots: Mapping[str, Bot]) -> dict[str, Any]:
    """Each control starts at the bots.json value of the first bot it applies to (beam K=10, anti-LM 0.5)."""
    out: dict[str, Any] = {}
    for c in CONTROLS:
        if c.checkbox:
            out[c.name] = any(b.defaults.strategy == "sample" for b in bots.values())
            continue
        owner = next((b for b in bots.values() if applies_to(b, c.name)), None)
        value = getattr(owner.defaults if owner else next(iter(bots.values())).defaults, c.name)
        out[c.name] = min(max(value, c.minimum), c.maximum)
    return out


def resolve_settings(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Control values as sent by a browser or an API client -> (usable settings, notes on what was changed).

    A value outside its slider's range is clamped, a fractional value of an integer control rounded, and a
    missing or non-numeric value replaced by the default; each of these adds a note.
    """
    settings, notes = {}, []
    for c in CONTROLS:
        v = values.get(c.name, defaults[c.name])
        if c.checkbox:
            settings[c.name] = v if isinstance(v, bool) else defaults[c.name]
            if not isinstance(v, bool):
                notes.append(f"{c.label}: {_show(v)} is not true/false; used {defaults[c.name]}")
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x):
            settings[c.name] = defaults[c.name]
            notes.append(f"{c.label}: {_show(v)} is not a number; used {defaults[c.name]:g}")
            continue
        clamped = min(max(x, c.minimum), c.maximum)
        if clamped != x:
            notes.append(f"{c.label}: {x:g} is outside {c.minimum:g}..{c.maximum:g}; used {clamped:g}")
        if c.integer:
            clamped = int(math.floor(clamped + 0.5))
            if clamped != x and c.minimum <= x <= c.maximum:
                notes.append(f"{c.label}: {x:g} rounded to {clamped}")
        settings[c.name] = clamped
    return settings, notes


def changed_settings(settings: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """The controls whose value differs from the value they started with (:func:`default_settings`).

    Only these override a bot's bots.json settings: a control's starting value is the setting of the first bot
    it fits, so sending every value would give that bot's setting to the other bots as well."""
    return {name: value for name, value in settings.items() if name not in initial or value != initial[name]}


def overrides_for(bot: Bot, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DecodeConfig overrides the (changed) control values ``settings`` mean for ``bot``; controls that do
    not apply to it are left out, and so are the sampling controls when the bot does not sample."""
    out: dict[str, Any] = {}
    sampling = bot.defaults.strategy == "sample"
    if "sample" in settings and applies_to(bot, "sample"):
        sampling = bool(settings["sample"])
        if sampling != (bot.defaults.strategy == "sample"):
            out["strategy"] = "sample" if sampling else "beam"
    for name, value in settings.items():
        if name == "sample" or not applies_to(bot, name) or (name in _SAMPLING and not sampling):
            continue
        out[name] = value
    return out


def _show(value: Any) -> str:
    """A user-supplied value, quoted and HTML-escaped for a status line."""
    return html.escape(repr(value)[:60])


# ----------------------------------------------------------------------------- answering


def reply_record(bot: Bot, prompt: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Ask one bot; return a JSON-safe record of its reply (or ``{"error": message}``), never raise."""
    record: dict[str, Any] = {"bot": bot.name, "label": bot.label}
    try:
        with torch.inference_mode():
            reply = bot.respond(prompt, **overrides)
    except ValueError as e:  # bad prompt or settings: the message says what to change
        return {**record, "error": str(e)}
    except Exception as e:  # a failing bot must not take the other three (or the page) down
        log.exception("bot %s failed", bot.name)
        return {**record, "error": f"{type(e).__name__}: {e}"}
    return {
        **record,
        "text": reply.text,
        "score": _finite(reply.score),
        "latency_s": round(reply.latency_s, 4),
        "settings": reply.settings,
        "nbest": [{"text": h.text, "score": _finite(h.score)} for h in reply.nbest],
        "tokens": reply.tokens,
        "token_strs": reply.token_strs,
        "logprobs": [_finite(x) for x in reply.logprobs],
        "attention": [[round(a, 4) for a in row] for row in reply.attention],
        "source_tokens": reply.source_tokens,
    }


def _finite(x: float) -> float | None:
    """JSON has no -inf: an impossible score becomes None."""
    return round(float(x), 4) if math.isfinite(x) else None


def answer_all(bots: Mapping[str, Bot], prompt: str, settings: Mapping[str, Any], *,
               workers: int = WORKERS) -> Iterator[tuple[str, dict[str, Any]]]:
    """(bot name, record) for every bot, in the order they finish; ``workers`` bots decode at once.
    ``settings``: the control values to apply (see :func:`changed_settings`); a bot keeps the rest of its own."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="arena") as pool:
        futures = {pool.submit(reply_record, bot, prompt, overrides_for(bot, settings)): name
                   for name, bot in bots.items()}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


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


def user_message(prompt: str) -> dict[str, str]:
    shown = prompt
    if len(prompt) > MAX_SHOWN_CHARS:
        hidden = len(prompt) - MAX_SHOWN_CHARS
        shown = f"[{hidden:,} earlier characters not shown] …{prompt[-MAX_SHOWN_CHARS:]}"
    return {"role": "user", "content": escape_text(shown)}


def settings_tag(settings: Mapping[str, Any]) -> str:
    """Short summary of the decoder settings a reply was made with, e.g. ``beam K=10 · anti-LM 0.5 (gamma 5)``."""
    s = settings
    if s["strategy"] == "greedy":
        parts = ["greedy"]
    elif s["strategy"] == "beam":
        parts = [f"beam K={s['beam_size']}"]
    else:
        parts = [f"sample x{s['beam_size']} T={s['temperature']:g} top-k={s['top_k']} top-p={s['top_p']:g}"]
    if s["antilm"] > 0 and s["gamma"] > 0:
        parts.append(f"anti-LM {s['antilm']:g} (gamma {s['gamma']})")
    if s["n_bonus"] > 0:
        parts.append(f"bonus {s['n_bonus']:g}")
    if s["mmi_lambda"] > 0:
        parts.append(f"MMI {s['mmi_lambda']:g}")
    if s["no_repeat_ngram"] > 0:
        parts.append(f"no-repeat {s['no_repeat_ngram']}")
    parts.append(f"max {s['max_len']}")
    return " · ".join(parts)


def bot_message(record: Mapping[str, Any]) -> dict[str, str]:
    """The chat bubble of one reply: its text, then score, latency and settings in small print."""
    if "error" in record:
        return {"role": "assistant", "content": f'<span class="reply-error">⚠ {escape_text(record["error"])}</span>'}
    score = "-inf" if record["score"] is None else f"{record['score']:.2f}"
    meta = f"score {score} · {record['latency_s'] * 1000:.0f} ms · {settings_tag(record['settings'])}"
    text = escape_text(record["text"]) or "<em>(empty reply)</em>"
    return {"role": "assistant", "content": f'{text}<br><small class="reply-meta">{html.escape(meta)}</small>'}


NBEST_COLUMNS = ["rank", "reply", "score"]


def nbest_frame(record: Mapping[str, Any] | None) -> pd.DataFrame:
    rows = [(i + 1, h["text"], h["score"]) for i, h in enumerate((record or {}).get("nbest", []))]
    return pd.DataFrame(rows, columns=NBEST_COLUMNS)


# ----------------------------------------------------------------------------- side-by-side events


@dataclass
class Turn:
    """Everything the side-by-side tab shows after an event (one yield of :func:`chat` / :func:`rerun`)."""

    message: str  # the message box
    last_prompt: str | None | Any  # what re-run answers again, or KEEP
    histories: list[list[dict[str, Any]]]
    nbest: list[pd.DataFrame] | list[Any]  # or KEEP each
    details: dict[str, Any] | Any  # {"prompt": ..., "bots": {name: record}}, or KEEP
    status: str = ""

    def outputs(self) -> tuple[Any, ...]:
        """Flat, in the order of the app's outputs: message, last prompt, histories, n-best lists, details, status."""
        return (self.message, self.last_prompt, *self.histories, *self.nbest, self.details, self.status)


@dataclass
class _TurnBuilder:
    """Streams one turn: placeholders first, then each bot's reply as it arrives."""

    bots: Mapping[str, Bot]
    prompt: str
    histories: list[list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    def run(self, settings: Mapping[str, Any], workers: int) -> Iterator[Turn]:
        names = list(self.bots)
        for h in self.histories:
            h.append({"role": "assistant", "content": PENDING})
        records: dict[str, dict[str, Any]] = {}
        yield self._turn(records, "Thinking…")
        t0 = time.perf_counter()
        for name, record in answer_all(self.bots, self.prompt, settings, workers=workers):
            records[name] = record
            self.histories[names.index(name)][-1] = bot_message(record)
            done = len(records) == len(names)
            status = f"All {len(names)} replies in {time.perf_counter() - t0:.2f} s." if done else \
                f"{len(records)} of {len(names)} replies…"
            yield self._turn(records, status)

    def _turn(self, records: dict[str, dict[str, Any]], status: str) -> Turn:
        nbest = [nbest_frame(records.get(name)) for name in self.bots]
        details = {"prompt": self.prompt, "bots": {n: records[n] for n in self.bots if n in records}}
        lines = [status, *self.notes]
        histories = [list(h) for h in self.histories]  # a snapshot: later replies must not edit this turn
        return Turn("", self.prompt, histories, nbest, details, "\n\n".join(lines))


def _histories(bots: Mapping[str, Bot], histories: Sequence[Any] | None) -> list[list[dict[str, Any]]]:
    """Copies of the chat histories, one per bot (None or missing -> empty)."""
    given = list(histories or [])
    return [list(given[i] or []) if i < len(given) else [] for i in range(len(bots))]


def _unchanged(bots: Mapping[str, Bot], histories: list[list[dict[str, Any]]], message: str, status: str) -> Turn:
    """Only a status line: the last turn (its prompt, n-best lists and details) stays as it was."""
    return Turn(message, KEEP, histories, [KEEP for _ in bots], KEEP, status)


def _requested(bots: Mapping[str, Bot], values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the controls moved from where they started, notes on clamped values); the rest stay per bot."""
    initial = default_settings(bots)
    settings, notes = resolve_settings(values, initial)
    return changed_settings(settings, initial), notes


def chat(bots: Mapping[str, Bot], message: Any, histories: Sequence[Any] | None, values: Mapping[str, Any], *,
         workers: int = WORKERS) -> Iterator[Turn]:
    """Send ``message`` to every bot; yields the tab after the user message is shown and after each reply."""
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
    yield from _TurnBuilder(bots, message, hist, notes).run(settings, workers)


def rerun(bots: Mapping[str, Bot], last_prompt: str | None, histories: Sequence[Any] | None,
          values: Mapping[str, Any], *, workers: int = WORKERS) -> Iterator[Turn]:
    """Answer the last message again with the current settings, replacing each bot's last reply."""
    hist = _histories(bots, histories)
    if not last_prompt:
        yield _unchanged(bots, hist, "", "Nothing to re-run yet: send a message first.")
        return
    settings, notes = _requested(bots, values)
    for h in hist:
        while h and h[-1].get("role") == "assistant":
            h.pop()
        if not h:  # cleared since: show the prompt again
            h.append(user_message(last_prompt))
    yield from _TurnBuilder(bots, last_prompt, hist, notes).run(settings, workers)


def clear(bots: Mapping[str, Bot]) -> Turn:
    return Turn("", None, [[] for _ in bots], [nbest_frame(None) for _ in bots], {}, "")


# ----------------------------------------------------------------------------- attention view


@dataclass
class AttentionView:
    figure: Any  # matplotlib Figure, or None
    tokens: list[tuple[str, float]]  # (token, probability) for gr.HighlightedText
    caption: str


def attention_view(details: Mapping[str, Any] | None, bot_name: str) -> AttentionView:
    """Heatmap of the attention (reply tokens x prompt tokens) and per-token probabilities of one bot's reply."""
    record = ((details or {}).get("bots") or {}).get(bot_name)
    if not record:
        return AttentionView(None, [], "Send a message in the **Side by side** tab first; its replies show here.")
    if "error" in record:
        return AttentionView(None, [], f"This bot gave no reply: {escape_text(record['error'])}")
    tokens = [(t, round(math.exp(lp), 3) if lp is not None else 0.0)
              for t, lp in zip(record["token_strs"], record["logprobs"])]
    known = [lp for lp in record["logprobs"] if lp is not None]
    mean_lp = sum(known) / len(known) if known else float("nan")
    caption = (f"**{html.escape(record['label'])}** answered *{escape_text(record['text']) or '(empty)'}*: "
               f"{len(tokens)} tokens, mean log p {mean_lp:.2f}, score {record['score']}. "
               "Colour = probability of each token given the prompt and the tokens before it.")
    return AttentionView(attention_figure(record["attention"], record["source_tokens"], record["token_strs"]),
                         tokens, caption)


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

# core.metrics.reply_metrics keys -> column names: distinct_n, mean_length (words), dull_rate, mean latency
METRIC_COLUMNS = {"distinct_1": "distinct-1", "distinct_2": "distinct-2", "mean_words": "mean length (words)",
                  "dull_rate": "dull rate", "mean_latency_s": "latency per reply (s)"}


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


def batch_compare(bots: Mapping[str, Bot], text: str | None, file_path: str | Path | None = None, *,
                  workers: int = WORKERS, max_prompts: int = MAX_BATCH_PROMPTS,
                  out_dir: str | Path | None = None) -> BatchResult:
    """Every bot answers every prompt (one batched search per bot, with its bots.json settings)."""
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

    def run(bot: Bot) -> tuple[list[str], float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            replies = bot.respond_batch(prompts)
        return [r.text for r in replies], time.perf_counter() - t0

    columns: dict[str, list[str]] = {"prompt": prompts}
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="arena-batch") as pool:
        futures = {name: pool.submit(run, bot) for name, bot in bots.items()}
        for name, bot in bots.items():
            try:
                texts, seconds = futures[name].result()
            except Exception as e:  # reported in the status; the other bots still count
                log.exception("batch compare: bot %s failed", name)
                notes.append(f"{html.escape(bot.label)} failed: {escape_text(str(e))}")
                continue
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
