"""Batching: truncation and drop rules, padding and masks, seeded length-bucketed order, rank sharding, resume."""

from __future__ import annotations

import random

import pytest
import torch

from core.batching import collate, encode_pairs, iterate_batches, make_batches
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID

torch.set_num_threads(1)


class DigitTokenizer:
    """Stand-in tokenizer: ``"5 6 7"`` -> ``[5, 6, 7]``, so expected ids can be written by hand."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[int(w) for w in t.split()] for t in texts]


def make_data(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` examples whose first source id ``100 + i`` names example ``i``; lengths vary from 1 to 40."""
    rng = random.Random(seed)
    return [([100 + i] + [5] * rng.randrange(0, 30), [6] * rng.randint(1, 40)) for i in range(n)]


def names(batches) -> list[int]:
    """Example names in batch order, from lists of examples or from Batch objects."""
    if batches and isinstance(batches[0], list):
        return [s[0] for b in batches for s, _ in b]
    return [int(i) for b in batches for i in b.src[:, 0]]


def padding_fraction(batches: list[list[tuple[list[int], list[int]]]]) -> float:
    padded = sum(len(b) * max(len(t) for _, t in b) for b in batches)
    return 1 - sum(len(t) for b in batches for _, t in b) / padded


# ----------------------------------------------------------------------------- encode_pairs


def test_encode_pairs_truncates_source_and_drops_long_or_empty():
    pairs = [
        ("1 2 3 4 5 6", "7 8"),  # source too long: keep its last 4 ids
        ("9", "10 11 12 13"),  # target exactly max_tgt_len: kept whole
        ("9", "10 11 12 13 14"),  # target too long: dropped, never truncated
        ("", "7"),  # empty source: dropped
        ("7", ""),  # empty target: dropped
        ("4 4", "5"),
    ]
    out = encode_pairs(DigitTokenizer(), pairs, max_src_len=4, max_tgt_len=4)
    assert out == [([3, 4, 5, 6], [7, 8]), ([9], [10, 11, 12, 13]), ([4, 4], [5])]


# ----------------------------------------------------------------------------- collate


def test_collate_shapes_padding_and_masks():
    examples = [([11, 12, 13], [21, 22]), ([14], [23, 24, 25, 26]), ([15, 16], [27])]
    b = collate(examples)
    assert b.src.tolist() == [[11, 12, 13], [14, PAD_ID, PAD_ID], [15, 16, PAD_ID]]  # (B, S)
    assert b.src_lens.tolist() == [3, 1, 2]
    assert b.tgt_in.tolist() == [  # (B, T): <s> + target, T = longest target + 1
        [BOS_ID, 21, 22, PAD_ID, PAD_ID],
        [BOS_ID, 23, 24, 25, 26],
        [BOS_ID, 27, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert b.tgt_out.tolist() == [  # target + </s>
        [21, 22, EOS_ID, PAD_ID, PAD_ID],
        [23, 24, 25, 26, EOS_ID],
        [27, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert (BOS_ID, EOS_ID, PAD_ID) == (1, 2, 0)
    assert b.tgt_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 2 + [False] * 3]
    assert b.n_tokens == 3 + 5 + 2
    assert all(t.dtype == torch.long for t in (b.src, b.src_lens, b.tgt_in, b.tgt_out))
    # teacher forcing: tgt_in shifted left is tgt_out at every target token (before </s>)
    m = b.tgt_mask[:, :-1] & (b.tgt_out[:, :-1] != EOS_ID)
    assert int(m.sum()) == 2 + 4 + 1
    assert torch.equal(b.tgt_in[:, 1:][m], b.tgt_out[:, :-1][m])


# ----------------------------------------------------------------------------- make_batches


def test_make_batches_covers_every_example_once_and_is_seeded():
    data = make_data(1000)
    batches = make_batches(data, batch_size=16, seed=3, epoch=0, bucket_factor=10)
    assert sorted(names(batches)) == list(range(100, 1100))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert len(batches) == 6 * 10 + 3  # pools of 160: six cut into 10 full batches, the last 40 into 3
    assert names(make_batches(data, batch_size=16, seed=3, epoch=0, bucket_factor=10)) == names(batches)
    assert names(make_batches(data, batch_size=16, seed=3, epoch=1, bucket_factor=10)) != names(batches)
    assert names(make_batches(data, batch_size=16, seed=4, epoch=0, bucket_factor=10)) != names(batches)


def test_epochs_reorder_batches_and_their_contents():
    data = make_data(1000)
    e0, e1 = (make_batches(data, batch_size=16, seed=3, epoch=e, bucket_factor=10) for e in (0, 1))
    assert names(e0[:5]) != names(e1[:5])
    assert {frozenset(names([b])) for b in e0} != {frozenset(names([b])) for b in e1}  # not just the batch order


def test_batches_are_length_bucketed():
    data = make_data(2000)
    bucketed = make_batches(data, batch_size=32, seed=0, epoch=0)
    shuffled = data[:]
    random.Random(0).shuffle(shuffled)
    unbucketed = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]
    assert padding_fraction(unbucketed) > 0.3
    assert padding_fraction(bucketed) < padding_fraction(unbucketed) / 10


# ----------------------------------------------------------------------------- iterate_batches


def test_iterate_batches_world_one_yields_every_batch_in_order():
    data = make_data(200)
    got = list(iterate_batches(data, batch_size=16, seed=1, epoch=2))
    assert names(got) == names(make_batches(data, batch_size=16, seed=1, epoch=2))


@pytest.mark.parametrize("n", [16 * 7, 16 * 8])  # odd and even numbers of batches
def test_ranks_get_disjoint_equal_shards(n):
    data = make_data(n)
    n_batches = len(make_batches(data, batch_size=16, seed=1, epoch=0))
    r0, r1 = (list(iterate_batches(data, batch_size=16, seed=1, epoch=0, rank=r, world=2)) for r in (0, 1))
    assert len(r0) == len(r1) == n_batches // 2
    assert not set(names(r0)) & set(names(r1))
    assert len(names(r0)) + len(names(r1)) == n - (n_batches % 2) * 16  # only the unshared tail is dropped


def test_skip_resumes_mid_epoch():
    data = make_data(300)
    full = list(iterate_batches(data, batch_size=16, seed=5, epoch=1, rank=1, world=2))
    for k in (0, 3, len(full), len(full) + 2):
        rest = list(iterate_batches(data, batch_size=16, seed=5, epoch=1, rank=1, world=2, skip=k))
        assert len(rest) == max(0, len(full) - k)
        for a, b in zip(rest, full[k:]):
            assert torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out)
