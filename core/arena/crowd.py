"""The scripted crowd: simulated voters with known Bradley–Terry strengths (for tests and ``bench/``).

    >>> crowd = Crowd({"greedy": 950, "beam": 1050}, tie_rate=0.12, seed=0)
    >>> crowd.judge("beam", "greedy")            # 'model_a' about 64% of the time, counting ties as half
    >>> crowd.p_beats("beam", "greedy")          # 1 / (1 + 10^(-100 / 400))
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping


class Crowd:
    """Voters who judge by Bradley–Terry: P(x beats y) = 1 / (1 + 10^((R_y - R_x) / 400)), with a tie or "both
    bad" ``tie_rate`` of the time and the wins scaled so that a voter's expected score (ties half) is still that
    probability. The k-th battle of a pair gets the k-th judgement of that pair's seeded stream, so the votes do
    not depend on how concurrent voters interleave."""

    def __init__(self, ratings: Mapping[str, float], *, tie_rate: float, seed: int) -> None:
        if not 0 <= tie_rate < 1:
            raise ValueError(f"tie_rate must be in [0, 1), got {tie_rate}")
        self.ratings, self.tie_rate, self.seed = dict(ratings), tie_rate, seed
        self._streams: dict[tuple[str, str], random.Random] = {}
        self._lock = threading.Lock()

    def p_beats(self, x: str, y: str) -> float:
        return 1.0 / (1.0 + 10.0 ** ((self.ratings[y] - self.ratings[x]) / 400.0))

    def judge(self, model_a: str, model_b: str) -> str:
        """The vote (one of WINNERS) on a battle of ``model_a`` (shown as A) against ``model_b``."""
        x, y = sorted((model_a, model_b))
        with self._lock:
            rng = self._streams.setdefault((x, y), random.Random(f"{self.seed}:{x}:{y}"))
            u_tie, u_win = rng.random(), rng.random()
        t = self.tie_rate
        if u_tie < t:
            return "tie" if u_win < 0.5 else "tie (bothbad)"
        x_wins = u_win < (self.p_beats(x, y) - t / 2) / (1 - t)
        return "model_a" if (model_a == x) == x_wins else "model_b"
