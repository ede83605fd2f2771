"""Bots from bots.json over tiny random checkpoints: loading, sharing, respond / respond_batch, bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from core import Bot, DecodeConfig, Reply, load_bots
from core.bots import load_model, read_bots_json
from core.checkpoint import save_checkpoint
from core.model import LanguageModel, ModelConfig, Seq2Seq
from core.tokenizer import train_tokenizer

torch.set_num_threads(1)
TEXTS = ["hello there", "how are you doing today?", "i am fine thanks", "what about you", "see you later",
         "the weather is nice today", "i like pizza and music", "where do you live?", "that is great news",
         "do you have any pets?", "my cat is called tom", "let us meet tomorrow"] * 4
SHIPPED_FILE = Path(__file__).parent.parent / "checkpoints" / "bots.json"
SHIPPED = json.loads(SHIPPED_FILE.read_text())


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
    """mle, rl, lm and backward checkpoints (random init, emb = hidden = 32) and the shipped bots.json."""
    root = tmp_path_factory.mktemp("checkpoints")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    base = dict(vocab_size=tok.vocab_size, emb_dim=32, hidden=32, dropout=0.0)
    for seed, (name, kind) in enumerate([("mle", "seq2seq"), ("rl", "seq2seq"), ("lm", "lm"),
                                         ("backward", "backward")]):
        torch.manual_seed(seed)
        cfg = ModelConfig(kind=kind, **base)
        model = LanguageModel(cfg) if kind == "lm" else Seq2Seq(cfg)
        save_checkpoint(root / name, model, tok, meta={"train": {"max_src_len": 12}})
    (root / "bots.json").write_text(json.dumps(SHIPPED))
    return root


@pytest.fixture(scope="module")
def bots(ckdir):
    return load_bots(ckdir, device="cpu")


def test_the_shipped_registry_names_four_bots():
    specs = read_bots_json(SHIPPED_FILE)
    assert [s.name for s in specs] == ["greedy", "beam", "antilm", "rl"]
    assert all(s.label and s.description for s in specs)
    for s in specs:
        DecodeConfig().with_overrides(**s.decoder)


def test_load_bots_builds_every_bot_in_file_order(bots, ckdir):
    assert list(bots) == ["greedy", "beam", "antilm", "rl"]
    assert all(isinstance(b, Bot) for b in bots.values())
    assert bots["greedy"].defaults.strategy == "greedy"
    shipped = {b["name"]: b["decoder"] for b in SHIPPED["bots"]}
    assert (bots["antilm"].defaults.antilm, bots["antilm"].defaults.gamma) == (shipped["antilm"]["antilm"],
                                                                              shipped["antilm"]["gamma"])
    assert bots["antilm"].defaults.antilm > 0
    assert bots["beam"].defaults.beam_size == 10
    assert bots["rl"].checkpoint == ckdir / "rl"
    assert bots["beam"].max_src_len == 12  # from config.json meta.train.max_src_len
    for b in bots.values():
        assert not b.model.training
        assert not any(p.requires_grad for p in b.model.parameters())


def test_checkpoints_are_loaded_once_and_shared(bots):
    assert bots["greedy"].model is bots["beam"].model is bots["antilm"].model
    assert bots["greedy"].tokenizer is bots["beam"].tokenizer
    assert bots["rl"].model is not bots["beam"].model
    assert isinstance(bots["antilm"].lm, LanguageModel) and bots["beam"].lm is None


@pytest.mark.parametrize("name", ["greedy", "beam", "antilm", "rl"])
def test_every_bot_responds(bots, name):
    r = bots[name].respond("Hello there, how are you?")
    assert isinstance(r, Reply) and isinstance(r.text, str)
    assert 0 < len(r.tokens) <= bots[name].defaults.max_len
    assert len(r.token_strs) == len(r.tokens) == len(r.logprobs) == len(r.attention)
    assert r.latency_s > 0
    assert r.settings == bots[name].defaults.to_dict()
    assert len(r.nbest) == (1 if name == "greedy" else 5)


def test_respond_batch_equals_respond(bots):
    prompts = ["hello there", "do you have any pets? my cat is called tom", "where do you live?"]
    together = bots["antilm"].respond_batch(prompts, max_len=10)
    for p, r in zip(prompts, together, strict=True):
        alone = bots["antilm"].respond(p, max_len=10)
        assert r.tokens == alone.tokens
        assert r.score == pytest.approx(alone.score, abs=1e-4)
    assert bots["beam"].respond_batch([]) == []


def test_overrides_are_validated(bots):
    r = bots["beam"].respond("hello", beam_size=3, max_len=5)
    assert r.settings["beam_size"] == 3 and r.settings["nbest"] == 3 and len(r.tokens) <= 5
    with pytest.raises(ValueError, match=r"beam_size=0 is out of range: allowed \[1, 50\]"):
        bots["beam"].respond("hello", beam_size=0)
    with pytest.raises(ValueError, match="antilm=7"):
        bots["antilm"].respond("hello", antilm=7)
    with pytest.raises(ValueError, match="unknown decoding setting"):
        bots["beam"].respond("hello", beams=3)
    with pytest.raises(ValueError, match="bot 'beam' has no language model"):
        bots["beam"].respond("hello", antilm=0.5)
    with pytest.raises(ValueError, match="bot 'greedy' has no backward model"):
        bots["greedy"].respond("hello", mmi_lambda=0.5)
    assert bots["beam"].respond("hello", mmi_lambda=0.5).settings["mmi_lambda"] == 0.5


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t  \r\n", "\x00\x01\x02"])
def test_empty_prompts_are_a_clear_error(bots, prompt):
    with pytest.raises(ValueError, match="empty"):
        bots["greedy"].respond(prompt)


@pytest.mark.parametrize("prompt", [
    "😀🔥 wow 👍🏽", "<script>alert('x')</script> <b>hi</b> &amp;", "hello\x00\x07\x1b[31m there\x7f",
    "\udcff broken surrogate", "日本語のテキスト", "\u202e\u200b\ufeff rtl", bytes(range(256)).decode("latin-1"),
    b"\xff\xfe binary \x00 bytes",
])
def test_odd_prompts_get_an_answer(bots, prompt):
    r = bots["beam"].respond(prompt, max_len=6)
    assert r.text.strip() and 1 <= len(r.tokens) <= 6  # a real reply: at least one token that shows as text
    assert len(r.logprobs) == len(r.tokens) and r.score > float("-inf")


def test_huge_prompt_keeps_the_last_tokens(bots):
    prompt = "blah " * 20_000 + "how are you doing today?"  # 100 kB
    r = bots["greedy"].respond(prompt, max_len=5)
    assert len(r.source_tokens) == bots["greedy"].max_src_len == 12
    assert "".join(r.source_tokens).strip().endswith("today?")


def test_env_var_picks_the_checkpoint_dir(ckdir, monkeypatch):
    monkeypatch.setenv("CHATBOT_ARENA_CHECKPOINTS", str(ckdir))
    assert list(load_bots(device="cpu")) == ["greedy", "beam", "antilm", "rl"]


def test_missing_files_are_clear_errors(ckdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="bots.json not found"):
        load_bots(tmp_path)
    shutil.copytree(ckdir, tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "rl")
    with pytest.raises(FileNotFoundError, match="bot 'rl' needs checkpoint folder .*rl, which does not exist"):
        load_bots(tmp_path / "ck")


def test_bad_registries_are_clear_errors(ckdir, tmp_path):
    shutil.copytree(ckdir, tmp_path / "ck")
    bots_file = tmp_path / "ck" / "bots.json"
    cases = [
        ({"bots": [{"name": "x", "checkpoint": "mle", "decoder": {"beam_size": 99}}]}, "bot 'x'.*beam_size=99"),
        ({"bots": [{"name": "x", "checkpoint": "lm"}]}, "checkpoint 'lm' is a 'lm' model, expected seq2seq"),
        ({"bots": [{"name": "x", "checkpoint": "mle", "decoder": {"antilm": 0.5}}]}, "has no language model"),
        ({"bots": [{"name": "x", "checkpoint": "mle", "colour": "red"}]}, r"unknown keys \['colour'\]"),
        ({"bots": [{"name": "x", "checkpoint": "mle"}, {"name": "x", "checkpoint": "rl"}]}, "duplicate"),
        ({"bots": []}, "at least one bot"),
    ]
    for registry, message in cases:
        bots_file.write_text(json.dumps(registry))
        with pytest.raises(ValueError, match=message):
            load_bots(tmp_path / "ck")
    bots_file.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_bots(tmp_path / "ck")


def test_mmi_bot_from_the_registry(ckdir, tmp_path):
    shutil.copytree(ckdir, tmp_path / "ck")
    (tmp_path / "ck" / "bots.json").write_text(json.dumps({"bots": [
        {"name": "mmi", "checkpoint": "mle", "backward": "backward", "decoder": {"mmi_lambda": 0.5}}]}))
    bot = load_bots(tmp_path / "ck")["mmi"]
    assert bot.label == "Mmi" and bot.backward is not None
    assert bot.respond("hello there", max_len=6).nbest


def test_load_model_gives_an_eval_model(ckdir):
    model, tok, config = load_model(ckdir / "rl", device="auto")
    assert isinstance(model, Seq2Seq) and not model.training and config["model"]["kind"] == "seq2seq"
    with pytest.raises(FileNotFoundError):
        load_model(ckdir / "nope")


def test_bots_with_missing_checkpoints_can_be_left_out(tiny_checkpoints, tmp_path):
    import shutil

    from core.bots import missing_bots

    root = tmp_path / "partial"
    shutil.copytree(tiny_checkpoints, root)
    shutil.rmtree(root / "rl")
    assert list(missing_bots(root)) == ["rl"] and "rl not found" in missing_bots(root)["rl"]
    with pytest.raises(FileNotFoundError, match="rl"):
        load_bots(root, device="cpu")
    assert list(load_bots(root, device="cpu", skip_missing=True)) == ["greedy", "beam", "antilm"]
    for folder in ("mle", "lm", "backward"):
        shutil.rmtree(root / folder)
    with pytest.raises(FileNotFoundError, match="no bot has its checkpoints"):
        load_bots(root, device="cpu", skip_missing=True)
