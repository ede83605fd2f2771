"""How replies and messages look in the app's chat columns and tables: plain functions of plain values (dicts,
lists), no gradio import; shared by the tabs that show replies (side by side, attention, self-chat, models).

A chat history is a list of message dicts ``{"role": "user" | "assistant", "content": str}`` (Gradio 6 hands
contents back as lists of ``{"type": "text", "text": ...}`` parts; both forms are accepted). Texts shown in the chat
are HTML-escaped here, so markup typed by a user (or produced by a byte-level model) is displayed as text and never
reaches the page as HTML.

    >>> bot_message(reply.to_json())      # a bubble: the text, then score, latency and settings in small print
    >>> conversation_of(history)          # the turns a history of such bubbles holds, read back
    >>> nbest_table(reply.to_json())      # {"headers", "data"}: the n-best list and its score parts
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.decoding import describe_settings

MAX_SHOWN_CHARS = 1000  # a longer message is shown by its tail (the part the bots read)
PENDING = "…"
EMPTY_REPLY = "<em>(empty reply)</em>"


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
    """The chat bubble of a user's message, escaped; a long one shown by its last MAX_SHOWN_CHARS characters."""
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

