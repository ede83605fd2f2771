"""Corpora: loaders that yield conversations (lists of utterances), the split, and query/response pairs.

Every loader returns ``list[Conversation]`` where a conversation is a list of utterance strings in order.
Consecutive utterances form (query, response) pairs.

    >>> from core.corpora import load_corpus, split_conversations, make_pairs
    >>> convs = load_corpus("chitchat")                  # offline, from the chitchat-dataset wheel
    >>> split = split_conversations(convs, seed=1234)
    >>> pairs = make_pairs(split.train)
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Conversation = list[str]


class CorpusError(ValueError):
    """A corpus file could not be read; the message names the file and line."""


# ----------------------------------------------------------------------------- normalisation

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Clean an utterance: NFKC, drop control characters, collapse whitespace, strip.

    Case is left alone here: lower-casing lives in the tokenizer's normaliser so that the same rule applies
    at training time and when a user types a prompt.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


# ----------------------------------------------------------------------------- loaders


def load_chitchat(path: str | Path | None = None) -> list[Conversation]:
    """The Chit-Chat Challenge corpus shipped inside the ``chitchat-dataset`` wheel (no download).

    A message is one speaker's turn; its utterances are joined with a space.
    """
    if path is None:
        import chitchat_dataset

        path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    convs = []
    for key in sorted(data):  # sorted keys: the order (and so the split) never depends on dict order
        turns = [" ".join(u["text"] for u in message) for message in data[key]["messages"]]
        convs.append(turns)
    return convs


LOADERS: dict[str, Callable[..., list[Conversation]]] = {"chitchat": load_chitchat}


def load_corpus(name_or_path: str, *, fmt: str | None = None) -> list[Conversation]:
    """Load a corpus by registry name (``chitchat``) or by path with a format from :data:`LOADERS`.

    Utterances are normalised with :func:`normalize_text`; empty utterances are dropped.
    """
    if fmt is None:
        fmt = name_or_path if name_or_path in LOADERS else _guess_format(Path(name_or_path))
    if fmt not in LOADERS:
        raise CorpusError(f"unknown corpus format {fmt!r}; known: {', '.join(sorted(LOADERS))}")
    convs = LOADERS[fmt]() if name_or_path == fmt else LOADERS[fmt](name_or_path)
    cleaned = [[t for t in (normalize_text(u) for u in conv) if t] for conv in convs]
    return [c for c in cleaned if len(c) >= 2]


def _guess_format(path: Path) -> str:
    if path.is_dir():
        return "cornell"
    suffix = path.suffix.lower()
    return {".tsv": "tsv", ".db": "reddit", ".sqlite": "reddit", ".sqlite3": "reddit", ".json": "chitchat"}.get(
        suffix, "lines"
    )


# ----------------------------------------------------------------------------- split and pairs


@dataclass
class Split:
    """Conversations split three ways; a conversation lives in exactly one part."""

    train: list[Conversation]
    valid: list[Conversation]
    test: list[Conversation]


def split_conversations(
    convs: list[Conversation], *, seed: int = 1234, valid_frac: float = 0.05, test_frac: float = 0.05
) -> Split:
    """Shuffle conversation indices with ``seed`` and cut them into train/valid/test (deterministic)."""
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(convs) * valid_frac)) if valid_frac > 0 else 0
    n_test = max(1, round(len(convs) * test_frac)) if test_frac > 0 else 0
    valid = [convs[i] for i in order[:n_valid]]
    test = [convs[i] for i in order[n_valid : n_valid + n_test]]
    train = [convs[i] for i in order[n_valid + n_test :]]
    return Split(train=train, valid=valid, test=test)


def make_pairs(convs: list[Conversation], *, swap: bool = False) -> list[tuple[str, str]]:
    """Consecutive turns as (query, response); ``swap=True`` gives (response, query) for a backward model."""
    pairs = [(conv[i], conv[i + 1]) for conv in convs for i in range(len(conv) - 1)]
    return [(b, a) for a, b in pairs] if swap else pairs


def opening_messages(convs: list[Conversation]) -> list[str]:
    """The first utterance of each conversation (used to start simulated dialogues)."""
    return [conv[0] for conv in convs if conv]
