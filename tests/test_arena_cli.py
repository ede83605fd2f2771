"""``chatbot-arena votes export|import`` and ``chatbot-arena leaderboard`` on real SQLite stores and FastChat-format
files with other model names.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_cli.py
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.arena import Arena, ArenaStore, compute_leaderboard
from core.arena.interchange import FIELDS
from core.cli import main

FASTCHAT = [  # clean-battle records as FastChat publishes them (extra keys included)
    {"model_a": "vicuna-13b", "model_b": "koala-13b", "winner": "model_a", "judge": "arena_user_973",
     "turn": 1, "anony": True, "language": "English", "tstamp": 1682351591.1322,
     "question_id": "4ba3d3a6bd1e4c4c9b5c8a1d3e7f0a21", "dedup_tag": {"high_freq": False},
     "conversation_a": [{"role": "user", "content": "What is a GRU?"},
                        {"role": "assistant", "content": "A gated recurrent unit."}],
     "conversation_b": [{"role": "user", "content": "What is a GRU?"},
                        {"role": "assistant", "content": "A kind of RNN."}]},
    {"model_a": "gpt-4", "model_b": "vicuna-13b", "winner": "tie (bothbad)", "judge": "arena_user_12",
     "turn": 2, "anony": False, "language": "German", "tstamp": 1682351600.5, "question_id": "q-2",
     "conversation_a": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Hi"},
                        {"role": "user", "content": "Wie geht's?"}, {"role": "assistant", "content": "Gut"}],
     "conversation_b": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Hallo!"},
                        {"role": "user", "content": "Wie geht's?"}, {"role": "assistant", "content": "Gut, danke"}]},
    {"model_a": "koala-13b", "model_b": "gpt-4", "winner": "model_b", "question_id": "q-3", "tstamp": 1682351700},
    {"model_a": "gpt-4", "model_b": "koala-13b", "winner": "tie", "question_id": "q-4", "tstamp": 1682351800.0},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_fastchat_battles_then_leaderboard_json(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "store")]
    src = write_jsonl(tmp_path / "clean_battle.jsonl", FASTCHAT)
    code, _, err = run(capsys, "votes", "import", str(src), *data)
    assert code == 0 and "imported 4 battles" in err
    code, _, err = run(capsys, "votes", "import", str(src), *data)  # the same file again: nothing new
    assert code == 0 and "imported 0 battles" in err and "4 already there" in err
    code, out, _ = run(capsys, "leaderboard", "--format", "json", "--bootstrap", "50", *data)
    board = json.loads(out)
    assert code == 0 and board["n_votes"] == 4 and board["bootstrap"] == 50
    assert {r["bot"] for r in board["leaderboard"]} == {"vicuna-13b", "koala-13b", "gpt-4"}
    gpt4 = next(r for r in board["leaderboard"] if r["bot"] == "gpt-4")
    assert (gpt4["votes"], gpt4["wins"], gpt4["ties"], gpt4["both_bad"]) == (3, 1, 1, 1)
    assert board["battle_count"]["gpt-4"]["koala-13b"] == 2

    store = ArenaStore(f"sqlite:///{tmp_path / 'store' / 'arena.sqlite3'}")
    rec = store.battle("q-2")
    assert (rec.source, rec.language, rec.anony, rec.turns, rec.winner) == ("import", "German", False, 2,
                                                                            "tie (bothbad)")
    assert [(t["message"], t["reply_a"], t["reply_b"]) for t in store.turns_of("q-2")] == \
        [("Hallo", "Hi", "Hallo!"), ("Wie geht's?", "Gut", "Gut, danke")]
    store.close()


def test_fastchat_json_array_and_votes_file_leaderboard(tmp_path, capsys):
    src = tmp_path / "clean_battle_20240814_public.json"
    src.write_text(json.dumps(FASTCHAT + [FASTCHAT[0]]), encoding="utf-8")  # a repeated id counts once
    code, out, _ = run(capsys, "leaderboard", "--votes", str(src), "--bootstrap", "0", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows[-1]["bot"] == "koala-13b" and sum(int(r["votes"]) for r in rows) == 8
    code, out, _ = run(capsys, "leaderboard", "--votes", str(src), "--bootstrap", "20")
    assert code == 0 and out.startswith("| rank | bot | rating | 95% CI |") and "4 votes, 3 bots" in out


def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "store")]
    src = write_jsonl(tmp_path / "bad.jsonl", FASTCHAT[:2] + [{**FASTCHAT[2], "winner": "model_c"}])
    code, _, err = run(capsys, "votes", "import", str(src), *data)
    assert code == 2 and f"{src}:3: winner must be one of model_a, model_b, tie, tie (bothbad)" in err
    src.write_text(json.dumps(FASTCHAT[0]) + "\n{not json\n", encoding="utf-8")
    code, _, err = run(capsys, "votes", "import", str(src), *data)
    assert code == 2 and f"{src}:2: invalid JSON" in err
    src.write_text(json.dumps({**FASTCHAT[0], "model_b": ""}) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "votes", "import", str(src), *data)
    assert code == 2 and f"{src}:1: model_b must be a non-empty string" in err
    code, _, err = run(capsys, "votes", "import", str(tmp_path / "missing.jsonl"), *data)
    assert code == 2 and "no such file" in err
    code, out, _ = run(capsys, "leaderboard", *data)
    assert code == 0 and "No votes yet" in out  # nothing of the bad files was stored


def test_export_jsonl_and_csv_round_trip(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a' / 'arena.sqlite3'}"
    store = ArenaStore(url)
    arena = Arena(store, ["greedy", "beam", "rl"], rng=0)
    for k, winner in enumerate(["model_a", "model_b", "tie", "tie (bothbad)", "model_a"]):
        battle = arena.new_battle(f"s{k}")
        for m in range(k % 2 + 1):
            arena.record_turn(battle.id, f"s{k}", f"message {m}", {"text": f"a{m}"}, {"text": f"b, \"{m}\"\n"})
        arena.vote(battle.id, f"s{k}", winner)
    arena.new_battle("unvoted")  # a battle without a vote is not exported
    store.close()

    out = tmp_path / "votes.jsonl"
    code, _, err = run(capsys, "votes", "export", "--format", "jsonl", "--out", str(out), "--db", url)
    assert code == 0 and "wrote 5 votes" in err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [list(r) for r in records] == [FIELDS[:-1]] * 5  # pair_weight: only for actively drawn pairs
    assert {r["kind"] for r in records} == {"single"}
    two_turns = records[1]
    assert two_turns["turn"] == 2 and two_turns["anony"] is True and two_turns["judge"].startswith("arena_user_")
    assert two_turns["conversation_b"] == [{"role": "user", "content": "message 0"},
                                           {"role": "assistant", "content": 'b, "0"\n'},
                                           {"role": "user", "content": "message 1"},
                                           {"role": "assistant", "content": 'b, "1"\n'}]

    code, text, _ = run(capsys, "votes", "export", "--format", "csv", "--db", url)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == 5 and list(rows[0]) == FIELDS
    assert [json.loads(r["conversation_a"]) for r in rows] == [r["conversation_a"] for r in records]
    assert [r["winner"] for r in rows] == ["model_a", "model_b", "tie", "tie (bothbad)", "model_a"]

    # our export imports into another store (ids kept) and gives the same leaderboard
    code, _, err = run(capsys, "votes", "import", str(out), "--data-dir", str(tmp_path / "b"))
    assert code == 0 and "imported 5 battles" in err
    stores = [ArenaStore(u) for u in (url, f"sqlite:///{tmp_path / 'b' / 'arena.sqlite3'}")]
    frames = [s.votes_frame() for s in stores]
    assert frames[0]["question_id"].tolist() == frames[1]["question_id"].tolist()
    boards = [compute_leaderboard(f, bootstrap=0).table for f in frames]
    assert boards[0].equals(boards[1])
    for s in stores:
        s.close()


def test_the_console_script_imports_and_ranks_other_models(tmp_path):
    script = Path(sys.executable).with_name("chatbot-arena")
    if not script.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable} (pip install -e .)")
    src = write_jsonl(tmp_path / "X.jsonl", FASTCHAT)
    env = {**os.environ, "ARENA_DB_URL": f"sqlite:///{tmp_path / 'votes.sqlite3'}", "OMP_NUM_THREADS": "1"}
    cmd = f"'{script}' votes import '{src}' && '{script}' leaderboard --format json --bootstrap 30"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert {row["bot"] for row in json.loads(r.stdout)["leaderboard"]} == {"vicuna-13b", "koala-13b", "gpt-4"}
    assert not (tmp_path / "arena_data").exists()  # $ARENA_DB_URL was used


def test_leaderboard_categories_style_control_and_provisional_from_the_command_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "X.jsonl", FASTCHAT)
    code, out, _ = run(capsys, "leaderboard", "--votes", str(src), "--style-control", "--format", "json",
                       "--bootstrap", "20", "--min-votes", "3")
    board = json.loads(out)
    assert code == 0 and board["style_control"] and set(board["style"]) == {"length", "question"}
    row = {r["bot"]: r for r in board["leaderboard"]}
    assert {"rating", "rank", "sc_rating", "sc_rank"} <= set(row["gpt-4"])
    assert row["gpt-4"]["provisional"] is False and row["koala-13b"]["provisional"] is False
    code, out, _ = run(capsys, "leaderboard", "--votes", str(src), "--category", "single_turn", "--bootstrap", "0")
    assert code == 0 and "3 votes, 3 bots (single-turn battles)" in out and "gpt-4 (provisional)" in out
    for category in ("multi_turn", "dialogue"):  # none of these in the file
        code, out, _ = run(capsys, "leaderboard", "--votes", str(src), "--category", category)
        assert code == 0 and out.startswith("No ") and "yet." in out
    code, _, err = run(capsys, "leaderboard", "--votes", str(src), "--min-votes", "-1")
    assert code == 2 and "--min-votes must be >= 0" in err
    with pytest.raises(SystemExit):  # argparse names the choices
        run(capsys, "leaderboard", "--category", "long")
    assert "invalid choice: 'long'" in capsys.readouterr().err
