"""Synthetic sanity tasks on integer sequences: ``reverse`` and ``sort``.

A model that cannot learn to reverse eight numbers has a bug; these tasks train in well under a minute on CPU.

    chatbot-arena train --task reverse --out runs/reverse --max-minutes 1
"""

from __future__ import annotations

import random

TASKS = ("reverse", "sort")


def make_task_pairs(
    task: str, n: int, *, seed: int, vocab: int = 20, min_len: int = 3, max_len: int = 8
) -> list[tuple[str, str]]:
    """``n`` (source, target) pairs of space-separated integers for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        seq = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
        out = seq[::-1] if task == "reverse" else sorted(seq)
        pairs.append((" ".join(map(str, seq)), " ".join(map(str, out))))
    return pairs


def task_splits(task: str, *, seed: int, n_train: int = 20000, n_eval: int = 500
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Train / valid / test pairs for a synthetic task; held-out splits use other seeds, and any test pair that
    also occurs in training is dropped so accuracy is measured on unseen sequences."""
    train = make_task_pairs(task, n_train, seed=seed)
    seen = {s for s, _ in train}
    valid = [p for p in make_task_pairs(task, n_eval, seed=seed + 1) if p[0] not in seen]
    test = [p for p in make_task_pairs(task, n_eval, seed=seed + 2) if p[0] not in seen]
    return train, valid, test
