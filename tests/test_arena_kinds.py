"""Battle kinds on real databases (a SQLite file and a throw-away PostgreSQL cluster): per-turn series and whole
dialogues through the battle service, stored with their kind, and out again in FastChat's clean-battle format
(``conversation_a`` / ``conversation_b``) and back in; active pairing stores its weights.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_kinds.py
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from core.arena import Arena, ArenaError, ArenaStore, NotReady
from core.arena.battles import continued_side
from core.arena.interchange import export_records, import_votes, read_votes, write_votes


@pytest.fixture
def arena(db_url):
    store = ArenaStore(db_url)
    yield Arena(store, ["greedy", "beam", "rl"], salt="kinds", rng=0)
    store.close()


def test_a_per_turn_series_is_one_vote_per_turn_on_a_shared_conversation(arena):
    s = "session-1"
    first = arena.new_battle(s, kind="per_turn")
    assert (first.kind, first.series_id) == ("per_turn", None)
    with pytest.raises(NotReady, match="once both replies are shown"):
        arena.vote(first.id, s, "model_a")
    arena.record_turn(first.id, s, "hi", {"text": "hello there"}, {"text": "hey"})
    with pytest.raises(NotReady, match="pick the better reply first"):
        arena.record_turn(first.id, s, "again", {"text": "a"}, {"text": "b"})
    with pytest.raises(NotReady, match="pick the better reply first"):
        arena.continue_series(first.id, s)
    result = arena.vote(first.id, s, "model_b")
    assert (result.kind, result.continued, result.turns) == ("per_turn", "b", 1)

    second = arena.continue_series(first.id, s)
    assert (second.model_a, second.model_b, second.series_id) == (first.model_a, first.model_b, first.id)
    turns = arena.store.turns_of(second.id)
    assert [(t["message"], t["reply_a"], t["reply_b"]) for t in turns] == [("hi", "hey", "hey")]  # B's reply, shared
    arena.record_turn(second.id, s, "how are you?", {"text": "fine"}, {"text": "good, you?"})
    tie = arena.vote(second.id, s, "tie")
    assert tie.continued == continued_side(second.id, "tie") and tie.turns == 2
    third = arena.continue_series(second.id, s)
    assert third.series_id == first.id
    chosen = {"a": "fine", "b": "good, you?"}[tie.continued]
    assert [t["reply_a"] for t in arena.store.turns_of(third.id)] == ["hey", chosen]
    assert arena.store.pair_counts() == {tuple(sorted((first.model_a, first.model_b))): 1}  # one series, one draw

    with pytest.raises(ArenaError, match="only a per-turn battle"):
        arena.continue_series(arena.new_battle(s).id, s)
    records = list(export_records(arena.store))
    assert [(r["kind"], r["winner"], r["turn"]) for r in records] == [("per_turn", "model_b", 1),
                                                                     ("per_turn", "tie", 2)]
    assert records[1]["conversation_a"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine"}]
    assert records[1]["conversation_b"][:2] == records[1]["conversation_a"][:2]  # the shared conversation
    assert records[1]["conversation_b"][-1] == {"role": "assistant", "content": "good, you?"}


def dialogue(opening: str, *turns: str, end: str = "dull") -> SimpleNamespace:
    """What core.evaluation.evaluate.simulate returns for one dialogue: its turns (the opening first) and why it
    ended."""
    return SimpleNamespace(turns=[opening, *turns], end=end)


def test_a_whole_dialogue_vote_keeps_both_dialogues_and_travels_as_clean_battle_records(arena, db_url, tmp_path):
    s = "session-2"
    battle = arena.new_battle(s, kind="dialogue")
    with pytest.raises(NotReady, match="once both dialogues are shown"):
        arena.vote(battle.id, s, "model_a")
    with pytest.raises(ArenaError, match="takes no messages"):
        arena.record_turn(battle.id, s, "hi", {"text": "a"}, {"text": "b"})
    with pytest.raises(ValueError, match="does not start with the battle's opening"):
        arena.record_dialogues(battle.id, s, opening="hi", opening_source="typed", max_turns=8,
                               dialogue_a=dialogue("hello"), dialogue_b=dialogue("hi"))
    n = arena.record_dialogues(battle.id, s, opening="do you like dogs?", opening_source="held_out", max_turns=8,
                               dialogue_a=dialogue("do you like dogs?", "yes i love them", "what kind?",
                                                   end="repetition"),
                               dialogue_b=dialogue("do you like dogs?", "i do", end="dull"))
    assert n == 2
    result = arena.vote(battle.id, s, "model_a")
    assert (result.kind, result.turns, result.continued) == ("dialogue", 2, None)
    stored = arena.store.dialogue_of(battle.id)
    assert stored["turns_a"] == ["yes i love them", "what kind?"] and stored["end_a"] == "repetition"
    assert stored["opening_source"] == "held_out" and arena.store.battle(battle.id).has_dialogues
    with pytest.raises(ArenaError, match="only a whole-dialogue battle"):
        arena.record_dialogues(arena.new_battle(s).id, s, opening="x", opening_source="typed", max_turns=8,
                               dialogue_a=dialogue("x"), dialogue_b=dialogue("x"))

    # out in the clean-battle format, the self-chats as OpenAI-style messages with alternating roles
    out = tmp_path / "votes.jsonl"
    assert write_votes(arena.store, out) == 1
    record = json.loads(out.read_text(encoding="utf-8"))
    assert (record["kind"], record["turn"], record["winner"]) == ("dialogue", 2, "model_a")
    assert record["conversation_a"] == [{"role": "user", "content": "do you like dogs?"},
                                        {"role": "assistant", "content": "yes i love them"},
                                        {"role": "user", "content": "what kind?"}]
    assert record["conversation_b"] == [{"role": "user", "content": "do you like dogs?"},
                                        {"role": "assistant", "content": "i do"}]
    # ... and back in: a fresh store of the same backend holds the same record
    other = ArenaStore(f"sqlite:///{tmp_path / 'again.sqlite3'}")
    try:
        assert import_votes(other, out) == (1, 0)
        again = next(export_records(other))
        assert {k: again[k] for k in record} == record
        assert other.battle(battle.id).kind == "dialogue" and other.dialogue_of(battle.id)["turns_b"] == ["i do"]
    finally:
        other.close()
    frame = read_votes(out)
    assert frame.loc[0, "kind"] == "dialogue" and frame.loc[0, "words_a"] == pytest.approx(3.0)  # (4 + 2) / 2
    assert frame.loc[0, "question_a"] == 0.5 and frame.loc[0, "question_b"] == 0.0


def test_bad_kinds_and_dialogue_records_are_refused_with_their_message(arena, tmp_path):
    with pytest.raises(ArenaError, match="a battle is one of single, per_turn, dialogue"):
        arena.new_battle("s", kind="duel")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": "q1", "model_a": "x", "model_b": "y", "winner": "tie",
                               "kind": "dialogue", "conversation_a": [{"role": "user", "content": "hi"}],
                               "conversation_b": [{"role": "user", "content": "hello"}]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1: a dialogue vote's two self-chats must start from the same"):
        import_votes(arena.store, bad)
    bad.write_text(json.dumps({"question_id": "q1", "model_a": "x", "model_b": "y", "winner": "tie",
                               "pair_weight": -1}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="pair_weight must be a positive number"):
        import_votes(arena.store, bad)
    assert arena.store.counts()["votes"] == 0  # nothing of a bad file is stored


def test_active_pairing_stores_each_battles_inverse_propensity_weight(tmp_path, monkeypatch):
    store = ArenaStore(f"sqlite:///{tmp_path / 'active.sqlite3'}")
    try:
        arena = Arena(store, ["w", "x", "y", "z"], rng=1, pairing="active", max_votes=10**6, max_battles=10**6)
        for k in range(60):
            battle = arena.new_battle(f"s{k}")
            arena.record_turn(battle.id, f"s{k}", "hi", {"text": "a"}, {"text": "b"})
            arena.vote(battle.id, f"s{k}", "model_a" if "w" in (battle.model_a,) else "tie")
        frame = store.votes_frame()
        assert frame["pair_weight"].notna().all() and (frame["pair_weight"] > 0).all()
        assert frame["pair_weight"].max() <= 1 / 0.1 + 1e-9  # the uniform floor bounds every weight
        assert frame.groupby(["model_a", "model_b"]).ngroups > 6  # every pair drawn, on both sides
        record = next(export_records(store))
        assert record["pair_weight"] == pytest.approx(frame.loc[0, "pair_weight"])
        monkeypatch.setenv("ARENA_PAIRING", "active")  # how `chatbot-arena serve` is switched over
        assert Arena(store, ["x", "y"]).pairing == "active"
        monkeypatch.setenv("ARENA_PAIRING", "sideways")
        with pytest.raises(ValueError, match="got 'sideways'"):
            Arena(store, ["x", "y"])
        with pytest.raises(ValueError, match="pairing \\(or \\$ARENA_PAIRING\\) must be one of"):
            Arena(store, ["x", "y"], pairing="greedy")
    finally:
        store.close()
