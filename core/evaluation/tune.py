"""Tune the anti-LM bot's defaults (``antilm``, ``gamma``, ``gamma_words``, ``n_bonus``) on the validation split.

    chatbot-arena tune                                  # grid over the shipped anti-LM bot; prints the table
    chatbot-arena tune --write                          # ... and writes the winner into checkpoints/bots.json

The objective, as in Li et al. (2016), is diversity without losing the reply's fit to the message: among the
grid points whose replies keep a mean per-token log p(T|S) within ``max_logp_drop`` nats of plain beam search,
whose least likely token is on average within ``max_worst_drop`` nats of plain beam's (the anti-LM's failure
is one rare word the LM finds surprising, e.g. "nursing potter", which a per-token mean hides), whose share of
replies holding a token below ``RARE_TOKEN_LOGP`` nats grows by at most ``max_rare_increase`` (a mean over replies
lets a few such replies through), whose share of replies holding a word never seen in the training split (a junk
fragment glued from sub-word pieces, "waterji": :func:`core.evaluation.metrics.unknown_word_rate`) grows by at most
``max_unknown_increase``, and whose dull rate is no higher than plain beam's and at most ``max_dull_rate`` (the
share of dull replies a visitor tolerates: one in ten by default) with 95% confidence (the rate's one-sided upper
bound over the sampled prompts, :func:`core.evaluation.metrics.rate_upper_bound`: on 200 prompts a measured 6% passes a
cap of 10% and a measured 10% does not, since a fresh sample could well have more), pick the one with the
highest distinct-2 (ties: the higher log-probability). Replies are decoded for a fixed, seeded sample of
validation prompts. The grid may hold any DecodeConfig field; ``gamma_words`` chooses whether gamma counts
tokens (False) or words (True).

    >>> chosen, table = tune_antilm(bot, split, n_prompts=100, grid={"antilm": [0.3, 0.4], "gamma": [2, 4],
    ...                                                              "gamma_words": [False, True]})
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import typing
from pathlib import Path
from typing import Any

import pandas as pd

from core.bots import Bot
from core.corpora import Split, make_pairs, utterances
from core.decoding import DecodeConfig
from core.evaluation.metrics import DULL_REPLIES, known_words, rate_upper_bound, reply_metrics, unknown_word_rate

_TYPES = typing.get_type_hints(DecodeConfig)
RARE_TOKEN_LOGP = -8.0  # a token the model gives less than e^-8 ~ 3e-4: a word that does not belong
GRID = {"antilm": [0.1, 0.2, 0.3, 0.4, 0.5], "gamma": [2, 4, 6], "gamma_words": [False, True],
        "n_bonus": [0.0, 0.25, 0.5]}
PLAIN_BEAM = {"antilm": 0.0, "gamma": 0, "gamma_words": False, "n_bonus": 0.0}  # the reference row


def _score(bot: Bot, prompts: list[str], dull: list[str], known: frozenset[str], batch_size: int,
           **settings: Any) -> dict[str, float]:
    replies = []
    for i in range(0, len(prompts), batch_size):
        replies += bot.respond_batch(prompts[i : i + batch_size], **settings)
    texts = [r.text for r in replies]
    logp = [sum(r.logprobs) / max(1, len(r.logprobs)) for r in replies]
    worst = [min(r.logprobs, default=0.0) for r in replies]
    return {**reply_metrics(texts, dull_list=dull),
            "logp_per_token": statistics.mean(logp), "worst_token_logp": statistics.mean(worst),
            "rare_share": sum(w < RARE_TOKEN_LOGP for w in worst) / len(worst),
            "unknown_word_rate": unknown_word_rate(texts, known)}


def tune_antilm(bot: Bot, split: Split, *, n_prompts: int = 200, grid: dict[str, list] | None = None,
                max_logp_drop: float = 0.5, max_worst_drop: float = 1.0, max_rare_increase: float = 0.05,
                max_unknown_increase: float = 0.02, max_dull_rate: float = 0.10, dull: list[str] | None = None,
                seed: int = 0,
                batch_size: int = 50) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the chosen settings, the whole grid as a table with plain beam search as its first row)."""
    grid = grid or GRID
    dull = dull or list(DULL_REPLIES)
    pairs = make_pairs(split.valid)
    known = known_words(utterances(split.train))
    prompts = [q for q, _ in random.Random(seed).sample(pairs, min(n_prompts, len(pairs)))]
    unknown = sorted(set(grid) - set(_TYPES))
    if unknown:
        raise ValueError(f"tune grid names unknown decoding setting(s) {unknown}; known: {sorted(_TYPES)}")
    reference = {k: PLAIN_BEAM.get(k, getattr(bot.defaults, k)) for k in grid}
    rows = [{**reference, **_score(bot, prompts, dull, known, batch_size,
                                   **{**reference, "antilm": 0.0, "n_bonus": 0.0})}]
    base = rows[0]
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        rows.append({**settings, **_score(bot, prompts, dull, known, batch_size, **settings)})
    df = pd.DataFrame(rows)
    df["dull_upper_bound"] = [rate_upper_bound(r, len(prompts)) for r in df["dull_rate"]]
    df["feasible"] = ((df["logp_per_token"] >= base["logp_per_token"] - max_logp_drop)
                      & (df["worst_token_logp"] >= base["worst_token_logp"] - max_worst_drop)
                      & (df["rare_share"] <= base["rare_share"] + max_rare_increase)
                      & (df["unknown_word_rate"] <= base["unknown_word_rate"] + max_unknown_increase)
                      & (df["dull_rate"] <= base["dull_rate"])
                      & (df["dull_upper_bound"] <= max_dull_rate))
    df.loc[0, "feasible"] = False  # plain beam is the reference, not a candidate
    candidates = df[df["feasible"]].sort_values(["distinct_2", "logp_per_token"], ascending=False)
    if candidates.empty:
        raise ValueError(f"no grid point keeps log p within {max_logp_drop} nats/token (and its least likely "
                         f"token within {max_worst_drop} nats, at most {max_rare_increase:.0%} more replies with a "
                         f"rare token and {max_unknown_increase:.0%} more with a word never seen in training) of "
                         f"plain beam with no more dull replies than it and at most {max_dull_rate:.0%} dull (95% "
                         f"bound); widen the grid or the allowed drops")
    best = candidates.iloc[0]
    chosen = {k: _TYPES[k](best[k]) if _TYPES[k] in (bool, int, float) else best[k] for k in grid}
    return chosen, df


def write_bot_defaults(bots_json: str | Path, name: str, settings: dict[str, Any]) -> None:
    """Merge ``settings`` into the ``decoder`` of bot ``name`` in bots.json (other bots and keys untouched)."""
    bots_json = Path(bots_json)
    data = json.loads(bots_json.read_text(encoding="utf-8"))
    matches = [b for b in data["bots"] if b.get("name") == name]
    if not matches:
        raise ValueError(f"{bots_json}: no bot named {name!r}")
    matches[0]["decoder"] = {**matches[0].get("decoder", {}), **settings}
    tmp = bots_json.with_name(bots_json.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(bots_json)
