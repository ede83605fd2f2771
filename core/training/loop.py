"""What the MLE loop (core.training.train) and the RL loop (core.training.rl) share: a loop state saved in ``last/`` as
a typed dataclass, and why a run stopped as a type. Imports only core.training.runs.

    >>> @dataclass
    ... class MyState(SavedState):
    ...     step: int = 0
    >>> state = MyState.from_info(run.resume(model, optimizer))    # None (a fresh run) -> the defaults
    >>> pack_train_state(optimizer, state.info())                   # what last/train_state.json holds
    >>> stop = budget_stop(state.step, max_steps, clock, signals, max_minutes=5)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, fields
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from core.training.runs import StopRequest, TimeBudget

S = TypeVar("S", bound="SavedState")


class StopKind(Enum):
    """Why a training run (MLE or RL) stopped."""

    STEPS = "steps"  # its step budget
    TIME = "time"  # this invocation's time budget
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM, honoured between two steps
    EARLY_STOP = "early stop"  # MLE: ``patience`` validations without improvement
    FLUENCY = "fluency"  # RL: validation perplexity past ``ppl_tolerance`` x the start
    COLLAPSE = "collapse"  # RL: the collapse guard
    NOTHING = "nothing"  # the run had finished before: nothing to do


class Stop(NamedTuple):
    """Why a run stopped: ``kind`` for code (the summary's flags), ``text`` for people (its ``stopped``)."""

    kind: StopKind
    text: str


def budget_stop(step: int, max_steps: int, clock: TimeBudget, signals: StopRequest, *, max_minutes: float,
                agree: Callable[[bool], bool] = bool) -> Stop | None:
    """The stop that needs no validation after step ``step``: the step budget, else the time budget, else a signal
    (each checked only when the one before does not apply). ``agree`` makes every DDP rank give the same answer."""
    if step >= max_steps:
        return Stop(StopKind.STEPS, f"reached {max_steps} steps")
    if agree(clock.up()):
        return Stop(StopKind.TIME, f"time limit of {max_minutes} min")
    if agree(signals.requested):
        return Stop(StopKind.INTERRUPTED, f"interrupted ({signals.signal_name or 'signal'})")
    return None


class SavedState:
    """Base of a dataclass holding a training loop's state. It is saved as the ``info`` dict of
    ``last/train_state.json`` under its field names (core.checkpoint.pack_train_state adds the optimizer's
    param groups and the Python RNG beside them), so a run folder written when the state was a plain dict with
    the same keys resumes unchanged."""

    @classmethod
    def from_info(cls: type[S], info: dict[str, Any] | None) -> S:
        """The state of a saved ``info`` (None: a fresh run, all defaults); keys that are not fields are dropped."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (info or {}).items() if k in names})

    def info(self) -> dict[str, Any]:
        """The dict saved in ``last/``."""
        return asdict(self)  # type: ignore[call-overload]


class Throughput:
    """Tokens per second since the last reading."""

    def __init__(self) -> None:
        self.tokens, self.t0 = 0, time.time()

    def add(self, n: int) -> None:
        self.tokens += n

    def read(self) -> float:
        """The rate since the last reading (or the start); starts counting again."""
        now = time.time()
        rate = self.tokens / max(now - self.t0, 1e-9)
        self.tokens, self.t0 = 0, now
        return rate
