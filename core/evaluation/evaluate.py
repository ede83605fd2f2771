"""Evaluation: reply metrics on the test split, simulated dialogues, latency; one pandas table per run.

    chatbot-arena evaluate                                   # the shipped bots -> checkpoints/report.csv + .md
    chatbot-arena evaluate --checkpoints DIR --bots beam,rl --n-prompts 100 --n-dialogues 50

Simulated dialogues have one implementation, :func:`converse` (a generator: one :class:`Step` per turn as it is
judged); :func:`simulate` runs it to the end (one bot twice for this table, or two bots), and the app's Self-chat
tab and ``/api/v1/self_chat`` run it on the batching scheduler (:mod:`demo_app.self_chat`).

Columns, one row per bot:
    test_ppl          perplexity of the bot's model on the test split, each reply after its true window (the same
                      for bots sharing a model)
    test_ppl_shuffled the same replies and messages after the earlier turns of another conversation: above
                      test_ppl when the model uses its window (equal for a model that reads the message only)
    <reply metrics>   every metric of :data:`core.evaluation.metrics.METRICS` on the bot's replies to the test
                      prompts: distinct_1, distinct_2, mean_words, dull_rate, top_reply_share
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

import functools
import math
import random
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from core.batching import Example
from core.bots import Bot
from core.checkpoint import read_config
from core.context import conversation_examples
from core.corpora import Split, load_corpus, opening_messages, split_conversations, utterances
from core.evaluation.metrics import (
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
from core.scoring import perplexity

MAX_TURNS = 8
OVERLAP_LIMIT = 0.8


def word_overlap(turn: str, previous: str) -> float:
    """Share of ``turn``'s distinct words that also occur in ``previous`` (0 for an empty turn)."""
    words = set(normalize_reply(turn).split())
    return len(words & set(normalize_reply(previous).split())) / len(words) if words else 0.0


def answerable(bot: Speaker, text: str) -> bool:
    """Whether ``text`` leaves any tokens for the bot to answer (an empty or all-control-character turn does not)."""
    try:
        bot.encode_prompt(text)
    except ValueError:
        return False
    return True


# why a simulated dialogue ended, and how to say it (an empty turn counts as dull)
END_REASONS = {"dull": "a dull (or empty) turn", "repetition": "an agent repeating its own previous turn",
               "limit": "the turn limit"}
AGENTS = ("A", "B")  # agent A speaks first after the opening; the opening counts as agent B's turn


class Speaker(Protocol):
    """What talks in a simulated dialogue: a :class:`~core.bots.Bot`, or anything that answers as one does (the
    app's bots through its batching scheduler, a scripted bot in the tests). ``name`` is optional."""

    def encode_prompt(self, prompt: str, history: Sequence[str] | None = None) -> list[int]: ...

    def respond_batch(self, prompts: list[str], *, histories: Sequence[Sequence[str] | None] | None = None,
                      **overrides: Any) -> list[Any]: ...


@dataclass
class DialogueTurn:
    """One generated turn: which agent said it (0: A, 1: B), the bot behind that agent, its text and search score
    (:attr:`core.decoding.Reply.score`; None when the speaker reports none)."""

    agent: int
    bot: str
    text: str
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The turn as JSON: ``{"agent": "A" | "B", "bot", "text", "score"}``; a non-finite score is null."""
        score = self.score if self.score is not None and math.isfinite(self.score) else None
        return {"agent": AGENTS[self.agent], "bot": self.bot, "text": self.text, "score": score}


@dataclass
class Dialogue:
    """A simulated dialogue: its opening, the turns said after it, and why it ended (None while it goes on; then a
    key of :data:`END_REASONS`). ``ending`` is the generated turn that ended it (dull or repeated), which is not
    among the turns said: ``len(said)`` is the number of turns the dialogue lasted."""

    opening: str
    said: list[DialogueTurn] = field(default_factory=list)
    end: str | None = None
    ending: DialogueTurn | None = None

    @property
    def turns(self) -> list[str]:
        """The texts, opening first (the ending turn not included)."""
        return [self.opening, *(t.text for t in self.said)]

    def to_json(self) -> dict[str, Any]:
        """``{"opening", "turns": [turn JSON], "length", "end", "end_reason", "ending_turn"}``."""
        return {"opening": self.opening, "turns": [t.to_json() for t in self.said], "length": len(self.said),
                "end": self.end, "end_reason": END_REASONS.get(self.end or "", None),
                "ending_turn": self.ending.to_json() if self.ending else None}


@dataclass
class Step:
    """What :func:`converse` yields per generated turn: the dialogue's index, the turn, and the dialogue after it
    (``dialogue.end``: None if it goes on; ``dialogue.ending is turn`` when this turn ended it unsaid)."""

    index: int
    turn: DialogueTurn
    dialogue: Dialogue


def end_of_turn(text: str, turns: list[str], listener: Speaker, dull: set[str], overlap_limit: float) -> str | None:
    """Why ``text``, the next turn after ``turns`` (opening first), ends the dialogue, or None if it does not: it is
    dull, or empty for ``listener`` (the agent who would answer it), or shares more than ``overlap_limit`` of its
    words with the same agent's previous turn (two turns back; the opening is agent B's)."""
    if not answerable(listener, text) or normalize_reply(text) in dull:
        return "dull"
    if len(turns) >= 2 and word_overlap(text, turns[-2]) > overlap_limit:
        return "repetition"
    return None


def converse(bot_a: Speaker, bot_b: Speaker, dialogues: list[Dialogue], *, max_turns: int = MAX_TURNS,
             dull: set[str] | None = None, overlap_limit: float = OVERLAP_LIMIT, **overrides: Any
             ) -> Iterator[Step]:
    """Advance fresh ``dialogues`` turn by turn, agent A (``bot_a``) first, then B (``bot_b``, may be the same
    bot), ...; each agent reads the conversation so far (its window of it) and all live dialogues advance in one
    ``respond_batch`` call per turn. Yields a :class:`Step` for each turn as it is judged, in place.

        d = Dialogue("hi, how are you?")
        for step in converse(bots["rl"], bots["beam"], [d], max_turns=8):
            print(step.turn.bot, step.turn.score, step.turn.text, d.end)

    The one implementation of the ending rules (the evaluation, the self-chat tab and API): a dialogue stops
    before a turn that :func:`end_of_turn` refuses (that turn goes to ``ending``, not ``said``), or after
    ``max_turns`` turns (``end`` "limit")."""
    if any(d.said or d.end for d in dialogues):
        raise ValueError("converse: every dialogue must be fresh (no turns said, not ended)")
    dull = dull if dull is not None else {normalize_reply(d) for d in DULL_REPLIES}
    speakers = (bot_a, bot_b)
    live = list(range(len(dialogues)))
    for n in range(max_turns):
        if not live:
            return
        agent = n % 2
        speaker, listener = speakers[agent], speakers[1 - agent]
        replies = speaker.respond_batch([dialogues[i].turns[-1] for i in live],
                                        histories=[dialogues[i].turns[:-1] for i in live], **overrides)
        still = []
        for i, reply in zip(live, replies):
            d = dialogues[i]
            score = getattr(reply, "score", None)
            turn = DialogueTurn(agent, getattr(speaker, "name", ""), reply.text,
                                float(score) if score is not None else None)
            d.end = end_of_turn(turn.text, d.turns, listener, dull, overlap_limit)
            if d.end is not None:
                d.ending = turn
            else:
                d.said.append(turn)
                if len(d.said) < max_turns:
                    still.append(i)
                else:
                    d.end = "limit"
            yield Step(i, turn, d)
        live = still
    for d in dialogues:  # max_turns 0
        d.end = d.end or "limit"


def simulate(bot_a: Speaker, openings: list[str], *, bot_b: Speaker | None = None, max_turns: int = MAX_TURNS,
             dull: set[str] | None = None, overlap_limit: float = OVERLAP_LIMIT, **overrides: Any) -> list[Dialogue]:
    """Simulated dialogues from each opening: ``bot_a`` (agent A) and ``bot_b`` (agent B; default: a second copy of
    ``bot_a``) alternate, A first, by the rules of :func:`converse`, run to the end. ``len(d.turns) - 1`` (or
    ``len(d.said)``) is the number of turns a dialogue lasted, ``d.end`` which rule ended it.

        dialogues = simulate(bots["rl"], ["hi there", "what do you do?"])                  # the evaluation's
        dialogues = simulate(bots["rl"], openings, bot_b=bots["beam"], max_turns=12)      # two bots"""
    dialogues = [Dialogue(o) for o in openings]
    for _ in converse(bot_a, bot_b if bot_b is not None else bot_a, dialogues, max_turns=max_turns, dull=dull,
                      overlap_limit=overlap_limit, **overrides):
        pass
    return dialogues


def simulate_dialogues(bot: Speaker, openings: list[str], **kwargs: Any) -> list[list[str]]:
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
    turns = [t for t in conversation_turns(split.test) if answerable(some_bot, t[1])]  # empty prompts are refused
    sample = rng.sample(turns, min(n_prompts, len(turns)))
    openings = [o for o in opening_messages(split.test) if answerable(some_bot, o)]
    openings = rng.sample(openings, min(n_dialogues, len(openings)))
    pairs = [p for p in context_pairs(split.test, n_context_pairs, rng) if answerable(some_bot, p[0])]
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


def held_out_openings(bot: Bot) -> list[str]:
    """The openings of the test split the bot's checkpoint was held out from (:func:`load_split_for`; what the
    evaluation's simulated dialogues start from), those the bot can answer. The corpus is read once per corpus
    and seed. ValueError for a bot without a checkpoint config.

        openings = held_out_openings(bots["rl"])      # 201 openings of the chitchat test split"""
    if bot.checkpoint is None or not (Path(bot.checkpoint) / "config.json").exists():
        raise ValueError(f"bot {bot.name!r} has no checkpoint config.json, so no held-out openings")
    train_cfg = read_config(bot.checkpoint)["meta"].get("train", {})
    if "corpus" not in train_cfg:
        raise ValueError(f"bot {bot.name!r}: its config.json names no training corpus, so no held-out openings")
    try:
        openings = _test_openings(str(train_cfg["corpus"]), train_cfg.get("corpus_format"),
                                  int(train_cfg.get("split_seed", 1234)))
    except (ImportError, OSError) as e:  # the corpus package or file is not on this machine (a Space)
        raise ValueError(f"bot {bot.name!r}: its corpus {train_cfg['corpus']!r} cannot be read here ({e})") from e
    return [o for o in openings if answerable(bot, o)]


@functools.lru_cache(maxsize=4)
def _test_openings(corpus: str, fmt: str | None, seed: int) -> tuple[str, ...]:
    convs = load_corpus(corpus, fmt=fmt)
    return tuple(opening_messages(split_conversations(convs, seed=seed).test))


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
