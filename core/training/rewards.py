"""The three rewards of Li et al. (2016), "Deep Reinforcement Learning for Dialogue Generation".

Shape legend: N replies scored at once, D dull replies, S source length, T target length, H hidden.

    r1 ease of answering    -(1/|D|) sum_{s in D} (1/N_s) log p_fwd(s | a)       dull answers to `a` are unlikely
    r2 information flow     -log cos(h_prev, h_a)                                 an agent does not repeat itself
    r3 semantic coherence   (1/N_a) log p_fwd(a | q) + (1/N_q) log p_bwd(q | a)   `a` answers `q`, `q` predicts `a`
    r = 0.25 r1 + 0.25 r2 + 0.5 r3

Against collapse (the policy answering most messages with one reply), RL may subtract a batch-repetition
penalty, ``weight * (count - 1)`` for a reply that ``count`` sampled replies of the step share
(:func:`batch_repetition_penalty`), and watch :func:`top_share`, the share of the most frequent reply.

All three are scored by frozen models (the MLE forward model and the backward model), never by the policy being
trained. Token sequences are lists of ids without <s> / </s>.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from core.batching import collate
from core.corpora import Conversation
from core.decoding import sequence_logprobs
from core.evaluation.metrics import DULL_REPLIES, normalize_reply
from core.model import Seq2Seq
from core.tokenizer import PAD_ID

REWARD_WEIGHTS = (0.25, 0.25, 0.5)
COS_FLOOR = 1e-3  # cos below this counts as this: r2 is at most -log(1e-3) ~ 6.9


def dull_list(train_convs: list[Conversation] | None = None, *, top: int = 10) -> list[str]:
    """The classic dull replies plus the ``top`` most frequent replies of the training split (normalised)."""
    replies = list(DULL_REPLIES)
    if train_convs:
        counts = Counter(normalize_reply(u) for conv in train_convs for u in conv[1:])
        replies += [r for r, _ in counts.most_common(top + len(replies)) if r and r not in replies][:top]
    return replies


@torch.no_grad()
def ease_of_answering(forward: Seq2Seq, replies: list[list[int]], dull: list[list[int]]) -> Tensor:
    """r1 (N,): minus the mean length-normalised log-likelihood of each dull reply as an answer to each reply."""
    N, D = len(replies), len(dull)
    lp = sequence_logprobs(forward, replies, [d for _ in range(N) for d in dull], mean=True, repeat=D)  # (N*D,)
    return -lp.view(N, D).mean(1)


@torch.no_grad()
def encode_turns(encoder_model: Seq2Seq, turns: list[list[int]]) -> Tensor:
    """Mean-pooled encoder states of each turn, (N, H)."""
    batch = collate([(t or [PAD_ID], [PAD_ID]) for t in turns]).to(next(encoder_model.parameters()).device)
    mem = encoder_model.encode(batch.src, batch.src_lens)
    mask = mem.mask.unsqueeze(-1).float()  # (N, S, 1)
    return (mem.outputs * mask).sum(1) / mask.sum(1).clamp(min=1)  # (N, H)


@torch.no_grad()
def information_flow(encoder_model: Seq2Seq, previous: list[list[int]], current: list[list[int]]) -> Tensor:
    """r2 (N,): -log cos between the encodings of an agent's previous turn and its current one."""
    h = encode_turns(encoder_model, previous + current)  # (2N, H)
    cos = torch.cosine_similarity(h[: len(previous)], h[len(previous) :], dim=-1)  # (N,)
    return -torch.log(cos.clamp(min=COS_FLOOR))


@torch.no_grad()
def semantic_coherence(forward: Seq2Seq, backward: Seq2Seq, queries: list[list[int]], replies: list[list[int]],
                       sources: list[list[int]] | None = None) -> Tensor:
    """r3 (N,): (1/N_a) log p_fwd(a | p, q) + (1/N_q) log p_bwd(q | a). ``sources``: what the forward model reads
    for each reply, the conversation window that ends with q (:func:`core.context.window_ids`, as the model was
    trained); default: q alone. The backward model reads the reply and scores the bare query."""
    sources = queries if sources is None else sources
    return (sequence_logprobs(forward, sources, replies, mean=True)
            + sequence_logprobs(backward, replies, queries, mean=True))


def combine(r1: Tensor, r2: Tensor, r3: Tensor, weights: tuple[float, float, float] = REWARD_WEIGHTS) -> Tensor:
    """The weighted reward of the paper: 0.25 r1 + 0.25 r2 + 0.5 r3."""
    return weights[0] * r1 + weights[1] * r2 + weights[2] * r3


def reply_counts(replies: Sequence[str], pool: Sequence[str] | None = None) -> list[int]:
    """How many replies of ``pool`` (default: ``replies`` itself) equal each reply, after normalisation."""
    counts = Counter(normalize_reply(r) for r in (replies if pool is None else pool))
    return [counts[normalize_reply(r)] for r in replies]


def top_share(replies: Sequence[str]) -> float:
    """Share of the most frequent reply (after normalisation) among ``replies``; 0.0 for none. 1/N when all
    differ, 1.0 when the policy gave one reply to everything."""
    return max(reply_counts(replies), default=0) / len(replies) if replies else 0.0


def batch_repetition_penalty(replies: Sequence[str], weight: float, pool: Sequence[str] | None = None) -> Tensor:
    """(N,) what each reply loses for being repeated within the step's batch: ``weight * (count - 1)``, count the
    number of replies of ``pool`` (default: ``replies``, the step's sampled turns) equal to it after
    normalisation; a reply said once (or not in the pool) loses nothing, one said c times loses (c - 1) x weight."""
    if weight < 0:
        raise ValueError(f"the batch-repetition weight must be >= 0, got {weight}")
    counts = torch.tensor(reply_counts(replies, pool), dtype=torch.float32)
    return weight * (counts - 1).clamp(min=0)
