"""The conversation window: a bot's source is the message plus up to ``context_turns`` earlier turns.

Turns are joined by a turn separator and the window is cut from the oldest side to ``max_src_len`` tokens (as
ParlAI truncates its history). The separator is ``</s>``, a token every tokenizer of this project already has, so
a window model keeps the single-turn model's vocabulary: the language model and the backward model are shared
with it unchanged. With ``speaker_markers`` the separator after the replier's own earlier turns is ``<s>``
instead (who said what, made explicit); without it the speakers alternate from the message backwards.

    >>> window_ids([[5, 6], [7], [8, 9]], context_turns=1, max_src_len=40)   # p = [7], q = [8, 9]
    [7, 2, 8, 9]
    >>> window_ids([[5, 6], [7], [8, 9]], context_turns=2, max_src_len=4)   # cut from the oldest side
    [7, 2, 8, 9]
    >>> conversation_examples(tok, convs, context_turns=2, max_src_len=64, max_tgt_len=40)   # (source, reply) ids

``context_turns = 0`` is the single-turn model: the source is the message alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from core.batching import Example
from core.errors import SettingError
from core.tokenizer import BOS_ID, EOS_ID, Tokenizer

SEP_ID = EOS_ID  # between two turns of the window
OWN_SEP_ID = BOS_ID  # with speaker markers: after a turn of the replier's own
MAX_CONTEXT_TURNS = 16  # an upper bound on the setting (the token budget cuts the window long before)


def window_ids(turns: Sequence[Sequence[int]], *, context_turns: int, max_src_len: int,
               speaker_markers: bool = False) -> list[int]:
    """The source ids of a window: ``turns`` are token ids, oldest first, the last one the message answered;
    the last ``context_turns`` turns before it are kept, joined by separators, then the oldest tokens are cut
    until ``max_src_len`` are left."""
    kept = list(turns[-(context_turns + 1):]) if turns else []
    out: list[int] = []
    for i, turn in enumerate(kept):
        out += turn
        if i < len(kept) - 1:
            own = (len(kept) - 1 - i) % 2 == 1  # the message is the other side's; the turn before it the replier's
            out.append(OWN_SEP_ID if speaker_markers and own else SEP_ID)
    return out[-max_src_len:]


def window_of(config: dict[str, Any]) -> dict[str, Any]:
    """The window settings a checkpoint was trained with (``meta.train`` of its config.json); a checkpoint from
    before windows reads the message only."""
    train = (config.get("meta") or {}).get("train") or {}
    return {"context_turns": int(train.get("context_turns") or 0),
            "speaker_markers": bool(train.get("speaker_markers") or False),
            "max_src_len": int(train.get("max_src_len") or 40)}


def conversation_examples(tokenizer: Tokenizer, convs: list[list[str]], *, context_turns: int, max_src_len: int,
                          max_tgt_len: int, speaker_markers: bool = False, swap: bool = False,
                          shuffle_seed: int | None = None) -> list[Example]:
    """(window, reply) examples of every consecutive pair of every conversation, in order.

    A pair is dropped when its message or reply is empty, or the reply is longer than ``max_tgt_len`` tokens (a
    cut reply would teach the model to stop mid-sentence). ``swap``: (reply, message) pairs for a backward model,
    which reads one turn. ``shuffle_seed``: every example's earlier turns come from an example of another
    conversation (the same messages and replies, a wrong context): how much the model uses its window."""
    flat = tokenizer.encode_batch([u for conv in convs for u in conv])
    conv_ids, at = [], 0
    for conv in convs:
        conv_ids.append(flat[at: at + len(conv)])
        at += len(conv)
    rows: list[tuple[int, list[list[int]], list[int], list[int]]] = []  # (conversation, earlier, message, reply)
    for c, ids in enumerate(conv_ids):
        for i in range(len(ids) - 1):
            q, r = (ids[i + 1], ids[i]) if swap else (ids[i], ids[i + 1])
            if not q or not r or len(r) > max_tgt_len:
                continue
            earlier = [] if swap or context_turns == 0 else ids[max(0, i - context_turns): i]
            rows.append((c, earlier, q, r))
    if shuffle_seed is not None and context_turns > 0:
        rows = _swap_contexts(rows, shuffle_seed)
    return [(window_ids([*earlier, q], context_turns=context_turns, max_src_len=max_src_len,
                        speaker_markers=speaker_markers), r) for _, earlier, q, r in rows]


def _swap_contexts(rows: list[tuple[int, list[list[int]], list[int], list[int]]], seed: int
                   ) -> list[tuple[int, list[list[int]], list[int], list[int]]]:
    """Each row takes the earlier turns of a row from another conversation (a seeded derangement by
    conversation): rows with context get another conversation's context of any length."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = list(rows)
    n = len(order)
    for k, i in enumerate(order):
        for step in range(1, n):
            j = order[(k + step) % n]
            if rows[j][0] != rows[i][0]:
                out[i] = (rows[i][0], rows[j][1], rows[i][2], rows[i][3])
                break
    return out


MAX_HISTORY_TURNS = 64  # a request may carry at most this many earlier turns (a bot reads only its window)
MAX_TURN_CHARS = 4000  # and each of at most this many characters


def check_history(history: Any, *, field: str = "history", max_turns: int = MAX_HISTORY_TURNS,
                  max_chars: int = MAX_TURN_CHARS) -> list[str]:
    """``history`` as a list of strings (None: no history); :class:`SettingError` (a ValueError) whose ``field``
    is ``field`` or the turn (``"history[3]"``) when it is not a list of strings, has more than ``max_turns`` turns
    or a turn longer than ``max_chars`` characters."""
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise SettingError(f"{field} must be a list of earlier turns (strings, oldest first), got "
                           f"{type(history).__name__}", field=field)
    if len(history) > max_turns:
        raise SettingError(f"{field} has {len(history)} turns; at most {max_turns} (a bot reads only the last "
                           "few)", field=field)
    for i, turn in enumerate(history):
        if not isinstance(turn, str):
            raise SettingError(f"{field}[{i}] must be a string, got {type(turn).__name__}", field=f"{field}[{i}]")
        if len(turn) > max_chars:
            raise SettingError(f"{field}[{i}] has {len(turn)} characters; at most {max_chars}", field=f"{field}[{i}]")
    return list(history)


def history_turns(history: Sequence[str] | None, *, limit: int) -> list[str]:
    """The last ``limit`` turns of ``history`` (a list of strings, oldest first); SettingError naming the field
    for anything else (any length is accepted here: only the window is read)."""
    turns = check_history(history, max_turns=len(history) if isinstance(history, Sequence) else 0,
                          max_chars=10**12)
    return turns[-limit:] if limit > 0 else []
