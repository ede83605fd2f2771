"""The chatbot-arena command line end to end on tiny checkpoints: respond, chat, evaluate, export, help."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "core.cli", *args], input=stdin, capture_output=True, text=True,
                         env=ENV, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.parametrize("command", ["train", "train-rl", "export", "evaluate", "tune", "chat", "respond", "pipeline",
                                     "votes", "leaderboard"])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_respond_writes_one_row_per_prompt_and_bot(tiny_checkpoints, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"hello there\n\n   \nhow are you? \xf0\x9f\x98\x80\n<b>bold</b>\n\xff\xfe broken bytes\n")
    out = cli("respond", "--file", str(prompts), "--checkpoints", str(tiny_checkpoints), "--bots", "greedy,beam",
              "--format", "json", "--max-len", "5")
    rows = json.loads(out.stdout)
    assert [r["bot"] for r in rows] == ["greedy"] * 4 + ["beam"] * 4
    assert rows[1]["prompt"] == "how are you? 😀" and rows[3]["prompt"].endswith("broken bytes")
    assert all(r["reply"] and 1 <= len(r["reply"].split()) <= 5 for r in rows)


def test_respond_csv_from_a_single_checkpoint(tiny_checkpoints, tmp_path):
    (tmp_path / "p.txt").write_text("good morning\nwhat is up\n")
    out = cli("respond", "--file", str(tmp_path / "p.txt"), "--checkpoint", str(tiny_checkpoints / "mle"),
              "--beam-size", "3")
    df = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert list(df.columns) == ["prompt", "bot", "reply", "score", "latency_ms"] and len(df) == 2


def test_chat_answers_until_an_empty_line(tiny_checkpoints):
    out = cli("chat", "--checkpoints", str(tiny_checkpoints), "--bot", "antilm", "--antilm", "0.2",
              stdin="hello\n\x00\x01\nhow are you\n\nnever read\n")
    assert out.stdout.count("antilm> ") == 2
    assert "(prompt is empty" in out.stdout  # control characters only: a message, not a crash


def test_bad_settings_give_a_clear_error_and_exit_code(tiny_checkpoints):
    out = cli("chat", "--checkpoints", str(tiny_checkpoints), "--beam-size", "0", stdin="", check=False)
    assert out.returncode == 2 and "beam_size" in out.stderr and "Traceback" not in out.stderr
    out = cli("chat", "--checkpoints", str(tiny_checkpoints / "nope"), stdin="", check=False)
    assert out.returncode == 2 and "bots.json" in out.stderr


@pytest.mark.slow
def test_evaluate_writes_the_report_table(tiny_checkpoints, tmp_path):
    out = cli("evaluate", "--checkpoints", str(tiny_checkpoints), "--bots", "greedy,antilm", "--n-prompts", "12",
              "--n-dialogues", "4", "--out", str(tmp_path / "report.csv"))
    df = pd.read_csv(tmp_path / "report.csv")
    assert list(df["bot"]) == ["greedy", "antilm"]
    for col in ["test_ppl", "distinct_1", "distinct_2", "mean_words", "dull_rate", "unknown_word_rate", "bleu",
                "sim_turns", "p50_latency_ms"]:
        assert df[col].notna().all(), col
    assert df["unknown_word_rate"].between(0, 1).all()
    assert (df["sim_turns"] <= 8).all() and (df["test_ppl"] > 1).all()
    assert df["test_ppl"].nunique() == 1  # both bots share the mle model
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("| bot |") and "| greedy |" in md and "| greedy |" in out.stdout


@pytest.mark.slow
def test_evaluate_on_the_validation_split_reads_other_conversations(tiny_checkpoints, tmp_path):
    for split in ("test", "valid"):
        cli("evaluate", "--checkpoints", str(tiny_checkpoints), "--bots", "greedy", "--n-prompts", "6",
            "--n-dialogues", "2", "--split", split, "--out", str(tmp_path / f"{split}.csv"))
    test, valid = (pd.read_csv(tmp_path / f"{s}.csv") for s in ("test", "valid"))
    assert float(test["test_ppl"][0]) != float(valid["test_ppl"][0])
