"""Active pairing (Chatbot Arena paper, section 5.2): draw the next pair where one more vote shrinks its interval most.

    >>> probs = pair_probabilities(matchups, outcomes, weights, n_bots)   # (pairs,) one per pair of PAIRS(n_bots)
    >>> pairing = ActivePairing(["greedy", "beam", "antilm", "rl"], votes_of=store.votes_frame)
    >>> (a, b), weight = pairing.draw(rng)                # weight = 1 / (P(pair) * number of pairs), stored

The paper draws pair a with probability proportional to sqrt(S_a / n_a) - sqrt(S_a / (n_a + 1)): how much one more
vote on a narrows the interval of its win-matrix entry theta_a = P(i beats j). Here that interval comes from the
Bradley–Terry fit of all votes so far: the variance of the rating difference b_i - b_j is v_a = x_a^T I^-1 x_a
(I the Fisher information, so votes on other pairs that connect i and j count too; a weak prior of ``PRIOR`` keeps
a pair without votes finite and first in line), theta_a's standard error is s_a (1 - s_a) ln(10) sqrt(v_a) (s_a the
fitted theta_a), and one more vote on a adds h_a = s_a (1 - s_a) ln(10)^2 to the information along a:

    v_a' = v_a / (1 + h_a v_a),   P(a) ~ s_a (1 - s_a) (sqrt(v_a) - sqrt(v_a'))

mixed with ``floor`` of uniform pairing, so every pair keeps P >= floor / number of pairs. Close pairs (theta near
1/2, the ones a ranking hinges on) have the widest win-matrix intervals, so they are drawn more. In the leaderboard's
fit each vote then weighs 1 / (P(pair) * number of pairs) (inverse propensity, 1 under uniform pairing), so the
estimate targets what uniform pairing would give, however the pairs were drawn.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.arena.bt import LN_BASE, fisher_information, fit_bt

FLOOR = 0.1  # share of uniform pairing mixed in (bounds each vote's weight by 1 / FLOOR)
PRIOR = 0.1  # Fisher information of the weak prior on each rating (about half of one vote's)
REFRESH = 20  # ActivePairing refits after this many draws


def pairs_of(p: int) -> list[tuple[int, int]]:
    """The unordered pairs (i < j) of p bots, in the order of :func:`pair_probabilities`."""
    return list(combinations(range(p), 2))


def pair_probabilities(matchups: np.ndarray, outcomes: np.ndarray, weights: np.ndarray | None, p: int, *,
                       floor: float = FLOOR) -> np.ndarray:
    """P(next pair) for every pair of :func:`pairs_of` (p) given the votes so far (matchups (n, 2), outcomes (n,),
    inverse-propensity weights (n,) or None)."""
    pairs = np.array(pairs_of(p))  # (m, 2)
    m = len(pairs)
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    matchups = np.asarray(matchups, dtype=np.int64).reshape(-1, 2)
    if len(matchups) == 0:
        return np.full(m, 1.0 / m)
    with threadpool_limits(1):  # tiny matrices: BLAS threads only add overhead
        b = np.nan_to_num(fit_bt(matchups, outcomes, weights, p).natural)  # (p,)
        info = fisher_information(matchups, np.ones(len(matchups)), b) + PRIOR * np.eye(p)  # actual votes' info
        cov = np.linalg.inv(info)  # (p, p)
    x = np.zeros((m, p))
    x[np.arange(m), pairs[:, 0]], x[np.arange(m), pairs[:, 1]] = 1.0, -1.0
    v = np.einsum("mi,ij,mj->m", x, cov, x)  # (m,) variance of b_i - b_j
    s = 1.0 / (1.0 + np.exp(-LN_BASE * (b[pairs[:, 0]] - b[pairs[:, 1]])))
    h = s * (1 - s) * LN_BASE ** 2  # information one more vote on the pair adds along x
    shrink = s * (1 - s) * (np.sqrt(v) - np.sqrt(v / (1 + h * v)))  # (m,) of theta_a's standard error
    return (1 - floor) * shrink / shrink.sum() + floor / m


def outcomes_of(winners: Sequence[str]) -> np.ndarray:
    """1 for model_a, 0 for model_b, 0.5 for a tie or both bad."""
    return np.array([{"model_a": 1.0, "model_b": 0.0}.get(w, 0.5) for w in winners])


class ActivePairing:
    """Draws pairs of ``names`` by :func:`pair_probabilities` over the votes ``votes_of()`` returns (a frame with
    model_a, model_b, winner and optionally pair_weight), refitted every ``refresh`` draws; thread-safe."""

    def __init__(self, names: Sequence[str], votes_of: Callable[[], pd.DataFrame], *, refresh: int = REFRESH,
                 floor: float = FLOOR) -> None:
        if len(names) < 2:
            raise ValueError(f"active pairing needs at least two bots, got {len(names)}")
        self.names = sorted(names)
        self.pairs = [(self.names[i], self.names[j]) for i, j in pairs_of(len(self.names))]
        self.votes_of, self.refresh, self.floor = votes_of, refresh, floor
        self._probs: np.ndarray | None = None
        self._draws = 0
        self._lock = threading.Lock()

    def probabilities(self) -> dict[tuple[str, str], float]:
        """The current P(pair) of every pair (refitted now)."""
        with self._lock:
            self._probs = self._fit()
            return dict(zip(self.pairs, self._probs.tolist()))

    def _fit(self) -> np.ndarray:
        votes = self.votes_of()
        idx = {n: k for k, n in enumerate(self.names)}
        votes = votes[votes["model_a"].isin(idx) & votes["model_b"].isin(idx) & (votes["model_a"] != votes["model_b"])]
        matchups = np.stack([votes["model_a"].map(idx).to_numpy(), votes["model_b"].map(idx).to_numpy()], axis=1)
        weights = None
        if "pair_weight" in votes:
            weights = pd.to_numeric(votes["pair_weight"], errors="coerce").fillna(1.0).to_numpy()
        return pair_probabilities(matchups, outcomes_of(votes["winner"].tolist()), weights, len(self.names),
                                  floor=self.floor)

    def draw(self, rng: random.Random) -> tuple[tuple[str, str], float]:
        """(the pair, sorted; its inverse-propensity weight 1 / (P(pair) * number of pairs))."""
        with self._lock:
            if self._probs is None or self._draws % self.refresh == 0:
                self._probs = self._fit()
            self._draws += 1
            k = rng.choices(range(len(self.pairs)), weights=self._probs.tolist())[0]
            return self.pairs[k], 1.0 / (float(self._probs[k]) * len(self.pairs))
