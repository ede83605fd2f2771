"""FastChat's clean-battle format: export our votes, import theirs (or anyone's written in the same format).

One record per vote (JSON Lines, or a JSON array as FastChat publishes its ``clean_battle_*.json``)::

    {"question_id": "7f1c...", "model_a": "beam", "model_b": "rl", "winner": "model_b", "judge": "arena_user_...",
     "turn": 1, "anony": true, "language": "unknown", "tstamp": 1716200000.5,
     "conversation_a": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     "conversation_b": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey there"}]}

``winner`` is one of ``model_a``, ``model_b``, ``tie``, ``tie (bothbad)``. Required on import: question_id,
model_a, model_b, winner; the rest is optional, and other keys (FastChat's ``dedup_tag``, ``category_tag``, ...)
are ignored. ``question_id`` is the key: importing the same file twice adds nothing the second time.
CSV export: the same columns, conversations as JSON strings.

Two keys FastChat does not write (its tools ignore them): ``kind`` (``single``, ``per_turn``, ``dialogue``; absent:
``single``) and ``pair_weight`` (an actively drawn pair's inverse-propensity weight; absent: 1). The conversations
of each kind:
    single    each side's conversation: the visitor's messages and that side's replies
    per_turn  the shared conversation so far (the same on both sides), then the judged turn with each side's reply
    dialogue  each side's self-chat: the opening as ``user``, then the bot's turns with alternating roles
              (``assistant``, ``user``, ``assistant``, ...: both speakers are that bot); ``turn`` is the number of
              turns after the opening of the longer one

    >>> n = write_votes(store, "votes.jsonl", fmt="jsonl")
    >>> added, skipped = import_votes(store, "clean_battle_20240814_public.json")
    >>> compute_leaderboard(read_votes("votes.jsonl"))
    >>> compute_leaderboard(votes_with_style(store), style_control=True)   # every vote with its replies' style
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from core.arena.store import KINDS, MAX_ID_LEN, MAX_NAME_LEN, VOTE_COLUMNS, WINNERS, ArenaStore
from core.arena.style import STYLE_COLUMNS, style_columns

FIELDS = ["question_id", "model_a", "model_b", "winner", "judge", "turn", "anony", "language", "tstamp",
          "conversation_a", "conversation_b", "kind", "pair_weight"]
FRAME_COLUMNS = [c for c in VOTE_COLUMNS if c not in ("source", "series_id")] + STYLE_COLUMNS
FORMATS = ("jsonl", "csv")
UNKNOWN_LANGUAGE = "unknown"


# ----------------------------------------------------------------------------- export


def dialogue_messages(opening: str, turns: list[str]) -> list[dict[str, str]]:
    """A self-chat as OpenAI-style messages: the opening as ``user``, then alternating ``assistant`` / ``user``."""
    return [{"role": "user", "content": opening}] + [
        {"role": "assistant" if k % 2 == 0 else "user", "content": t} for k, t in enumerate(turns)]


def export_records(store: ArenaStore) -> Iterator[dict[str, Any]]:
    """One clean-battle record per stored vote, oldest vote first."""
    for vote, turns, dialogue in store.iter_votes_with_turns():
        conv_a: list[dict[str, str]] = []
        conv_b: list[dict[str, str]] = []
        if dialogue is not None:
            conv_a = dialogue_messages(dialogue["opening"], dialogue["turns_a"])
            conv_b = dialogue_messages(dialogue["opening"], dialogue["turns_b"])
        for t in turns:
            conv_a += [{"role": "user", "content": t["message"]}, {"role": "assistant", "content": t["reply_a"]}]
            conv_b += [{"role": "user", "content": t["message"]}, {"role": "assistant", "content": t["reply_b"]}]
        record = {"question_id": vote["question_id"], "model_a": vote["model_a"], "model_b": vote["model_b"],
                  "winner": vote["winner"], "judge": vote["judge"], "turn": int(vote["turn"]),
                  "anony": bool(vote["anony"]), "language": vote["language"] or UNKNOWN_LANGUAGE,
                  "tstamp": float(vote["tstamp"]), "conversation_a": conv_a, "conversation_b": conv_b,
                  "kind": vote["kind"]}
        if vote["pair_weight"] is not None and not math.isnan(vote["pair_weight"]):
            record["pair_weight"] = float(vote["pair_weight"])
        yield record


def write_votes(store: ArenaStore, out: TextIO | str | Path, *, fmt: str = "jsonl") -> int:
    """Write every vote as JSON Lines or CSV to a file (or an open text stream); return the number written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if isinstance(out, (str, Path)):
        with open(out, "w", encoding="utf-8", newline="") as f:
            return write_votes(store, f, fmt=fmt)
    n = 0
    writer = csv.DictWriter(out, fieldnames=FIELDS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for record in export_records(store):
        if writer:
            writer.writerow({**record, "anony": str(record["anony"]).lower(), "pair_weight": record.get("pair_weight"),
                             "conversation_a": json.dumps(record["conversation_a"], ensure_ascii=False),
                             "conversation_b": json.dumps(record["conversation_b"], ensure_ascii=False)})
        else:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    return n


# ----------------------------------------------------------------------------- import


def _conversation(value: Any, key: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"{key} must be a list of {{\"role\", \"content\"}} objects")
    out = []
    for k, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant", "system") or not isinstance(content, (str, type(None))):
            raise ValueError(f"{key}[{k}] must have role user|assistant|system and a string content, got "
                             f"{json.dumps(m)[:80]}")
        if role != "system":
            out.append((role, content or ""))
    return out


def _turns(conv_a: list[tuple[str, str]], conv_b: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Pair the user messages of the two conversations with each side's reply to them."""
    def pairs(conv: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out, message = [], None
        for role, content in conv:
            if role == "user":
                if message is not None:
                    out.append((message, ""))
                message = content
            elif message is not None:
                out.append((message, content))
                message = None
        if message is not None:
            out.append((message, ""))
        return out

    pa, pb = pairs(conv_a), pairs(conv_b)
    return [{"message": (pa[k] if k < len(pa) else pb[k])[0], "reply_a": pa[k][1] if k < len(pa) else "",
             "reply_b": pb[k][1] if k < len(pb) else ""} for k in range(max(len(pa), len(pb)))]


def parse_record(obj: Any) -> dict[str, Any]:
    """A validated clean-battle record (ValueError says what is wrong), normalised for the store."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("question_id", "model_a", "model_b", "winner") if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (a clean-battle record needs question_id, model_a, model_b "
                         "and winner)")
    qid = obj["question_id"]
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip() \
            or len(str(qid)) > MAX_ID_LEN:
        raise ValueError(f"question_id must be a non-empty string of at most {MAX_ID_LEN} characters")
    for key in ("model_a", "model_b"):
        if not isinstance(obj[key], str) or not obj[key].strip() or len(obj[key]) > MAX_NAME_LEN:
            raise ValueError(f"{key} must be a non-empty string of at most {MAX_NAME_LEN} characters")
    if obj["winner"] not in WINNERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)}; got {json.dumps(obj['winner'])[:40]}")
    tstamp = obj.get("tstamp", None)
    if tstamp is None:
        tstamp = time.time()
    if isinstance(tstamp, bool) or not isinstance(tstamp, (int, float)) or not math.isfinite(tstamp):
        raise ValueError(f"tstamp must be a number (seconds since 1970), got {json.dumps(tstamp)[:40]}")
    anony = obj.get("anony", True)
    if not isinstance(anony, bool):
        raise ValueError(f"anony must be true or false, got {json.dumps(anony)[:40]}")
    for key in ("judge", "language"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"{key} must be a string")
    kind = obj.get("kind") or "single"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {json.dumps(kind)[:40]}")
    weight = obj.get("pair_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not math.isfinite(weight) or weight <= 0):
        raise ValueError(f"pair_weight must be a positive number, got {json.dumps(weight)[:40]}")
    conv_a = _conversation(obj.get("conversation_a"), "conversation_a")
    conv_b = _conversation(obj.get("conversation_b"), "conversation_b")
    dialogue = _dialogue(conv_a, conv_b) if kind == "dialogue" else None
    turns = [] if dialogue else _turns(conv_a, conv_b)
    default_turn = max(len(dialogue["turns_a"]), len(dialogue["turns_b"])) if dialogue else (len(turns) or 1)
    turn = obj.get("turn", default_turn)
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise ValueError(f"turn must be a whole number >= 0, got {json.dumps(turn)[:40]}")
    return {"question_id": str(qid), "model_a": obj["model_a"], "model_b": obj["model_b"],
            "winner": obj["winner"], "tstamp": float(tstamp), "anony": anony,
            "judge": (obj.get("judge") or None) and obj["judge"][:MAX_NAME_LEN],
            "language": (obj.get("language") or None) and obj["language"][:64], "turn": turn, "turns": turns,
            "kind": kind, "pair_weight": None if weight is None else float(weight), "dialogue": dialogue,
            "conversation_a": [{"role": r, "content": c} for r, c in conv_a],
            "conversation_b": [{"role": r, "content": c} for r, c in conv_b]}


def _dialogue(conv_a: list[tuple[str, str]], conv_b: list[tuple[str, str]]) -> dict[str, Any]:
    """A 'dialogue' record's two self-chats: the shared opening, then each side's turns (roles ignored)."""
    if not conv_a or not conv_b:
        raise ValueError("a dialogue vote needs both self-chats (conversation_a and conversation_b)")
    if conv_a[0][1] != conv_b[0][1]:
        raise ValueError("a dialogue vote's two self-chats must start from the same opening")
    return {"opening": conv_a[0][1], "turns_a": [c for _, c in conv_a[1:]], "turns_b": [c for _, c in conv_b[1:]]}


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Validated records of a JSON Lines file (or of a JSON array file); a bad record raises ValueError naming
    the file and its line (or its index in the array)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected FastChat clean-battle JSON Lines)")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            head = f.read(4096).lstrip()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON Lines") from e
        f.seek(0)
        if head.startswith("["):  # FastChat's published clean_battle_*.json: one JSON array
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
            for k, obj in enumerate(data):
                try:
                    yield parse_record(obj)
                except ValueError as e:
                    raise ValueError(f"{path}: record {k}: {e}") from None
            return
        for lineno, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            try:
                yield parse_record(obj)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None


def _lines(f: io.TextIOBase, path: Path) -> Iterator[str]:
    lineno = 0
    while True:
        try:
            line = f.readline()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno + 1}: not UTF-8 text (byte {e.start} of the block read)") from e
        if not line:
            return
        lineno += 1
        yield line


def import_votes(store: ArenaStore, path: str | Path) -> tuple[int, int]:
    """Import a clean-battle file into ``store`` in one transaction (nothing is stored if any record is bad);
    return (added, skipped: question_id already stored or repeated in the file)."""
    return store.import_battles(iter_records(path))


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Clean-battle records as a frame for the leaderboard (:data:`FRAME_COLUMNS`: the vote, its kind and pair
    weight, and the style of the replies it judged); a question_id repeated counts once."""
    rows = [{**{k: r.get(k) for k in FRAME_COLUMNS if k not in STYLE_COLUMNS},
             **style_columns(r.get("kind") or "single", r["conversation_a"], r["conversation_b"])} for r in records]
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    return frame.drop_duplicates("question_id", keep="first").reset_index(drop=True)


def read_votes(path: str | Path) -> pd.DataFrame:
    """The votes of a clean-battle file as a frame (see :func:`records_frame`)."""
    return records_frame(iter_records(path))


def votes_with_style(store: ArenaStore) -> pd.DataFrame:
    """Every stored vote as a frame (see :func:`records_frame`), with the style of the replies it judged."""
    return records_frame(export_records(store))
