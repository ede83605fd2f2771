"""The chatbot-arena command line end to end on tiny checkpoints: respond, chat, evaluate, export, help.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_cli.py
"""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from helpers import ENV, cli

from core.cli import Conversation, build_parser, read_conversations


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


def test_respond_writes_a_score_no_reply_reached_as_null(tiny_checkpoints, tmp_path):
    (tmp_path / "p.txt").write_text("hello\n")
    blocked = ["--prefix", "hi hi", "--no-repeat-ngram", "1"]  # the forced start repeats a token the setting blocks
    common = ["respond", "--file", str(tmp_path / "p.txt"), "--checkpoints", str(tiny_checkpoints), "--bots", "beam",
              *blocked]

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    [row] = json.loads(cli(*common, "--format", "json").stdout, parse_constant=refuse)
    assert row["reply"] == "" and row["score"] is None
    df = pd.read_csv(pd.io.common.StringIO(cli(*common).stdout))
    assert df["score"].isna().all()  # an empty cell, not -inf


def test_chat_answers_until_an_empty_line(tiny_checkpoints):
    out = cli("chat", "--checkpoints", str(tiny_checkpoints), "--bot", "antilm", "--antilm", "0.2",
              stdin="hello\n\x00\x01\nhow are you\n\nnever read\n")
    assert out.stdout.count("antilm> ") == 2
    assert "(prompt is empty" in out.stdout  # control characters only: a message, not a crash


def chat_replies(stdout: bytes, bot: str) -> list[str]:
    """The reply texts of a chat session, in order (a reply may hold any character but the score suffix)."""
    return re.findall(rf"{bot}> (.*?)    \[score -?[\d.]+, \d+ ms\]\n", stdout.decode("utf-8"), flags=re.DOTALL)


def test_chat_keeps_the_conversation_until_reset(tiny_checkpoints, tiny_bots):
    bot = tiny_bots["greedy"]
    assert bot.context_turns == 2
    session = "hello\nhow are you\nwhere do you live\n/reset\nhow are you\n\n"
    out = subprocess.run([sys.executable, "-m", "core.cli", "chat", "--checkpoints", str(tiny_checkpoints), "--bot",
                          "greedy"], input=session.encode(), capture_output=True, timeout=300,
                         env={**ENV, "PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 0, out.stderr[-2000:]
    r1, r2, r3, r4 = chat_replies(out.stdout, "greedy")
    assert r1 == bot.respond("hello").text
    assert r2 == bot.respond("how are you", history=["hello", r1]).text  # the first exchange was read
    assert r2 != bot.respond("how are you").text
    assert r3 == bot.respond("where do you live", history=["how are you", r2]).text  # the last 2 turns
    assert r4 == bot.respond("how are you").text  # after /reset: a new conversation
    text = out.stdout.decode("utf-8")
    assert "/reset starts a new conversation" in text and text.count("(new conversation") == 1


def test_chat_help_lists_reset_and_respond_help_the_jsonl_layout(capsys):
    for command, words in (("chat", ["/reset"]), ("respond", [".jsonl", '"history"', '"message"', "--input"])):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        shown = capsys.readouterr().out
        assert all(w in shown for w in words), command


def test_respond_answers_jsonl_conversations_after_their_history(tiny_checkpoints, tiny_bots, tmp_path):
    convs = [{"history": ["hello", "hi, how are you?"], "message": "i am fine, and you?"},
             {"message": "where are you from?", "history": []},
             {"message": "what do you do?"}]
    text = "\n".join(json.dumps(c) for c in convs[:2]) + "\n\n" + json.dumps(convs[2]) + "\n"
    (tmp_path / "chats.jsonl").write_text(text)
    out = cli("respond", "--file", str(tmp_path / "chats.jsonl"), "--checkpoints", str(tiny_checkpoints),
              "--bots", "greedy,antilm", "--format", "json")
    rows = json.loads(out.stdout)
    assert [(r["bot"], r["line"]) for r in rows] == [("greedy", 1), ("greedy", 2), ("greedy", 4),
                                                     ("antilm", 1), ("antilm", 2), ("antilm", 4)]
    for row, conv in zip(rows, convs * 2):
        history = conv.get("history", [])
        assert row["prompt"] == conv["message"] and row["history"] == history
        assert row["reply"] == tiny_bots[row["bot"]].respond(conv["message"], history=history).text
    assert rows[0]["reply"] != tiny_bots["greedy"].respond(convs[0]["message"]).text  # the history was read
    # any file name with --input jsonl; CSV rows carry the history as a JSON list
    (tmp_path / "chats.txt").write_text(text)
    out = cli("respond", "--file", str(tmp_path / "chats.txt"), "--input", "jsonl", "--checkpoints",
              str(tiny_checkpoints), "--bots", "greedy")
    df = pd.read_csv(pd.io.common.StringIO(out.stdout), keep_default_na=False)
    assert list(df.columns) == ["line", "prompt", "history", "bot", "reply", "score", "latency_ms"]
    assert [json.loads(h) for h in df["history"]] == [c.get("history", []) for c in convs]
    assert list(df["reply"]) == [r["reply"] for r in rows[:3]]


def test_respond_names_the_line_and_field_of_a_bad_conversation(tiny_checkpoints, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"message": "hello"}\n\n{"history": ["hi", 3], "message": "hey"}\n')
    out = cli("respond", "--file", str(tmp_path / "bad.jsonl"), "--checkpoints", str(tiny_checkpoints),
              check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.jsonl line 3: history[1] must be a string, got int" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(("line", "error"), [
    ('{"message": "hi"', "line 2: not JSON"),
    ('["hi"]', "line 2: expected an object"),
    ('{"messages": ["hi"]}', "line 2: unknown field 'messages'"),
    ('{"history": ["hi"]}', "line 2: message is missing"),
    ('{"message": null}', "line 2: message must be a string, got NoneType"),
    ('{"message": " \\u0000 "}', "line 2: message is empty"),
    ('{"message": "hi", "history": "hello"}', "line 2: history must be a list"),
    ('{"message": "hi", "history": ["' + "x" * 4001 + '"]}', "line 2: history[0] has 4001 characters"),
    ('{"message": "hi", "history": ' + json.dumps(["a"] * 65) + "}", "line 2: history has 65 turns"),
])
def test_read_conversations_rejects_a_bad_line_by_number_and_field(line, error):
    with pytest.raises(ValueError, match=re.escape(f"chats.jsonl {error}")):
        read_conversations('{"message": "fine"}\n' + line + "\n", source="chats.jsonl")


def test_read_conversations_reads_bytes_bom_and_blank_lines():
    data = '\ufeff{"message": "caf\u00e9", "history": null}\r\n\n  \n{"message": "a\\nb", "history": ["x"]}'
    assert read_conversations(data.encode("utf-8")) == [Conversation(1, [], "caf\u00e9"),
                                                        Conversation(4, ["x"], "a\nb")]


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
