"""Checkpoints: safetensors + JSON round trip, agreement checks with clear messages, atomic swaps."""

import json
import os

import pytest
import torch

from core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_train_state,
    pack_train_state,
    resolve,
    save_checkpoint,
)
from core.model import LanguageModel, ModelConfig, Seq2Seq
from core.tokenizer import train_tokenizer

torch.set_num_threads(1)
TEXTS = ["hello there", "how are you doing today?", "i am fine thanks", "what about you", "see you later"] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


def model_for(tok, **kw):
    torch.manual_seed(0)
    kw = {"tie_output": True, "share_embeddings": True, **kw}  # tied weights: the harder case for saving
    cfg = ModelConfig(vocab_size=tok.vocab_size, emb_dim=16, hidden=16, dropout=0.0, **kw)
    return LanguageModel(cfg) if cfg.kind == "lm" else Seq2Seq(cfg)


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_round_trip_is_exact_in_fp32(tmp_path, tokenizer, kind):
    model = model_for(tokenizer, kind=kind)
    save_checkpoint(tmp_path / "ck", model, tokenizer, meta={"corpus": "test"})
    loaded, tok, config = load_checkpoint(tmp_path / "ck")
    assert config["meta"] == {"corpus": "test"}
    assert tok.encode("hello there") == tokenizer.encode("hello there")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_fp16_storage_halves_the_file_and_stays_close(tmp_path, tokenizer):
    model = model_for(tokenizer)
    save_checkpoint(tmp_path / "f32", model, tokenizer)
    save_checkpoint(tmp_path / "f16", model, tokenizer, dtype=torch.float16)
    s32 = (tmp_path / "f32/model.safetensors").stat().st_size
    s16 = (tmp_path / "f16/model.safetensors").stat().st_size
    assert s16 < 0.55 * s32
    loaded, _, _ = load_checkpoint(tmp_path / "f16")
    w = loaded.decoder.out.weight
    assert w.dtype == torch.float32 and w is loaded.encoder.embedding.weight  # ties survive loading
    assert torch.allclose(w, model.decoder.out.weight, atol=1e-3)


def test_tied_weights_are_stored_once(tmp_path, tokenizer):
    from safetensors.torch import load_file

    save_checkpoint(tmp_path / "ck", model_for(tokenizer), tokenizer)
    keys = load_file(str(tmp_path / "ck/model.safetensors")).keys()
    assert "encoder.embedding.weight" in keys
    assert "decoder.embedding.weight" not in keys and "decoder.out.weight" not in keys


def test_other_tokenizer_is_rejected(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ck", model_for(tokenizer), tokenizer)
    train_tokenizer(TEXTS + ["completely new words here"], vocab_size=300).save(tmp_path / "ck/tokenizer.json")
    with pytest.raises(CheckpointError, match="not the tokenizer this model was trained with"):
        load_checkpoint(tmp_path / "ck")


def test_vocab_mismatch_and_shape_mismatch_are_named(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ck", model_for(tokenizer), tokenizer)
    cfg_path = tmp_path / "ck/config.json"
    config = json.loads(cfg_path.read_text())
    config["model"]["vocab_size"] += 1
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(tmp_path / "ck")
    config["model"]["vocab_size"] -= 1
    config["model"]["hidden"] = config["model"]["emb_dim"] = 32
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "ck")


def test_missing_files_are_named(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "ck", model_for(tokenizer), tokenizer)
    (tmp_path / "ck/model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(tmp_path / "ck")


def test_save_replaces_atomically_and_old_copy_is_found(tmp_path, tokenizer):
    model = model_for(tokenizer)
    save_checkpoint(tmp_path / "ck", model, tokenizer, meta={"v": 1})
    save_checkpoint(tmp_path / "ck", model, tokenizer, meta={"v": 2})
    assert json.loads((tmp_path / "ck/config.json").read_text())["meta"] == {"v": 2}
    assert not (tmp_path / "ck.tmp").exists() and not (tmp_path / "ck.old").exists()
    # a kill between the two renames of a save leaves only ck.old: it is what gets loaded
    os.replace(tmp_path / "ck", tmp_path / "ck.old")
    assert resolve(tmp_path / "ck") == tmp_path / "ck.old"
    _, _, config = load_checkpoint(tmp_path / "ck")
    assert config["meta"] == {"v": 2}


def test_train_state_round_trip_restores_optimizer_and_rng(tmp_path, tokenizer):
    model = model_for(tokenizer)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6]]), torch.tensor([2]), torch.tensor([[1, 7]])).sum().backward()
    opt.step()
    torch.manual_seed(42)
    save_checkpoint(tmp_path / "ck", model, tokenizer, train_state=pack_train_state(opt, {"step": 7}))
    expected_draw = torch.rand(3)
    opt2 = torch.optim.Adam(model.parameters(), lr=5.0)
    info = load_train_state(tmp_path / "ck", opt2)
    assert info["step"] == 7
    assert torch.equal(torch.rand(3), expected_draw)
    assert opt2.param_groups[0]["lr"] == 1e-3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert not any(f.suffix in {".pt", ".pkl", ".bin"} for f in (tmp_path / "ck").iterdir())


def test_a_save_after_a_half_finished_swap_never_leaves_nothing(tmp_path, tokenizer):
    model = model_for(tokenizer)
    save_checkpoint(tmp_path / "ck", model, tokenizer, meta={"v": 1})
    os.replace(tmp_path / "ck", tmp_path / "ck.old")  # killed between the two renames of a save
    save_checkpoint(tmp_path / "ck", model, tokenizer, meta={"v": 2})
    assert json.loads((tmp_path / "ck/config.json").read_text())["meta"] == {"v": 2}
    assert not (tmp_path / "ck.old").exists()
