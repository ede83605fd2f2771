"""Corpora: loaders that yield conversations (lists of utterances), the split, and query/response pairs.

Every loader returns ``list[Conversation]`` where a conversation is a list of utterance strings in order.
Consecutive utterances form (query, response) pairs.

    >>> from core.corpora import load_corpus, split_conversations, make_pairs
    >>> convs = load_corpus("chitchat")                  # offline, from the chitchat-dataset wheel
    >>> split = split_conversations(convs, seed=1234)
    >>> pairs = make_pairs(split.train)
"""

from __future__ import annotations

import ast
import json
import random
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    text = text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> "?"
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
    try:
        for key in sorted(data):  # sorted keys: the order (and so the split) never depends on dict order
            turns = [" ".join(u["text"] for u in message) for message in data[key]["messages"]]
            convs.append(turns)
    except (KeyError, TypeError, AttributeError) as e:
        raise CorpusError(f"{path}: conversation {len(convs) + 1} does not have the chitchat layout "
                          f"({FORMAT_HELP['chitchat']}): {e!r}") from None
    return convs


def _open_bytes(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror})") from e


def _read_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, newline removed (and a leading UTF-8 byte-order mark).

    Decoding is strict: a byte that is not valid ``encoding`` is a CorpusError naming the line, so a broken
    export is found and fixed rather than trained on as replacement characters.
    """
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                where = f"byte 0x{raw[e.start]:02x} at column {e.start + 1}"
                hint = (" (it looks like UTF-16)" if lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
                        else "")
                raise CorpusError(f"{path}:{lineno}: not valid {encoding} ({where}){hint}; expected {encoding} "
                                  f"text: re-save the file as {encoding}") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line.rstrip("\r\n")


_CORNELL_SEP = " +++$+++ "


def load_cornell(path: str | Path) -> list[Conversation]:
    """Cornell Movie-Dialogs: a folder holding ``movie_lines.txt`` and ``movie_conversations.txt`` (or the path
    of either file). Both are ISO-8859-1 with fields separated by `` +++$+++ ``:

        movie_lines.txt          L1045 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ They do not!
        movie_conversations.txt  u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L194', 'L195', 'L196', 'L197']

    Conversations come in the order of ``movie_conversations.txt``.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    lines_path, convs_path = folder / "movie_lines.txt", folder / "movie_conversations.txt"

    # 1. line id -> text. A line with empty text ends in "+++$+++ " or, trimmed, "+++$+++": pad with a space.
    text_of: dict[str, str] = {}
    for lineno, line in _read_lines(lines_path, "iso-8859-1"):
        if not line.strip():
            continue
        fields = (line + " ").split(_CORNELL_SEP, 4)
        if len(fields) != 5:
            raise CorpusError(f"{lines_path}:{lineno}: expected 5 fields separated by '{_CORNELL_SEP.strip()}'")
        text_of[fields[0].strip()] = fields[4][:-1]

    # 2. each conversation's list of line ids -> its utterances.
    convs = []
    for lineno, line in _read_lines(convs_path, "iso-8859-1"):
        if not line.strip():
            continue
        fields = line.split(_CORNELL_SEP)
        if len(fields) != 4:
            raise CorpusError(f"{convs_path}:{lineno}: expected 4 fields separated by '{_CORNELL_SEP.strip()}'")
        try:
            ids = ast.literal_eval(fields[3].strip())
        except (ValueError, SyntaxError):
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise CorpusError(f"{convs_path}:{lineno}: expected a list of line ids like ['L194', 'L195']")
        missing = [i for i in ids if i not in text_of]
        if missing:
            raise CorpusError(f"{convs_path}:{lineno}: line id {missing[0]!r} is not in {lines_path.name}")
        convs.append([text_of[i] for i in ids])
    return convs


def load_tsv(path: str | Path) -> list[Conversation]:
    """UTF-8 ``query<TAB>response`` per line; each line is a two-turn conversation. No quoting: a field holds
    no tab. Blank (whitespace-only) lines are skipped; the first line may be the header ``query<TAB>response``
    (any case)."""
    path = Path(path)
    convs = []
    first = True
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        if first and line.strip().lower() == "query\tresponse":
            first = False
            continue
        first = False
        n_tabs = line.count("\t")
        if n_tabs != 1:
            raise CorpusError(f"{path}:{lineno}: expected 'query<TAB>response', found {n_tabs} tabs")
        convs.append(line.split("\t"))
    return convs


def load_lines(path: str | Path) -> list[Conversation]:
    """UTF-8 text of dialogues separated by blank lines; within a dialogue each line answers the one before
    (the twitter chat corpus layout)."""
    convs: list[Conversation] = [[]]
    for _, line in _read_lines(Path(path)):
        if line.strip():
            convs[-1].append(line)
        elif convs[-1]:
            convs.append([])
    return [c for c in convs if c]


_REDDIT_COLUMNS = {"name", "parent_id", "body", "score"}
_REDDIT_GONE = ("[deleted]", "[removed]")


def load_reddit(path: str | Path, *, min_score: int | None = None, table: str | None = None) -> list[Conversation]:
    """Reddit comments in SQLite: every comment whose ``parent_id`` is another comment's ``name`` gives the
    two-turn conversation ``[parent body, reply body]``.

    The table is ``table``, else the one named ``comments``, else the only table with the columns ``name``,
    ``parent_id``, ``body``, ``score``. Bodies ``[deleted]`` / ``[removed]`` are skipped; ``min_score`` keeps
    only replies scoring at least that much. Pairs are ordered by (reply name, parent name), not by file order.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        t = _reddit_table(con, path, table)
        q = '"' + t.replace('"', '""') + '"'  # a quoted SQL identifier
        sql = (
            f"SELECT p.body, c.body FROM {q} AS c JOIN {q} AS p ON c.parent_id = p.name"
            " WHERE p.body IS NOT NULL AND c.body IS NOT NULL"
            " AND TRIM(p.body) NOT IN (?, ?) AND TRIM(c.body) NOT IN (?, ?)"
        )
        params: list = [*_REDDIT_GONE, *_REDDIT_GONE]
        if min_score is not None:
            sql += " AND c.score >= ?"
            params.append(min_score)
        rows = con.execute(sql + " ORDER BY c.name, p.name", params).fetchall()
    except sqlite3.DatabaseError as e:
        raise CorpusError(f"{path}: cannot read as a SQLite comments database ({e})") from e
    finally:
        con.close()
    return [[str(parent), str(reply)] for parent, reply in rows]


def _reddit_table(con: sqlite3.Connection, path: Path, table: str | None) -> str:
    """The comments table: ``table`` if given, else ``comments``, else the only table with the needed columns."""
    sql = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name"
    names = [r[0] for r in con.execute(sql)]
    columns = {n: {r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (n,))} for n in names}
    fits = [n for n in names if _REDDIT_COLUMNS <= columns[n]]
    need = ", ".join(sorted(_REDDIT_COLUMNS))
    if table is not None:
        if table not in fits:
            raise CorpusError(f"{path}: no table {table!r} with columns {need}")
        return table
    if "comments" in fits:
        return "comments"
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise CorpusError(f"{path}: no table with columns {need} (tables: {', '.join(names) or 'none'})")
    raise CorpusError(f"{path}: several tables have columns {need} ({', '.join(fits)}); pass table=")


LOADERS: dict[str, Callable[..., list[Conversation]]] = {
    "chitchat": load_chitchat,
    "cornell": load_cornell,
    "tsv": load_tsv,
    "lines": load_lines,
    "reddit": load_reddit,
}
BUILTIN = ("chitchat",)  # registry names that load without a path
FORMAT_HELP = {
    "tsv": "one 'query<TAB>response' pair per line, UTF-8",
    "lines": "UTF-8 text, one utterance per line, each answering the line before; a blank line between dialogues",
    "cornell": "a folder with movie_lines.txt and movie_conversations.txt (fields separated by ' +++$+++ ')",
    "reddit": "a SQLite database with a comments table (name, parent_id, body, score)",
    "chitchat": "the chitchat-dataset JSON: {id: {\"messages\": [[{\"text\": ...}, ...], ...]}, ...}",
}


def check_pairs(convs: list[Conversation], source: str | Path, fmt: str | None, *, min_pairs: int) -> int:
    """The number of (query, response) pairs in ``convs``; a CorpusError naming ``source`` and the expected
    format when there are none, or fewer than ``min_pairs`` (one batch)."""
    name = str(source)
    fmt = fmt or (name if name in LOADERS else _guess_format(Path(name)))
    expected = FORMAT_HELP.get(fmt, fmt)
    n = sum(len(c) - 1 for c in convs)
    if n == 0:
        path = Path(name)
        empty = path.is_file() and not path.read_bytes().strip()
        where = f"{name}:1: the file is empty" if empty else f"{name}: no (query, response) pair found"
        raise CorpusError(f"{where}; expected {fmt} format: {expected}")
    if n < min_pairs:
        raise CorpusError(f"{name}: only {n} (query, response) pair(s), fewer than one batch of {min_pairs}; use a "
                          f"larger corpus ({fmt} format: {expected}) or a smaller batch size")
    return n


def load_corpus(
    name_or_path: str | Path, *, fmt: str | None = None, max_chars: int | None = None, **options
) -> list[Conversation]:
    """Load a corpus by registry name (``chitchat``) or by path with a format from :data:`LOADERS` (guessed from
    the path when ``fmt`` is None). ``options`` go to the loader (``min_score=`` for ``reddit``).

    Utterances are normalised with :func:`normalize_text`; empty utterances are dropped. With ``max_chars``,
    an utterance longer than that is dropped and its conversation cut in two there, so no pair joins the turns
    either side of it (truncating would leave replies that stop mid-sentence). Conversations shorter than two
    turns are dropped.
    """
    name = str(name_or_path)
    if fmt is None:
        fmt = name if name in LOADERS else _guess_format(Path(name))
    if fmt not in LOADERS:
        raise CorpusError(f"unknown corpus format {fmt!r}; known: {', '.join(sorted(LOADERS))}")
    if name == fmt and fmt not in BUILTIN:
        raise CorpusError(f"format {fmt!r} needs the path of your corpus")
    convs = LOADERS[fmt](**options) if name == fmt else LOADERS[fmt](Path(name), **options)
    cleaned = [[t for t in (normalize_text(u) for u in conv) if t] for conv in convs]
    if max_chars is not None:
        cleaned = [piece for conv in cleaned for piece in _cut_long(conv, max_chars)]
    return [c for c in cleaned if len(c) >= 2]


def _cut_long(conv: Conversation, max_chars: int) -> list[Conversation]:
    """``conv`` split at each utterance longer than ``max_chars``, which is left out."""
    pieces: list[Conversation] = [[]]
    for u in conv:
        if len(u) > max_chars:
            pieces.append([])
        else:
            pieces[-1].append(u)
    return pieces


def _guess_format(path: Path) -> str:
    if path.is_dir() or path.name in ("movie_lines.txt", "movie_conversations.txt"):
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


def utterances(convs: list[Conversation]) -> list[str]:
    """Every utterance of ``convs``, in order (what a tokenizer is trained on, the words a split knows)."""
    return [u for conv in convs for u in conv]


def opening_messages(convs: list[Conversation]) -> list[str]:
    """The first utterance of each conversation (used to start simulated dialogues)."""
    return [conv[0] for conv in convs if conv]


MAX_PROMPTS = 1000


def read_prompts(data: bytes | str, *, limit: int = MAX_PROMPTS) -> list[str]:
    """Prompts from an uploaded or pasted text, one per line: bytes are decoded as UTF-8 (bad bytes replaced),
    lines normalised, blank lines skipped. More than ``limit`` prompts is a ValueError."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    prompts = [p for p in (normalize_text(line) for line in text.splitlines()) if p]
    if len(prompts) > limit:
        raise ValueError(f"{len(prompts)} prompts; at most {limit} at a time")
    return prompts
