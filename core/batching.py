"""Batching: tokenised pairs -> length-bucketed, seeded, padded batches with masks; shardable by rank.

Shape legend: B batch, S source length, T target length (with <s> or </s>).

    >>> data = encode_pairs(tokenizer, pairs, max_src_len=40, max_tgt_len=40)
    >>> for batch in iterate_batches(data, batch_size=64, seed=0, epoch=0, rank=0, world=1):
    ...     batch.src, batch.src_lens, batch.tgt_in, batch.tgt_out   # (B, S), (B,), (B, T), (B, T)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

Example = tuple[list[int], list[int]]  # (source ids, target ids) without specials


@dataclass
class Batch:
    src: Tensor  # (B, S) padded source ids
    src_lens: Tensor  # (B,) source lengths
    tgt_in: Tensor  # (B, T) <s> + target
    tgt_out: Tensor  # (B, T) target + </s>, PAD where masked

    @property
    def tgt_mask(self) -> Tensor:
        return self.tgt_out != PAD_ID  # (B, T)

    @property
    def n_tokens(self) -> int:
        return int(self.tgt_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.src, self.src_lens, self.tgt_in, self.tgt_out)))


def encode_pairs(
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    *,
    max_src_len: int = 40,
    max_tgt_len: int = 40,
) -> list[Example]:
    """Tokenise pairs; keep the last ``max_src_len`` source tokens; drop pairs whose target is empty or longer
    than ``max_tgt_len`` (a truncated reply would teach the model to stop mid-sentence)."""
    srcs = tokenizer.encode_batch([q for q, _ in pairs])
    tgts = tokenizer.encode_batch([r for _, r in pairs])
    out = []
    for s, t in zip(srcs, tgts):
        if not s or not t or len(t) > max_tgt_len:
            continue
        out.append((s[-max_src_len:], t))
    return out


def collate(examples: list[Example]) -> Batch:
    """Pad a list of examples into one Batch."""
    B = len(examples)
    S = max(len(s) for s, _ in examples)
    T = max(len(t) for _, t in examples) + 1
    src = torch.full((B, S), PAD_ID, dtype=torch.long)
    tgt_in = torch.full((B, T), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((B, T), PAD_ID, dtype=torch.long)
    for i, (s, t) in enumerate(examples):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t) + 1] = torch.tensor([BOS_ID, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, EOS_ID])
    src_lens = torch.tensor([len(s) for s, _ in examples])
    return Batch(src, src_lens, tgt_in, tgt_out)


def make_batches(
    data: list[Example], *, batch_size: int, seed: int, epoch: int, bucket_factor: int = 50
) -> list[list[Example]]:
    """Shuffle with (seed, epoch), sort pools of ``bucket_factor * batch_size`` examples by length, cut them into
    batches and shuffle the batch order: little padding, still a random order each epoch."""
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(data)))
    rng.shuffle(idx)
    pool = batch_size * bucket_factor
    batches = []
    for p in range(0, len(idx), pool):
        chunk = sorted(idx[p : p + pool], key=lambda i: (len(data[i][1]), len(data[i][0])))
        batches += [[data[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def iterate_batches(
    data: list[Example], *, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, skip: int = 0
) -> Iterator[Batch]:
    """Batches of one epoch for this rank (``batches[rank::world]``), skipping the first ``skip`` (resume).

    Every rank gets the same number of batches (the tail that cannot be shared evenly is dropped), so
    DistributedDataParallel never waits on a rank that has run out."""
    batches = make_batches(data, batch_size=batch_size, seed=seed, epoch=epoch)
    per_rank = len(batches) // world if world > 1 else len(batches)
    mine = batches[rank::world][:per_rank]
    for ex in mine[skip:]:
        yield collate(ex)
