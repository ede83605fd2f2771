"""Arena: blind battles between two bots, votes kept in a real database, a Bradley–Terry leaderboard.

    >>> from core.arena import Arena, ArenaStore, resolve_db_url, compute_leaderboard
    >>> store = ArenaStore(resolve_db_url(None, None))          # ./arena_data/arena.sqlite3 (or /data/...)
    >>> arena = Arena(store, load_bots(), salt="per-deployment secret")
    >>> battle = arena.new_battle(session_id)                  # names stay on the server until the vote
    >>> arena.record_turn(battle.id, session_id, "hi", {"text": "hello"}, {"text": "hey"})
    >>> arena.vote(battle.id, session_id, "model_a").model_a   # now revealed
    >>> compute_leaderboard(store.votes_frame(), bootstrap=1000).table

Modules: :mod:`~core.arena.store` (tables, migrations), :mod:`~core.arena.battles` (the battle service),
:mod:`~core.arena.leaderboard` (Bradley–Terry with bootstrap CIs), :mod:`~core.arena.interchange` (FastChat's
clean-battle JSONL/CSV), :mod:`~core.arena.cli` (``chatbot-arena votes ...`` and ``chatbot-arena leaderboard``).
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
from core.arena.leaderboard import Leaderboard, compute_leaderboard
from core.arena.store import WINNERS, ArenaStore, resolve_db_url

__all__ = [
    "WINNERS", "AlreadyVoted", "Arena", "ArenaError", "ArenaStore", "Battle", "Leaderboard", "NotReady",
    "NotYourBattle", "RateLimited", "UnknownBattle", "VoteResult", "compute_leaderboard", "resolve_db_url",
]
