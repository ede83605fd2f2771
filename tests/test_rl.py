"""RL: each reward on tiny trained models, the REINFORCE update direction, and a short self-play run + resume."""

import copy
import csv
import functools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.batching import collate
from core.checkpoint import load_checkpoint
from core.context import SEP_ID, window_ids
from core.decoding import sequence_logprobs
from core.evaluation.metrics import normalize_reply
from core.export import export_run
from core.model import ModelConfig, Seq2Seq
from core.tokenizer import train_tokenizer
from core.training.rewards import (
    combine,
    dull_list,
    ease_of_answering,
    information_flow,
    semantic_coherence,
)
from core.training.rl import (
    RLConfig,
    RLState,
    flatten_turns,
    group_baseline,
    policy_update,
    reinforce_loss,
    reply_kl,
    rollout,
    self_play,
    standardized_reward,
    train_rl,
    turn_baseline,
)
from core.training.train import TrainConfig, make_adam, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

PAIRS = [
    ("what is your name", "i don't know"),
    ("i don't know", "i don't know"),
    ("do you like football", "yes i love football and basketball"),
    ("where do you live", "i live in paris with my cat"),
    ("do you have a cat", "yes a black cat called tom"),
    ("what do you do for work", "i am a teacher at a school"),
]
TINY = dict(model=ModelConfig(emb_dim=32, hidden=32, enc_layers=1, dec_layers=1, dropout=0.0), vocab_size=200,
            batch_size=16, lr=5e-3, warmup_steps=10, eval_every=100, save_every=100, threads=1, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny forward model and backward model trained on a TSV corpus of six repeated exchanges."""
    root = tmp_path_factory.mktemp("rl")
    tsv = root / "pairs.tsv"
    rng = random.Random(0)
    tsv.write_text("".join(f"{q}\t{a}\n" for q, a in [rng.choice(PAIRS) for _ in range(600)]))
    common = dict(corpus=str(tsv), corpus_format="tsv", max_steps=300, **TINY)
    train(TrainConfig(out=str(root / "fwd"), **common))
    train(TrainConfig(out=str(root / "bwd"), kind="backward", tokenizer=str(root / "fwd/tokenizer.json"), **common))
    fwd, tok, _ = load_checkpoint(root / "fwd/last")
    bwd, _, _ = load_checkpoint(root / "bwd/last")
    return root, fwd, bwd, tok


def test_r1_dull_reply_is_harder_to_answer(models):
    _, fwd, _, tok = models
    dull = [tok.encode("i don't know")]
    r1 = ease_of_answering(fwd, [tok.encode("i don't know"), tok.encode("i live in paris with my cat")], dull)
    assert r1[0] < r1[1]


def test_r2_identical_turns_get_the_lowest_information_flow(models):
    _, fwd, _, tok = models
    turns = [tok.encode(q) for q, _ in PAIRS[2:]]
    same = information_flow(fwd, turns, turns)
    assert torch.allclose(same, torch.zeros(len(turns)), atol=1e-4)
    others = information_flow(fwd, turns, turns[1:] + turns[:1])
    assert (others > same + 1e-3).all()


def test_r3_coherent_answer_beats_an_unrelated_one(models):
    _, fwd, bwd, tok = models
    q = tok.encode("do you like football")
    r3 = semantic_coherence(fwd, bwd, [q, q], [tok.encode("yes i love football and basketball"),
                                               tok.encode("i live in paris with my cat")])
    assert r3[0] > r3[1]


def test_scoring_many_targets_per_source_equals_scoring_pairs(models):
    _, fwd, _, tok = models
    src = [tok.encode("do you like football"), tok.encode("where do you live")]
    tgt = [tok.encode("i don't know"), tok.encode("yes i love football and basketball"), tok.encode("ok")]
    with torch.no_grad():
        grouped = sequence_logprobs(fwd, src, tgt + tgt, repeat=3)
        pairs = sequence_logprobs(fwd, [s for s in src for _ in tgt], tgt + tgt)
    assert torch.allclose(grouped, pairs, atol=1e-5)


def test_combined_reward_uses_the_paper_weights():
    r = combine(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0]))
    assert float(r) == pytest.approx(0.25 + 0.5 + 2.0)


def test_dull_list_adds_frequent_training_replies():
    convs = [["hi", "i don't know"], ["hey", "sure thing"], ["yo", "sure thing"], ["a", "sure thing!"]]
    dull = dull_list(convs, top=1)
    assert "i don't know" in dull and dull[-1] == "sure thing" and len(dull) == len(set(dull))


def test_reinforce_raises_the_probability_of_the_rewarded_reply():
    vocab_tok = train_tokenizer(["yes no maybe hello world"], kind="word", vocab_size=20)
    torch.manual_seed(0)
    policy = Seq2Seq(ModelConfig(vocab_size=vocab_tok.vocab_size, emb_dim=16, hidden=16, enc_layers=1,
                                 dec_layers=1, dropout=0.0)).eval()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    query, target = vocab_tok.encode("maybe"), vocab_tok.encode("yes")

    def p_target() -> float:
        with torch.no_grad():
            return float(sequence_logprobs(policy, [query], [target]).exp())

    before = p_target()
    for step in range(15):
        replies = [d[1] for d in self_play(policy, [query] * 64, turns=1, max_len=3, temperature=1.0, seed=step)]
        rewards = torch.tensor([1.0 if r == target else 0.0 for r in replies])
        loss = reinforce_loss(policy, [query] * 64, replies, rewards, float(rewards.mean()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_target() > 2 * before, (before, p_target())


def test_self_play_run_logs_saves_and_resumes(models):
    root, _, _, tok = models
    cfg = RLConfig(out=str(root / "rl"), policy=str(root / "fwd/last"), backward=str(root / "bwd/last"),
                   batch_size=4, turns=2, max_len=8, steps=4, eval_every=2, save_every=2, valid_max_batches=2,
                   threads=1, ppl_tolerance=100.0, greedy_candidates=True, kl_coef=0.5)
    summary = train_rl(cfg)
    assert summary["step"] == 4 and summary["best_step"] == 4 and summary["done"]
    with open(root / "rl/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(r["reward"] and r["baseline"] and r["pg_loss"] and r["mle_loss"] and r["greedy_dull_share"]
               and r["kl"] and r["unique_share"] for r in rows)
    assert [bool(r["valid_ppl"]) for r in rows] == [False, True, False, True]
    policy, _, config = load_checkpoint(root / "rl/best")
    assert config["meta"]["rl"]["turns"] == 2 and "i don't know" in config["meta"]["dull_list"]
    # a longer run with the same settings resumes at step 4 and only appends
    cfg.steps = 6
    assert train_rl(cfg)["step"] == 6
    with open(root / "rl/log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    card = (export_run(root / "rl", root / "rl-export") / "MODEL_CARD.md").read_text()
    assert "## RL fine-tuning" in card and '"i don\'t know"' in card and "KL coefficient 0.5" in card


def test_self_play_stops_when_fluency_degrades(models):
    root, _, _, _ = models
    cfg = RLConfig(out=str(root / "rl-strict"), policy=str(root / "fwd/last"), backward=str(root / "bwd/last"),
                   batch_size=4, turns=1, max_len=6, steps=50, eval_every=1, save_every=5, valid_max_batches=2,
                   lr=0.05, mle_weight=0.0, threads=1, ppl_tolerance=1.0001)
    summary = train_rl(cfg)
    assert summary["step"] < 50
    with open(root / "rl-strict/log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["valid_ppl"]) > summary["start_valid_ppl"]


def test_scoring_matches_the_sampler_temperature_and_cut_replies(models):
    _, fwd, _, tok = models
    src, tgt = [tok.encode("do you like football")], [tok.encode("yes i love football")]
    with torch.no_grad():
        full = sequence_logprobs(fwd, src, tgt)
        cut = sequence_logprobs(fwd, src, tgt, eos=[False])
        hot = sequence_logprobs(fwd, src, tgt, temperature=2.0)
        mem = fwd.encode(torch.tensor(src), torch.tensor([len(src[0])]))
        state, tok_in, total_cut = mem.state, 1, 0.0
        for t in tgt[0]:  # the same sum, step by step, without the final </s>
            logp, state, _ = fwd.decode_step(torch.tensor([tok_in]), state, mem)
            logits = logp.clone()
            logits[0, [0, 1, 3]] = float("-inf")
            if tok_in == 1:
                logits[0, 2] = float("-inf")  # no </s> before min_len = 1
            total_cut += float(torch.log_softmax(logits, -1)[0, t])
            tok_in = t
    assert float(cut) == pytest.approx(total_cut, abs=1e-4)
    assert float(full) < float(cut)  # the </s> term is a log-probability: negative
    assert float(hot) != pytest.approx(float(full), abs=1e-3)


def test_coherence_reads_the_window_the_policy_reads(models):
    """r3's forward term reads the window (p </s> q) when given, q alone otherwise; the self-play's turns carry the
    window each agent read: the paper's state [p_i; q_i]."""
    _, fwd, bwd, tok = models
    q, a, p = tok.encode("do you like football"), tok.encode("yes i love football"), tok.encode("where do you live")
    window = functools.partial(window_ids, context_turns=1, max_src_len=40)
    without = semantic_coherence(fwd, bwd, [q], [a])
    alone = semantic_coherence(fwd, bwd, [q], [a], [window([q])])
    with_p = semantic_coherence(fwd, bwd, [q], [a], [window([p, q])])
    assert torch.allclose(without, alone) and not torch.allclose(without, with_p)
    cut = semantic_coherence(fwd, bwd, [q], [a], [window_ids([p, q], context_turns=1, max_src_len=len(q))])
    assert torch.allclose(cut, without)  # p falls outside the last max_src_len tokens
    dialogues = self_play(fwd, [q, p], turns=3, max_len=4, temperature=1.0, seed=0, window=window)
    turns = flatten_turns(dialogues, window)
    assert turns.sources[0] == q and turns.sources[1] == [*q, SEP_ID, *dialogues[0][1]]
    assert turns.messages[1] == dialogues[0][1] and turns.previous[2] == dialogues[0][1]


def test_a_batch_of_one_reward_gives_a_finite_update_toward_the_rewarded_reply(models):
    """One reply with one reward (no spread to standardise by): the update is finite and, with the reward above
    the baseline, raises that reply's probability; standardising a single reward gives no signal, not NaN."""
    _, fwd, _, tok = models
    policy = copy.deepcopy(fwd).train()
    query, reply = [tok.encode("hi")], [tok.encode("hello")]
    before = float(sequence_logprobs(policy, query, reply)[0].detach())
    loss = reinforce_loss(policy, query, reply, torch.tensor([0.7]), 0.2)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    torch.optim.SGD(policy.parameters(), lr=0.05).step()
    assert float(sequence_logprobs(policy, query, reply)[0].detach()) > before
    one = torch.tensor([0.7])
    assert standardized_reward(one, one, one).tolist() == [0.0]


def test_group_baseline_is_the_mean_of_the_other_members():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 7.0])
    b = group_baseline(r, [0, 0, 0, 1, 1, 2])
    assert torch.allclose(b, torch.tensor([2.5, 2.0, 1.5, 20.0, 10.0, 7.0]))  # a lone member is its own baseline
    assert torch.allclose((r - b)[5], torch.tensor(0.0))


def test_group_baseline_removes_what_the_prompt_alone_explains():
    """Two prompts whose rewards differ by a constant: within each group, the better reply still gets the
    positive advantage, where one global mean would reward every reply of the easy prompt."""
    easy, hard = torch.tensor([5.0, 5.2]), torch.tensor([0.0, 0.4])
    r = torch.cat([easy, hard])
    adv = r - group_baseline(r, [0, 0, 1, 1])
    assert adv[1] > 0 > adv[0] and adv[3] > 0 > adv[2]
    assert (r - r.mean())[0] > 0 > (r - r.mean())[3]  # what a global baseline would have done


def test_standardized_reward_gives_each_reward_its_weight_in_spread_units():
    r1 = torch.tensor([0.0, 0.1, 0.0, 0.1])  # small spread, but separates replies 1 and 3
    r3 = torch.ones(4)  # constant: no signal
    r2 = torch.tensor([3.0, 1.0, 3.0, 1.0])
    z = standardized_reward(r1, r2, r3)
    assert torch.isfinite(z).all() and abs(float(z.mean())) < 1e-5
    # r1 (+1 spread unit, weight 0.25) and r2 (-1 spread unit, weight 0.25) cancel; a constant r3 adds nothing
    assert torch.allclose(z, torch.zeros(4), atol=1e-4)
    z2 = standardized_reward(r1, -r2, r3)
    assert torch.allclose(z2, torch.tensor([-0.5, 0.5, -0.5, 0.5]), atol=1e-4)


def test_reply_kl_is_zero_against_itself_and_grows_with_the_drift(models):
    _, fwd, bwd, tok = models
    q = [tok.encode("do you like football"), tok.encode("where do you live")]
    a = [tok.encode("yes i love football"), tok.encode("i live in paris")]
    assert torch.allclose(reply_kl(fwd, fwd, q, a), torch.zeros(2), atol=1e-6)
    drifted = copy.deepcopy(fwd)
    with torch.no_grad():
        for p in drifted.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert reply_kl(drifted, fwd, q, a).abs().sum() > 1e-3
    cut = reply_kl(drifted, fwd, q, a, max_len=len(a[0]))  # reply 0 was cut at max_len: no </s> term
    assert torch.isfinite(cut).all() and not torch.allclose(cut[0], reply_kl(drifted, fwd, q, a)[0])


def test_train_rl_cli_end_to_end(models):
    root, _, _, _ = models
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "core.cli", "train-rl", "--policy", str(root / "fwd/last"), "--backward",
           str(root / "bwd/last"), "--out", str(root / "rl-cli"), "--steps", "2", "--batch-size", "4", "--turns", "1",
           "--max-len", "6", "--eval-every", "5", "--save-every", "5", "--valid-max-batches", "2", "--threads", "1",
           "--ppl-tolerance", "100"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # the last step was not on the validation schedule (every 5): it is validated once more and becomes best/
    assert "stopped at step 2: reached 2 steps; validated at step 2; best/ is step 2" in out.stdout
    assert load_checkpoint(root / "rl-cli/best")[2]["meta"]["step"] == 2
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert f"resumed from {root / 'rl-cli' / 'last'} at step 2" in again.stdout and "nothing to do" in again.stdout
    wrong = subprocess.run([*cmd[:7], str(root / "fwd/last"), *cmd[8:]], capture_output=True, text=True, env=env,
                           timeout=300)
    assert wrong.returncode == 2 and "--backward a backward one" in wrong.stderr


def _rollout(models, **kw):
    _, fwd, bwd, tok = models
    policy = copy.deepcopy(fwd).requires_grad_(True).eval()
    openings = [tok.encode("do you like football")] * 2 + [tok.encode("where do you live")] * 2
    cfg = RLConfig(turns=2, max_len=6, **kw)
    ro = rollout(policy, openings, forward=fwd, backward=bwd, tokenizer=tok, dull=[tok.encode("i don't know")],
                 cfg=cfg, seed=3, group=2 if cfg.group_size > 1 else 1)
    return policy, cfg, ro


def test_rollout_scores_every_turn_of_every_dialogue(models):
    """4 dialogues x 2 turns, each with a greedy candidate: 16 scored turns, the sampled ones first; the
    reward is the standardised sum less the repeat penalty; turn i of the dialogues sharing an opening is a group."""
    _, fwd, _, tok = models
    _, _, ro = _rollout(models, greedy_candidates=True, repeat_penalty=0.2)
    assert ro.n_sampled == 8 and len(ro.sources) == len(ro.replies) == len(ro.texts) == 16
    assert all(t.shape == (16,) for t in (ro.rewards.r1, ro.rewards.r2, ro.rewards.r3, ro.rewards.r, ro.reward))
    assert ro.sources[0] == tok.encode("do you like football") and ro.sources[1] == ro.replies[0]  # single-turn
    assert ro.texts[0] == normalize_reply(tok.decode(ro.replies[0])) and len(ro.greedy_texts) == 8
    assert ro.groups == [0, 1, 0, 1, 2, 3, 2, 3] * 2
    expected = standardized_reward(ro.rewards.r1, ro.rewards.r2, ro.rewards.r3) - ro.repeat
    assert torch.allclose(ro.reward, expected) and (ro.repeat >= 0).all()
    again = _rollout(models, greedy_candidates=True, repeat_penalty=0.2)[2]
    assert again.replies == ro.replies and torch.equal(again.reward, ro.reward)  # seeded
    plain = _rollout(models, group_size=1, standardize=False)[2]
    assert plain.n_sampled == len(plain.replies) == 8 and plain.groups is None and plain.repeat is None
    assert torch.equal(plain.reward, plain.rewards.r)


def test_policy_update_moves_the_policy_and_reports_its_losses(models):
    _, fwd, _, tok = models
    policy, cfg, ro = _rollout(models, kl_coef=0.5, lr=1e-2)
    before = [p.detach().clone() for p in policy.parameters()]
    reference = [p.detach().clone() for p in fwd.parameters()]
    mle = collate([(tok.encode(q), tok.encode(a)) for q, a in PAIRS])
    up = policy_update(policy, make_adam(policy.parameters(), cfg.lr), ro, mle, reference=fwd, cfg=cfg)
    assert all(isinstance(v, float) and v == v for v in up) and up.mle_loss > 0
    assert up.kl == pytest.approx(0.0, abs=1e-5)  # the policy was the reference when the turns were scored
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(reference, fwd.parameters()))  # the reference stays frozen


def test_turn_baseline_is_the_group_mean_or_the_ema():
    r = torch.tensor([1.0, 3.0, 10.0, 20.0])
    per_turn, logged = turn_baseline(r, [0, 0, 1, 1], ema=None, decay=0.9)
    assert per_turn.tolist() == [3.0, 1.0, 20.0, 10.0] and logged == pytest.approx(8.5)
    assert turn_baseline(r, None, ema=None, decay=0.9) == (8.5, pytest.approx(8.5))  # first step: the mean
    assert turn_baseline(r, None, ema=2.0, decay=0.9) == (2.0, pytest.approx(0.9 * 2.0 + 0.1 * 8.5))


def test_rl_state_resumes_the_info_dict_of_older_run_folders():
    """last/train_state.json of a run written before RLState (a dict, without the later keys) still loads."""
    old = {"step": 40, "baseline": -0.2, "start_ppl": 81.5, "best_step": 40, "train_seconds": 12.5,
           "early_stopped": False, "param_groups": [{"lr": 1e-4}], "py_rng": [3, [1, 2], None]}
    state = RLState.from_info(old)
    assert state == RLState(step=40, baseline=-0.2, start_ppl=81.5, best_step=40, train_seconds=12.5)
    assert {k: v for k, v in state.info().items() if k in old} == {k: old[k] for k in state.info() if k in old}
    assert RLState.from_info(None) == RLState()
