"""The vote store and the battle service on real databases: a SQLite file and a throw-away PostgreSQL cluster.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_store.py
"""

from __future__ import annotations

import threading
from collections import Counter

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from core.arena import (
    AlreadyVoted,
    Arena,
    ArenaError,
    ArenaStore,
    NotReady,
    NotYourBattle,
    RateLimited,
    UnknownBattle,
    resolve_db_url,
)
from core.arena.store import SCHEMA_VERSION


@pytest.fixture
def store(db_url):
    s = ArenaStore(db_url)
    yield s
    s.close()


class FakeClock:
    """A clock the test moves by hand (rate limits without sleeping)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def add_battle(store: ArenaStore, bid: str, a: str = "greedy", b: str = "beam") -> None:
    store.add_battle(id=bid, session_hash="s" * 64, model_a=a, model_b=b, checkpoint_a="0123456789abcdef",
                     checkpoint_b=None, settings_a={"strategy": "greedy"}, settings_b={"beam_size": 10})


def played(arena: Arena, session: str = "session-1"):
    """A battle with one complete turn, ready for its vote."""
    battle = arena.new_battle(session)
    arena.record_turn(battle.id, session, "hi there", {"text": "hello", "score": -1.5}, {"text": "hey"})
    return battle


# ----------------------------------------------------------------------------- schema


def test_new_store_is_at_the_current_schema(store, db_url):
    assert store.schema_version() == SCHEMA_VERSION == 3
    assert store.counts() == {"battles": 0, "turns": 0, "votes": 0, "dialogues": 0}
    if store.backend == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: fsync at each commit
    ArenaStore(db_url).close()  # opening again migrates nothing and keeps the version
    assert store.schema_version() == SCHEMA_VERSION


V1_SCHEMA = [  # the first released layout, written out by hand
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied FLOAT NOT NULL)",
    "INSERT INTO schema_version VALUES (1, 1700000000.0)",
    """CREATE TABLE battles (id VARCHAR(128) PRIMARY KEY, created FLOAT NOT NULL, session_hash VARCHAR(64) NOT NULL,
        model_a VARCHAR(200) NOT NULL, model_b VARCHAR(200) NOT NULL, checkpoint_a VARCHAR(64),
        checkpoint_b VARCHAR(64), settings_a TEXT NOT NULL, settings_b TEXT NOT NULL, anony BOOLEAN NOT NULL)""",
    """CREATE TABLE turns (battle_id VARCHAR(128) NOT NULL REFERENCES battles(id), turn_index INTEGER NOT NULL,
        message TEXT NOT NULL, reply_a TEXT NOT NULL, reply_b TEXT NOT NULL, detail_a TEXT NOT NULL,
        detail_b TEXT NOT NULL, tstamp FLOAT NOT NULL, PRIMARY KEY (battle_id, turn_index))""",
    """CREATE TABLE votes (battle_id VARCHAR(128) PRIMARY KEY REFERENCES battles(id), winner VARCHAR(16) NOT NULL
        CHECK (winner IN ('model_a', 'model_b', 'tie', 'tie (bothbad)')), tstamp FLOAT NOT NULL,
        turns INTEGER NOT NULL, session_hash VARCHAR(64) NOT NULL)""",
    """INSERT INTO battles VALUES ('old1', 1700000001.0, 'abc', 'greedy', 'rl', NULL, NULL, '{}',
        '{"strategy": "beam"}', TRUE)""",
    "INSERT INTO turns VALUES ('old1', 0, 'hello', 'hi', 'hey', '{}', '{}', 1700000002.0)",
    "INSERT INTO votes VALUES ('old1', 'model_b', 1700000003.0, 1, 'abc')",
]


V2_STEPS = [  # the second release's migration, written out by hand, and an imported battle
    "ALTER TABLE battles ADD COLUMN source VARCHAR(16) NOT NULL DEFAULT 'arena'",
    "ALTER TABLE battles ADD COLUMN language VARCHAR(64)",
    "ALTER TABLE votes ADD COLUMN judge VARCHAR(200)",
    "CREATE INDEX ix_votes_tstamp ON votes (tstamp)",
    "INSERT INTO schema_version VALUES (2, 1700000010.0)",
    """INSERT INTO battles VALUES ('imp1', 1700000011.0, 'import', 'x', 'y', NULL, NULL, '{}', '{}', TRUE, 'import',
        'English')""",
    "INSERT INTO turns VALUES ('imp1', 0, 'q', 'a', 'b', '{}', '{}', 1700000011.0)",
    "INSERT INTO votes VALUES ('imp1', 'tie', 1700000011.0, 1, 'import', 'fastchat_user')",
]


@pytest.mark.parametrize("old", [1, 2])
def test_migrates_an_old_database_to_the_current_schema(db_url, old):
    """A database of each earlier release opens: every old vote keeps its rows and is a 'single' battle's vote,
    and the migrated tables take the new kinds."""
    if db_url.startswith("sqlite"):
        from pathlib import Path
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        for sql in V1_SCHEMA + (V2_STEPS if old == 2 else []):
            conn.execute(text(sql))
    engine.dispose()

    store = ArenaStore(db_url)
    assert store.schema_version() == SCHEMA_VERSION
    old1 = store.battle("old1")
    assert (old1.model_a, old1.model_b, old1.winner, old1.turns, old1.source, old1.language) == \
        ("greedy", "rl", "model_b", 1, "arena", None)
    assert (old1.kind, old1.series_id, old1.pair_weight, old1.has_dialogues) == ("single", None, None, False)
    assert old1.settings_b == {"strategy": "beam"}
    frame = store.votes_frame()
    assert pd.isna(frame.loc[0, "judge"]) and frame.loc[0, "question_id"] == "old1"
    assert frame["kind"].tolist() == ["single"] * (1 if old == 1 else 2)
    if old == 2:
        assert store.battle("imp1").source == "import" and frame.loc[1, "judge"] == "fastchat_user"
    with store.engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT version FROM schema_version ORDER BY version"))] == [1, 2, 3]
    add_battle(store, "new1")  # the migrated tables take new rows with the new columns
    store.add_turn("new1", message="m", reply_a="a", reply_b="b", detail_a={}, detail_b={})
    store.add_vote("new1", winner="tie", session_hash="s", turns=1, judge="arena_user_x")
    store.add_battle(id="dia1", session_hash="s", model_a="x", model_b="y", checkpoint_a=None, checkpoint_b=None,
                     settings_a={}, settings_b={}, kind="dialogue")
    store.add_dialogues("dia1", opening="hi", opening_source="typed", turns_a=["hello"], turns_b=["hey", "you?"],
                        end_a="dull", end_b="limit", max_turns=8)
    assert store.battle("dia1").kind == "dialogue" and store.dialogue_of("dia1")["turns_b"] == ["hey", "you?"]
    with pytest.raises(IntegrityError), store.engine.begin() as conn:  # the kind is checked by the database
        conn.execute(text("UPDATE battles SET kind = 'duel' WHERE id = 'new1'"))
    store.close()


def test_resolve_db_url(tmp_path, monkeypatch):
    monkeypatch.delenv("ARENA_DB_URL", raising=False)
    assert resolve_db_url(None, tmp_path) == f"sqlite:///{tmp_path}/arena.sqlite3"
    assert resolve_db_url("postgresql://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert resolve_db_url("postgresql+psycopg://u@h/db", tmp_path) == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("ARENA_DB_URL", "sqlite:///elsewhere.sqlite3")
    assert resolve_db_url(None, tmp_path) == "sqlite:///elsewhere.sqlite3"
    with pytest.raises(ValueError, match="only sqlite"):
        resolve_db_url("mysql://u:secret@h/db", None)
    with pytest.raises(ValueError, match="not a database URL") as e:
        resolve_db_url("not a url at all", None)
    assert "secret" not in str(e.value)


# ----------------------------------------------------------------------------- rows and the UNIQUE vote


def test_battle_turns_and_vote_round_trip(store):
    add_battle(store, "b1")
    assert store.add_turn("b1", message="hi", reply_a="hello", reply_b="hey", detail_a={"score": -1.0},
                          detail_b={}) == 0
    assert store.add_turn("b1", message="how are you?", reply_a="fine", reply_b="good", detail_a={},
                          detail_b={}) == 1
    rec = store.battle("b1")
    assert (rec.turns, rec.winner, rec.checkpoint_a, rec.settings_b) == (2, None, "0123456789abcdef",
                                                                         {"beam_size": 10})
    store.add_vote("b1", winner="tie (bothbad)", session_hash="s" * 64, turns=2, judge="arena_user_s")
    assert store.battle("b1").winner == "tie (bothbad)"
    assert [t["message"] for t in store.turns_of("b1")] == ["hi", "how are you?"]
    assert store.turns_of("b1")[0]["detail_a"] == {"score": -1.0}
    assert store.pair_counts() == {("beam", "greedy"): 1}
    assert store.battle("nope") is None


def test_the_database_itself_allows_one_vote_per_battle(store):
    add_battle(store, "b1")
    store.add_vote("b1", winner="model_a", session_hash="s", turns=1)
    with pytest.raises(AlreadyVoted, match="already has its vote"):
        store.add_vote("b1", winner="model_b", session_hash="s", turns=1)
    with pytest.raises(UnknownBattle, match="does not exist"):
        store.add_vote("never-served", winner="model_b", session_hash="s", turns=1)
    with pytest.raises(IntegrityError), store.engine.begin() as conn:  # around the code: the constraint itself
        conn.execute(text("INSERT INTO votes (battle_id, winner, tstamp, turns, session_hash) "
                          "VALUES ('b1', 'tie', 1.0, 1, 's')"))
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(text("UPDATE votes SET winner = 'model_c' WHERE battle_id = 'b1'"))
    assert store.votes_frame()["winner"].tolist() == ["model_a"]


def _at_once(n: int, fn) -> list:
    """Run fn(i) for i < n in n threads released together; return each result or exception."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_32_threads_vote_on_distinct_battles_at_once(store):
    for i in range(32):
        add_battle(store, f"b{i}")
    results = _at_once(32, lambda i: store.add_vote(f"b{i}", winner="model_a", session_hash="s", turns=1))
    assert [r for r in results if isinstance(r, Exception)] == []
    frame = store.votes_frame()
    assert len(frame) == 32 and frame["question_id"].nunique() == 32


def test_8_threads_vote_on_the_same_battle_one_wins(store):
    add_battle(store, "b1")
    winners = ["model_a", "model_b", "tie", "tie (bothbad)"] * 2
    results = _at_once(8, lambda i: store.add_vote("b1", winner=winners[i], session_hash="s", turns=1))
    accepted = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    assert len(accepted) == 1
    assert all(isinstance(r, AlreadyVoted) for i, r in enumerate(results) if i not in accepted)
    assert store.votes_frame()["winner"].tolist() == [winners[accepted[0]]]


# ----------------------------------------------------------------------------- the battle service


def test_pairs_are_served_evenly_on_both_sides(store):
    arena = Arena(store, ["greedy", "beam", "antilm", "rl"], rng=1, max_battles=1000)
    served = [arena.new_battle(f"s{i % 7}") for i in range(60)]
    pairs = Counter(tuple(sorted((b.model_a, b.model_b))) for b in served)
    assert len(pairs) == 6 and set(pairs.values()) == {10}  # fewest-first: exactly even after 6k battles
    assert len({(b.model_a, b.model_b) for b in served}) == 12  # and each bot is drawn as A and as B
    # a restarted server continues from the stored counts
    again = Arena(store, ["greedy", "beam", "antilm", "rl", "new"], rng=2, max_battles=1000)
    more = [again.new_battle("s") for _ in range(4)]
    assert all("new" in (b.model_a, b.model_b) for b in more)


def test_two_bots_work_and_one_bot_is_a_clear_error(store):
    battle = Arena(store, ["x", "y"], rng=0).new_battle("s")
    assert {battle.model_a, battle.model_b} == {"x", "y"}
    with pytest.raises(ArenaError, match="at least two bots; this server has 1"):
        Arena(store, ["x"]).new_battle("s")


def test_vote_reveals_and_is_stored_with_a_salted_session_hash(store):
    arena = Arena(store, ["greedy", "beam"], salt="pepper", rng=0)
    battle = played(arena, "raw-session-id-123")
    result = arena.vote(battle.id, "raw-session-id-123", "model_a")
    assert (result.model_a, result.model_b, result.turns) == (battle.model_a, battle.model_b, 1)
    assert store.battle(battle.id).winner == "model_a"  # committed before vote() returned
    assert store.turns_of(battle.id)[0]["detail_a"] == {"score": -1.5}
    with store.engine.connect() as conn:
        stored = " ".join(str(v) for t in ("battles", "votes") for row in conn.execute(text(f"SELECT * FROM {t}"))
                          for v in row)
    assert "raw-session-id-123" not in stored
    assert arena.session_hash("raw-session-id-123") in stored
    assert Arena(store, ["greedy", "beam"], salt="other").session_hash("raw-session-id-123") not in stored


def test_every_refusal_has_its_message(store):
    clock = FakeClock()
    arena = Arena(store, ["greedy", "beam", "rl"], rng=0, max_votes=2, max_battles=4, clock=clock)
    with pytest.raises(UnknownBattle, match="does not exist"):
        arena.vote("f" * 32, "me", "model_a")
    fresh = arena.new_battle("me")
    with pytest.raises(NotReady, match="votes are possible once both replies are shown"):
        arena.vote(fresh.id, "me", "model_a")
    mine = played(arena, "me")
    with pytest.raises(NotYourBattle, match="served to another visitor"):
        arena.vote(mine.id, "someone else", "model_a")
    with pytest.raises(NotYourBattle):
        arena.record_turn(mine.id, "someone else", "hi", {"text": "a"}, {"text": "b"})
    with pytest.raises(ArenaError, match="a vote is one of"):
        arena.vote(mine.id, "me", "model_c")
    arena.vote(mine.id, "me", "tie")
    with pytest.raises(AlreadyVoted, match="already has its vote"):
        arena.vote(mine.id, "me", "model_b")  # a replayed vote
    with pytest.raises(AlreadyVoted, match="this battle is over"):
        arena.record_turn(mine.id, "me", "more", {"text": "a"}, {"text": "b"})
    second = played(arena, "me")
    arena.vote(second.id, "me", "model_b")
    third = played(arena, "me")  # the 4th battle of this minute
    with pytest.raises(RateLimited, match="slow down: at most 2 votes per minute"):
        arena.vote(third.id, "me", "model_a")
    with pytest.raises(RateLimited, match="slow down: at most 4 new battles per minute"):
        arena.new_battle("me")
    played(arena, "someone else")  # the limits are per session
    clock.t += 61  # a minute later
    arena.vote(third.id, "me", "model_a")
    arena.new_battle("me")
    assert store.votes_frame()["winner"].tolist() == ["tie", "model_b", "model_a"]


def test_a_battle_has_a_turn_limit(store):
    arena = Arena(store, ["x", "y"], rng=0, max_turns=2)
    battle = played(arena)
    arena.record_turn(battle.id, "session-1", "again", {"text": "a"}, {"text": "b"})
    with pytest.raises(ArenaError, match="at most 2 messages"):
        arena.record_turn(battle.id, "session-1", "third", {"text": "a"}, {"text": "b"})
    other = arena.new_battle("session-1")
    with pytest.raises(ValueError, match="'text' string"):
        arena.record_turn(other.id, "session-1", "m", {"txt": "a"}, {"text": "b"})
