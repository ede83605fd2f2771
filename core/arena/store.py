"""The vote store: battles, their turns, dialogues and votes in SQLite (default) or PostgreSQL, with SQLAlchemy Core.

    >>> store = ArenaStore(resolve_db_url(None, None))                 # ./arena_data/arena.sqlite3
    >>> store = ArenaStore("postgresql+psycopg://arena@db.internal/arena")  # several app replicas, one store
    >>> store.votes_frame()                                            # one row per vote, for the leaderboard

The tables and their migrations are in :mod:`core.arena.schema` (a database of any earlier version is migrated
when it is opened). Sessions are stored as salted hashes only (see :mod:`core.arena.battles`); no IP address is
ever stored. SQLite runs in WAL mode with ``synchronous=FULL``, so a committed vote is on disk before ``add_vote``
returns; every SQLite transaction starts with ``BEGIN IMMEDIATE`` (writers queue instead of failing half-way).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from core.arena.schema import (
    KINDS,
    MAX_ID_LEN,
    MAX_NAME_LEN,
    OPENING_SOURCES,
    SCHEMA_VERSION,
    battles,
    current_version,
    dialogues,
    migrate,
    turns,
    votes,
)

__all__ = ["KINDS", "MAX_ID_LEN", "MAX_NAME_LEN", "SCHEMA_VERSION", "SOURCES", "WINNERS", "AlreadyVoted",
           "ArenaError", "ArenaStore", "BattleRecord", "UnknownBattle", "battles", "dialogues", "resolve_db_url",
           "turns", "votes"]

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
SOURCES = ("arena", "import")
ENV_DB_URL = "ARENA_DB_URL"
DEFAULT_DATA_DIR = Path("arena_data")
SPACE_DATA_DIR = Path("/data")  # the persistent disk of a Hugging Face Space, when it has one
SQLITE_FILE = "arena.sqlite3"
SHARED = json.dumps({"shared": True})  # the details of a turn both sides share (a per-turn battle's context)
VOTE_COLUMNS = ["question_id", "model_a", "model_b", "winner", "tstamp", "turn", "judge", "anony", "language",
                "source", "kind", "series_id", "pair_weight"]


class ArenaError(Exception):
    """A refused arena request; ``str(error)`` is a message for the visitor."""


class UnknownBattle(ArenaError):
    """No battle with this id was served."""


class AlreadyVoted(ArenaError):
    """This battle has its vote already."""


# ----------------------------------------------------------------------------- where the store lives


def default_data_dir() -> Path:
    """``/data`` when it exists (a Space's persistent disk), else ``./arena_data``."""
    return SPACE_DATA_DIR if SPACE_DATA_DIR.is_dir() else DEFAULT_DATA_DIR


def resolve_db_url(db: str | None, data_dir: str | Path | None) -> str:
    """The database URL to open: ``db``, else $ARENA_DB_URL, else a SQLite file in ``data_dir`` (default:
    :func:`default_data_dir`). ``postgresql://`` and ``postgres://`` mean the psycopg 3 driver.

    >>> resolve_db_url(None, "runs/votes")
    'sqlite:///runs/votes/arena.sqlite3'
    """
    url = db or os.environ.get(ENV_DB_URL) or None
    if url is None:
        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        return f"sqlite:///{folder / SQLITE_FILE}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ValueError(f"--db {_safe(url)!r} is not a database URL (expected sqlite:///path/to/file.sqlite3 or "
                         f"postgresql+psycopg://user@host/dbname)") from e
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"--db {_safe(url)!r}: only sqlite:/// and postgresql+psycopg:// databases are supported")
    return url


def _safe(url: str) -> str:
    """The URL with its password masked (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class BattleRecord:
    """One stored battle (without its turns)."""

    id: str
    created: float
    session_hash: str
    model_a: str
    model_b: str
    checkpoint_a: str | None
    checkpoint_b: str | None
    settings_a: dict[str, Any]
    settings_b: dict[str, Any]
    anony: bool
    source: str
    language: str | None
    turns: int  # complete turns stored
    winner: str | None  # None: not voted yet
    kind: str = "single"  # one of KINDS
    series_id: str | None = None  # per-turn battles of one conversation share it (the first one's id)
    pair_weight: float | None = None  # 1 / (P(pair) * number of pairs) of an actively drawn pair; None: 1
    has_dialogues: bool = False  # a 'dialogue' battle whose two self-chats are stored


def _dialogue(row: Any) -> dict[str, Any]:
    return {"opening": row["opening"], "opening_source": row["opening_source"],
            "turns_a": json.loads(row["turns_a"]), "turns_b": json.loads(row["turns_b"]), "end_a": row["end_a"],
            "end_b": row["end_b"], "max_turns": int(row["max_turns"])}


_READ_ONLY = "arena_read_only"  # execution option of read connections: a plain BEGIN on SQLite (no write lock)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, synchronous=FULL, foreign keys on every connection; each write transaction a ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver opens no transaction of its own: we emit BEGIN
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


class ArenaStore:
    """Battles, turns and votes in one database; safe to share between threads (and, on PostgreSQL, between
    processes and hosts). Every method runs in its own transaction, committed before it returns."""

    def __init__(self, url: str, *, pool_size: int = 8, max_overflow: int = 40) -> None:
        self.url = url
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        if self.backend == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError("the vote store needs a SQLite file (sqlite:///path/arena.sqlite3), not memory")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow,
                                        connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)
        try:
            migrate(self.engine)
        except Exception:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"ArenaStore({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The URL with its password masked."""
        return _safe(self.url)

    def _read(self) -> Connection:
        """A connection for reading (rolled back when closed)."""
        return self.engine.connect().execution_options(**{_READ_ONLY: True})

    def close(self) -> None:
        self.engine.dispose()

    def schema_version(self) -> int:
        with self._read() as conn:
            return current_version(conn)

    # ---- writes

    def add_battle(self, *, id: str, session_hash: str, model_a: str, model_b: str, checkpoint_a: str | None,
                   checkpoint_b: str | None, settings_a: dict[str, Any], settings_b: dict[str, Any],
                   anony: bool = True, source: str = "arena", language: str | None = None,
                   created: float | None = None, kind: str = "single", series_id: str | None = None,
                   pair_weight: float | None = None, context: Iterable[tuple[str, str]] = ()) -> None:
        """Store a served battle; ``context``: (message, reply) turns both sides share, stored as its first turns
        with the same reply on both sides (a per-turn battle's conversation so far), in the same transaction."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        now = time.time() if created is None else created
        with self.engine.begin() as conn:
            conn.execute(battles.insert().values(
                id=id, created=now, session_hash=session_hash,
                model_a=model_a, model_b=model_b, checkpoint_a=checkpoint_a, checkpoint_b=checkpoint_b,
                settings_a=json.dumps(settings_a, sort_keys=True), settings_b=json.dumps(settings_b, sort_keys=True),
                anony=anony, source=source, language=language, kind=kind, series_id=series_id,
                pair_weight=pair_weight))
            rows = [dict(battle_id=id, turn_index=k, message=m, reply_a=r, reply_b=r, detail_a=SHARED,
                         detail_b=SHARED, tstamp=now) for k, (m, r) in enumerate(context)]
            if rows:
                conn.execute(turns.insert(), rows)

    def add_turn(self, battle_id: str, *, message: str, reply_a: str, reply_b: str, detail_a: dict[str, Any],
                 detail_b: dict[str, Any], tstamp: float | None = None) -> int:
        """Append the next turn of a battle; return its index (0 for the first)."""
        with self.engine.begin() as conn:
            n = conn.execute(select(func.count()).select_from(turns).where(turns.c.battle_id == battle_id)).scalar()
            conn.execute(turns.insert().values(
                battle_id=battle_id, turn_index=n, message=message, reply_a=reply_a, reply_b=reply_b,
                detail_a=json.dumps(detail_a, default=str), detail_b=json.dumps(detail_b, default=str),
                tstamp=time.time() if tstamp is None else tstamp))
        return int(n)

    def add_dialogues(self, battle_id: str, *, opening: str, opening_source: str, turns_a: list[str],
                      turns_b: list[str], end_a: str, end_b: str, max_turns: int, tstamp: float | None = None) -> None:
        """Store the two self-chats of a 'dialogue' battle (each one's turns after the opening, and why it ended);
        once per battle."""
        if opening_source not in OPENING_SOURCES:
            raise ValueError(f"opening_source must be one of {list(OPENING_SOURCES)}, got {opening_source!r}")
        try:
            with self.engine.begin() as conn:
                conn.execute(dialogues.insert().values(
                    battle_id=battle_id, opening=opening, opening_source=opening_source,
                    turns_a=json.dumps(list(turns_a), ensure_ascii=False),
                    turns_b=json.dumps(list(turns_b), ensure_ascii=False), end_a=end_a, end_b=end_b,
                    max_turns=max_turns, tstamp=time.time() if tstamp is None else tstamp))
        except IntegrityError as e:
            if self.battle(battle_id) is None:
                raise UnknownBattle("this battle does not exist: start a new battle") from e
            raise AlreadyVoted("this battle's dialogues are stored already: start a new battle") from e

    def add_vote(self, battle_id: str, *, winner: str, session_hash: str, turns: int, judge: str | None = None,
                 tstamp: float | None = None) -> float:
        """Store the battle's one vote; committed (and on SQLite fsynced) before returning its tstamp.
        A second vote for the battle, from any thread or replica, raises :class:`AlreadyVoted`."""
        if winner not in WINNERS:
            raise ValueError(f"winner must be one of {list(WINNERS)}, got {winner!r}")
        tstamp = time.time() if tstamp is None else tstamp
        try:
            with self.engine.begin() as conn:
                conn.execute(votes.insert().values(battle_id=battle_id, winner=winner, tstamp=tstamp, turns=turns,
                                                   session_hash=session_hash, judge=judge))
        except IntegrityError as e:
            if self.battle(battle_id) is None:
                raise UnknownBattle("this battle does not exist: start a new battle") from e
            raise AlreadyVoted("this battle already has its vote: start a new battle") from e
        return tstamp

    # ---- reads

    def battle(self, battle_id: str) -> BattleRecord | None:
        """The battle with its number of turns and its vote, or None."""
        n_turns = (select(func.count()).select_from(turns).where(turns.c.battle_id == battles.c.id)
                   .scalar_subquery())
        q = (select(battles, n_turns.label("n_turns"), votes.c.winner, dialogues.c.battle_id.label("dialogue"))
             .outerjoin(votes, votes.c.battle_id == battles.c.id)
             .outerjoin(dialogues, dialogues.c.battle_id == battles.c.id).where(battles.c.id == battle_id))
        with self._read() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            return None
        return BattleRecord(
            id=row["id"], created=row["created"], session_hash=row["session_hash"], model_a=row["model_a"],
            model_b=row["model_b"], checkpoint_a=row["checkpoint_a"], checkpoint_b=row["checkpoint_b"],
            settings_a=json.loads(row["settings_a"]), settings_b=json.loads(row["settings_b"]),
            anony=bool(row["anony"]), source=row["source"], language=row["language"], turns=int(row["n_turns"]),
            winner=row["winner"], kind=row["kind"], series_id=row["series_id"], pair_weight=row["pair_weight"],
            has_dialogues=row["dialogue"] is not None)

    def dialogue_of(self, battle_id: str) -> dict[str, Any] | None:
        """The stored self-chats of a 'dialogue' battle (opening, opening_source, turns_a/b, end_a/b, max_turns),
        or None."""
        with self._read() as conn:
            row = conn.execute(select(dialogues).where(dialogues.c.battle_id == battle_id)).mappings().first()
        return None if row is None else _dialogue(row)

    def turns_of(self, battle_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(turns).where(turns.c.battle_id == battle_id)
                                .order_by(turns.c.turn_index)).mappings().all()
        return [{**r, "detail_a": json.loads(r["detail_a"]), "detail_b": json.loads(r["detail_b"])} for r in rows]

    def counts(self) -> dict[str, int]:
        """Rows per table: battles, turns, votes, dialogues."""
        with self._read() as conn:
            return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar())
                    for t in (battles, turns, votes, dialogues)}

    def pair_counts(self, source: str = "arena") -> dict[tuple[str, str], int]:
        """Battles served per unordered pair of bots (key: the two names sorted); a per-turn series counts once."""
        q = (select(battles.c.model_a, battles.c.model_b, func.count()).where(battles.c.source == source)
             .where(battles.c.series_id.is_(None) | (battles.c.series_id == battles.c.id))
             .group_by(battles.c.model_a, battles.c.model_b))
        out: dict[tuple[str, str], int] = {}
        with self._read() as conn:
            for a, b, n in conn.execute(q):
                key = (min(a, b), max(a, b))
                out[key] = out.get(key, 0) + int(n)
        return out

    def votes_frame(self) -> pd.DataFrame:
        """One row per vote (:data:`VOTE_COLUMNS`): question_id, model_a, model_b, winner, tstamp, turn, judge,
        anony, language, source, kind, series_id, pair_weight."""
        q = (select(votes.c.battle_id.label("question_id"), battles.c.model_a, battles.c.model_b, votes.c.winner,
                    votes.c.tstamp, votes.c.turns.label("turn"), votes.c.judge, battles.c.anony, battles.c.language,
                    battles.c.source, battles.c.kind, battles.c.series_id, battles.c.pair_weight)
             .join(battles, battles.c.id == votes.c.battle_id).order_by(votes.c.tstamp, votes.c.battle_id))
        with self._read() as conn:
            rows = conn.execute(q).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=VOTE_COLUMNS)

    def iter_votes_with_turns(self, chunk: int = 500) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]],
                                                                        dict[str, Any] | None]]:
        """(vote row, its turns in order, its dialogues or None) for every vote, oldest first; read in chunks."""
        records = self.votes_frame().to_dict("records")
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            ids = [r["question_id"] for r in part]
            with self._read() as conn:
                rows = conn.execute(select(turns).where(turns.c.battle_id.in_(ids))
                                    .order_by(turns.c.battle_id, turns.c.turn_index)).mappings().all()
                dia = {d["battle_id"]: _dialogue(d) for d in conn.execute(
                    select(dialogues).where(dialogues.c.battle_id.in_(ids))).mappings()}
            by_id: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                by_id.setdefault(r["battle_id"], []).append(dict(r))
            for r in part:
                yield r, by_id.get(r["question_id"], []), dia.get(r["question_id"])

    # ---- import

    def import_battles(self, records: Iterable[dict[str, Any]], *, chunk: int = 1000) -> tuple[int, int]:
        """Store voted battles given as dicts (see :func:`core.arena.interchange.parse_record`: with ``turns``, or
        a ``dialogue`` for a 'dialogue' battle), all in one transaction; a battle whose id is already stored is
        skipped. Returns (added, skipped)."""
        added = skipped = 0
        with self.engine.begin() as conn:
            batch: list[dict[str, Any]] = []

            def flush() -> None:
                nonlocal added, skipped
                ids = [r["question_id"] for r in batch]
                have = set(conn.execute(select(battles.c.id).where(battles.c.id.in_(ids))).scalars())
                new = [r for r in batch if r["question_id"] not in have]
                skipped += len(batch) - len(new)
                added += len(new)
                if not new:
                    return
                conn.execute(battles.insert(), [dict(
                    id=r["question_id"], created=r["tstamp"], session_hash="import", model_a=r["model_a"],
                    model_b=r["model_b"], checkpoint_a=None, checkpoint_b=None, settings_a="{}", settings_b="{}",
                    anony=r["anony"], source="import", language=r["language"], kind=r.get("kind", "single"),
                    series_id=None, pair_weight=r.get("pair_weight")) for r in new])
                turn_rows = [dict(battle_id=r["question_id"], turn_index=i, message=t["message"],
                                  reply_a=t["reply_a"], reply_b=t["reply_b"], detail_a="{}", detail_b="{}",
                                  tstamp=r["tstamp"]) for r in new if not r.get("dialogue")
                             for i, t in enumerate(r["turns"])]
                if turn_rows:
                    conn.execute(turns.insert(), turn_rows)
                dia_rows = [dict(battle_id=r["question_id"], opening=d["opening"], opening_source="unknown",
                                 turns_a=json.dumps(d["turns_a"], ensure_ascii=False),
                                 turns_b=json.dumps(d["turns_b"], ensure_ascii=False), end_a="unknown",
                                 end_b="unknown", max_turns=max(len(d["turns_a"]), len(d["turns_b"])),
                                 tstamp=r["tstamp"]) for r in new if (d := r.get("dialogue"))]
                if dia_rows:
                    conn.execute(dialogues.insert(), dia_rows)
                conn.execute(votes.insert(), [dict(
                    battle_id=r["question_id"], winner=r["winner"], tstamp=r["tstamp"], turns=r["turn"],
                    session_hash="import", judge=r["judge"]) for r in new])

            seen: set[str] = set()
            for record in records:
                if record["question_id"] in seen:  # the same id twice in one file: the first one counts
                    skipped += 1
                    continue
                seen.add(record["question_id"])
                batch.append(record)
                if len(batch) >= chunk:
                    flush()
                    batch = []
            if batch:
                flush()
        return added, skipped

