"""Evaluation: reply metrics on the test split, simulated dialogues, latency; one pandas table per run.

    chatbot-arena evaluate                                   # the shipped bots -> checkpoints/report.csv + .md
    chatbot-arena evaluate --checkpoints DIR --bots beam,rl --n-prompts 100 --n-dialogues 50

Columns, one row per bot:
    test_ppl          perplexity of the bot's model on the test split (the same for bots sharing a model)
    <reply metrics>   every metric of core.metrics.METRICS on the bot's replies to the test prompts: distinct_1,
                      distinct_2, mean_words, dull_rate, top_reply_share (see :data:`core.metrics.METRICS`)
    unknown_word_rate share of replies holding a word that never occurs in the training split (junk fragments
                      such as "waterji", glued from sub-word pieces)
    bleu              corpus BLEU-4 of replies against the reference replies
    sim_turns         mean length of simulated dialogues (two copies of the bot, up to 8 turns; a dialogue ends
                      at a dull turn or when a turn shares more than 80% of its words with the same agent's
                      previous turn; the ending turn is not counted)
    sim_ended_early   share of simulated dialogues that ended before 8 turns
    sim_distinct_2    distinct-2 over all simulated turns
    p50_latency_ms    median wall time of one reply (one prompt at a time) on this machine
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pandas as pd
import torch

from core.batching import Example, encode_pairs
from core.bots import Bot
from core.checkpoint import read_config
from core.corpora import Split, load_corpus, make_pairs, opening_messages, split_conversations, utterances
from core.metrics import (
    DULL_REPLIES,
    bleu,
    distinct_n,
    known_words,
    normalize_reply,
    reply_metrics,
    unknown_word_rate,
)
from core.train import perplexity

MAX_TURNS = 8
OVERLAP_LIMIT = 0.8


def word_overlap(turn: str, previous: str) -> float:
    """Share of ``turn``'s distinct words that also occur in ``previous`` (0 for an empty turn)."""
    words = set(normalize_reply(turn).split())
    return len(words & set(normalize_reply(previous).split())) / len(words) if words else 0.0


def _answerable(bot: Bot, text: str) -> bool:
    """Whether ``text`` leaves any tokens for the bot to answer (an empty or all-control-character turn does not)."""
    try:
        bot.encode_prompt(text)
    except ValueError:
        return False
    return True


def simulate_dialogues(bot: Bot, openings: list[str], *, max_turns: int = MAX_TURNS,
                       dull: set[str] | None = None, overlap_limit: float = OVERLAP_LIMIT,
                       **overrides) -> list[list[str]]:
    """Two copies of ``bot`` talk, starting from each opening; all live dialogues advance in one batch per turn.

    Returns the dialogues as lists of turns, opening first. A dialogue stops before a generated turn that is dull
    or that shares more than ``overlap_limit`` of its words with the same agent's previous turn; such a turn is
    not added, so ``len(d) - 1`` is the number of turns the dialogue lasted."""
    dull = dull if dull is not None else set(DULL_REPLIES)
    dialogues = [[o] for o in openings]
    live = list(range(len(dialogues)))
    for _ in range(max_turns):
        if not live:
            break
        replies = bot.respond_batch([dialogues[i][-1] for i in live], **overrides)
        still = []
        for i, reply in zip(live, replies):
            d = dialogues[i]
            own_previous = d[-2] if len(d) >= 2 else None
            ends = (not _answerable(bot, reply.text) or normalize_reply(reply.text) in dull
                    or (own_previous is not None and word_overlap(reply.text, own_previous) > overlap_limit))
            if not ends:
                d.append(reply.text)
                still.append(i)
        live = still
    return dialogues


def _test_examples(bot: Bot, pairs: list[tuple[str, str]]) -> list[Example]:
    train_cfg = {}
    if bot.checkpoint is not None and (bot.checkpoint / "config.json").exists():
        train_cfg = read_config(bot.checkpoint)["meta"].get("train", {})
    return encode_pairs(bot.tokenizer, pairs, max_src_len=train_cfg.get("max_src_len", 40),
                        max_tgt_len=train_cfg.get("max_tgt_len", 40))


def evaluate_bots(bots: dict[str, Bot], split: Split, *, n_prompts: int = 300, n_dialogues: int = 100,
                  n_latency: int = 30, seed: int = 0, dull: list[str] | None = None,
                  batch_size: int = 50) -> pd.DataFrame:
    """The evaluation table for ``bots`` on the test split of ``split`` (a fixed, seeded sample of it)."""
    rng = random.Random(seed)
    some_bot = next(iter(bots.values()))
    pairs = [(q, r) for q, r in make_pairs(split.test) if _answerable(some_bot, q)]  # empty prompts are refused
    sample = rng.sample(pairs, min(n_prompts, len(pairs)))
    openings = [o for o in opening_messages(split.test) if _answerable(some_bot, o)]
    openings = rng.sample(openings, min(n_dialogues, len(openings)))
    dull_set = {normalize_reply(d) for d in (dull or DULL_REPLIES)}
    known = known_words(utterances(split.train))
    ppl_cache: dict[int, float] = {}
    rows = []
    for name, bot in bots.items():
        torch.manual_seed(seed)
        # 1. perplexity of the model behind the bot (computed once per model)
        if id(bot.model) not in ppl_cache:
            ppl_cache[id(bot.model)] = perplexity(bot.model, _test_examples(bot, make_pairs(split.test)),
                                                  device=next(bot.model.parameters()).device)
        # 2. replies to the test prompts, in batches
        replies = []
        for i in range(0, len(sample), batch_size):
            replies += [r.text for r in bot.respond_batch([q for q, _ in sample[i : i + batch_size]])]
        # 3. simulated dialogues and single-prompt latency
        dialogues = simulate_dialogues(bot, openings, dull=dull_set)
        sim_turns = [t for d in dialogues for t in d[1:]]
        ended_dull = sum(1 for d in dialogues if len(d) - 1 < MAX_TURNS)
        latencies = [bot.respond(q).latency_s for q, _ in sample[:n_latency]]
        rows.append({
            "bot": name, "checkpoint": bot.checkpoint.name if bot.checkpoint else "",
            "test_ppl": round(ppl_cache[id(bot.model)], 2),
            **{k: round(v, 4) for k, v in reply_metrics(replies, dull_list=dull_set).items()},
            "unknown_word_rate": round(unknown_word_rate(replies, known), 4),
            "bleu": round(bleu(replies, [r for _, r in sample]), 4),
            "sim_turns": round(statistics.mean(len(d) - 1 for d in dialogues), 3),
            "sim_ended_early": round(ended_dull / len(dialogues), 3),
            "sim_distinct_2": round(distinct_n(sim_turns, 2), 4) if sim_turns else 0.0,
            "p50_latency_ms": round(1000 * statistics.median(latencies), 1),
        })
    return pd.DataFrame(rows)


def load_split_for(bot: Bot) -> Split:
    """The corpus split a bot's checkpoint was trained on (corpus and seed from its config.json)."""
    train_cfg = read_config(bot.checkpoint)["meta"]["train"]
    convs = load_corpus(train_cfg["corpus"], fmt=train_cfg.get("corpus_format"))
    return split_conversations(convs, seed=train_cfg.get("split_seed", 1234))


def write_report(df: pd.DataFrame, out_csv: str | Path) -> Path:
    """Write the table as CSV and as a Markdown table beside it (same name, ``.md``)."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    out_csv.with_suffix(".md").write_text(to_markdown(df) + "\n", encoding="utf-8")
    return out_csv


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (without the optional ``tabulate`` dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in ("bot", "checkpoint") else "---:"
                                                           for c in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
