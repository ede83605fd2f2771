"""MLE training end to end: a synthetic task is learned, a killed run resumes exactly, DDP runs on 2 CPUs."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.checkpoint import load_checkpoint
from core.synthetic import make_task_pairs, task_splits
from core.tokenizer import BOS_ID, EOS_ID
from core.train import LOG_FIELDS, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--emb-dim", "32", "--hidden", "32", "--enc-layers", "1", "--dec-layers", "1", "--dropout", "0.1",
        "--batch-size", "32", "--threads", "1", "--no-progress"]


@torch.inference_mode()
def greedy_exact_match(model, tokenizer, pairs, max_len=12) -> float:
    """Share of pairs whose greedy reply (one decode_step at a time) equals the target exactly."""
    src = [tokenizer.encode(s) for s, _ in pairs]
    S = max(map(len, src))
    x = torch.tensor([s + [0] * (S - len(s)) for s in src])
    mem = model.encode(x, torch.tensor([len(s) for s in src]))
    tok, state, out = torch.full((len(src),), BOS_ID), mem.state, []
    for _ in range(max_len):
        logp, state, _ = model.decode_step(tok, state, mem)
        tok = logp.argmax(-1)
        out.append(tok)
    hyps = torch.stack(out, 1).tolist()
    hits = 0
    for h, (_, target) in zip(hyps, pairs):
        h = h[: h.index(EOS_ID)] if EOS_ID in h else h
        hits += tokenizer.decode(h) == target
    return hits / len(pairs)


@pytest.mark.slow
def test_reverse_task_is_learned_in_under_a_minute(tmp_path):
    # the training budget is one minute of wall time (max_minutes); it usually converges in ~15 s
    cfg = TrainConfig(out=str(tmp_path / "rev"), task="reverse", emb_dim=64, hidden=64, enc_layers=1, dec_layers=1,
                      dropout=0.0, batch_size=64, lr=3e-3, warmup_steps=50, epochs=3, eval_every=100,
                      max_minutes=1.0, threads=1, progress=False)
    summary = train(cfg)
    model, tokenizer, config = load_checkpoint(tmp_path / "rev/best")
    _, _, test = task_splits("reverse", seed=cfg.split_seed)
    accuracy = greedy_exact_match(model, tokenizer, test)
    assert accuracy > 0.9, f"held-out exact match {accuracy:.2%} after {summary['step']} steps"
    assert config["meta"]["corpus"] == "synthetic:reverse"
    with open(tmp_path / "rev/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == LOG_FIELDS
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert any(r["valid_ppl"] for r in rows) and all(float(r["tokens_per_s"]) > 0 for r in rows)


def test_held_out_task_pairs_are_unseen():
    train_p, valid, test = task_splits("sort", seed=3, n_train=2000, n_eval=200)
    seen = {s for s, _ in train_p}
    assert valid and test and not any(s in seen for s, _ in valid + test)
    assert all(t.split() == sorted(s.split(), key=int) for s, t in make_task_pairs("sort", 50, seed=1))


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", "train", "--task", "sort", "--out", str(out), "--epochs", "1",
            "--max-steps", "120", "--save-every", "10", "--eval-every", "60", *TINY, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    # 1. an uninterrupted reference run
    subprocess.run(_train_cmd(tmp_path / "ref"), check=True, env=_env(), capture_output=True, timeout=300)
    # 2. the same run, killed once it has saved a few times, then started again with the same command
    proc = subprocess.Popen(_train_cmd(tmp_path / "cut"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    state_file = tmp_path / "cut/last/train_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state_file.exists() and '"step": 30' in _read(state_file)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(_read(tmp_path / "cut/last/train_state.json").split('"step": ')[1].split(",")[0])
    assert killed_at < 120, "the run finished before it could be killed"
    out = subprocess.run(_train_cmd(tmp_path / "cut"), check=True, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert f"resumed from {tmp_path / 'cut' / 'last'} at step {killed_at}" in out.stdout
    # 3. same data order, same RNG, same optimizer state: the resumed run ends with the reference weights
    ref = load_file(str(tmp_path / "ref/last/model.safetensors"))
    cut = load_file(str(tmp_path / "cut/last/model.safetensors"))
    for k in ref:
        assert torch.allclose(ref[k], cut[k], atol=1e-6), k
    with open(tmp_path / "cut/log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps)), "log rows after the resumed step must not be duplicated"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_resume_refuses_other_settings(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), task="sort", emb_dim=16, hidden=16, enc_layers=1, dec_layers=1,
                      max_steps=5, save_every=5, eval_every=5, progress=False)
    train(cfg)
    cfg.hidden = cfg.emb_dim = 32
    with pytest.raises(ValueError, match="hidden: saved 16 vs now 32"):
        train(cfg)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "core.cli", "train", "--task", "reverse", "--out", str(tmp_path / "ddp"), "--max-steps", "20",
           "--save-every", "10", "--eval-every", "10", *TINY]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    model, _, config = load_checkpoint(tmp_path / "ddp/last")
    assert config["meta"]["step"] == 20
    with open(tmp_path / "ddp/log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f) if r["valid_ppl"]] == ["10", "20"]


def test_teacher_forcing_below_one_trains(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "tf"), task="reverse", emb_dim=16, hidden=16, enc_layers=1, dec_layers=1,
                      teacher_forcing=0.5, max_steps=10, save_every=10, eval_every=10, progress=False)
    summary = train(cfg)
    assert summary["step"] == 10 and summary["best_valid_ppl"] < float("inf")


def test_a_fresh_run_starts_its_log_again(tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    (out / "log.csv").write_text(",".join(LOG_FIELDS) + "\n" + "50,0,9,,0.1,1,1,1\n" * 3)  # killed before a save
    train(TrainConfig(out=str(out), task="sort", emb_dim=16, hidden=16, enc_layers=1, dec_layers=1, max_steps=50,
                      save_every=50, eval_every=50, threads=1, progress=False))
    with open(out / "log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["50"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
