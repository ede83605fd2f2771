"""Evaluation: reply metrics on the test split, simulated dialogues, latency; one pandas table per run.

    chatbot-arena evaluate                                   # the shipped bots -> checkpoints/report.csv + .md
    chatbot-arena evaluate --checkpoints DIR --bots beam,rl --n-prompts 100 --n-dialogues 50

Columns, one row per bot:
    test_ppl          perplexity of the bot's model on the test split, each reply after its true window (the same
                      for bots sharing a model)
    test_ppl_shuffled the same replies and messages after the earlier turns of another conversation: above
                      test_ppl when the model uses its window (equal for a model that reads the message only)
    <reply metrics>   every metric of core.metrics.METRICS on the bot's replies to the test prompts: distinct_1,
                      distinct_2, mean_words, dull_rate, top_reply_share (see :data:`core.metrics.METRICS`)
    unknown_word_rate share of replies holding a word that never occurs in the training split (junk fragments
                      such as "waterji", glued from sub-word pieces)
    bleu              corpus BLEU-4 of replies against the reference replies
    dull_rate_people  dull rate on prompts written by people, not taken from the corpus (PEOPLE_PROMPTS)
    context_sensitivity  share of pairs (the same message after two different conversations) whose replies differ
    sim_turns         mean length of simulated dialogues (two copies of the bot, each reading the conversation, up
                      to 8 turns; a dialogue ends at a dull turn or when a turn shares more than 80% of its words
                      with the same agent's previous turn; the ending turn is not counted)
    sim_ended_early   share of simulated dialogues that ended before 8 turns
    sim_end_dull      share of simulated dialogues ended by a dull (or empty) turn
    sim_end_repeat    share of simulated dialogues ended by an agent repeating its own previous turn
    sim_distinct_2    distinct-2 over all simulated turns
    p50_latency_ms    median wall time of one reply (one prompt at a time) on this machine
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from core.batching import Example
from core.bots import Bot
from core.checkpoint import read_config
from core.context import conversation_examples
from core.corpora import Split, load_corpus, opening_messages, split_conversations, utterances
from core.metrics import (
    DULL_REPLIES,
    bleu,
    distinct_n,
    dull_rate,
    known_words,
    normalize_reply,
    reply_metrics,
    top_reply_share,
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


END_REASONS = ("dull", "repetition", "limit")  # why a simulated dialogue ended (an empty turn counts as dull)


@dataclass
class Dialogue:
    """A simulated dialogue: its turns, opening first (the ending turn not included), and why it ended."""

    turns: list[str]
    end: str = "limit"


def simulate(bot: Bot, openings: list[str], *, max_turns: int = MAX_TURNS, dull: set[str] | None = None,
             overlap_limit: float = OVERLAP_LIMIT, **overrides: Any) -> list[Dialogue]:
    """Two copies of ``bot`` talk, starting from each opening; each reads the conversation so far (its window of
    it); all live dialogues advance in one batch per turn.

    A dialogue stops before a generated turn that is dull (or empty), or that shares more than ``overlap_limit``
    of its words with the same agent's previous turn; such a turn is not added, so ``len(turns) - 1`` is the
    number of turns the dialogue lasted, and ``end`` says which rule ended it (``limit``: it reached
    ``max_turns``). The one implementation of these rules (the evaluation, the self-chat view)."""
    dull = dull if dull is not None else {normalize_reply(d) for d in DULL_REPLIES}
    dialogues = [Dialogue([o]) for o in openings]
    live = list(range(len(dialogues)))
    for _ in range(max_turns):
        if not live:
            break
        replies = bot.respond_batch([dialogues[i].turns[-1] for i in live],
                                    histories=[dialogues[i].turns[:-1] for i in live], **overrides)
        still = []
        for i, reply in zip(live, replies):
            d = dialogues[i]
            own_previous = d.turns[-2] if len(d.turns) >= 2 else None
            if not _answerable(bot, reply.text) or normalize_reply(reply.text) in dull:
                d.end = "dull"
            elif own_previous is not None and word_overlap(reply.text, own_previous) > overlap_limit:
                d.end = "repetition"
            else:
                d.turns.append(reply.text)
                still.append(i)
        live = still
    return dialogues


def simulate_dialogues(bot: Bot, openings: list[str], **kwargs: Any) -> list[list[str]]:
    """The turns of :func:`simulate`'s dialogues."""
    return [d.turns for d in simulate(bot, openings, **kwargs)]


Turn = tuple[list[str], str, str]  # (the earlier turns, oldest first; the message; the reference reply)


def conversation_turns(convs: list[list[str]], *, keep: int = 8) -> list[Turn]:
    """Every (history, message, reply) of ``convs``; the history holds at most the ``keep`` turns before the
    message (no bot of this project reads more)."""
    return [(conv[max(0, i - keep): i], conv[i], conv[i + 1]) for conv in convs for i in range(len(conv) - 1)]


def context_pairs(convs: list[list[str]], n: int, rng: random.Random) -> list[tuple[str, list[str], list[str]]]:
    """``n`` (message, its own history, the history of another conversation's turn): the same last message after
    two different conversations, each history at least two turns long."""
    turns = [(c, t) for c, conv in enumerate(convs) for t in conversation_turns([conv]) if len(t[0]) >= 2]
    if len({c for c, _ in turns}) < 2:
        return []
    out = []
    for c, (history, message, _) in rng.sample(turns, min(n, len(turns))):
        other = rng.choice(turns)
        while other[0] == c:
            other = rng.choice(turns)
        out.append((message, history, other[1][0]))
    return out


def context_sensitivity(bot: Bot, pairs: list[tuple[str, list[str], list[str]]], *, batch_size: int = 50) -> float:
    """Share of ``pairs`` whose two replies differ (after normalisation): 0 for a bot that reads the message
    only."""
    if not pairs:
        return 0.0
    differ = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        a = bot.respond_batch([m for m, _, _ in chunk], histories=[h for _, h, _ in chunk])
        b = bot.respond_batch([m for m, _, _ in chunk], histories=[h for _, _, h in chunk])
        differ += sum(normalize_reply(x.text) != normalize_reply(y.text) for x, y in zip(a, b))
    return differ / len(pairs)


def test_examples(bot: Bot, convs: list[list[str]], *, shuffled: bool = False) -> list[Example]:
    """The (window, reply) examples of ``convs`` as the bot's model was trained on them; ``shuffled``: each
    window's earlier turns from another conversation."""
    train_cfg: dict[str, Any] = {}
    if bot.checkpoint is not None and (bot.checkpoint / "config.json").exists():
        train_cfg = read_config(bot.checkpoint)["meta"].get("train", {})
    return conversation_examples(bot.tokenizer, convs, context_turns=bot.context_turns,
                                 speaker_markers=bot.speaker_markers, max_src_len=bot.max_src_len,
                                 max_tgt_len=train_cfg.get("max_tgt_len", 40), shuffle_seed=0 if shuffled else None)


def _read_prompts_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


PEOPLE_PROMPTS = Path(__file__).with_name("people_prompts.txt")  # written for this evaluation, not from a corpus


def evaluate_bots(bots: dict[str, Bot], split: Split, *, n_prompts: int = 300, n_dialogues: int = 100,
                  n_latency: int = 30, n_context_pairs: int = 100, seed: int = 0, dull: list[str] | None = None,
                  batch_size: int = 50, people_prompts: list[str] | None = None) -> pd.DataFrame:
    """The evaluation table for ``bots`` on the test split of ``split`` (a fixed, seeded sample of it). Every
    reply is to a test message after its conversation (each bot reads as much of it as it was trained to)."""
    rng = random.Random(seed)
    some_bot = next(iter(bots.values()))
    turns = [t for t in conversation_turns(split.test) if _answerable(some_bot, t[1])]  # empty prompts are refused
    sample = rng.sample(turns, min(n_prompts, len(turns)))
    openings = [o for o in opening_messages(split.test) if _answerable(some_bot, o)]
    openings = rng.sample(openings, min(n_dialogues, len(openings)))
    pairs = [p for p in context_pairs(split.test, n_context_pairs, rng) if _answerable(some_bot, p[0])]
    people = people_prompts if people_prompts is not None else _read_prompts_file(PEOPLE_PROMPTS)
    dull_set = {normalize_reply(d) for d in (dull or DULL_REPLIES)}
    known = known_words(utterances(split.train))
    ppl_cache: dict[tuple[int, int, int], tuple[float, float]] = {}
    rows = []
    for name, bot in bots.items():
        torch.manual_seed(seed)
        # 1. perplexity of the model behind the bot with the true and a shuffled window (once per model + window)
        key = (id(bot.model), bot.context_turns, bot.max_src_len)
        if key not in ppl_cache:
            device = next(bot.model.parameters()).device
            ppl_cache[key] = tuple(perplexity(bot.model, test_examples(bot, split.test, shuffled=s), device=device)
                                   for s in (False, True))
        # 2. replies to the test messages after their conversations, in batches; to the people's prompts
        replies = []
        for i in range(0, len(sample), batch_size):
            chunk = sample[i: i + batch_size]
            replies += [r.text for r in bot.respond_batch([m for _, m, _ in chunk], histories=[h for h, _, _ in chunk])]
        people_replies = [r.text for i in range(0, len(people), batch_size)
                          for r in bot.respond_batch(people[i: i + batch_size])]
        # 3. simulated dialogues, context sensitivity and single-prompt latency
        dialogues = simulate(bot, openings, dull=dull_set)
        sim_turns = [t for d in dialogues for t in d.turns[1:]]
        ends = Counter(d.end for d in dialogues)
        latencies = [bot.respond(m, history=h).latency_s for h, m, _ in sample[:n_latency]]
        rows.append({
            "bot": name, "checkpoint": bot.checkpoint.name if bot.checkpoint else "",
            "test_ppl": round(ppl_cache[key][0], 2), "test_ppl_shuffled": round(ppl_cache[key][1], 2),
            **{k: round(v, 4) for k, v in reply_metrics(replies, dull_list=dull_set).items()},
            "unknown_word_rate": round(unknown_word_rate(replies, known), 4),
            "bleu": round(bleu(replies, [r for _, _, r in sample]), 4),
            "dull_rate_people": round(dull_rate(people_replies, dull_set), 4) if people_replies else 0.0,
            "top_share_people": round(top_reply_share(people_replies), 4) if people_replies else 0.0,
            "context_sensitivity": round(context_sensitivity(bot, pairs, batch_size=batch_size), 3),
            "sim_turns": round(statistics.mean(len(d.turns) - 1 for d in dialogues), 3),
            "sim_ended_early": round(1 - ends["limit"] / len(dialogues), 3),
            "sim_end_dull": round(ends["dull"] / len(dialogues), 3),
            "sim_end_repeat": round(ends["repetition"] / len(dialogues), 3),
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
