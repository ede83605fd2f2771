"""Export: a run's best checkpoint becomes a shippable fp16 folder with its log and model card."""

import pytest
import torch
from safetensors.torch import load_file

import core.export as export
from core.checkpoint import load_checkpoint
from core.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sort"
    train(TrainConfig(out=str(out), task="sort", emb_dim=16, hidden=16, enc_layers=1, dec_layers=1, max_steps=20,
                      save_every=10, eval_every=10, threads=1, progress=False))
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


def test_export_refuses_weights_over_the_limit(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(ValueError, match="limit 25 MB"):
        export.export_run(run_dir, tmp_path / "big")
    assert not (tmp_path / "big").exists()
