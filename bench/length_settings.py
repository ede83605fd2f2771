"""What ``n_bonus``, ``length_penalty`` and ``min_len`` do to the beam-search bots' replies on validation prompts:
mean words, distinct-2, dull rate, share of replies with a repeated 3-gram (greedy-style loops), mean log p per
token (the model's own fit). One table row per (bot, setting); each bot keeps its other bots.json settings.

    python bench/length_settings.py                               # shipped checkpoints, 100 validation prompts
    python bench/length_settings.py --bots beam --n-prompts 50 --checkpoints runs/compare
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import pandas as pd

from core.bots import Bot, load_bots
from core.corpora import make_pairs
from core.evaluation.evaluate import load_split_for, to_markdown
from core.evaluation.metrics import ngrams, reply_metrics, words
from core.training.rewards import dull_list
from core.training.runs import set_threads

SETTINGS: list[dict[str, Any]] = [
    {}, {"n_bonus": 0.25}, {"n_bonus": 0.5}, {"n_bonus": 1.0},
    {"length_penalty": 1.0}, {"length_penalty": 2.0},
    {"min_len": 3}, {"min_len": 5}, {"n_bonus": 0.5, "length_penalty": 1.0},
]


def repeated_trigram(text: str) -> bool:
    """True when some 3-gram of words occurs twice in the reply (a loop)."""
    grams = ngrams(words(text), 3)
    return len(grams) != len(set(grams))


def measure(bot: Bot, prompts: list[str], dull: list[str], batch_size: int, **settings: Any) -> dict[str, Any]:
    replies = []
    for i in range(0, len(prompts), batch_size):
        replies += bot.respond_batch(prompts[i : i + batch_size], **settings)
    texts = [r.text for r in replies]
    m = reply_metrics(texts, dull_list=dull)
    return {"mean_words": round(m["mean_words"], 2), "distinct_2": round(m["distinct_2"], 4),
            "dull_rate": round(m["dull_rate"], 3),
            "loop_share": round(statistics.mean(map(repeated_trigram, texts)), 3),
            "logp_per_token": round(statistics.mean(sum(r.logprobs) / max(1, len(r.logprobs)) for r in replies), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default=None, help="folder with bots.json (default: the shipped one)")
    ap.add_argument("--bots", default="beam,antilm,rl", help="comma-separated beam-search bots")
    ap.add_argument("--n-prompts", type=int, default=100, help="validation prompts (seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt sample")
    ap.add_argument("--batch-size", type=int, default=50, help="prompts per generate call")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    set_threads(args.threads)
    bots = load_bots(args.checkpoints, device="cpu")
    names = [n.strip() for n in args.bots.split(",") if n.strip()]
    unknown = [n for n in names if n not in bots]
    if unknown:
        raise SystemExit(f"unknown bot(s) {unknown}; bots.json has {sorted(bots)}")
    split = load_split_for(bots[names[0]])
    dull = dull_list(split.train)
    pairs = make_pairs(split.valid)
    prompts = [q for q, _ in random.Random(args.seed).sample(pairs, min(args.n_prompts, len(pairs)))]
    rows, t0 = [], time.perf_counter()
    for name in names:
        for settings in SETTINGS:
            label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "bots.json"
            rows.append({"bot": name, "setting": label, **measure(bots[name], prompts, dull, args.batch_size,
                                                                  **settings)})
    print(to_markdown(pd.DataFrame(rows)))
    print(f"\n{len(prompts)} validation prompts, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
