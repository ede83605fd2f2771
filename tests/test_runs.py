"""The run plumbing shared by MLE training and RL: the log, resume from last/, the time budget and Ctrl-C."""

import csv
import os
import signal

import pytest
import torch

from core.checkpoint import pack_train_state
from core.model import ModelConfig, Seq2Seq
from core.tokenizer import train_tokenizer
from core.training.runs import RunFolder, StopRequest, TimeBudget, append_log, set_threads, truncate_log

FIELDS = ["step", "loss"]


def _steps(path) -> list[int]:
    with open(path) as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_log_appends_with_one_header_and_truncates_after_a_step(tmp_path):
    log = tmp_path / "log.csv"
    for step in (10, 20, 30):
        append_log(log, {"step": step, "loss": 1.0 / step}, FIELDS)
    assert log.read_text().count("step,loss") == 1 and _steps(log) == [10, 20, 30]
    truncate_log(log, 20, FIELDS)
    assert _steps(log) == [10, 20]
    truncate_log(tmp_path / "absent.csv", 5, FIELDS)  # nothing to truncate: nothing written
    assert not (tmp_path / "absent.csv").exists()


def test_resume_restores_weights_optimizer_and_step_and_drops_later_log_rows(tmp_path, capsys):
    tok = train_tokenizer(["a b c d e"], kind="word", vocab_size=20)
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(vocab_size=tok.vocab_size, emb_dim=8, hidden=8, enc_layers=1, dec_layers=1))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.tensor([[4, 5]]), torch.tensor([2]), torch.tensor([[1, 6]])).sum().backward()
    opt.step()
    run = RunFolder(tmp_path / "run", FIELDS)
    assert run.resume(model, opt) is None and not run.has_last()
    run.save("last", model, tok, meta={"step": 7}, train_state=pack_train_state(opt, {"step": 7}))
    assert capsys.readouterr().out == f"saved {tmp_path / 'run' / 'last'} at step 7\n"
    for step in (5, 7, 9):
        run.log({"step": step, "loss": 0.5})
    torch.manual_seed(1)
    fresh = Seq2Seq(model.cfg)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    info = RunFolder(tmp_path / "run", FIELDS).resume(fresh, fresh_opt)
    assert info["step"] == 7 and _steps(tmp_path / "run/log.csv") == [5, 7]
    assert f"resumed from {tmp_path / 'run' / 'last'} at step 7" in capsys.readouterr().out
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].abs().sum() > 0


def test_other_ranks_never_write(tmp_path):
    run = RunFolder(tmp_path / "rank1", FIELDS, main=False)
    run.log({"step": 1, "loss": 0.0})
    assert not (tmp_path / "rank1").exists()


def test_time_budget_counts_earlier_invocations_and_limits_this_one():
    clock = TimeBudget(max_minutes=0.0, spent_s=100.0)
    assert not clock.up() and clock.total_s() >= 100.0
    over = TimeBudget(max_minutes=1e-9)
    over.t0 -= 1.0  # as if this invocation had run for a second
    assert over.up()


def test_first_signal_asks_to_stop_the_second_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "Ctrl-C"
        assert "stopping after this step" in capsys.readouterr().out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"


def test_threads_setting():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        set_threads(-1)
    n = torch.get_num_threads()
    set_threads(0)
    assert torch.get_num_threads() == n
