"""Tuning the anti-LM bot on the validation split: a grid, a feasible winner, bots.json updated in place."""

import json
import random
import shutil

import pytest

from core.bots import load_bots
from core.corpora import make_pairs, split_conversations
from core.evaluation.metrics import rate_upper_bound
from core.evaluation.tune import tune_antilm, write_bot_defaults

SMALL = {"antilm": [0.2, 0.6], "gamma": [2], "n_bonus": [0.0, 0.5]}
# every bound of tune off; a test sets the one it checks
LOOSE = dict(n_prompts=8, grid=SMALL, max_logp_drop=100.0, max_worst_drop=100.0, max_rare_increase=1.0,
             max_unknown_increase=1.0, max_dull_rate=1.0)


@pytest.fixture(scope="module")
def split():
    convs = [[f"hello number {i}", f"hi there friend {i}", "how are you"] for i in range(60)]
    return split_conversations(convs, seed=1, valid_frac=0.5, test_frac=0.1)


def test_grid_table_and_a_winner_from_the_grid(tiny_bots, split):
    chosen, df = tune_antilm(tiny_bots["antilm"], split, **LOOSE)
    assert len(df) == 1 + 4 and df.loc[0, "antilm"] == 0.0 and not df.loc[0, "feasible"]
    assert chosen["antilm"] in SMALL["antilm"] and chosen["gamma"] == 2 and chosen["n_bonus"] in SMALL["n_bonus"]
    feasible = df[df["feasible"]]
    assert chosen["antilm"] == feasible.sort_values(["distinct_2", "logp_per_token"]).iloc[-1]["antilm"]
    assert {"distinct_1", "distinct_2", "dull_rate", "logp_per_token", "worst_token_logp", "mean_words"} <= set(
        df.columns)
    assert (df["worst_token_logp"] <= df["logp_per_token"] + 1e-9).all()
    assert df["rare_share"].between(0, 1).all() and df["unknown_word_rate"].between(0, 1).all()


def test_rare_token_bound_removes_points_that_add_surprising_words(tiny_bots, split):
    loose = tune_antilm(tiny_bots["antilm"], split, **LOOSE)[1]
    assert loose["feasible"].any()
    with pytest.raises(ValueError, match="rare token"):  # the same grid, every point now over the bound
        tune_antilm(tiny_bots["antilm"], split, **{**LOOSE, "max_rare_increase": -1.0})


def test_unknown_word_bound_removes_points_that_make_up_words(tiny_bots, split):
    df = tune_antilm(tiny_bots["antilm"], split, **LOOSE)[1]
    assert df["feasible"].any()
    # the split's words are "hello number i", "hi there friend i", "how are you": a tiny random model's replies
    # hold other words, and with a bound below zero every point is over it
    assert (df["unknown_word_rate"] > 0).any()
    with pytest.raises(ValueError, match="never seen in training"):
        tune_antilm(tiny_bots["antilm"], split, **{**LOOSE, "max_unknown_increase": -1.0})


def test_dull_rate_cap_removes_points_above_it_even_when_beam_is_duller(tiny_bots, split):
    bot = tiny_bots["antilm"]
    loose = {k: v for k, v in LOOSE.items() if k != "max_dull_rate"}
    # the dull list is every reply plain beam gives to tune's prompts: beam's dull rate is 1.0, so only the cap binds
    prompts = [q for q, _ in random.Random(0).sample(make_pairs(split.valid), 8)]
    dull = [r.text for r in bot.respond_batch(prompts, antilm=0.0, gamma=0, n_bonus=0.0)]
    df = tune_antilm(bot, split, dull=dull, max_dull_rate=1.0, **loose)[1]
    assert df.loc[0, "dull_rate"] == 1.0 and df["feasible"].any()
    # the cap applies to the rate's 95% upper bound over the 8 prompts, not to the measured rate
    assert df["dull_upper_bound"].tolist() == pytest.approx([rate_upper_bound(r, 8) for r in df["dull_rate"]])
    assert (df.loc[1:, "dull_upper_bound"] > df.loc[1:, "dull_rate"]).all()  # (a rate of 1.0 is its own bound)
    bounds = df.loc[1:, "dull_upper_bound"]
    assert bounds.min() < bounds.max()  # some grid points are duller than others
    cap = (bounds.min() + bounds.max()) / 2
    assert (df.loc[1:, "dull_rate"] <= cap).all()  # every measured rate is under the cap: the bound decides
    capped = tune_antilm(bot, split, dull=dull, max_dull_rate=cap, **loose)
    assert (capped[1]["feasible"] == (df["feasible"] & (df["dull_upper_bound"] <= cap))).all()
    assert capped[0]["antilm"] in set(df.loc[df["feasible"] & (df["dull_upper_bound"] <= cap), "antilm"])
    with pytest.raises(ValueError, match="at most -100% dull"):
        tune_antilm(bot, split, dull=dull, max_dull_rate=-1.0, **loose)


def test_no_feasible_point_is_a_clear_error(tiny_bots, split):
    with pytest.raises(ValueError, match="widen the grid"):
        tune_antilm(tiny_bots["antilm"], split, n_prompts=8, grid=SMALL, max_logp_drop=-100.0)


def test_writing_defaults_touches_only_that_bot(tiny_checkpoints, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, root)
    before = json.loads((root / "bots.json").read_text())
    write_bot_defaults(root / "bots.json", "antilm", {"antilm": 0.3, "gamma": 4, "n_bonus": 0.25})
    after = json.loads((root / "bots.json").read_text())
    for b0, b1 in zip(before["bots"], after["bots"]):
        if b0["name"] == "antilm":
            assert b1["decoder"] == {**b0["decoder"], "antilm": 0.3, "gamma": 4, "n_bonus": 0.25}
        else:
            assert b0 == b1
    assert load_bots(root, device="cpu")["antilm"].defaults.gamma == 4
    with pytest.raises(ValueError, match="no bot named"):
        write_bot_defaults(root / "bots.json", "nope", {})
