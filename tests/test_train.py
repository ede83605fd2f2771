"""MLE training end to end: a synthetic task is learned, a killed run resumes exactly, DDP runs on 2 CPUs."""

import copy
import csv
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import shipped_checkpoints_complete
from safetensors.torch import load_file

import core.training.train
from core.batching import collate
from core.checkpoint import load_checkpoint
from core.model import ModelConfig, Seq2Seq
from core.tokenizer import BOS_ID, EOS_ID
from core.training.synthetic import make_task_pairs, task_splits
from core.training.train import (
    LOG_FIELDS,
    TrainConfig,
    TrainState,
    make_adam,
    setup_training,
    train,
    train_step,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
REVERSE_STEPS = 700
KILL_STEPS = 240  # far more than the ~30 steps the trainer runs between its report and the kill
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


def tiny_model(size: int = 16, **kw) -> ModelConfig:
    return ModelConfig(emb_dim=size, hidden=size, enc_layers=1, dec_layers=1, **kw)


@pytest.mark.slow
def test_reverse_task_is_learned_on_a_step_budget(tmp_path):
    # a fixed number of steps (not a clock), so the result does not depend on how busy the machine is
    cfg = TrainConfig(out=str(tmp_path / "rev"), task="reverse", model=tiny_model(64, dropout=0.0), batch_size=64,
                      lr=3e-3, warmup_steps=50, max_steps=REVERSE_STEPS, eval_every=100, threads=1, progress=False)
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
            "--max-steps", str(KILL_STEPS), "--save-every", "10", "--eval-every", "60", *TINY, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _wait_for_line(proc: subprocess.Popen, text: str) -> list[str]:
    """Read the trainer's stdout until a line containing ``text``; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the trainer ended without printing {text!r}:\n{''.join(lines[-20:])}")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    # 1. an uninterrupted reference run
    subprocess.run(_train_cmd(tmp_path / "ref"), check=True, env=_env(), capture_output=True, timeout=300)
    # 2. the same run, killed as soon as it reports that step 30 is on disk, then started again
    proc = subprocess.Popen(_train_cmd(tmp_path / "cut"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_line(proc, f"saved {tmp_path / 'cut' / 'last'} at step 30")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(_train_cmd(tmp_path / "cut"), check=True, env=_env(), capture_output=True, text=True,
                         timeout=300)
    resumed = [line for line in out.stdout.splitlines() if line.startswith("resumed from")]
    assert resumed, out.stdout[-2000:]
    killed_at = int(resumed[0].rsplit(" ", 1)[1])
    assert resumed[0] == f"resumed from {tmp_path / 'cut' / 'last'} at step {killed_at}"
    assert 30 <= killed_at < KILL_STEPS and killed_at % 10 == 0, "the run finished before it could be killed"
    # 3. same data order, same RNG, same optimizer state: the resumed run ends with the reference weights
    ref = load_file(str(tmp_path / "ref/last/model.safetensors"))
    cut = load_file(str(tmp_path / "cut/last/model.safetensors"))
    for k in ref:
        assert torch.allclose(ref[k], cut[k], atol=1e-6), k
    with open(tmp_path / "cut/log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps)), "log rows after the resumed step must not be duplicated"
    assert steps[-1] == KILL_STEPS


def test_resume_refuses_other_settings(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), task="sort", model=tiny_model(), max_steps=5, save_every=5,
                      eval_every=5, threads=1, progress=False)
    train(cfg)
    cfg.model = tiny_model(32)
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


def test_teacher_forcing_below_one_trains_through_the_free_running_loop(tmp_path, monkeypatch):
    import core.training.train as train_module

    calls = []
    original = train_module._scheduled_sampling_logits

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "_scheduled_sampling_logits", counted)
    cfg = TrainConfig(out=str(tmp_path / "tf"), task="reverse", model=tiny_model(), teacher_forcing=0.5,
                      max_steps=10, save_every=10, eval_every=10, threads=1, progress=False)
    summary = train(cfg)
    assert summary["step"] == 10 and summary["best_valid_ppl"] < float("inf")
    assert len(calls) >= 10  # every training step ran the per-step loop that feeds the model's own tokens
    calls.clear()
    train(TrainConfig(out=str(tmp_path / "tf1"), task="reverse", model=tiny_model(), teacher_forcing=1.0,
                      max_steps=5, save_every=5, eval_every=5, threads=1, progress=False))
    assert calls == []  # teacher forcing 1.0: one teacher-forced pass, never the loop


def test_a_fresh_run_starts_its_log_again(tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    (out / "log.csv").write_text(",".join(LOG_FIELDS) + "\n" + "50,0,9,,0.1,1,1,1\n" * 3)  # killed before a save
    train(TrainConfig(out=str(out), task="sort", model=tiny_model(), max_steps=50, save_every=50, eval_every=50,
                      threads=1, progress=False))
    with open(out / "log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["50"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ctrl_c_validates_the_last_step_and_leaves_best(tmp_path):
    out = tmp_path / "int"
    cmd = [*_train_cmd(out), "--max-steps", "100000", "--eval-every", "100000"]  # neither budget ever stops it
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_line(proc, f"saved {out / 'last'} at step 20")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest[-2000:]
    stopped = next(line for line in rest.splitlines() if line.startswith("stopped at step"))
    step = int(stopped.split()[3].rstrip(":"))
    assert stopped.startswith(f"stopped at step {step}: interrupted (Ctrl-C); validated at step {step}")
    _, _, config = load_checkpoint(out / "best")
    assert config["meta"]["step"] == step and config["meta"]["valid_ppl"] > 1
    assert load_checkpoint(out / "last")[2]["meta"]["step"] == step
    with open(out / "log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert int(last["step"]) == step and last["valid_ppl"]
    assert config["meta"]["train"]["model"]["hidden"] == 32  # the --hidden flag went into TrainConfig.model


def test_time_limit_validates_the_last_step_and_leaves_best(tmp_path, capsys):
    cfg = TrainConfig(out=str(tmp_path / "t"), task="sort", model=tiny_model(), max_steps=100000, eval_every=100000,
                      save_every=100000, max_minutes=1e-6, threads=1, progress=False)
    summary = train(cfg)
    assert summary["stopped"] == f"time limit of {cfg.max_minutes} min" and not summary["done"]
    _, _, config = load_checkpoint(tmp_path / "t/best")
    assert config["meta"]["step"] == summary["step"] and summary["best_valid_ppl"] == config["meta"]["valid_ppl"]
    assert f"validated at step {summary['step']}" in capsys.readouterr().out
    # the same command resumes the unfinished run from last/
    cfg.max_steps = summary["step"] + 2
    cfg.max_minutes = 0.0
    assert train(cfg)["step"] == summary["step"] + 2
    assert "resumed from" in capsys.readouterr().out


def test_early_stopping_and_plateau_lr_decay(tmp_path, monkeypatch):
    # validation perplexities scripted: better, better, worse, worse -> two plateaus -> stop (patience 2)
    script = iter([10.0, 9.0, 9.5, 9.6])
    monkeypatch.setattr(core.training.train, "perplexity", lambda *a, **k: next(script))
    cfg = TrainConfig(out=str(tmp_path / "es"), task="sort", model=tiny_model(), lr=1e-3, warmup_steps=1,
                      lr_decay=0.5, patience=2, eval_every=1, save_every=100, max_steps=50, threads=1, progress=False)
    summary = train(cfg)
    assert summary["step"] == 4 and summary["early_stopped"] and summary["done"]
    assert summary["stopped"] == "early stop: 2 validations without improvement"
    assert summary["best_valid_ppl"] == 9.0
    assert load_checkpoint(tmp_path / "es/best")[2]["meta"]["step"] == 2
    with open(tmp_path / "es/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["valid_ppl"] for r in rows] == ["10.0", "9.0", "9.5", "9.6"]
    # the LR of a step is set before its validation: halved from the step after the first plateau
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3, 1e-3, 5e-4]
    state = (tmp_path / "es/last/train_state.json").read_text()
    assert '"lr_scale": 0.25' in state and '"early_stopped": true' in state
    assert train(cfg)["stopped"] == "finished earlier (nothing to do)"  # an early-stopped run stays stopped


def test_config_of_older_checkpoints_loads_into_the_nested_model_config():
    flat = {"out": "runs/mle", "kind": "backward", "emb_dim": 64, "hidden": 64, "enc_layers": 1, "cell": "lstm",
            "tie_output": True, "batch_size": 8}
    cfg = TrainConfig.from_dict(flat)
    assert cfg.model == ModelConfig(vocab_size=8000, kind="backward", emb_dim=64, hidden=64, enc_layers=1,
                                    cell="lstm", tie_output=True)
    assert cfg.batch_size == 8 and TrainConfig.from_dict(asdict(cfg)) == cfg  # nested (new) layout round-trips
    assert cfg.flat()["hidden"] == 64 and "model" not in cfg.flat()


@pytest.mark.skipif(not shipped_checkpoints_complete(), reason="needs the shipped checkpoints")
@pytest.mark.parametrize("name", ["mle", "lm", "backward", "rl"])
def test_shipped_checkpoint_configs_load_unchanged(name):
    model, _, config = load_checkpoint(ROOT / "checkpoints" / name)
    cfg = TrainConfig.from_dict(config["meta"]["train"])
    assert cfg.model_config(model.cfg.vocab_size) == model.cfg


def test_cosine_schedule_decays_to_lr_min_whatever_validation_says(tmp_path, monkeypatch):
    # worse validations do not halve the LR under a schedule: the log's LR follows the cosine alone
    script = iter([10.0, 11.0, 12.0, 13.0])
    monkeypatch.setattr(core.training.train, "perplexity", lambda *a, **k: next(script))
    cfg = TrainConfig(out=str(tmp_path / "cos"), task="sort", model=tiny_model(), lr=1e-3, warmup_steps=2,
                      lr_schedule="cosine", lr_min=0.1, patience=10, eval_every=4, save_every=100, max_steps=16,
                      threads=1, progress=False)
    summary = train(cfg)
    assert summary["step"] == 16 and not summary["early_stopped"]
    with open(tmp_path / "cos/log.csv") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    # step s of the log ran with lr_factor(s - 1): full LR after warm-up, half-way 0.55, the end at lr_min
    assert lrs[4] == pytest.approx(1e-3 * core.training.train.lr_factor(cfg, 3, 16), rel=1e-2)
    assert lrs[16] == pytest.approx(1e-4, rel=1e-2)
    assert lrs[4] > lrs[8] > lrs[12] > lrs[16]
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        train(TrainConfig(out=str(tmp_path / "bad"), task="sort", lr_schedule="step", threads=1, progress=False))


def test_init_from_starts_at_a_checkpoints_weights_and_tokenizer(tmp_path):
    base = TrainConfig(out=str(tmp_path / "base"), task="sort", model=tiny_model(), max_steps=60, eval_every=60,
                       save_every=60, threads=1, progress=False)
    first = train(base)
    anneal = TrainConfig(out=str(tmp_path / "anneal"), task="sort", model=tiny_model(), init_from=str(
        tmp_path / "base/best"), max_steps=1, lr=1e-12, warmup_steps=1, eval_every=1, save_every=1, threads=1,
        progress=False, seed=5)
    second = train(anneal)
    # one step at a negligible LR from the first run's best: the same validation perplexity (a random init
    # with seed 5 would be far off), and the tokenizer is the start checkpoint's
    assert second["best_valid_ppl"] == pytest.approx(first["best_valid_ppl"], rel=1e-3)
    assert (tmp_path / "anneal/tokenizer.json").exists() is False
    assert load_checkpoint(tmp_path / "anneal/best")[1].vocab_size == load_checkpoint(tmp_path / "base/best")[
        1].vocab_size
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        train(TrainConfig(out=str(tmp_path / "x"), task="sort", init_from=str(tmp_path), threads=1, progress=False))


def test_label_smoothing_is_a_training_loss_only():
    torch.manual_seed(0)
    from core.batching import encode_pairs
    from core.model import build_model
    from core.tokenizer import train_tokenizer

    train_p, _, _ = task_splits("sort", seed=0)
    tok = train_tokenizer([t for p in train_p for t in p], kind="word")
    batch = collate(encode_pairs(tok, train_p[:8], max_src_len=20, max_tgt_len=20))
    model = build_model(tiny_model(vocab_size=tok.vocab_size)).eval().requires_grad_(False)
    plain, n = core.training.train.sequence_nll(model, batch)
    smooth, _ = core.training.train.sequence_nll(model, batch, label_smoothing=0.1)
    logits = model(batch.src, batch.src_lens, batch.tgt_in).flatten(0, 1)
    keep = batch.tgt_out.flatten() != 0
    logp = logits[keep].log_softmax(-1)
    expected = 0.9 * plain + 0.1 * -logp.mean(-1).sum()
    assert float(smooth) == pytest.approx(float(expected.detach()), rel=1e-4) and float(smooth) != float(plain)


def test_make_adam_is_fused_and_takes_the_same_steps_as_adam():
    torch.manual_seed(0)
    a = Seq2Seq(tiny_model(8, vocab_size=30))
    b = copy.deepcopy(a)
    fused, plain = make_adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    assert fused.defaults["fused"] is True
    for step in range(3):
        for model, opt in ((a, fused), (b, plain)):
            g = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_train_step_takes_one_step_at_the_scheduled_lr_and_validate_keeps_best(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "s"), task="sort", model=tiny_model(), lr=1e-3, warmup_steps=4, max_steps=8,
                      valid_max_batches=1, threads=1, progress=False)
    run, state = setup_training(cfg)
    assert state == TrainState() and run.max_steps == 8
    batch = collate(run.data.train[:16])
    before = [p.detach().clone() for p in run.model.parameters()]
    stats = train_step(run, state, batch)
    assert (state.step, state.batch_in_epoch) == (1, 1) and stats.n_tokens == batch.n_tokens
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)  # the first warm-up step
    assert stats.loss > 0 and stats.grad_norm > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    ppl = validate(run, state)  # the first validation always writes best/
    assert state.best_ppl == ppl and state.has_best and state.valid_step == 1
    assert load_checkpoint(tmp_path / "s/best")[2]["meta"]["step"] == 1


def test_train_state_resumes_the_info_dict_of_older_run_folders():
    old = {"step": 30, "epoch": 1, "batch_in_epoch": 4, "best_ppl": float("inf"), "bad_evals": 1, "lr_scale": 0.5,
           "train_seconds": 3.0, "early_stopped": False, "valid_step": 20, "has_best": True,
           "param_groups": [{"lr": 1e-3}], "py_rng": [3, [1, 2], None]}
    state = TrainState.from_info(old)
    assert state.info() == {k: v for k, v in old.items() if k not in ("param_groups", "py_rng")}
