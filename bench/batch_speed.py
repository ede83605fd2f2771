"""Batched decoding vs one prompt at a time, for each bot of a checkpoint folder: what batching requests
together (``core.serving.BatchScheduler``) buys a server, measured in process on one thread.

    python bench/batch_speed.py                          # shipped bots, 64 validation prompts, batches of 16
    python bench/batch_speed.py --batch 8 32 --prompts 96 --rounds 3

For each bot and batch size: milliseconds per reply (the best of ``--rounds`` passes over the prompts), the
speed-up over one prompt at a time, and the decoder rows run per reply (rows x steps summed over the search:
a prompt whose reply is done leaves the batch, so a batch costs only its live prompts' rows).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from core.bots import Bot, default_checkpoint_dir, load_bots
from core.corpora import make_pairs
from core.evaluation.evaluate import load_split_for, to_markdown


def count_rows(bot: Bot) -> tuple[list[int], Callable[[], None]]:
    """Wrap ``bot.model.decode_step`` to count the rows of every call; returns the counts and an undo."""
    rows: list[int] = []
    step = bot.model.decode_step

    def counting(tok: torch.Tensor, state: Any, memory: Any, *, return_hidden: bool = False) -> Any:
        rows.append(tok.numel())
        return step(tok, state, memory, return_hidden=return_hidden)

    bot.model.decode_step = counting

    def undo() -> None:
        del bot.model.decode_step

    return rows, undo


def run(bot: Bot, prompts: list[str], batch: int, rounds: int) -> tuple[float, float]:
    """(ms per reply, best of ``rounds``; decoder rows per reply) for ``prompts`` decoded ``batch`` at a time."""
    best = float("inf")
    rows, undo = count_rows(bot)
    try:
        for _ in range(rounds):
            rows.clear()
            t0 = time.perf_counter()
            for i in range(0, len(prompts), batch):
                bot.respond_batch(prompts[i : i + batch])
            best = min(best, (time.perf_counter() - t0) * 1000 / len(prompts))
    finally:
        undo()
    return best, sum(rows) / len(prompts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default=None, help="checkpoint folder with bots.json (default: the shipped)")
    ap.add_argument("--prompts", type=int, default=64, help="validation prompts (seeded sample)")
    ap.add_argument("--batch", type=int, nargs="+", default=[16], help="batch sizes to compare with batch 1")
    ap.add_argument("--rounds", type=int, default=2, help="passes per setting; the fastest counts")
    ap.add_argument("--bots", nargs="+", default=None, help="bot names (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bots = load_bots(args.checkpoints or default_checkpoint_dir(), device="cpu")
    names = args.bots or list(bots)
    pairs = make_pairs(load_split_for(bots[names[0]]).valid)
    prompts = [q for q, _ in random.Random(0).sample(pairs, args.prompts)]
    table = []
    for name in names:
        bots[name].respond_batch(prompts[:4])  # warm-up
        alone_ms, alone_rows = run(bots[name], prompts, 1, args.rounds)
        table.append({"bot": name, "batch": 1, "ms_per_reply": round(alone_ms, 1), "speedup": 1.0,
                      "rows_per_reply": round(alone_rows)})
        for b in args.batch:
            ms, rows = run(bots[name], prompts, b, args.rounds)
            table.append({"bot": name, "batch": b, "ms_per_reply": round(ms, 1),
                          "speedup": round(alone_ms / ms, 2), "rows_per_reply": round(rows)})
        print(table[-1], flush=True)
    print(to_markdown(pd.DataFrame(table)))


if __name__ == "__main__":
    main()
