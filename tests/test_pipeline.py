"""`chatbot-arena pipeline --preset tiny` end to end on a TSV made here, then replies from its four bots through
`chatbot-arena respond`; resuming skips complete stages; bad corpora stop it before any training; `tune --write`."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.corpora import load_corpus, make_pairs
from core.training.pipeline import PRESETS, STANDARD_BOTS, plan, stage_minutes

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=ENV,
                         timeout=600)
    if check:
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory) -> Path:
    """400 real exchanges from the chitchat corpus, as the TSV a user would bring."""
    path = tmp_path_factory.mktemp("corpus") / "pairs.tsv"
    pairs = make_pairs(load_corpus("chitchat")[:150])[:400]
    path.write_text("query\tresponse\n" + "".join(f"{q}\t{a}\n" for q, a in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pipeline_run(pairs_tsv, tmp_path_factory):
    out = tmp_path_factory.mktemp("mine")
    result = cli("pipeline", "--corpus", str(pairs_tsv), "--corpus-format", "tsv", "--out", str(out),
                 "--preset", "tiny", "--threads", "1", "--max-minutes", "30")
    return out, result.stdout


@pytest.mark.slow
def test_tiny_pipeline_writes_a_servable_checkpoints_folder(pipeline_run):
    out, stdout = pipeline_run
    ckpts = out / "checkpoints"
    assert stdout.startswith("pipeline preset 'tiny': time budget 30 min")
    # the budget split, printed before starting: the anneal stage takes a quarter of the MLE's share
    assert "  mle       400 steps, at most 10.12 min" in stdout and "  anneal    40 steps, at most 3.38 min" in stdout
    for stage in ("mle", "lm", "backward", "rl"):
        files = {p.name for p in (ckpts / stage).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md", "train_log.csv"} <= files
        assert (out / "runs" / stage / "best" / "config.json").exists()
    bots = json.loads((ckpts / "bots.json").read_text())["bots"]
    assert [b["name"] for b in bots] == ["greedy", "beam", "antilm", "rl"]
    shape = [{k: v for k, v in b.items() if k != "decoder"} for b in STANDARD_BOTS]
    assert [{k: v for k, v in b.items() if k != "decoder"} for b in bots] == shape  # the shipped bots.json shape
    grid = PRESETS["tiny"].tune["grid"]
    antilm = bots[2]["decoder"]
    assert antilm["antilm"] in grid["antilm"] + [0.4] and antilm["gamma"] in grid["gamma"] + [4]
    report = pd.read_csv(ckpts / "report.csv")
    assert list(report["bot"]) == ["greedy", "beam", "antilm", "rl"] and (report["test_ppl"] > 1).all()
    assert (ckpts / "report.md").read_text().startswith("| bot |")
    config = json.loads((ckpts / "mle" / "config.json").read_text())
    assert config["meta"]["train"]["corpus_format"] == "tsv" and config["model"]["hidden"] == 32
    # the exported MLE model is the anneal run's best, which started from mle/best with a cosine schedule
    assert config["meta"]["train"]["init_from"] == str(out / "runs" / "mle" / "best")
    assert config["meta"]["train"]["lr_schedule"] == "cosine"
    assert (out / "runs" / "anneal" / "best" / "config.json").exists()
    # ... and reads the conversation: two earlier turns; RL starts from it, so its policy reads them too
    assert config["meta"]["train"]["context_turns"] == 2
    rl = json.loads((ckpts / "rl" / "config.json").read_text())["meta"]
    assert rl["rl"]["policy"] == str(out / "runs" / "anneal" / "best") and rl["train"]["context_turns"] == 2
    assert "2 earlier turns" in (ckpts / "mle" / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_all_four_bots_of_the_result_answer(pipeline_run, tmp_path):
    out, _ = pipeline_run
    (tmp_path / "prompts.txt").write_text("hello, how are you?\nwhat do you do for fun\n")
    res = cli("respond", "--file", str(tmp_path / "prompts.txt"), "--checkpoints", str(out / "checkpoints"),
              "--format", "json")
    rows = json.loads(res.stdout)
    assert sorted({r["bot"] for r in rows}) == ["antilm", "beam", "greedy", "rl"] and len(rows) == 8
    assert all(r["reply"].strip() for r in rows)


@pytest.mark.slow
def test_running_again_skips_every_complete_stage(pipeline_run, pairs_tsv):
    out, _ = pipeline_run
    before = (out / "checkpoints" / "report.csv").stat().st_mtime_ns
    res = cli("pipeline", "--corpus", str(pairs_tsv), "--corpus-format", "tsv", "--out", str(out),
              "--preset", "tiny", "--threads", "1", "--max-minutes", "30")
    for stage in ("check", "mle", "anneal", "lm", "backward", "rl", "export", "bots", "tune", "evaluate"):
        assert f"== {stage}: already complete (skipped)" in res.stdout
    assert (out / "checkpoints" / "report.csv").stat().st_mtime_ns == before
    other = cli("pipeline", "--corpus", str(pairs_tsv), "--corpus-format", "tsv", "--out", str(out),
                "--preset", "small", check=False)
    assert other.returncode == 2 and "preset: saved 'tiny' vs now 'small'" in other.stderr


@pytest.mark.parametrize("content, message", [
    (b"", r"pairs\.tsv:1: the file is empty; expected tsv format: one 'query<TAB>response' pair per line"),
    (b"hi\thello\nhow are you\tfine\n", r"pairs\.tsv: only 2 \(query, response\) pair\(s\), fewer than one batch "
                                        r"of 16"),
    (b"hi\thello\nno tab on this line\n", r"pairs\.tsv:2: expected 'query<TAB>response', found 0 tabs"),
    (b"hi\thello\n\xff\xfeh\x00i\x00\n", r"pairs\.tsv:2: not valid utf-8 \(byte 0xff at column 1\); expected "
                                        r"utf-8 text"),
])
def test_bad_corpus_stops_before_any_training(tmp_path, content, message):
    (tmp_path / "pairs.tsv").write_bytes(content)
    res = cli("pipeline", "--corpus", str(tmp_path / "pairs.tsv"), "--corpus-format", "tsv", "--out",
              str(tmp_path / "out"), "--preset", "tiny", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("chatbot-arena pipeline: error: ")
    assert re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "out" / "runs" / "mle").exists()


def test_the_time_budget_is_split_and_printed():
    assert stage_minutes(100) == {"mle": 45.0, "lm": 15.0, "backward": 15.0, "rl": 10.0}
    assert stage_minutes(100, anneal=True) == {"mle": 33.75, "anneal": 11.25, "lm": 15.0, "backward": 15.0,
                                               "rl": 10.0}
    assert "rl" not in stage_minutes(100, skip_rl=True)
    text = plan("shipped", 0, False)
    assert "mle       8800 steps" in text and "lm        6400 steps" in text and "backward  4800 steps" in text
    assert "rl        skipped (--skip-rl)" in plan("tiny", 10, True)


def test_pipeline_help_has_examples():
    assert "examples:" in cli("pipeline", "--help").stdout


def test_other_formats_need_a_corpus_file(tmp_path):
    res = cli("pipeline", "--corpus-format", "tsv", "--out", str(tmp_path), check=False)
    assert res.returncode == 2 and "--corpus FILE is needed for --corpus-format tsv" in res.stderr


@pytest.mark.slow
def test_tune_write_cli_stores_the_winner_in_bots_json(tiny_checkpoints, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, root)
    before = json.loads((root / "bots.json").read_text())["bots"]
    res = cli("tune", "--checkpoints", str(root), "--n-prompts", "4", "--max-logp-drop", "100", "--max-worst-drop",
              "100", "--max-rare-increase", "1", "--max-dull-rate", "1", "--write")
    chosen = ast.literal_eval(res.stdout.split("chosen for antilm: ")[1].splitlines()[0])  # a printed dict
    after = json.loads((root / "bots.json").read_text())["bots"]
    assert after[2]["decoder"] == {**before[2]["decoder"], **chosen}
    assert [b for i, b in enumerate(after) if i != 2] == [b for i, b in enumerate(before) if i != 2]
    assert f"wrote {root / 'bots.json'}" in res.stdout


def test_a_new_pipeline_writes_the_shipped_bots_json():
    """A pipeline run on another corpus gets the shipped bots.json (decoders chosen on chitchat's validation
    split), so the two never drift apart."""
    shipped = json.loads((Path(__file__).resolve().parent.parent / "checkpoints" / "bots.json").read_text())["bots"]
    assert STANDARD_BOTS == shipped
