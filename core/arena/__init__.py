"""Arena: blind battles between two bots, votes kept in a real database, a Bradley–Terry leaderboard.

    >>> from core.arena import Arena, ArenaStore, resolve_db_url, compute_leaderboard
    >>> store = ArenaStore(resolve_db_url(None, None))          # ./arena_data/arena.sqlite3 (or /data/...)
    >>> arena = Arena(store, load_bots(), salt="per-deployment secret")
    >>> battle = arena.new_battle(session_id)                  # names stay on the server until the vote
    >>> arena.record_turn(battle.id, session_id, "hi", {"text": "hello"}, {"text": "hey"})
    >>> arena.vote(battle.id, session_id, "model_a").model_a   # now revealed
    >>> compute_leaderboard(store.votes_frame(), bootstrap=1000).table
    >>> compute_leaderboard(votes_with_style(store), category="dialogue", style_control=True).table

Modules: :mod:`~core.arena.schema` (tables, migrations), :mod:`~core.arena.store` (the store),
:mod:`~core.arena.battles` (the battle service: single, per-turn and whole-dialogue battles),
:mod:`~core.arena.dialogues` (ACUTE-style battles: openings, both self-chats), :mod:`~core.arena.active` (active
pairing), :mod:`~core.arena.bt` (the Bradley–Terry fit), :mod:`~core.arena.style` (style covariates),
:mod:`~core.arena.leaderboard` (categories, style control, bootstrap CIs), :mod:`~core.arena.interchange`
(FastChat's clean-battle JSONL/CSV), :mod:`~core.arena.crowd` (scripted voters), :mod:`~core.arena.cli`
(``chatbot-arena votes ...`` and ``chatbot-arena leaderboard``). The package imports only core and its libraries
(never gradio).
"""

from core.arena.battles import (
    AlreadyVoted,
    Arena,
    ArenaError,
    Battle,
    NotReady,
    NotYourBattle,
    RateLimited,
    UnknownBattle,
    VoteResult,
)
from core.arena.interchange import votes_with_style
from core.arena.leaderboard import CATEGORIES, Leaderboard, compute_leaderboard
from core.arena.store import KINDS, WINNERS, ArenaStore, resolve_db_url

__all__ = [
    "CATEGORIES", "KINDS", "WINNERS", "AlreadyVoted", "Arena", "ArenaError", "ArenaStore", "Battle", "Leaderboard",
    "NotReady", "NotYourBattle", "RateLimited", "UnknownBattle", "VoteResult", "compute_leaderboard",
    "resolve_db_url", "votes_with_style",
]
