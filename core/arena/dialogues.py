"""Whole-dialogue battles (ACUTE-Eval, Li, Weston & Roller 2019): two self-chats from one opening, judged whole.

    >>> openings = Openings(bots["rl"])                  # the held-out openings (the test split's first turns)
    >>> opening = openings.draw(random.Random(0))
    >>> battle = arena.new_battle(session, kind="dialogue")
    >>> a, b = play_dialogues(arena, bots, battle, session, opening, "held_out")   # bot X with itself, Y with itself
    >>> arena.vote(battle.id, session, "model_a")        # QUESTION: who would you rather talk to for long?

Each self-chat is :func:`core.evaluation.evaluate.simulate` (two copies of one bot take turns from the opening, each
reading the conversation; it stops before a dull turn, before a speaker repeats its own previous turn, or at
``max_turns``): the same rules and code as the evaluation's simulated dialogues. Both are stored
(``Arena.record_dialogues``) before the page shows them, so a vote always refers to the dialogues the visitor read.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

QUESTION = "Who would you prefer to talk to for a long conversation?"  # ACUTE-Eval's engagingness question
DIALOGUE_TURNS = 8  # turns after the opening at most (the evaluation's simulated dialogues)
class Openings:
    """Draws from the held-out openings of ``bot`` (:func:`core.evaluation.evaluate.held_out_openings`: the first turns
    of the test split's conversations of its training corpus, read once)."""

    def __init__(self, bot: Any) -> None:
        self.bot = bot

    def draw(self, rng: random.Random, max_chars: int | None = None) -> str:
        """One held-out opening at random, of at most ``max_chars`` characters (the longest a page takes); ValueError
        when there is none (e.g. the corpus is not on this machine)."""
        from core.evaluation.evaluate import held_out_openings

        openings = [o for o in held_out_openings(self.bot) if max_chars is None or len(o) <= max_chars]
        if not openings:
            raise ValueError("this corpus has no held-out openings the bots can answer: type one")
        return rng.choice(openings)


def play_dialogues(arena: Any, bots: Mapping[str, Any], battle: Any, session_id: str, opening: str, source: str,
                   *, max_turns: int = DIALOGUE_TURNS) -> tuple[Any, Any]:
    """Bot A with itself and bot B with itself from ``opening`` (both at once), stored in the battle before they
    are returned. ``bots``: name -> a Bot, or anything that answers as one (the app passes its bots behind the
    batching scheduler). ValueError when a bot cannot answer the opening."""
    from core.evaluation.evaluate import answerable, simulate

    if not answerable(bots[battle.model_a], opening):
        raise ValueError("the opening leaves nothing to answer once cleaned: type some words")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(simulate, bots[name], [opening], max_turns=max_turns)
                   for name in (battle.model_a, battle.model_b)]
        dialogue_a, dialogue_b = (f.result()[0] for f in futures)
    arena.record_dialogues(battle.id, session_id, opening=opening, opening_source=source, dialogue_a=dialogue_a,
                           dialogue_b=dialogue_b, max_turns=max_turns)
    return dialogue_a, dialogue_b
