"""The vote store's tables and their migrations (SQLAlchemy Core; SQLite and PostgreSQL).

Schema version 3:
    schema_version  one row per applied migration step (version, applied)
    battles         id, created, session_hash, model_a/b, checkpoint_a/b, settings_a/b (JSON), anony,
                    source ('arena' | 'import'), language, kind ('single' | 'per_turn' | 'dialogue'),
                    series_id (per-turn battles of one conversation share it), pair_weight (the inverse-propensity
                    weight of an actively drawn pair; NULL: weight 1)
    turns           battle_id, turn_index, message, reply_a/b, detail_a/b (JSON), tstamp
    votes           battle_id (UNIQUE: one vote per battle, across every replica), winner, tstamp, turns,
                    session_hash, judge
    dialogues       battle_id (a 'dialogue' battle), opening, opening_source ('typed' | 'held_out' | 'unknown'),
                    turns_a/b (JSON lists: each self-chat's turns after the opening), end_a/b, max_turns, tstamp

Step n of :data:`MIGRATIONS` takes a database at version n-1 to version n; :func:`migrate` runs the missing steps
in one transaction (on PostgreSQL under an advisory lock, so replicas starting together migrate once).

    >>> migrate(create_engine("sqlite:///arena_data/arena.sqlite3"))
    3
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
)

MAX_ID_LEN = 128  # battle ids: uuid4 hex here, FastChat's question_id on import
MAX_NAME_LEN = 200
KINDS = ("single", "per_turn", "dialogue")  # single: one vote on a whole battle; per_turn: one vote per turn of a
# shared conversation; dialogue: one vote on two self-chats from the same opening (ACUTE-Eval)
OPENING_SOURCES = ("typed", "held_out", "unknown")  # unknown: an imported dialogue

# ----------------------------------------------------------------------------- tables (current schema)

metadata = MetaData()
schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied", Float, nullable=False),
)
battles = Table(
    "battles", metadata,
    Column("id", String(MAX_ID_LEN), primary_key=True),
    Column("created", Float, nullable=False),
    Column("session_hash", String(64), nullable=False),
    Column("model_a", String(MAX_NAME_LEN), nullable=False),
    Column("model_b", String(MAX_NAME_LEN), nullable=False),
    Column("checkpoint_a", String(64)),
    Column("checkpoint_b", String(64)),
    Column("settings_a", Text, nullable=False),
    Column("settings_b", Text, nullable=False),
    Column("anony", Boolean, nullable=False),
    Column("source", String(16), nullable=False),  # v2
    Column("language", String(64)),  # v2
    Column("kind", String(16), nullable=False),  # v3
    Column("series_id", String(MAX_ID_LEN)),  # v3
    Column("pair_weight", Float),  # v3
)
turns = Table(
    "turns", metadata,
    Column("battle_id", String(MAX_ID_LEN), ForeignKey("battles.id"), primary_key=True),
    Column("turn_index", Integer, primary_key=True),
    Column("message", Text, nullable=False),
    Column("reply_a", Text, nullable=False),
    Column("reply_b", Text, nullable=False),
    Column("detail_a", Text, nullable=False),
    Column("detail_b", Text, nullable=False),
    Column("tstamp", Float, nullable=False),
)
votes = Table(
    "votes", metadata,
    Column("battle_id", String(MAX_ID_LEN), ForeignKey("battles.id"), primary_key=True),  # one vote per battle
    Column("winner", String(16), nullable=False),
    Column("tstamp", Float, nullable=False),
    Column("turns", Integer, nullable=False),
    Column("session_hash", String(64), nullable=False),
    Column("judge", String(MAX_NAME_LEN)),  # v2
)
dialogues = Table(  # v3
    "dialogues", metadata,
    Column("battle_id", String(MAX_ID_LEN), ForeignKey("battles.id"), primary_key=True),
    Column("opening", Text, nullable=False),
    Column("opening_source", String(16), nullable=False),
    Column("turns_a", Text, nullable=False),
    Column("turns_b", Text, nullable=False),
    Column("end_a", String(16), nullable=False),
    Column("end_b", String(16), nullable=False),
    Column("max_turns", Integer, nullable=False),
    Column("tstamp", Float, nullable=False),
)

# ----------------------------------------------------------------------------- migrations
# A new database runs every step, an old one the rest, so both paths are the same code. Append steps; never edit
# a released one.

_V1_DDL = (
    """CREATE TABLE battles (
        id VARCHAR(128) PRIMARY KEY, created FLOAT NOT NULL, session_hash VARCHAR(64) NOT NULL,
        model_a VARCHAR(200) NOT NULL, model_b VARCHAR(200) NOT NULL, checkpoint_a VARCHAR(64),
        checkpoint_b VARCHAR(64), settings_a TEXT NOT NULL, settings_b TEXT NOT NULL, anony BOOLEAN NOT NULL)""",
    """CREATE TABLE turns (
        battle_id VARCHAR(128) NOT NULL REFERENCES battles(id), turn_index INTEGER NOT NULL,
        message TEXT NOT NULL, reply_a TEXT NOT NULL, reply_b TEXT NOT NULL, detail_a TEXT NOT NULL,
        detail_b TEXT NOT NULL, tstamp FLOAT NOT NULL, PRIMARY KEY (battle_id, turn_index))""",
    """CREATE TABLE votes (
        battle_id VARCHAR(128) PRIMARY KEY REFERENCES battles(id),
        winner VARCHAR(16) NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie', 'tie (bothbad)')),
        tstamp FLOAT NOT NULL, turns INTEGER NOT NULL, session_hash VARCHAR(64) NOT NULL)""",
)
_V2_DDL = (  # FastChat interchange: imported battles, their language and judge
    "ALTER TABLE battles ADD COLUMN source VARCHAR(16) NOT NULL DEFAULT 'arena'",
    "ALTER TABLE battles ADD COLUMN language VARCHAR(64)",
    "ALTER TABLE votes ADD COLUMN judge VARCHAR(200)",
    "CREATE INDEX ix_votes_tstamp ON votes (tstamp)",
)
_V3_DDL = (  # battle kinds: per-turn series and whole dialogues (every earlier battle is a 'single' one), the
    # weights of actively drawn pairs
    "ALTER TABLE battles ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'single' "
    "CHECK (kind IN ('single', 'per_turn', 'dialogue'))",
    "ALTER TABLE battles ADD COLUMN series_id VARCHAR(128)",
    "ALTER TABLE battles ADD COLUMN pair_weight FLOAT",
    """CREATE TABLE dialogues (
        battle_id VARCHAR(128) PRIMARY KEY REFERENCES battles(id), opening TEXT NOT NULL,
        opening_source VARCHAR(16) NOT NULL CHECK (opening_source IN ('typed', 'held_out', 'unknown')),
        turns_a TEXT NOT NULL, turns_b TEXT NOT NULL, end_a VARCHAR(16) NOT NULL, end_b VARCHAR(16) NOT NULL,
        max_turns INTEGER NOT NULL, tstamp FLOAT NOT NULL)""",
    "CREATE INDEX ix_battles_kind ON battles (kind)",
    "CREATE INDEX ix_battles_series ON battles (series_id)",
)


def _ddl(statements: tuple[str, ...]) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for sql in statements:
            conn.exec_driver_sql(sql)
    return step


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_ddl(_V1_DDL), _ddl(_V2_DDL), _ddl(_V3_DDL))
SCHEMA_VERSION = len(MIGRATIONS)
_PG_MIGRATION_LOCK = 0x41_52_45_4E_41  # pg_advisory_xact_lock key: replicas starting together migrate once


def current_version(conn: Connection) -> int:
    """The schema version of the database behind ``conn`` (0: empty)."""
    if not conn.dialect.has_table(conn, "schema_version"):
        return 0
    return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Apply the missing migration steps in order, in one transaction; return the version reached."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        version = current_version(conn)
        if version > SCHEMA_VERSION:
            raise ValueError(f"the vote database is at schema version {version}, newer than this code "
                             f"({SCHEMA_VERSION}): upgrade chatbot-arena")
        if version == 0:
            schema_version.create(conn)
        for n in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[n - 1](conn)
            conn.execute(schema_version.insert().values(version=n, applied=time.time()))
    return SCHEMA_VERSION
