"""RL fine-tuning by self-play (Li et al. 2016): REINFORCE with a baseline on the three dialogue rewards.

    chatbot-arena train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl

Each step: B / G opening messages of the training split start B dialogues, G per opening; the policy (sampling)
plays both agents for ``turns`` turns; every generated turn gets r = 0.25 r1 + 0.25 r2 + 0.5 r3 (core.training.rewards,
scored by the frozen MLE and backward models; each reward standardised over the step first); the baseline of a
turn is the mean reward of the other G - 1 dialogues of its group at the same turn; the policy moves along
(r - baseline) * grad log p(turn | the window it read: the previous turns, as the policy was trained), plus
``mle_weight`` times the usual MLE loss on real pairs so that it stays fluent. Validation perplexity is
watched: the run stops, keeping ``best/``, when it grows more than ``ppl_tolerance`` over the start.

Collapse guard: every step logs ``top_share`` (share of the most frequent sampled reply) and
``sample_distinct_2`` (distinct-2 of the sampled turns); a step with top_share above ``collapse_share`` prints
an alarm, and ``collapse_steps`` such steps in a row stop the run without saving the collapsed policy as
``best/``. Remedy: ``repeat_penalty`` subtracts ``repeat_penalty * (count - 1)`` from the (standardised) reward
of a reply sampled ``count`` times in the step (core.training.rewards.batch_repetition_penalty).
Running the same command again resumes from ``<out>/last``.

In code, :func:`train_rl` = :func:`setup_rl` (an :class:`RLRun` of what stays fixed, an :class:`RLState` of what
changes and is saved), then :func:`rl_step` until a :class:`~core.training.loop.Stop`: :func:`draw_openings`,
:func:`rollout` (self-play + rewards -> :class:`Rollout`), :func:`policy_update` (KL price, baseline, REINFORCE +
MLE, optimizer step -> :class:`Update`), :func:`collapse_guard`, :func:`fluency_check` (best/),
:func:`rl_log_row`, :func:`save_policy` (last/).
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

from core.batching import Batch, collate
from core.bots import load_model
from core.checkpoint import pack_train_state, resolve
from core.context import window_ids
from core.corpora import opening_messages
from core.decoding import DecodeConfig, generate
from core.evaluation.metrics import distinct_n, normalize_reply
from core.model import Seq2Seq, pick_device
from core.scoring import perplexity
from core.tokenizer import EOS_ID, Tokenizer
from core.training.loop import SavedState, Stop, StopKind, budget_stop
from core.training.rewards import (
    batch_repetition_penalty,
    combine,
    dull_list,
    ease_of_answering,
    information_flow,
    semantic_coherence,
    sequence_logprobs,
    top_share,
)
from core.training.runs import RunFolder, StopRequest, TimeBudget, hardware_name, set_threads
from core.training.train import Data, TrainConfig, make_adam, prepare_data, sequence_nll, window_settings

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


class TurnRewards(NamedTuple):
    """The rewards of N scored turns (flattened dialogue by dialogue; alternatives appended after them)."""

    sources: list[list[int]]  # the window the agent read
    queries: list[list[int]]  # the message it answered, q
    replies: list[list[int]]  # its turn, a
    r1: torch.Tensor  # (N,) ease of answering
    r2: torch.Tensor  # (N,) information flow
    r3: torch.Tensor  # (N,) semantic coherence
    r: torch.Tensor  # (N,) 0.25 r1 + 0.25 r2 + 0.5 r3


def turn_rewards(dialogues: list[list[list[int]]], *, forward: Seq2Seq, backward: Seq2Seq,
                 dull: list[list[int]], alternatives: list[list[int]] | None = None,
                 window: Window = last_turn) -> TurnRewards:
    """Rewards of every generated turn, flattened dialogue by dialogue.
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
    return TurnRewards(sources, queries, replies, r1, r2, r3, combine(r1, r2, r3))


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


# ----------------------------------------------------------------------------- one step: rollout, then update


@dataclass
class Rollout:
    """One step's self-play and its rewards: N scored turns, the sampled ones first, then (greedy_candidates) the
    policy's greedy reply to each of the same windows."""

    sources: list[list[int]]  # (N,) the window each agent read
    replies: list[list[int]]  # (N,) its turn
    texts: list[str]  # (N,) the turns, decoded and normalised (core.evaluation.metrics.normalize_reply)
    n_sampled: int  # the first n_sampled turns were sampled
    rewards: TurnRewards  # r1, r2, r3 and their weighted sum r, as scored
    reward: torch.Tensor  # (N,) what the update starts from: r (standardised if set) less the repeat penalty
    repeat: torch.Tensor | None  # (N,) the batch-repetition penalty (None: off)
    groups: list[int] | None  # (N,) group of each turn for the leave-one-out baseline (None: the EMA baseline)

    @property
    def sampled_texts(self) -> list[str]:
        return self.texts[:self.n_sampled]

    @property
    def greedy_texts(self) -> list[str]:
        return self.texts[self.n_sampled:]


class Update(NamedTuple):
    """What one policy update reports."""

    pg_loss: float  # the REINFORCE loss
    mle_loss: float  # the mean token NLL of the real pairs
    kl: float | None  # mean per-token log-ratio of policy to reference over the turns (None: kl_coef 0)
    baseline: float  # the EMA baseline after this step (carried), or the mean group baseline (logged)


def draw_openings(openings: list[list[int]], rng: random.Random, *, batch_size: int, group: int) -> list[list[int]]:
    """``batch_size`` openings, drawn from ``openings`` ``group`` at a time: each drawn opening starts ``group``
    consecutive dialogues."""
    n_groups = -(-batch_size // group)
    return [o for o in (openings[rng.randrange(len(openings))] for _ in range(n_groups)) for _ in range(group)][
        :batch_size]


def rollout(policy: Seq2Seq, openings: list[list[int]], *, forward: Seq2Seq, backward: Seq2Seq,
            tokenizer: Tokenizer, dull: list[list[int]], cfg: RLConfig, seed: int, window: Window = last_turn,
            group: int = 1) -> Rollout:
    """Self-play from ``openings`` (B dialogues of ``cfg.turns`` sampled turns; ``group`` consecutive dialogues share
    an opening) and the reward of every turn, scored by the frozen ``forward`` and ``backward`` models against the
    ``dull`` replies; with ``cfg.greedy_candidates`` also the policy's greedy reply to each window. The reward is
    standardised (``cfg.standardize``) and less the batch-repetition penalty (``cfg.repeat_penalty``); the KL
    price needs the policy's graph, so :func:`policy_update` adds it."""
    device = next(policy.parameters()).device
    dialogues = self_play(policy, openings, turns=cfg.turns, max_len=cfg.max_len, temperature=cfg.temperature,
                          seed=seed, window=window)
    greedy = None
    if cfg.greedy_candidates:  # the policy's own most likely reply to each query, scored beside the sample
        greedy_cfg = DecodeConfig(strategy="greedy", max_len=cfg.max_len, min_len=1)
        queries = flatten_turns(dialogues, window).sources
        greedy = [_strip_eos(r.tokens) or [EOS_ID] for r in generate(policy, queries, greedy_cfg)]
    rw = turn_rewards(dialogues, forward=forward, backward=backward, dull=dull, alternatives=greedy, window=window)
    reward = standardized_reward(rw.r1, rw.r2, rw.r3).to(device) if cfg.standardize else rw.r.to(device)
    texts = [normalize_reply(tokenizer.decode(a)) for a in rw.replies]
    n_sampled = len(texts) // 2 if greedy is not None else len(texts)
    repeat = None
    if cfg.repeat_penalty:  # a reply the policy gives to many messages of the step loses reward
        repeat = batch_repetition_penalty(texts, cfg.repeat_penalty, pool=texts[:n_sampled]).to(device)
        reward = reward - repeat
    groups = None
    if group > 1:  # turn i of the dialogues that share an opening form one group (greedy candidates too)
        per_turn = [(d // group) * cfg.turns + i for d in range(len(dialogues)) for i in range(cfg.turns)]
        groups = per_turn * (len(reward) // len(per_turn))
    return Rollout(rw.sources, rw.replies, texts, n_sampled, rw, reward, repeat, groups)


def turn_baseline(reward: torch.Tensor, groups: list[int] | None, *, ema: float | None,
                  decay: float) -> tuple[float | torch.Tensor, float]:
    """The baseline of each turn and the number to carry and log: the leave-one-out group baseline (N,) and its
    mean; or, without groups, the EMA ``ema`` (the step's mean reward at the first step) and its update."""
    if groups is not None:
        baseline = group_baseline(reward, groups)
        return baseline, float(baseline.mean())
    value = float(reward.mean()) if ema is None else ema
    return value, decay * value + (1 - decay) * float(reward.mean())


def policy_update(policy: Seq2Seq, optimizer: torch.optim.Optimizer, ro: Rollout, mle_batch: Batch, *,
                  reference: Seq2Seq, cfg: RLConfig, ema_baseline: float | None = None) -> Update:
    """One optimizer step: REINFORCE on the rollout's turns, their reward less ``cfg.kl_coef`` x the per-token
    log-ratio to ``reference`` and less the baseline, plus ``cfg.mle_weight`` x the MLE loss of ``mle_batch`` (on
    the policy's device); gradients clipped to ``cfg.clip``. ``ema_baseline``: the carried EMA baseline (used
    when the rollout has no groups)."""
    logp = policy_logprobs(policy, ro.sources, ro.replies, temperature=cfg.temperature,
                           max_len=cfg.max_len)  # (N,) with graph: the KL price and the policy gradient
    reward, kl = ro.reward, None
    if cfg.kl_coef:  # per-token log pi(a|q) - log pi_mle(a|q) of each turn: the price of drifting from MLE
        kl = reply_kl(policy, reference, ro.sources, ro.replies, temperature=cfg.temperature, max_len=cfg.max_len,
                      policy_logp=logp)
        reward = reward - cfg.kl_coef * kl
    baseline, carried = turn_baseline(reward, ro.groups, ema=ema_baseline, decay=cfg.baseline_decay)
    pg_loss = reinforce_loss(policy, ro.sources, ro.replies, reward, baseline, logp=logp)
    nll, n_tok = sequence_nll(policy, mle_batch)
    mle_loss = nll / n_tok
    optimizer.zero_grad(set_to_none=True)
    (pg_loss + cfg.mle_weight * mle_loss).backward()
    nn.utils.clip_grad_norm_(policy.parameters(), cfg.clip)
    optimizer.step()
    return Update(float(pg_loss.detach()), float(mle_loss.detach()), None if kl is None else float(kl.mean()),
                  carried)


# ----------------------------------------------------------------------------- the run


@dataclass
class RLState(SavedState):
    """What an RL run carries from one step to the next (and across a resume, in ``last/``: the keys of the dict
    earlier versions saved, so their run folders resume)."""

    step: int = 0  # RL steps taken
    baseline: float | None = None  # the EMA baseline (None before the first step), or the last mean group baseline
    start_ppl: float | None = None  # validation perplexity of the MLE policy (None until measured)
    best_step: int = 0  # the step best/ holds (0: the MLE policy)
    train_seconds: float = 0.0  # wall time over all invocations, at the last save
    early_stopped: bool = False  # the fluency check or the collapse guard stopped it: the run stays stopped
    collapse_run: int = 0  # collapse alarms in a row
    valid_step: int = 0  # the last validated step


@dataclass
class RLRun:
    """What an RL run holds fixed from its first step to its last."""

    cfg: RLConfig
    device: torch.device
    folder: RunFolder
    policy: Seq2Seq  # the policy being trained (in eval mode: no dropout, so samples and log-probs agree)
    forward: Seq2Seq  # the frozen MLE model: rewards and the KL reference
    backward: Seq2Seq  # the frozen backward model p(S|T): r3
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    data: Data  # the MLE model's data: openings, real pairs for the MLE term, validation
    openings: list[list[int]]
    window: Window  # what the policy reads of a conversation
    dull_texts: list[str]
    dull: list[list[int]]  # the dull list, tokenised
    meta: dict[str, Any]  # written into each checkpoint's config.json
    clock: TimeBudget

    @property
    def group(self) -> int:
        """Dialogues per opening."""
        return max(1, min(self.cfg.group_size, self.cfg.batch_size))


def _valid_ppl(policy: Seq2Seq, data: Data, cfg: RLConfig, device: torch.device) -> float:
    return perplexity(policy, data.valid, device=device, max_batches=cfg.valid_max_batches)


def load_models(cfg: RLConfig, device: torch.device) -> tuple[Seq2Seq, Seq2Seq, Tokenizer, dict[str, Any]]:
    """The MLE model (``cfg.policy``), the backward model, the tokenizer and the MLE model's config."""
    forward, tokenizer, fwd_config = load_model(cfg.policy, device)
    backward, _, _ = load_model(cfg.backward, device)
    if fwd_config["model"].get("kind", "seq2seq") != "seq2seq" or backward.cfg.kind != "backward":
        raise ValueError(f"--policy needs a seq2seq checkpoint and --backward a backward one; got "
                         f"{fwd_config['model'].get('kind')!r} ({cfg.policy}) and {backward.cfg.kind!r} "
                         f"({cfg.backward})")
    return forward, backward, tokenizer, fwd_config


def setup_rl(cfg: RLConfig) -> tuple[RLRun, RLState]:
    """The frozen MLE and backward models, the policy initialised from the MLE model, the data, openings and dull
    list; resumed from ``last/`` if there is one, with the start perplexity measured on a fresh run."""
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    folder = RunFolder(cfg.out, RL_LOG_FIELDS)
    forward, backward, tokenizer, fwd_config = load_models(cfg, device)
    policy = copy.deepcopy(forward).requires_grad_(True)
    train_cfg = TrainConfig.from_dict({**fwd_config["meta"]["train"], "out": str(folder.out),
                                       "tokenizer": str(resolve(cfg.policy) / "tokenizer.json")})
    data = prepare_data(train_cfg)
    openings = [ids[-train_cfg.max_src_len:] for ids in tokenizer.encode_batch(opening_messages(data.split.train))]
    dull_texts = dull_list(data.split.train, top=cfg.dull_top)
    optimizer = make_adam(policy.parameters(), cfg.lr)
    state = RLState.from_info(folder.resume(policy, optimizer))
    policy.eval()  # no dropout: the sampled turns and their log-probs come from the same distribution
    if state.start_ppl is None:
        state.start_ppl = _valid_ppl(policy, data, cfg, device)
    meta = {"train": fwd_config["meta"]["train"], "rl": asdict(cfg), "corpus": fwd_config["meta"].get("corpus"),
            "n_train_pairs": len(data.train), "parameters": fwd_config["meta"].get("parameters"),
            "start_valid_ppl": state.start_ppl, "dull_list": dull_texts, "hardware": hardware_name(device)}
    run = RLRun(cfg, device, folder, policy, forward, backward, tokenizer, optimizer, data,
                openings=[o for o in openings if o], window=window_reader(train_cfg), dull_texts=dull_texts,
                dull=[tokenizer.encode(s) for s in dull_texts], meta=meta,
                clock=TimeBudget(cfg.max_minutes, state.train_seconds))
    print(f"RL from {cfg.policy}: start valid ppl {state.start_ppl:.2f}, {len(run.openings):,} openings, "
          f"{len(run.dull)} dull replies", flush=True)
    return run, state


def save_policy(run: RLRun, state: RLState, name: str, **extra: Any) -> None:
    """Write ``best/`` or ``last/`` (with the optimizer, RNGs and ``state``); ``extra`` goes into its meta."""
    state.train_seconds = run.clock.total_s()
    run.folder.save(name, run.policy, run.tokenizer, meta=dict(run.meta, step=state.step, **extra),
                    train_state=pack_train_state(run.optimizer, state.info()) if name == "last" else None)


def collapse_guard(state: RLState, sampled: list[str], cfg: RLConfig) -> tuple[float, bool]:
    """The top_share of a step's sampled turns and whether the guard stops the run (``collapse_steps`` alarmed
    steps in a row); counts the alarms in ``state`` and prints each one."""
    top = top_share(sampled)
    state.collapse_run = state.collapse_run + 1 if top > cfg.collapse_share else 0
    if state.collapse_run:
        common = Counter(sampled).most_common(1)[0][0]
        print(f"step {state.step}: collapse alarm: {top:.0%} of sampled turns are {common!r} "
              f"({state.collapse_run} step(s) in a row above {cfg.collapse_share:.0%})", flush=True)
    return top, cfg.collapse_steps > 0 and state.collapse_run >= cfg.collapse_steps


def _collapse_stop(state: RLState, cfg: RLConfig) -> Stop:
    return Stop(StopKind.COLLAPSE, f"collapse: top_share above {cfg.collapse_share} for {state.collapse_run} steps; "
                                   f"best/ kept from step {state.best_step}")


def fluency_check(run: RLRun, state: RLState, stop: Stop | None, *,
                  collapsed: bool) -> tuple[float | None, Stop | None]:
    """On schedule, and once more at the last step: validation perplexity (None when not validated) and the
    stop; past ``ppl_tolerance`` x the start the run stops for good, else (unless it collapsed) this policy is
    the new ``best/``."""
    cfg = run.cfg
    if state.step % cfg.eval_every and not stop:
        return None, stop
    valid_ppl = _valid_ppl(run.policy, run.data, cfg, run.device)
    state.valid_step = state.step
    if valid_ppl > cfg.ppl_tolerance * state.start_ppl:
        state.early_stopped = True
        text = f"valid ppl {valid_ppl:.2f} > {cfg.ppl_tolerance} x start {state.start_ppl:.2f}"
        return valid_ppl, stop or Stop(StopKind.FLUENCY, text)
    if not collapsed:
        state.best_step = state.step
        save_policy(run, state, "best", valid_ppl=valid_ppl)
    return valid_ppl, stop


def rl_log_row(step: int, ro: Rollout, up: Update, *, valid_ppl: float | None, top: float, dull: set[str],
               elapsed_s: float) -> dict[str, Any]:
    """One row of log.csv (RL_LOG_FIELDS)."""
    n, sampled, greedy, rw = ro.n_sampled, ro.sampled_texts, ro.greedy_texts, ro.rewards
    return {
        "step": step, "reward": round(float(rw.r.mean()), 4), "r1": round(float(rw.r1.mean()), 4),
        "r2": round(float(rw.r2.mean()), 4), "r3": round(float(rw.r3.mean()), 4),
        "baseline": round(up.baseline, 4), "pg_loss": round(up.pg_loss, 4), "mle_loss": round(up.mle_loss, 4),
        "valid_ppl": "" if valid_ppl is None else round(valid_ppl, 3),
        "reply_len": round(sum(len(x) for x in ro.replies[:n]) / n, 2),
        "kl": "" if up.kl is None else round(up.kl, 4),
        "unique_share": round(len(set(sampled)) / n, 3),  # falls if the policy collapses
        "top_share": round(top, 4), "sample_distinct_2": round(distinct_n(sampled, 2), 4),
        "repeat_penalty": "" if ro.repeat is None else round(float(ro.repeat[:n].mean()), 4),
        "dull_share": round(sum(t in dull for t in sampled) / n, 3),
        "greedy_dull_share": round(sum(t in dull for t in greedy) / len(greedy), 3) if greedy else "",
        "elapsed_s": round(elapsed_s, 1)}


def rl_step(run: RLRun, state: RLState, signals: StopRequest) -> Stop | None:
    """One RL step: rollout, update, the collapse guard, the stop conditions, the fluency check (best/), the log
    row and, on schedule or at the last step, ``last/``. Returns why the run stops after it, if it does."""
    cfg = run.cfg
    seed = cfg.seed * 1_000_003 + state.step  # openings, dull sample and MLE pairs (rng), and the self-play
    rng = random.Random(seed)
    openings = draw_openings(run.openings, rng, batch_size=cfg.batch_size, group=run.group)
    dull = run.dull if not cfg.dull_sample else rng.sample(run.dull, min(cfg.dull_sample, len(run.dull)))
    ro = rollout(run.policy, openings, forward=run.forward, backward=run.backward, tokenizer=run.tokenizer,
                 dull=dull, cfg=cfg, seed=seed, window=run.window, group=run.group)
    mle_batch = collate([run.data.train[rng.randrange(len(run.data.train))] for _ in range(cfg.mle_batch_size)])
    up = policy_update(run.policy, run.optimizer, ro, mle_batch.to(run.device), reference=run.forward, cfg=cfg,
                       ema_baseline=state.baseline)
    state.step, state.baseline = state.step + 1, up.baseline
    top, collapsed = collapse_guard(state, ro.sampled_texts, cfg)
    if collapsed:
        state.early_stopped = True
    stop = _collapse_stop(state, cfg) if collapsed else budget_stop(state.step, cfg.steps, run.clock, signals,
                                                                    max_minutes=cfg.max_minutes)
    valid_ppl, stop = fluency_check(run, state, stop, collapsed=collapsed)
    run.folder.log(rl_log_row(state.step, ro, up, valid_ppl=valid_ppl, top=top, dull=set(run.dull_texts),
                              elapsed_s=run.clock.total_s()))
    if stop or state.step % cfg.save_every == 0:
        save_policy(run, state, "last")
    return stop


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run (or resume) RL fine-tuning; returns a summary with the start and final validation perplexity. Whatever
    stops it (its step or time budget, the fluency check, the collapse guard, Ctrl-C), the last step is validated
    if it was not already, and ``best/`` and ``last/`` are on disk when it returns."""
    run, state = setup_rl(cfg)
    if not run.folder.has_best():
        save_policy(run, state, "best", valid_ppl=state.start_ppl)
    stop = None
    with StopRequest() as signals:
        while stop is None and not state.early_stopped and state.step < cfg.steps:
            stop = rl_step(run, state, signals)
    stop = stop or Stop(StopKind.NOTHING, "finished earlier (nothing to do)")
    print(f"stopped at step {state.step}: {stop.text}; validated at step {state.valid_step}; best/ is step "
          f"{state.best_step}", flush=True)
    return {"step": state.step, "best_step": state.best_step, "start_valid_ppl": state.start_ppl,
            "train_seconds": state.train_seconds, "stopped": stop.text,
            "interrupted": stop.kind is StopKind.INTERRUPTED, "collapsed": stop.kind is StopKind.COLLAPSE,
            "done": bool(state.early_stopped or state.step >= cfg.steps)}
