"""The battle service: draws two bots, keeps their names on the server until the vote, and takes one vote.

    >>> arena = Arena(ArenaStore(resolve_db_url(None, None)), load_bots(), salt=os.environ["ARENA_SESSION_SALT"])
    >>> battle = arena.new_battle(request.session_hash)          # a Battle: id + the two names (server side only)
    >>> # ... both bots answer, both replies are shown ...
    >>> arena.record_turn(battle.id, request.session_hash, message, {"text": a.text}, {"text": b.text})
    >>> result = arena.vote(battle.id, request.session_hash, "model_b")   # committed before it returns
    >>> result.model_a, result.settings_a                                  # revealed now

Battle kinds (:data:`core.arena.schema.KINDS`):
    single    the visitor talks to both bots (each reads its own side's conversation), then votes once
    per_turn  one vote per turn: ``new_battle(s, kind="per_turn")``, one ``record_turn``, ``vote``; then
              ``continue_series(battle.id, s)`` serves the next turn's battle (same bots, same sides) whose
              conversation so far is shared: every earlier turn with the chosen reply (the winner's; a tie's is
              drawn from the battle id) on both sides, which both bots read (ParlAI's per-turn pairwise evaluation)
    dialogue  ``new_battle(s, kind="dialogue")``, ``record_dialogues`` (each bot's self-chat from one opening, as
              :func:`core.evaluation.evaluate.simulate` makes them), ``vote`` (ACUTE-Eval: the visitor judges whole
              dialogues)

Pairs (``pairing``): ``balanced`` (default) serves every pair about equally often (the pair with the fewest
battles so far, ties broken at random; counts start from the store, so a restart keeps the balance); ``active``
draws by :class:`core.arena.active.ActivePairing` and stores each battle's inverse-propensity ``pair_weight``
(``ARENA_PAIRING=active chatbot-arena serve`` turns it on for the app). Which bot is A is random. A per-turn
series counts as one battle of its pair.

Refusals are :class:`ArenaError` subclasses whose message is meant for the visitor: unknown battle, a battle
served to another session, a second vote, a vote before both replies were shown, and more votes or battles per
minute than the limits (a sliding window per session, in this process).

Sessions: the store keeps ``sha256(salt + session id)`` only. Give every replica the same ``salt`` (for example
from $ARENA_SESSION_SALT) so a session's hash is the same on all of them; without one, a random salt is drawn
per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from core.arena.active import ActivePairing
from core.arena.store import KINDS, WINNERS, AlreadyVoted, ArenaError, ArenaStore, BattleRecord, UnknownBattle
from core.checkpoint import resolve

__all__ = ["PAIRINGS", "AlreadyVoted", "Arena", "ArenaError", "Battle", "NotReady", "NotYourBattle", "RateLimited",
           "UnknownBattle", "VoteResult", "checkpoint_hash", "continued_side"]

MAX_TEXT_CHARS = 10_000  # a stored message or reply is cut to this many characters
PAIRINGS = ("balanced", "active")
ENV_PAIRING = "ARENA_PAIRING"  # how a server started without code picks its pairing (default: balanced)


class NotYourBattle(ArenaError):
    """The battle was served to another session."""


class NotReady(ArenaError):
    """No complete turn yet: both replies must be shown before a vote."""


class RateLimited(ArenaError):
    """More votes or battles per minute than this session may make."""


@dataclass(frozen=True)
class Battle:
    """A served battle. The names stay on the server: never send this object to the page before the vote."""

    id: str
    model_a: str
    model_b: str
    kind: str = "single"
    series_id: str | None = None  # per_turn: the id of the series' first battle


@dataclass(frozen=True)
class VoteResult:
    """What the page may show after the vote."""

    battle_id: str
    winner: str
    model_a: str
    model_b: str
    label_a: str
    label_b: str
    settings_a: dict[str, Any]
    settings_b: dict[str, Any]
    checkpoint_a: str | None
    checkpoint_b: str | None
    turns: int
    tstamp: float
    kind: str = "single"
    continued: str | None = None  # per_turn: whose reply ("a" or "b") the shared conversation goes on with


def continued_side(battle_id: str, winner: str) -> str:
    """The side whose reply a per-turn battle's conversation goes on with: the winner's; after a tie or "both bad",
    a fair coin drawn from the battle id (so the server needs to store nothing more)."""
    if winner in ("model_a", "model_b"):
        return winner[-1]
    return "ab"[hashlib.sha256(battle_id.encode("utf-8")).digest()[0] % 2]


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` seconds per key (keys forgotten once their window is empty)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"a rate limit needs limit >= 1 and window_s > 0, got {limit} per {window_s}s")
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Record one event for ``key`` and return True, or return False (nothing recorded) when over the limit."""
        now = self.clock()
        with self._lock:
            if len(self._events) > 10_000:
                self._forget(now)
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True

    def _forget(self, now: float) -> None:
        for key in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window_s]:
            del self._events[key]


def checkpoint_hash(folder: str | Path | None) -> str | None:
    """First 16 hex digits of the sha256 of ``<folder>/model.safetensors`` (None without a folder or file)."""
    if folder is None:
        return None
    path = resolve(folder) / "model.safetensors"
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Entrant:
    name: str
    label: str
    settings: dict[str, Any]
    checkpoint: str | None


class Arena:
    """Blind battles over ``bots`` (a name -> Bot mapping, or plain names for bots served elsewhere), stored in
    ``store``. Rate limits: ``max_votes`` votes and ``max_battles`` new battles per session per ``window_s``
    seconds (a per-turn series' next battle counts as a vote's sequel, not as a new battle); ``max_turns``
    messages per battle. ``pairing``: ``balanced`` or ``active`` (see the module docstring; default: $ARENA_PAIRING,
    else balanced)."""

    def __init__(self, store: ArenaStore, bots: Mapping[str, Any] | Sequence[str], *, salt: str | bytes | None = None,
                 rng: random.Random | int | None = None, max_votes: int = 20, max_battles: int = 30,
                 window_s: float = 60.0, max_turns: int = 20, clock: Callable[[], float] = time.monotonic,
                 pairing: str | None = None) -> None:
        pairing = pairing or os.environ.get(ENV_PAIRING) or "balanced"
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing (or ${ENV_PAIRING}) must be one of {list(PAIRINGS)}, got {pairing!r}")
        self.store = store
        self.entrants = self._entrants(bots)
        self.names = list(self.entrants)
        if isinstance(salt, str):
            salt = salt.encode("utf-8")
        self._salt = salt or secrets.token_bytes(16)
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.max_turns = max_turns
        self.votes_limit = SlidingWindow(max_votes, window_s, clock)
        self.battles_limit = SlidingWindow(max_battles, window_s, clock)
        self._lock = threading.Lock()
        served = store.pair_counts()
        self._pairs = {pair: served.get(pair, 0) for pair in combinations(sorted(self.names), 2)}
        self.pairing = pairing
        self._active = ActivePairing(self.names, store.votes_frame) if pairing == "active" and \
            len(self.names) >= 2 else None

    @staticmethod
    def _entrants(bots: Mapping[str, Any] | Sequence[str]) -> dict[str, _Entrant]:
        if isinstance(bots, Mapping):
            hashes: dict[Path, str | None] = {}
            out = {}
            for name, bot in bots.items():
                folder = getattr(bot, "checkpoint", None)
                if folder is not None and Path(folder) not in hashes:
                    hashes[Path(folder)] = checkpoint_hash(folder)
                defaults = getattr(bot, "defaults", None)
                out[name] = _Entrant(name, getattr(bot, "label", name),
                                     dataclasses.asdict(defaults) if dataclasses.is_dataclass(defaults) else {},
                                     hashes.get(Path(folder)) if folder is not None else None)
            return out
        names = list(bots)
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"bot names must be distinct non-empty strings, got {names}")
        return {n: _Entrant(n, n, {}, None) for n in names}

    def session_hash(self, session_id: str) -> str:
        """The salted hash stored in place of the session id."""
        if not isinstance(session_id, str) or not session_id:
            raise ArenaError("this page has no session: reload it and start a new battle")
        return hashlib.sha256(self._salt + session_id.encode("utf-8")).hexdigest()

    # ---- battles

    def new_battle(self, session_id: str, kind: str = "single") -> Battle:
        """Draw a pair (random sides), store the battle of ``kind``, return it."""
        session = self.session_hash(session_id)
        if kind not in KINDS:
            raise ArenaError(f"a battle is one of {', '.join(KINDS)}; got {str(kind)[:40]!r}")
        if len(self.names) < 2:
            raise ArenaError(f"the arena needs at least two bots; this server has {len(self.names)}")
        if not self.battles_limit.allow(session):
            raise RateLimited(f"slow down: at most {self.battles_limit.limit} new battles per "
                              f"{_per(self.battles_limit.window_s)}")
        weight = None
        if self._active is not None:
            pair, weight = self._active.draw(self.rng)
        with self._lock:
            if self._active is None:
                fewest = min(self._pairs.values())
                pair = self.rng.choice(sorted(p for p, n in self._pairs.items() if n == fewest))
            self._pairs[pair] += 1
            a, b = pair if self.rng.random() < 0.5 else pair[::-1]
        battle = Battle(uuid.uuid4().hex, a, b, kind)
        self._store_battle(battle, session, pair_weight=weight)
        return battle

    def continue_series(self, battle_id: str, session_id: str) -> Battle:
        """The next battle of a voted per-turn battle: the same bots on the same sides, its conversation so far the
        old one's turns with the chosen reply on both sides (see :func:`continued_side`)."""
        rec = self._own(battle_id, session_id)
        if rec.kind != "per_turn":
            raise ArenaError("only a per-turn battle goes on turn by turn: start a new battle")
        if rec.winner is None:
            raise NotReady("pick the better reply first: each turn's vote chooses how the conversation goes on")
        turns = self.store.turns_of(rec.id)
        if len(turns) >= self.max_turns:
            raise ArenaError(f"a battle has at most {self.max_turns} messages: start a new battle")
        chosen = turns[-1][f"reply_{continued_side(rec.id, rec.winner)}"]
        context = [(t["message"], t["reply_a"]) for t in turns[:-1]] + [(turns[-1]["message"], chosen)]
        battle = Battle(uuid.uuid4().hex, rec.model_a, rec.model_b, "per_turn", rec.series_id or rec.id)
        self._store_battle(battle, rec.session_hash, pair_weight=rec.pair_weight, context=context)
        return battle

    def _store_battle(self, battle: Battle, session: str, *, pair_weight: float | None,
                      context: Sequence[tuple[str, str]] = ()) -> None:
        ea, eb = self.entrants[battle.model_a], self.entrants[battle.model_b]
        self.store.add_battle(id=battle.id, session_hash=session, model_a=battle.model_a, model_b=battle.model_b,
                              checkpoint_a=ea.checkpoint, checkpoint_b=eb.checkpoint, settings_a=ea.settings,
                              settings_b=eb.settings, anony=True, source="arena", kind=battle.kind,
                              series_id=battle.series_id, pair_weight=pair_weight, context=context)

    def battle(self, battle_id: str, session_id: str) -> Battle:
        """The battle, if this session was served it (for the page's server side: it names the bots)."""
        rec = self._own(battle_id, session_id)
        return Battle(rec.id, rec.model_a, rec.model_b, rec.kind, rec.series_id)

    def record_turn(self, battle_id: str, session_id: str, message: str, reply_a: Mapping[str, Any],
                    reply_b: Mapping[str, Any]) -> int:
        """Store one complete turn (call it once both replies were shown); return the turn's index. A reply is a
        dict with at least ``text`` (other keys, e.g. score and latency, are kept as its details)."""
        rec = self._own(battle_id, session_id)
        if rec.winner is not None:
            raise AlreadyVoted("this battle is over (its vote is in): start a new battle")
        if rec.kind == "dialogue":
            raise ArenaError("a whole-dialogue battle takes no messages: its bots talk with themselves")
        if rec.kind == "per_turn" and self._judged_turn(rec):
            raise NotReady("pick the better reply first: a per-turn battle has one vote per turn")
        if rec.turns >= self.max_turns:
            raise ArenaError(f"a battle has at most {self.max_turns} messages: vote, then start a new battle")
        for side, reply in (("A", reply_a), ("B", reply_b)):
            if not isinstance(reply, Mapping) or not isinstance(reply.get("text"), str):
                raise ValueError(f"reply {side} must be a dict with a 'text' string, got {reply!r:.80}")
        if not isinstance(message, str):
            raise ValueError(f"message must be a string, got {type(message).__name__}")
        return self.store.add_turn(
            battle_id, message=message[-MAX_TEXT_CHARS:], reply_a=reply_a["text"][:MAX_TEXT_CHARS],
            reply_b=reply_b["text"][:MAX_TEXT_CHARS],
            detail_a={k: v for k, v in reply_a.items() if k != "text"},
            detail_b={k: v for k, v in reply_b.items() if k != "text"})

    def record_dialogues(self, battle_id: str, session_id: str, *, opening: str, opening_source: str,
                         dialogue_a: Any, dialogue_b: Any, max_turns: int) -> int:
        """Store a 'dialogue' battle's two self-chats (objects with ``turns``, the opening first, and ``end``, as
        :func:`core.evaluation.evaluate.simulate` returns); return the number of turns after the opening of the
        longer one."""
        rec = self._own(battle_id, session_id)
        if rec.kind != "dialogue":
            raise ArenaError("only a whole-dialogue battle stores dialogues: start a new battle")
        if rec.winner is not None:
            raise AlreadyVoted("this battle is over (its vote is in): start a new battle")
        if not isinstance(opening, str) or not opening.strip():
            raise ValueError("the opening must be a non-empty string")
        sides = []
        for side, d in (("A", dialogue_a), ("B", dialogue_b)):
            turns, end = getattr(d, "turns", None), getattr(d, "end", None)
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns) \
                    or not isinstance(end, str):
                raise ValueError(f"dialogue {side} must have turns (strings, the opening first) and an end reason")
            if turns[0] != opening:
                raise ValueError(f"dialogue {side} does not start with the battle's opening")
            sides.append(([t[:MAX_TEXT_CHARS] for t in turns[1:]], end[:16]))
        (turns_a, end_a), (turns_b, end_b) = sides
        self.store.add_dialogues(battle_id, opening=opening[-MAX_TEXT_CHARS:], opening_source=opening_source,
                                 turns_a=turns_a, turns_b=turns_b, end_a=end_a, end_b=end_b, max_turns=max_turns)
        return max(len(turns_a), len(turns_b))

    def _judged_turn(self, rec: BattleRecord) -> bool:
        """Whether a per-turn battle has its judged turn (a turn that is not the shared conversation)."""
        return any(not t["detail_a"].get("shared") for t in self.store.turns_of(rec.id))

    def _ready(self, rec: BattleRecord) -> int:
        """The vote's number of turns; NotReady while there is nothing to judge yet."""
        if rec.kind == "dialogue":
            dialogue = self.store.dialogue_of(rec.id)
            if dialogue is None:
                raise NotReady("votes are possible once both dialogues are shown: start the dialogues first")
            return max(len(dialogue["turns_a"]), len(dialogue["turns_b"]))
        if rec.turns == 0 or (rec.kind == "per_turn" and not self._judged_turn(rec)):
            raise NotReady("votes are possible once both replies are shown: send a message first")
        return rec.turns

    def vote(self, battle_id: str, session_id: str, winner: str) -> VoteResult:
        """Store the battle's vote (committed before returning) and reveal the two bots."""
        if winner not in WINNERS:
            raise ArenaError(f"a vote is one of {', '.join(WINNERS)}; got {str(winner)[:40]!r}")
        rec = self._own(battle_id, session_id)
        if rec.winner is not None:
            raise AlreadyVoted("this battle already has its vote: start a new battle")
        n_turns = self._ready(rec)
        if not self.votes_limit.allow(rec.session_hash):
            raise RateLimited(f"slow down: at most {self.votes_limit.limit} votes per "
                              f"{_per(self.votes_limit.window_s)}")
        tstamp = self.store.add_vote(battle_id, winner=winner, session_hash=rec.session_hash, turns=n_turns,
                                     judge=f"arena_user_{rec.session_hash[:16]}")
        return self._result(rec, winner, n_turns, tstamp)

    def reveal(self, battle_id: str, session_id: str) -> VoteResult:
        """The names and settings of a voted battle of this session (a per-turn series reveals its bots when the
        visitor ends it: every battle of the series has the same two); NotReady before its vote."""
        rec = self._own(battle_id, session_id)
        if rec.winner is None:
            raise NotReady("the bots are revealed once this turn's vote is in: vote first")
        return self._result(rec, rec.winner, rec.turns, rec.created)

    def _result(self, rec: BattleRecord, winner: str, n_turns: int, tstamp: float) -> VoteResult:
        label = {n: e.label for n, e in self.entrants.items()}
        return VoteResult(battle_id=rec.id, winner=winner, model_a=rec.model_a, model_b=rec.model_b,
                          label_a=label.get(rec.model_a, rec.model_a), label_b=label.get(rec.model_b, rec.model_b),
                          settings_a=rec.settings_a, settings_b=rec.settings_b, checkpoint_a=rec.checkpoint_a,
                          checkpoint_b=rec.checkpoint_b, turns=n_turns, tstamp=tstamp, kind=rec.kind,
                          continued=continued_side(rec.id, winner) if rec.kind == "per_turn" else None)

    def _own(self, battle_id: str, session_id: str) -> BattleRecord:
        session = self.session_hash(session_id)
        rec = self.store.battle(battle_id) if isinstance(battle_id, str) and battle_id else None
        if rec is None or rec.source != "arena":
            raise UnknownBattle("this battle does not exist on this server: start a new battle")
        if rec.session_hash != session:
            raise NotYourBattle("this battle was served to another visitor: start a new battle")
        return rec


def _per(window_s: float) -> str:
    return "minute" if window_s == 60 else f"{window_s:g} seconds"
