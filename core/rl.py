"""RL fine-tuning by self-play (Li et al. 2016): REINFORCE with a baseline on the three dialogue rewards.

    chatbot-arena train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl

Each step: B / G opening messages of the training split start B dialogues, G per opening; the policy (sampling)
plays both agents for ``turns`` turns; every generated turn gets r = 0.25 r1 + 0.25 r2 + 0.5 r3 (core.rewards,
scored by the frozen MLE and backward models; each reward standardised over the step first); the baseline of a
turn is the mean reward of the other G - 1 dialogues of its group at the same turn; the policy moves along
(r - baseline) * grad log p(turn | the window it read: the previous turns, as the policy was trained), plus
``mle_weight`` times the usual MLE loss on real pairs so that it stays fluent. Validation perplexity is
watched: the run stops, keeping ``best/``, when it grows more than ``ppl_tolerance`` over the start.

Collapse guard: every step logs ``top_share`` (share of the most frequent sampled reply) and
``sample_distinct_2`` (distinct-2 of the sampled turns); a step with top_share above ``collapse_share`` prints
an alarm, and ``collapse_steps`` such steps in a row stop the run without saving the collapsed policy as
``best/``. Remedy: ``repeat_penalty`` subtracts ``repeat_penalty * (count - 1)`` from the (standardised) reward
of a reply sampled ``count`` times in the step (core.rewards.batch_repetition_penalty).
Running the same command again resumes from ``<out>/last``.
"""

from __future__ import annotations

import copy
import functools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from core.batching import collate
from core.bots import load_model
from core.checkpoint import pack_train_state, resolve
from core.context import window_ids
from core.corpora import opening_messages
from core.decoding import DecodeConfig, generate
from core.metrics import distinct_n, normalize_reply
from core.model import Seq2Seq, pick_device
from core.rewards import (
    batch_repetition_penalty,
    combine,
    dull_list,
    ease_of_answering,
    information_flow,
    semantic_coherence,
    sequence_logprobs,
    top_share,
)
from core.runs import RunFolder, StopRequest, TimeBudget, hardware_name, set_threads
from core.tokenizer import EOS_ID
from core.train import TrainConfig, make_adam, perplexity, prepare_data, sequence_nll, window_settings

RL_LOG_FIELDS = ["step", "reward", "r1", "r2", "r3", "baseline", "pg_loss", "mle_loss", "valid_ppl", "reply_len",
                 "kl", "unique_share", "top_share", "sample_distinct_2", "repeat_penalty", "dull_share",
                 "greedy_dull_share", "elapsed_s"]


@dataclass
class RLConfig:
    """Settings of an RL fine-tuning run; saved under ``meta.rl`` in its checkpoints."""

    out: str = field(default="runs/rl", metadata={"help": "run folder (resumes if it has last/)"})
    policy: str = field(default="runs/mle/best", metadata={"help": "MLE checkpoint to start from"})
    backward: str = field(default="runs/backward/best", metadata={"help": "backward model p(S|T) for r3"})
    batch_size: int = field(default=32, metadata={"help": "dialogues (opening messages) per step"})
    turns: int = field(default=5, metadata={"help": "generated turns per dialogue and step"})
    max_len: int = field(default=20, metadata={"help": "most tokens in a generated turn"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the self-play"})
    group_size: int = field(default=4, metadata={
        "help": "dialogues per opening message; a turn's baseline is the mean reward of the other dialogues of its "
                "group at the same turn (1: an EMA baseline over all turns)"})
    standardize: bool = field(default=True, metadata={
        "help": "standardise r1, r2 and r3 over the step before weighting them (so each weight is in units of "
                "that reward's spread)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    mle_weight: float = field(default=1.0, metadata={"help": "weight of the MLE loss on real pairs"})
    mle_batch_size: int = field(default=32, metadata={"help": "real pairs per step for the MLE term"})
    baseline_decay: float = field(default=0.95, metadata={"help": "EMA decay of the reward baseline"})
    dull_top: int = field(default=10, metadata={"help": "most frequent training replies added to the dull list"})
    dull_sample: int = field(default=10, metadata={"help": "dull replies drawn per step to estimate r1 (0: all)"})
    greedy_candidates: bool = field(
        default=False, metadata={"help": "also update on the policy's greedy reply to each query (pushes a dull "
                                        "mode down directly; a biased but practical addition to the samples)"})
    kl_coef: float = field(default=1.0, metadata={
        "help": "subtract kl_coef x the per-token log-ratio of policy to MLE model from each turn's reward "
                "(keeps the policy from collapsing onto a few high-reward replies; 0: off)"})
    repeat_penalty: float = field(default=0.0, metadata={
        "help": "batch-repetition penalty: a reply sampled c times in the step loses repeat_penalty x (c - 1) "
                "reward (in units of the reward's spread when standardize is on), so a reply the policy gives to "
                "many messages stops paying (0: off)"})
    collapse_share: float = field(default=0.3, metadata={
        "help": "collapse alarm: a step whose most frequent sampled reply is more than this share of the step's "
                "sampled turns (top_share in the log) prints a warning"})
    collapse_steps: int = field(default=5, metadata={
        "help": "stop the run after this many alarmed steps in a row, keeping best/ from before (0: only warn)"})
    clip: float = field(default=1.0, metadata={"help": "gradient clipping by global norm"})
    steps: int = field(default=60, metadata={"help": "RL steps"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop (and save) after this many minutes; 0: none"})
    eval_every: int = field(default=50, metadata={"help": "validation perplexity every N steps"})
    save_every: int = field(default=10, metadata={"help": "write last/ every N steps"})
    valid_max_batches: int = field(default=20, metadata={"help": "validation batches (0: all)"})
    ppl_tolerance: float = field(default=1.25, metadata={"help": "stop when valid ppl > tolerance * start"})
    seed: int = field(default=0, metadata={"help": "seed of openings and sampling"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cpu or cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: all cores)"})


def _strip_eos(tokens: list[int]) -> list[int]:
    return [t for t in tokens if t != EOS_ID]


Window = Callable[[Sequence[list[int]]], list[int]]  # a dialogue so far (token lists) -> the source the model reads


def last_turn(turns: Sequence[list[int]]) -> list[int]:
    """The window of a single-turn model: the message alone."""
    return list(turns[-1])


def window_reader(train_cfg: TrainConfig) -> Window:
    """The window a policy trained with ``train_cfg`` reads (its context_turns, speaker markers, max_src_len)."""
    return functools.partial(window_ids, **window_settings(train_cfg), max_src_len=train_cfg.max_src_len)


def self_play(policy: Seq2Seq, openings: list[list[int]], *, turns: int, max_len: int, temperature: float,
              seed: int, window: Window = last_turn) -> list[list[list[int]]]:
    """Dialogues of 1 + ``turns`` turns: the opening, then the policy answering the conversation so far each time
    (it reads the ``window`` of it: the paper's state [p_i; q_i] for a window of one earlier turn). Returns
    ``dialogues[b][i]`` token lists; all B dialogues advance in one batched sample per turn."""
    dialogues = [[o] for o in openings]
    for t in range(turns):
        cfg = DecodeConfig(strategy="sample", beam_size=1, nbest=1, max_len=max_len, min_len=1,
                           temperature=temperature, seed=seed * 1000 + t)
        replies = generate(policy, [window(d) for d in dialogues], cfg)
        for d, r in zip(dialogues, replies):
            d.append(_strip_eos(r.tokens) or [EOS_ID])
    return dialogues


class Turns(NamedTuple):
    """Every generated turn of a batch of dialogues, flattened dialogue by dialogue."""

    sources: list[list[int]]  # the window the agent read (ends with the message it answered)
    messages: list[list[int]]  # the message it answered, q
    replies: list[list[int]]  # its turn, a
    previous: list[list[int]]  # the agent's own previous turn (its turn itself where it has none)
    has_prev: list[bool]


def flatten_turns(dialogues: list[list[list[int]]], window: Window = last_turn) -> Turns:
    """Every generated turn of every dialogue with what the agent read and its own previous turn."""
    out = Turns([], [], [], [], [])
    for d in dialogues:
        for i in range(1, len(d)):
            out.sources.append(window(d[:i]))
            out.messages.append(d[i - 1])
            out.replies.append(d[i])
            out.has_prev.append(i >= 2)  # the agent's own previous turn is two turns back
            out.previous.append(d[i - 2] if i >= 2 else d[i])
    return out


def turn_rewards(dialogues: list[list[list[int]]], *, forward: Seq2Seq, backward: Seq2Seq,
                 dull: list[list[int]], alternatives: list[list[int]] | None = None,
                 window: Window = last_turn) -> dict[str, Any]:
    """Rewards of every generated turn, flattened turn-major: (sources, query, reply, r1, r2, r3, r).
    ``alternatives`` (one per generated turn, e.g. the policy's greedy reply to the same window) are scored as
    extra replies in the same context and appended after the sampled ones. ``window``: what the forward model
    reads (the policy's window), so r3 = log p(a | q, p) with the real window model."""
    turns = flatten_turns(dialogues, window)
    sources, queries, replies = turns.sources, turns.messages, turns.replies
    previous, has_prev = turns.previous, turns.has_prev
    if alternatives is not None:
        sources, queries, replies = sources + sources, queries + queries, replies + alternatives
        previous, has_prev = previous + previous, has_prev + has_prev
    r1 = ease_of_answering(forward, replies, dull)
    r2 = information_flow(forward, previous, replies)
    mask = torch.tensor(has_prev)
    # an agent's first turn has no previous turn of its own: give it the batch mean (no push either way)
    r2 = torch.where(mask, r2, r2[mask].mean() if mask.any() else torch.zeros(()))
    r3 = semantic_coherence(forward, backward, queries, replies, sources)
    return {"sources": sources, "queries": queries, "replies": replies, "r1": r1, "r2": r2, "r3": r3,
            "r": combine(r1, r2, r3)}


def _sampler_eos(replies: list[list[int]], max_len: int | None) -> list[bool] | None:
    """Which replies drew a </s> (a reply of ``max_len`` tokens was cut before one); None: all of them."""
    return [len(a) < max_len for a in replies] if max_len else None


def policy_logprobs(policy: Seq2Seq, queries: list[list[int]], replies: list[list[int]], *,
                    temperature: float = 1.0, max_len: int | None = None) -> torch.Tensor:
    """(N,) log p(reply | query) under the sampler's distribution, with the autograd graph."""
    return sequence_logprobs(policy, queries, replies, temperature=temperature, eos=_sampler_eos(replies, max_len))


@torch.no_grad()
def reply_kl(policy: Seq2Seq, reference: Seq2Seq, queries: list[list[int]], replies: list[list[int]], *,
             temperature: float = 1.0, max_len: int | None = None,
             policy_logp: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) per-token log pi(a|q) - log pi_ref(a|q) of sampled replies: a one-sample estimate of KL(pi || ref)
    per token, scored with the sampler's distribution for both models. ``policy_logp`` (from
    :func:`policy_logprobs`) saves scoring the policy again."""
    eos = _sampler_eos(replies, max_len)
    if policy_logp is None:
        policy_logp = policy_logprobs(policy, queries, replies, temperature=temperature, max_len=max_len)
    ref_logp = sequence_logprobs(reference, queries, replies, temperature=temperature, eos=eos)
    n_tok = torch.tensor([len(a) + (1 if e else 0) for a, e in zip(replies, eos or [True] * len(replies))],
                         device=ref_logp.device).clamp(min=1)
    return (policy_logp.detach() - ref_logp) / n_tok


def standardized_reward(r1: torch.Tensor, r2: torch.Tensor, r3: torch.Tensor) -> torch.Tensor:
    """0.25 z(r1) + 0.25 z(r2) + 0.5 z(r3), each reward standardised over the batch (z = (r - mean) / std).

    Raw, the spreads differ by an order of magnitude (with the chitchat models r1 varies by ~0.15 nats, r3 by
    ~2.4), so r3 alone would steer the policy whatever the weights say."""
    z = [(r - r.mean()) / (r.std(unbiased=False) + 1e-6) if r.numel() > 1 else r * 0 for r in (r1, r2, r3)]
    return combine(*z)


def group_baseline(rewards: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """Leave-one-out baseline (N,): the mean reward of the other members of each reward's group (its own reward
    where it is alone), so an advantage compares replies in the same situation rather than across prompts."""
    g = torch.tensor(groups, device=rewards.device)
    n_groups = int(g.max()) + 1 if len(groups) else 0
    zeros = rewards.new_zeros(n_groups)
    sums = zeros.index_add(0, g, rewards)
    counts = zeros.index_add(0, g, torch.ones_like(rewards))
    others = (counts[g] - 1).clamp(min=1)
    return torch.where(counts[g] > 1, (sums[g] - rewards) / others, rewards)


def reinforce_loss(policy: Seq2Seq, queries: list[list[int]], replies: list[list[int]], rewards: torch.Tensor,
                   baseline: float | torch.Tensor, *, temperature: float = 1.0, max_len: int | None = None,
                   logp: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE with a baseline: -sum_i A_i log p(reply_i | query_i) / tokens, with the advantage
    A = (r - baseline) / std(r - baseline) (so the step size does not depend on the reward scale); ``baseline``
    is one number or one per reply. The log-probs are those of the sampler (``temperature``; a reply of
    ``max_len`` tokens was cut, so it drew no </s>); pass ``logp`` from :func:`policy_logprobs` if already scored."""
    advantage = rewards - baseline  # (N,)
    spread = advantage.std(unbiased=False) if advantage.numel() > 1 else advantage.new_ones(())
    advantage = advantage / (spread + 1e-6)
    if logp is None:
        logp = policy_logprobs(policy, queries, replies, temperature=temperature, max_len=max_len)  # with graph
    n_tok = sum(len(a) + 1 for a in replies)
    return -(advantage.detach() * logp).sum() / n_tok


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run (or resume) RL fine-tuning; returns a summary with the start and final validation perplexity. Whatever
    stops it (its step or time budget, the fluency check, Ctrl-C), the last step is validated if it was not
    already, and ``best/`` and ``last/`` are on disk when it returns."""
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    run = RunFolder(cfg.out, RL_LOG_FIELDS)
    out = run.out
    # 1. the frozen MLE model (rewards), the backward model, and the policy initialised from the MLE model
    forward, tokenizer, fwd_config = load_model(cfg.policy, device)
    backward, _, _ = load_model(cfg.backward, device)
    if fwd_config["model"].get("kind", "seq2seq") != "seq2seq" or backward.cfg.kind != "backward":
        raise ValueError(f"--policy needs a seq2seq checkpoint and --backward a backward one; got "
                         f"{fwd_config['model'].get('kind')!r} ({cfg.policy}) and {backward.cfg.kind!r} "
                         f"({cfg.backward})")
    policy = copy.deepcopy(forward).requires_grad_(True)
    train_cfg = TrainConfig.from_dict({**fwd_config["meta"]["train"], "out": str(out),
                                       "tokenizer": str(resolve(cfg.policy) / "tokenizer.json")})
    data = prepare_data(train_cfg)
    openings = [ids[-train_cfg.max_src_len:] for ids in tokenizer.encode_batch(opening_messages(data.split.train))]
    window = window_reader(train_cfg)  # the policy reads the conversation as it was trained to
    openings = [o for o in openings if o]
    dull_texts = dull_list(data.split.train, top=cfg.dull_top)
    dull = [tokenizer.encode(s) for s in dull_texts]
    dull_set = set(dull_texts)
    optimizer = make_adam(policy.parameters(), cfg.lr)
    info: dict[str, Any] = {"step": 0, "baseline": None, "start_ppl": None, "best_step": 0, "train_seconds": 0.0,
                            "early_stopped": False, "collapse_run": 0}
    info.update(run.resume(policy, optimizer) or {})
    policy.eval()  # no dropout: the sampled turns and their log-probs come from the same distribution
    valid = lambda: perplexity(policy, data.valid, device=device, max_batches=cfg.valid_max_batches)  # noqa: E731
    if info["start_ppl"] is None:
        info["start_ppl"] = valid()
    meta = {"train": fwd_config["meta"]["train"], "rl": asdict(cfg), "corpus": fwd_config["meta"].get("corpus"),
            "n_train_pairs": len(data.train), "parameters": fwd_config["meta"].get("parameters"),
            "start_valid_ppl": info["start_ppl"], "dull_list": dull_texts,
            "hardware": hardware_name(device)}
    print(f"RL from {cfg.policy}: start valid ppl {info['start_ppl']:.2f}, {len(openings):,} openings, "
          f"{len(dull)} dull replies", flush=True)
    clock = TimeBudget(cfg.max_minutes, info["train_seconds"])
    stop = None

    def save(path: str, **extra: Any) -> None:
        info["train_seconds"] = clock.total_s()
        run.save(path, policy, tokenizer, meta=dict(meta, step=info["step"], **extra),
                 train_state=pack_train_state(optimizer, info) if path == "last" else None)

    if not run.has_best():
        save("best", valid_ppl=info["start_ppl"])
    signals = StopRequest()
    group = max(1, min(cfg.group_size, cfg.batch_size))  # dialogues per opening
    n_groups = -(-cfg.batch_size // group)
    with signals:
        while stop is None and not info["early_stopped"] and info["step"] < cfg.steps:
            step = info["step"]
            rng = random.Random(cfg.seed * 1_000_003 + step)
            # 2. self-play from B openings
            batch_open = [o for o in (openings[rng.randrange(len(openings))] for _ in range(n_groups))
                          for _ in range(group)][: cfg.batch_size]
            dialogues = self_play(policy, batch_open, turns=cfg.turns, max_len=cfg.max_len,
                                  temperature=cfg.temperature, seed=cfg.seed * 1_000_003 + step, window=window)
            # 3. rewards and the baseline
            step_dull = dull if not cfg.dull_sample else rng.sample(dull, min(cfg.dull_sample, len(dull)))
            greedy = None
            if cfg.greedy_candidates:  # the policy's own most likely reply to each query, scored beside the sample
                queries = flatten_turns(dialogues, window).sources
                greedy_cfg = DecodeConfig(strategy="greedy", max_len=cfg.max_len, min_len=1)
                greedy = [_strip_eos(r.tokens) or [EOS_ID] for r in generate(policy, queries, greedy_cfg)]
            rw = turn_rewards(dialogues, forward=forward, backward=backward, dull=step_dull, alternatives=greedy,
                              window=window)
            r_raw = rw["r"].to(device)
            r = standardized_reward(rw["r1"], rw["r2"], rw["r3"]).to(device) if cfg.standardize else r_raw
            texts = [normalize_reply(tokenizer.decode(a)) for a in rw["replies"]]
            n_sampled = len(texts) // 2 if greedy is not None else len(texts)
            sampled = texts[:n_sampled]
            repeat = None
            if cfg.repeat_penalty:  # a reply the policy gives to many messages of the step loses reward
                repeat = batch_repetition_penalty(texts, cfg.repeat_penalty, pool=sampled).to(device)
                r = r - repeat
            logp = policy_logprobs(policy, rw["sources"], rw["replies"], temperature=cfg.temperature,
                                   max_len=cfg.max_len)  # (N,) with graph: the KL price and the policy gradient
            kl = None
            if cfg.kl_coef:  # per-token log pi(a|q) - log pi_mle(a|q) of each turn: the price of drifting from MLE
                kl = reply_kl(policy, forward, rw["sources"], rw["replies"], temperature=cfg.temperature,
                              max_len=cfg.max_len, policy_logp=logp)
                r = r - cfg.kl_coef * kl
            if group > 1:  # turn i of the dialogues that share an opening form one group (greedy candidates too)
                groups = [(d // group) * cfg.turns + i for d in range(len(dialogues)) for i in range(cfg.turns)]
                baseline: float | torch.Tensor = group_baseline(r, groups * (len(r) // len(groups)))
                info["baseline"] = float(baseline.mean())
            else:
                baseline = float(r.mean()) if info["baseline"] is None else info["baseline"]
                info["baseline"] = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * float(r.mean())
            # 4. REINFORCE on the sampled turns + MLE on real pairs
            pg_loss = reinforce_loss(policy, rw["sources"], rw["replies"], r, baseline, logp=logp)
            mle_batch = collate([data.train[rng.randrange(len(data.train))] for _ in range(cfg.mle_batch_size)])
            nll, n_mle = sequence_nll(policy, mle_batch.to(device))
            mle_loss = nll / n_mle
            optimizer.zero_grad(set_to_none=True)
            (pg_loss + cfg.mle_weight * mle_loss).backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.clip)
            optimizer.step()
            info["step"] = step = step + 1
            # 5. the collapse guard, stop conditions, then the fluency check (on schedule, and once more at the
            #    last step): validation perplexity; best/ = the latest fluent policy that did not collapse
            top = top_share(sampled)
            info["collapse_run"] = info.get("collapse_run", 0) + 1 if top > cfg.collapse_share else 0
            collapsed = cfg.collapse_steps > 0 and info["collapse_run"] >= cfg.collapse_steps
            if info["collapse_run"]:
                common = Counter(sampled).most_common(1)[0][0]
                print(f"step {step}: collapse alarm: {top:.0%} of sampled turns are {common!r} "
                      f"({info['collapse_run']} step(s) in a row above {cfg.collapse_share:.0%})", flush=True)
            if collapsed:
                stop = (f"collapse: top_share above {cfg.collapse_share} for {info['collapse_run']} steps; best/ "
                        f"kept from step {info['best_step']}")
                info["early_stopped"] = True
            elif step >= cfg.steps:
                stop = f"reached {cfg.steps} steps"
            elif clock.up():
                stop = f"time limit of {cfg.max_minutes} min"
            elif signals.requested:
                stop = f"interrupted ({signals.signal_name})"
            valid_ppl = None
            if step % cfg.eval_every == 0 or stop:
                valid_ppl = valid()
                info["valid_step"] = step
                if valid_ppl > cfg.ppl_tolerance * info["start_ppl"]:
                    stop = stop or f"valid ppl {valid_ppl:.2f} > {cfg.ppl_tolerance} x start {info['start_ppl']:.2f}"
                    info["early_stopped"] = True
                elif not collapsed:
                    info["best_step"] = step
                    save("best", valid_ppl=valid_ppl)
            greedy_texts = texts[n_sampled:]
            run.log({
                "step": step, "reward": round(float(r_raw.mean()), 4), "r1": round(float(rw["r1"].mean()), 4),
                "r2": round(float(rw["r2"].mean()), 4), "r3": round(float(rw["r3"].mean()), 4),
                "baseline": round(info["baseline"], 4), "pg_loss": round(float(pg_loss.detach()), 4),
                "mle_loss": round(float(mle_loss.detach()), 4),
                "valid_ppl": "" if valid_ppl is None else round(valid_ppl, 3),
                "reply_len": round(sum(len(x) for x in rw["replies"][:n_sampled]) / n_sampled, 2),
                "kl": "" if kl is None else round(float(kl.mean()), 4),
                "unique_share": round(len(set(sampled)) / n_sampled, 3),  # falls if the policy collapses
                "top_share": round(top, 4), "sample_distinct_2": round(distinct_n(sampled, 2), 4),
                "repeat_penalty": "" if repeat is None else round(float(repeat[:n_sampled].mean()), 4),
                "dull_share": round(sum(t in dull_set for t in texts[:n_sampled]) / n_sampled, 3),
                "greedy_dull_share": round(sum(t in dull_set for t in greedy_texts) / len(greedy_texts), 3)
                if greedy_texts else "",
                "elapsed_s": round(clock.total_s(), 1)})
            if stop or step % cfg.save_every == 0:
                save("last")
    if stop is None:
        stop = "finished earlier (nothing to do)"
    print(f"stopped at step {info['step']}: {stop}; validated at step {info.get('valid_step', 0)}; best/ is step "
          f"{info['best_step']}", flush=True)
    return {"step": info["step"], "best_step": info["best_step"], "start_valid_ppl": info["start_ppl"],
            "train_seconds": info["train_seconds"], "stopped": stop, "interrupted": stop.startswith("interrupted"),
            "collapsed": stop.startswith("collapse"),
            "done": bool(info["early_stopped"] or info["step"] >= cfg.steps)}
