"""Self-chat: two bots of the app (or one bot twice) talk from an opening, by the evaluation's rules
(:func:`core.evaluation.evaluate.converse`), every decode through the app's batching scheduler. Plain functions, no
gradio: the Self-chat tab (:mod:`demo_app.tabs.self_chat`) and the JSON route ``POST /api/v1/self_chat`` both use them.

    >>> ctx = demo_app.server.make_context()
    >>> dialogue, steps = self_chat(ctx, "rl", "beam", "hi, how are you?", max_turns=8)
    >>> for step in steps:                                  # one Step per turn, as it is produced
    ...     print(step.turn.bot, step.turn.score, step.turn.text)
    >>> dialogue.end, dialogue.to_json()                    # "dull" | "repetition" | "limit"
    >>> run = run_batch(ctx, [("rl", "rl"), ("beam", "beam")], k=20, max_turns=8)   # K held-out openings
    >>> summary_table(run), length_figure(run)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.bots import Bot
from core.context import MAX_TURN_CHARS
from core.errors import SettingError
from core.evaluation.evaluate import (
    AGENTS,
    END_REASONS,
    MAX_TURNS,
    Dialogue,
    Step,
    answerable,
    converse,
    held_out_openings,
)
from core.serving import BatchScheduler, Ticket
from demo_app.context import AppContext

TURN_RANGE = (1, 20)  # max_turns a request may ask for
K_RANGE = (1, 50)  # openings of one batch run
DEFAULT_K = 20
REPLY_TIMEOUT_S = 120.0  # one turn of all live dialogues; ctx.extra["api_timeout_s"] overrides it


@dataclass
class Scheduled:
    """A bot of the app as an agent of :func:`core.evaluation.evaluate.converse`: it answers through the batching
    scheduler (one request per prompt, so the turns of many dialogues and of other visitors share searches)."""

    scheduler: BatchScheduler
    bot: Bot
    timeout_s: float = REPLY_TIMEOUT_S

    @property
    def name(self) -> str:
        return self.bot.name

    def encode_prompt(self, prompt: str, history: Sequence[str] | None = None) -> list[int]:
        return self.bot.encode_prompt(prompt, history)

    def respond_batch(self, prompts: list[str], *, histories: Sequence[Sequence[str] | None] | None = None,
                      **overrides: Any) -> list[Any]:
        """The replies, in order; a reply that takes over ``timeout_s`` raises TimeoutError (the rest cancelled)."""
        histories = histories or [None] * len(prompts)
        tickets: list[Ticket] = []
        try:
            for p, h in zip(prompts, histories):
                tickets.append(self.scheduler.submit(self.bot.name, p, overrides, history=h or None))
            return [t.result(self.timeout_s) for t in tickets]
        except FutureTimeout as e:  # the builtin TimeoutError only from Python 3.11
            raise TimeoutError(f"{self.bot.name}: no reply within {self.timeout_s:g} s") from e
        finally:
            for t in tickets:
                t.cancel()  # no-op for the finished ones


def _timeout(ctx: AppContext) -> float:
    return float(ctx.extra.get("api_timeout_s", REPLY_TIMEOUT_S))


def check_bot(ctx: AppContext, name: Any, param: str) -> str:
    """``name`` if the app serves that bot, else SettingError naming ``param``."""
    if not isinstance(name, str) or name not in ctx.bots:
        shown = repr(name[:100]) if isinstance(name, str) else type(name).__name__
        raise SettingError(f"{param}: unknown bot {shown}; this server has {list(ctx.bots)}", field=param)
    return name


def check_turns(max_turns: Any, param: str = "max_turns") -> int:
    """``max_turns`` as an int within :data:`TURN_RANGE` (a whole float such as 8.0 is taken), else SettingError."""
    lo, hi = TURN_RANGE
    if isinstance(max_turns, float) and max_turns.is_integer():
        max_turns = int(max_turns)
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or not lo <= max_turns <= hi:
        raise SettingError(f"{param} must be a whole number from {lo} to {hi}, got {max_turns!r}", field=param,
                           range=TURN_RANGE)
    return max_turns


def check_opening(ctx: AppContext, opening: Any, bot_a: str) -> str:
    """The opening if agent A's bot can answer it, else SettingError naming ``opening``."""
    if not isinstance(opening, str):
        raise SettingError(f"opening must be text, got {type(opening).__name__}", field="opening")
    if len(opening) > MAX_TURN_CHARS:
        raise SettingError(f"opening: {len(opening)} characters; at most {MAX_TURN_CHARS}", field="opening")
    try:
        ctx.bots[bot_a].encode_prompt(opening)
    except ValueError as e:
        raise SettingError("opening is empty (nothing left after removing whitespace and control characters): "
                           "type one or draw a held-out opening", field="opening") from e
    return opening


def self_chat(ctx: AppContext, bot_a: Any, bot_b: Any, opening: Any, max_turns: Any = MAX_TURNS
              ) -> tuple[Dialogue, Iterator[Step]]:
    """A fresh dialogue from ``opening`` and the generator of its turns: agent A (``bot_a``) first, then B
    (``bot_b``; None or "": ``bot_a`` again). Checks every input first (SettingError naming ``bot_a``, ``bot_b``,
    ``opening`` or ``max_turns``); the generator raises what the scheduler raises (Busy, TimeoutError)."""
    a = check_bot(ctx, bot_a, "bot_a")
    b = check_bot(ctx, bot_b if bot_b not in (None, "") else a, "bot_b")
    n = check_turns(max_turns)
    dialogue = Dialogue(check_opening(ctx, opening, a))
    timeout = _timeout(ctx)
    speakers = [Scheduled(ctx.scheduler, ctx.bots[x], timeout) for x in (a, b)]
    return dialogue, converse(*speakers, [dialogue], max_turns=n)


def run_self_chat(ctx: AppContext, bot_a: Any, bot_b: Any, opening: Any, max_turns: Any = MAX_TURNS) -> Dialogue:
    """:func:`self_chat`, run to its end."""
    dialogue, steps = self_chat(ctx, bot_a, bot_b, opening, max_turns)
    for _ in steps:
        pass
    return dialogue


def app_openings(ctx: AppContext) -> list[str]:
    """The held-out openings of the app: the test split's openings of the first bot whose checkpoint names its
    corpus (:func:`core.evaluation.evaluate.held_out_openings`), those every bot can answer. ValueError when no bot's
    corpus can be read here (say, a Space without the corpus package)."""
    why = "no bot is served"
    for bot in ctx.bots.values():
        try:
            openings = held_out_openings(bot)
        except ValueError as e:
            why = str(e)
            continue
        return [o for o in openings if all(answerable(b, o) for b in ctx.bots.values())]
    raise ValueError(f"no held-out openings on this server ({why}): type an opening")


def draw_opening(ctx: AppContext, rng: random.Random | None = None) -> str:
    """One held-out opening, drawn at random."""
    return (rng or random.Random()).choice(app_openings(ctx))


# ----------------------------------------------------------------------------- batch mode


def pair_key(bot_a: str, bot_b: str) -> str:
    """How a pair is named in tables, plots and choices: ``"rl ↔ beam"``."""
    return f"{bot_a} ↔ {bot_b}"


def pair_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, key) of every ordered pair of the app's bots, each bot with itself first."""
    names = list(ctx.bots)
    pairs = [(a, a) for a in names] + [(a, b) for a in names for b in names if a != b]
    return [(pair_key(ctx.bots[a].label, ctx.bots[b].label), pair_key(a, b)) for a, b in pairs]


def parse_pairs(ctx: AppContext, keys: Any) -> list[tuple[str, str]]:
    """Pair keys (:func:`pair_key`) -> (bot_a, bot_b); SettingError naming ``pairs`` for an unknown one."""
    known = {pair_key(a, b): (a, b) for a in ctx.bots for b in ctx.bots}
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, (list, tuple)) or not keys:
        raise SettingError("pairs: pick at least one pair of bots", field="pairs")
    bad = [k for k in keys if k not in known]
    if bad:
        raise SettingError(f"pairs: unknown pair {str(bad[0])[:100]!r}; pairs are written 'bot_a ↔ bot_b' with "
                           f"bots of {list(ctx.bots)}", field="pairs")
    return [known[k] for k in dict.fromkeys(keys)]


@dataclass
class BatchRun:
    """The dialogues of a batch run, per pair (in the order run), from the same openings."""

    openings: list[str]
    max_turns: int
    dialogues: dict[tuple[str, str], list[Dialogue]] = field(default_factory=dict)


def run_batch(ctx: AppContext, pairs: Sequence[tuple[str, str]], *, k: Any = DEFAULT_K,
              max_turns: Any = MAX_TURNS, seed: int = 0) -> Iterator[BatchRun]:
    """Each pair talks from the same ``k`` held-out openings (drawn with ``seed``); the generator yields the run
    after each pair. The inputs are checked (SettingError naming ``k``, ``max_turns`` or ``pairs[i]``) and the
    openings drawn before it is returned; the ``k`` dialogues of a pair advance together, one batch through the
    scheduler per turn."""
    lo, hi = K_RANGE
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not lo <= k <= hi:
        raise SettingError(f"k must be a whole number from {lo} to {hi}, got {k!r}", field="k", range=K_RANGE)
    n = check_turns(max_turns)
    for i, (a, b) in enumerate(pairs):
        check_bot(ctx, a, f"pairs[{i}]")
        check_bot(ctx, b, f"pairs[{i}]")
    openings = app_openings(ctx)
    run = BatchRun(random.Random(seed).sample(openings, min(k, len(openings))), n)
    return _run_pairs(ctx, run, pairs)


def _run_pairs(ctx: AppContext, run: BatchRun, pairs: Sequence[tuple[str, str]]) -> Iterator[BatchRun]:
    timeout = _timeout(ctx)
    for a, b in pairs:
        dialogues = [Dialogue(o) for o in run.openings]
        speakers = [Scheduled(ctx.scheduler, ctx.bots[x], timeout) for x in (a, b)]
        for _ in converse(*speakers, dialogues, max_turns=run.max_turns):
            pass
        run.dialogues[(a, b)] = dialogues
        yield run


def summary_table(run: BatchRun) -> pd.DataFrame:
    """One row per pair: dialogues, mean and median turns, and the share of dialogues each rule ended."""
    rows = []
    for (a, b), dialogues in run.dialogues.items():
        lengths = pd.Series([len(d.said) for d in dialogues], dtype=float)
        ends = Counter(d.end for d in dialogues)
        rows.append({"pair": pair_key(a, b), "dialogues": len(dialogues),
                     "mean_turns": round(lengths.mean(), 2) if len(lengths) else 0.0,
                     "median_turns": float(lengths.median()) if len(lengths) else 0.0,
                     **{f"end_{r}": round(ends[r] / len(dialogues), 3) if dialogues else 0.0 for r in END_REASONS}})
    return pd.DataFrame(rows, columns=["pair", "dialogues", "mean_turns", "median_turns",
                                       *(f"end_{r}" for r in END_REASONS)])


def dialogue_table(run: BatchRun) -> pd.DataFrame:
    """One row per dialogue: pair, opening, turns lasted, end, the turns (agent: text), the turn that ended it."""
    rows = [{"pair": pair_key(a, b), "opening": d.opening, "turns": len(d.said), "end": d.end,
             "dialogue": " | ".join(f"{AGENTS[t.agent]}: {t.text}" for t in d.said),
             "ending_turn": f"{AGENTS[d.ending.agent]}: {d.ending.text}" if d.ending else ""}
            for (a, b), dialogues in run.dialogues.items() for d in dialogues]
    return pd.DataFrame(rows, columns=["pair", "opening", "turns", "end", "dialogue", "ending_turn"])


def length_figure(run: BatchRun) -> Any:
    """A plotly figure: per pair (one colour each), the distribution of dialogue lengths (left) and the share of
    dialogues each rule ended (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=("Dialogue length (turns before the end)", "Why the dialogues ended"))
    lengths = list(range(run.max_turns + 1))
    for i, ((a, b), dialogues) in enumerate(run.dialogues.items()):
        color = _COLORS[i % len(_COLORS)]
        count = Counter(len(d.said) for d in dialogues)
        ends = Counter(d.end for d in dialogues)
        total = max(len(dialogues), 1)
        fig.add_trace(go.Bar(x=lengths, y=[count[n] for n in lengths], name=pair_key(a, b), marker_color=color,
                             legendgroup=str(i)), row=1, col=1)
        fig.add_trace(go.Bar(x=list(END_REASONS), y=[ends[r] / total for r in END_REASONS], name=pair_key(a, b),
                             marker_color=color, legendgroup=str(i), showlegend=False), row=1, col=2)
    fig.update_layout(barmode="group", height=380, margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.18))
    fig.update_xaxes(title_text="turns", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="dialogues", row=1, col=1)
    fig.update_yaxes(title_text="share of dialogues", range=[0, 1], row=1, col=2)
    return fig


_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")
