"""Export: a run's best checkpoint becomes a shippable fp16 folder with its log and model card."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import core.export as export
from core.checkpoint import load_checkpoint
from core.model import ModelConfig
from core.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sort"
    model = ModelConfig(emb_dim=16, hidden=16, enc_layers=1, dec_layers=1)
    train(TrainConfig(out=str(out), task="sort", model=model, max_steps=20, save_every=10, eval_every=10, threads=1,
                      progress=False))
    return out


def test_export_writes_fp16_weights_log_and_card(run_dir, tmp_path):
    dest = export.export_run(run_dir, tmp_path / "mle")
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["MODEL_CARD.md", "config.json", "model.safetensors", "tokenizer.json", "train_log.csv"]
    assert all(t.dtype == torch.float16 for t in load_file(str(dest / "model.safetensors")).values())
    model, _, config = load_checkpoint(dest)
    assert config["meta"]["trained_steps"] == 20 and config["meta"]["step"] in (10, 20)
    card = (dest / "MODEL_CARD.md").read_text()
    assert "| 10 |" in card and "| 20 |" in card and "Known weaknesses" in card
    assert f"{config['meta']['parameters']:,} parameters" in card


def test_the_card_names_a_concatenated_encoder(tmp_path):
    out = tmp_path / "run"
    model = ModelConfig(emb_dim=16, hidden=16, enc_layers=1, dec_layers=1, encoder_merge="concat")
    train(TrainConfig(out=str(out), task="sort", model=model, max_steps=2, save_every=2, eval_every=2, threads=1,
                      progress=False))
    card = (export.export_run(out, tmp_path / "mle") / "MODEL_CARD.md").read_text()
    assert "GRU encoder (two directions of hidden/2, concatenated) + GRU decoder" in card
    assert load_checkpoint(tmp_path / "mle")[0].encoder.rnn.hidden_size == 8


def test_export_refuses_weights_over_the_limit(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(ValueError, match="the limit is 1,000 bytes"):
        export.export_run(run_dir, tmp_path / "big")
    assert not (tmp_path / "big").exists()


def test_export_cli_end_to_end(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "core.cli", "export", str(run_dir), str(tmp_path / "shipped"), "--which", "last",
           "--notes", "- Trained on sorting, not chat."]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"wrote {tmp_path / 'shipped'}", out.stderr[-2000:]
    _, _, config = load_checkpoint(tmp_path / "shipped")
    assert config["meta"]["step"] == 20  # last/, not best/
    assert "- Trained on sorting, not chat." in (tmp_path / "shipped" / "MODEL_CARD.md").read_text()
    missing = subprocess.run([*cmd[:4], str(tmp_path / "shipped"), str(tmp_path / "x")], capture_output=True,
                             text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "has no best/ checkpoint" in missing.stderr
