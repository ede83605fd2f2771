"""RL collapse guard and remedy: the batch-repetition penalty on a hand-made batch, top_share, and short self-play
runs on tiny trained models (the guard's fields in log.csv; the collapse stop keeps best/ from before)."""

import csv
import random

import pytest
import torch

from core.checkpoint import read_config
from core.model import ModelConfig
from core.training.rewards import batch_repetition_penalty, reply_counts, top_share
from core.training.rl import RL_LOG_FIELDS, RLConfig, train_rl
from core.training.train import TrainConfig, train

torch.set_num_threads(1)

PAIRS = [("what is your name", "i am tom"), ("do you like football", "yes i love football"),
         ("where do you live", "in paris with my cat"), ("what do you do", "i teach at a school")]
TINY = dict(model=ModelConfig(emb_dim=16, hidden=16, enc_layers=1, dec_layers=1, dropout=0.0), vocab_size=150,
            batch_size=16, lr=5e-3, warmup_steps=5, eval_every=100, save_every=100, threads=1, progress=False)


def test_repeated_replies_lose_reward_in_proportion_to_their_count():
    batch = ["what about you?", "What about you", "i like cats", "what about you ?", "ok", "OK"]
    assert reply_counts(batch) == [3, 3, 1, 3, 2, 2]  # compared after normalisation (case, spacing, punctuation)
    penalty = batch_repetition_penalty(batch, 0.5)
    assert penalty.tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])  # 0.5 x (count - 1)
    rewards = torch.tensor([0.2, -0.1, 0.3, 0.0, 1.0, 0.4])
    assert (rewards - penalty).tolist() == pytest.approx([-0.8, -1.1, 0.3, -1.0, 0.5, -0.1])
    # replies outside the pool (e.g. greedy candidates) are counted against the sampled turns
    assert batch_repetition_penalty(["what about you", "new"], 0.5, pool=batch).tolist() == [1.0, 0.0]
    assert batch_repetition_penalty(batch, 0.0).tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="must be >= 0"):
        batch_repetition_penalty(batch, -1.0)


def test_top_share_is_the_share_of_the_most_frequent_reply():
    assert top_share(["a", "b", "c", "d"]) == 0.25
    assert top_share(["what about you?", "what about you", "yes", "no", "what about you!"]) == pytest.approx(0.6)
    assert top_share(["same"] * 7) == 1.0
    assert top_share([]) == 0.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlc")
    tsv = root / "pairs.tsv"
    rng = random.Random(0)
    tsv.write_text("".join(f"{q}\t{a}\n" for q, a in [rng.choice(PAIRS) for _ in range(300)]))
    common = dict(corpus=str(tsv), corpus_format="tsv", max_steps=40, **TINY)
    train(TrainConfig(out=str(root / "fwd"), **common))
    train(TrainConfig(out=str(root / "bwd"), kind="backward", tokenizer=str(root / "fwd/tokenizer.json"), **common))
    return root


def rl_config(root, name, **kw):
    return RLConfig(out=str(root / name), policy=str(root / "fwd/last"), backward=str(root / "bwd/last"),
                    batch_size=8, turns=2, max_len=6, eval_every=2, save_every=2, valid_max_batches=1, threads=1,
                    ppl_tolerance=100.0, **kw)


def test_the_guard_and_the_penalty_appear_in_the_log(models):
    summary = train_rl(rl_config(models, "rl", steps=3, repeat_penalty=0.2, collapse_share=1.0))
    assert summary["step"] == 3 and not summary["collapsed"]
    with open(models / "rl/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RL_LOG_FIELDS
    for r in rows:
        assert 1 / 16 <= float(r["top_share"]) <= 1.0  # 8 dialogues x 2 turns
        assert 0.0 <= float(r["sample_distinct_2"]) <= 1.0
        assert float(r["repeat_penalty"]) >= 0.0
        # the mean penalty is 0.2 x mean(count - 1); a top share of s means one reply repeated 16 s times
        top = round(float(r["top_share"]) * 16)
        assert float(r["repeat_penalty"]) >= 0.2 * top * (top - 1) / 16 - 1e-3
    assert read_config(models / "rl/best")["meta"]["rl"]["repeat_penalty"] == 0.2


def test_a_collapse_alarm_for_collapse_steps_in_a_row_stops_the_run(models, capsys):
    # collapse_share 0: every step is above it (some reply is always the most frequent), so the run stops at step 2
    summary = train_rl(rl_config(models, "rl-collapse", steps=10, collapse_share=0.0, collapse_steps=2))
    assert summary["collapsed"] and summary["step"] == 2 and summary["done"]
    assert summary["best_step"] == 0  # the policy that set off the alarm is not best/
    assert read_config(models / "rl-collapse/best")["meta"]["step"] == 0
    out = capsys.readouterr().out
    assert "collapse alarm" in out and "stopped at step 2: collapse" in out
    with open(models / "rl-collapse/log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]
    assert train_rl(rl_config(models, "rl-collapse", steps=10, collapse_share=0.0, collapse_steps=2))["step"] == 2


def test_collapse_steps_zero_only_warns(models, capsys):
    summary = train_rl(rl_config(models, "rl-warn", steps=2, collapse_share=0.0, collapse_steps=0))
    assert summary["step"] == 2 and not summary["collapsed"] and summary["best_step"] == 2
    assert "collapse alarm" in capsys.readouterr().out
