"""The leaderboard: Bradley–Terry ratings with 95% bootstrap intervals, rank by interval, pairwise matrices.

    >>> board = compute_leaderboard(store.votes_frame(), bootstrap=1000, seed=0)
    >>> board.table            # bot, rating, ci_low, ci_high, rank, votes, wins, losses, ties, both_bad
    >>> board.win_rate         # row bot's share of points against the column bot (ties count half)
    >>> print(board.to_markdown())

Model: P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)). The ratings maximise the likelihood of the votes, with a
tie (``tie`` or ``tie (bothbad)``) counted as half a win for each side; they are fitted as FastChat's
``compute_mle_elo`` does, by an unpenalised logistic regression (scikit-learn) on one feature per bot (+ln 10 for
side A, -ln 10 for side B), and put on the Elo-like scale ``R = 400 * beta``, anchored so that the mean rating of
the bots is 1000 (the initial rating). A bot that won or lost every battle has no finite maximum-likelihood
rating; its rating is then large and its interval wide, which is the honest answer for so few votes.

95% intervals: the 2.5th and 97.5th percentiles of the ratings refitted on ``bootstrap`` resamples of the
battles (drawn with replacement, seeded). Rank: 1 + the number of bots whose lower bound is above this bot's
upper bound, so bots whose intervals overlap share a rank.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.arena.store import WINNERS

SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0
TABLE_COLUMNS = ["bot", "rating", "ci_low", "ci_high", "rank", "votes", "wins", "losses", "ties", "both_bad"]
EMPTY_NOTE = "No votes yet: the leaderboard fills as people vote in the Arena (no votes are made up)."


@dataclass
class Leaderboard:
    table: pd.DataFrame  # TABLE_COLUMNS, best rank first
    win_rate: pd.DataFrame  # bots x bots, in table order; NaN where two bots never met
    battle_count: pd.DataFrame  # bots x bots, symmetric, 0 on the diagonal
    n_votes: int
    bootstrap: int
    seed: int
    note: str
    dropped: dict[str, int] = field(default_factory=dict)  # votes left out, by reason

    def to_markdown(self) -> str:
        """The table as GitHub markdown, with the note under it."""
        if self.table.empty:
            return self.note
        head = ["rank", "bot", "rating", "95% CI", "votes", "wins", "losses", "ties", "both bad"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.table.itertuples():
            ci = "n/a" if math.isnan(r.ci_low) else f"{r.ci_low:.0f} to {r.ci_high:.0f}"
            lines.append(f"| {r.rank} | {r.bot} | {r.rating:.0f} | {ci} | {r.votes} | {r.wins} | {r.losses} | "
                         f"{r.ties} | {r.both_bad} |")
        return "\n".join(lines) + f"\n\n{self.note}"

    def to_csv(self) -> str:
        return self.table.to_csv(index=False, float_format="%.2f")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN -> null)."""
        def clean(x: Any) -> Any:
            if isinstance(x, (float, np.floating)):
                return None if math.isnan(x) else round(float(x), 2)
            return x.item() if isinstance(x, np.generic) else x

        def matrix(m: pd.DataFrame) -> dict[str, dict[str, Any]]:
            return {str(i): {str(j): clean(m.loc[i, j]) for j in m.columns} for i in m.index}

        return {"leaderboard": [{k: clean(v) for k, v in row.items()} for row in self.table.to_dict("records")],
                "n_votes": self.n_votes, "bootstrap": self.bootstrap, "seed": self.seed, "note": self.note,
                "dropped": self.dropped, "win_rate": matrix(self.win_rate),
                "battle_count": matrix(self.battle_count)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ----------------------------------------------------------------------------- fitting


def fit_bradley_terry(points: np.ndarray) -> np.ndarray:
    """Ratings (p,) from ``points`` (p, p): points[i, j] = wins of i over j + half their ties. Bots without a
    battle get NaN; the others have mean INIT_RATING."""
    from sklearn.linear_model import LogisticRegression

    p = points.shape[0]
    games = points + points.T  # (p, p)
    i, j = np.nonzero(np.triu(games, k=1))  # one row pair per pair of bots that met
    ratings = np.full(p, np.nan)
    if len(i) == 0:
        return ratings
    m = len(i)
    X = np.zeros((2 * m, p))  # (2m, p): the same features twice, once labelled "i won", once "j won"
    X[np.arange(m), i] = X[m + np.arange(m), i] = math.log(BASE)
    X[np.arange(m), j] = X[m + np.arange(m), j] = -math.log(BASE)
    y = np.r_[np.ones(m), np.zeros(m)]
    w = np.r_[points[i, j], points[j, i]]
    lr = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-8, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # separable data (a bot that won everything) does not converge: see above
        lr.fit(X, y, sample_weight=w)
    met = games.sum(axis=1) > 0
    beta = lr.coef_[0]  # (p,)
    ratings[met] = SCALE * (beta[met] - beta[met].mean()) + INIT_RATING
    return ratings


def rank_by_ci(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    """rank_i = 1 + #{j : ci_low[j] > ci_high[i]}."""
    return 1 + (ci_low[None, :] > ci_high[:, None]).sum(axis=1)


def _outcomes(votes: pd.DataFrame, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct battle outcomes and their counts: rows (index of A, index of B, 0 A won | 1 B won | 2 tie)."""
    idx = {m: k for k, m in enumerate(models)}
    kind = votes["winner"].map({"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}).to_numpy()
    rows = np.stack([votes["model_a"].map(idx).to_numpy(), votes["model_b"].map(idx).to_numpy(), kind], axis=1)
    cats, counts = np.unique(rows.astype(np.int64), axis=0, return_counts=True)
    return cats, counts


def _points(cats: np.ndarray, counts: np.ndarray, p: int) -> np.ndarray:
    """(p, p) points matrix of the battles ``counts`` times each outcome of ``cats``."""
    pts = np.zeros((p, p))
    a, b, kind = cats[:, 0], cats[:, 1], cats[:, 2]
    np.add.at(pts, (a, b), counts * ((kind == 0) + 0.5 * (kind == 2)))
    np.add.at(pts, (b, a), counts * ((kind == 1) + 0.5 * (kind == 2)))
    return pts


# ----------------------------------------------------------------------------- the leaderboard


def compute_leaderboard(votes: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0) -> Leaderboard:
    """The leaderboard of ``votes`` (a frame with model_a, model_b, winner: e.g. ``ArenaStore.votes_frame()`` or
    :func:`core.arena.interchange.read_votes`). ``bootstrap=0``: no intervals (rank by rating alone)."""
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    missing = {"model_a", "model_b", "winner"} - set(votes.columns)
    if missing:
        raise ValueError(f"the votes need columns model_a, model_b and winner; missing {sorted(missing)}")
    dropped = {}
    bad = ~votes["winner"].isin(WINNERS)
    if bad.any():
        dropped["unknown winner"] = int(bad.sum())
    same = votes["model_a"] == votes["model_b"]
    if same.any():
        dropped["a bot against itself"] = int(same.sum())
    votes = votes[~bad & ~same]
    models = sorted(set(votes["model_a"]) | set(votes["model_b"]))
    p, n = len(models), len(votes)
    if n == 0:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        return Leaderboard(empty, pd.DataFrame(), pd.DataFrame(), 0, bootstrap, seed, EMPTY_NOTE, dropped)

    # 1. maximum-likelihood ratings on all votes
    cats, counts = _outcomes(votes, models)
    pts = _points(cats, counts, p)  # (p, p)
    rating = fit_bradley_terry(pts)

    # 2. bootstrap: resampling n battles with replacement = multinomial counts over the distinct outcomes
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, counts / n, size=bootstrap)  # (bootstrap, distinct outcomes)
        boot = np.stack([fit_bradley_terry(_points(cats, d, p)) for d in draws])  # (bootstrap, p)
        ci_low, ci_high = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
        rank = rank_by_ci(ci_low, ci_high)
    else:
        ci_low = ci_high = np.full(p, np.nan)
        rank = rank_by_ci(rating, rating)

    # 3. counts per bot and the pairwise matrices
    games = pts + pts.T  # (p, p) battles between i and j
    a, b = votes["model_a"], votes["model_b"]
    w = votes["winner"]
    per_bot = {
        "votes": games.sum(axis=1).astype(int),
        "wins": [int(((a == m) & (w == "model_a")).sum() + ((b == m) & (w == "model_b")).sum()) for m in models],
        "losses": [int(((a == m) & (w == "model_b")).sum() + ((b == m) & (w == "model_a")).sum()) for m in models],
        "ties": [int(((a == m) | (b == m)).mul(w == "tie").sum()) for m in models],
        "both_bad": [int(((a == m) | (b == m)).mul(w == "tie (bothbad)").sum()) for m in models],
    }
    table = pd.DataFrame({"bot": models, "rating": rating, "ci_low": ci_low, "ci_high": ci_high, "rank": rank,
                          **per_bot})[TABLE_COLUMNS]
    table = table.sort_values(["rank", "rating"], ascending=[True, False]).reset_index(drop=True)
    order = [models.index(m) for m in table["bot"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, pts / games, np.nan)
    win_rate = pd.DataFrame(rate[np.ix_(order, order)], index=table["bot"], columns=table["bot"])
    battle_count = pd.DataFrame(games[np.ix_(order, order)].astype(int), index=table["bot"], columns=table["bot"])

    ci = f"95% intervals from {bootstrap} bootstrap resamples of the battles (seed {seed})" if bootstrap else \
        "no intervals (bootstrap 0): rank by rating alone"
    note = (f"{n} votes, {p} bots; Bradley–Terry ratings (mean 1000, 400 points = 10:1 odds); {ci}; "
            "ties and both-bad count half a win for each side.")
    if dropped:
        note += " Left out: " + ", ".join(f"{k} ({v})" for k, v in dropped.items()) + "."
    return Leaderboard(table, win_rate, battle_count, n, bootstrap, seed, note, dropped)
