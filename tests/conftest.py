"""Shared fixtures: a tiny but complete checkpoint folder, and the app launched on it.

``tiny_checkpoints`` writes what ``checkpoints/`` holds after training, at toy size (random weights, emb = hidden
= 32), so the app, the API and the Space build run in seconds on CPU:

    bots.json                tests/fixture_bots.json: a frozen registry of four bots (greedy, beam, anti-LM,
                             RL), so changing the shipped bots.json changes no test of the tiny app
    mle/ rl/ backward/       Seq2Seq checkpoints (different seeds); mle/ also has train_log.csv and MODEL_CARD.md;
                             mle/ and rl/ read a window of two earlier turns (context_turns 2), as the shipped do
    lm/                      LanguageModel checkpoint for anti-LM
    report.csv               evaluation metrics per bot (made-up numbers, real format)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from chromium import browser, page, served  # noqa: F401  (fixtures of the browser tests)
from helpers import SHIPPED, free_port, shipped_checkpoints_complete
from postgres import db_url, postgres_cluster, postgres_url  # noqa: F401  (fixtures of the storage tests)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE_BOTS = Path(__file__).with_name("fixture_bots.json")  # frozen: tests never read the shipped bots.json
TRAIN_LOG = """step,epoch,loss,valid_ppl,lr,grad_norm,tokens_per_s,elapsed_s
50,0,7.66,,0.00025,15.2,2263,22.2
100,0,7.21,,0.0005,5.18,2501,44.4
150,0,6.90,210.5,0.00075,3.67,2387,63.3
200,1,6.68,,0.001,2.85,2155,89.6
250,1,6.41,151.2,0.001,2.50,2200,110.0
"""
REPORT = """bot,test_ppl,distinct_1,distinct_2,mean_words,dull_rate,bleu,dialogue_turns,latency_s
greedy,88.1,0.031,0.102,6.1,0.21,0.012,2.4,0.011
beam,88.1,0.027,0.088,5.2,0.34,0.014,2.1,0.052
antilm,88.1,0.052,0.181,6.8,0.12,0.011,2.9,0.061
rl,95.3,0.049,0.170,7.9,0.08,0.010,3.6,0.050
"""


def pytest_configure(config):
    # gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix
    config.addinivalue_line("filterwarnings", "ignore:.*no_silent_downcasting.*")
    config.addinivalue_line("filterwarnings", "ignore:The copy keyword is deprecated")


def write_tiny_checkpoints(root: Path) -> Path:
    """Write the tiny checkpoint folder described in the module docstring into ``root``; return ``root``."""
    import torch

    from core.checkpoint import save_checkpoint
    from core.corpora import load_corpus
    from core.model import LanguageModel, ModelConfig, Seq2Seq
    from core.tokenizer import train_tokenizer

    utterances = [u for conv in load_corpus("chitchat")[:60] for u in conv][:200]
    tok = train_tokenizer(utterances, vocab_size=300)
    base = dict(vocab_size=tok.vocab_size, emb_dim=32, hidden=32, enc_layers=1, dec_layers=1, dropout=0.0)
    meta = {"corpus": "chitchat", "step": 250, "valid_ppl": 151.2,
            "train": {"corpus": "chitchat", "max_src_len": 20, "batch_size": 8, "lr": 0.001}}
    folders = [("mle", "seq2seq"), ("backward", "backward"), ("rl", "seq2seq"), ("lm", "lm")]
    for seed, (name, kind) in enumerate(folders):
        torch.manual_seed(seed)
        cfg = ModelConfig(kind=kind, **base)
        model = LanguageModel(cfg) if kind == "lm" else Seq2Seq(cfg)
        extra = {"train_log.csv": TRAIN_LOG, "MODEL_CARD.md": "# mle\n\nA *tiny* random model for tests.\n"}
        n_params = sum(p.numel() for p in model.parameters())
        train = {**meta["train"], "context_turns": 2 if name in ("mle", "rl") else 0}
        save_checkpoint(root / name, model, tok, meta={**meta, "train": train, "parameters": n_params},
                        extra_files=extra if name == "mle" else None)
    shutil.copy(FIXTURE_BOTS, root / "bots.json")
    (root / "report.csv").write_text(REPORT, encoding="utf-8")
    return root





@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A complete checkpoint folder with toy models (see the module docstring)."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def app_checkpoints(tiny_checkpoints) -> Path:
    """The shipped checkpoints when they are all there (real replies), else the tiny ones."""
    return SHIPPED if shipped_checkpoints_complete() else tiny_checkpoints


@pytest.fixture(scope="session", name="free_port")
def free_port_fixture():
    """A function returning a free localhost port."""
    return free_port


@pytest.fixture(scope="session")
def tiny_bots(tiny_checkpoints):
    import torch

    from core.bots import load_bots

    torch.set_num_threads(1)  # a training run may share this machine
    return load_bots(tiny_checkpoints, device="cpu")


@pytest.fixture(scope="session")
def tiny_ctx(tiny_bots, tiny_checkpoints):
    """What the app is built from (bots, batching scheduler, checkpoint folder), over the tiny bots; no arena."""
    from core.serving import BatchScheduler
    from demo_app.context import AppContext

    scheduler = BatchScheduler(tiny_bots, threads=1)
    yield AppContext(bots=tiny_bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints)
    scheduler.close()


@pytest.fixture(scope="session")
def launched_app(tiny_ctx):
    """The app and its APIs on the tiny bots (demo_app.server, as ``chatbot-arena serve`` runs it) on a free
    localhost port; yields its URL."""
    from demo_app.app import build_app
    from demo_app.server import start_server

    handle = start_server(tiny_ctx, build_app(tiny_ctx))
    try:
        yield handle.url
    finally:
        handle.close()


@pytest.fixture
def arena_ctx(tiny_bots, tiny_checkpoints, tmp_path):
    """The app's context over the tiny bots, with its own scheduler and a fresh SQLite vote store (the arena tabs)."""
    from core.arena import Arena, ArenaStore
    from core.serving import BatchScheduler
    from demo_app.context import AppContext

    store = ArenaStore(f"sqlite:///{tmp_path / 'arena.sqlite3'}")
    scheduler = BatchScheduler(tiny_bots)
    yield AppContext(bots=tiny_bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints,
                     arena=Arena(store, tiny_bots, salt="test", rng=0))
    scheduler.close()
    store.close()
