"""The leaderboard: Bradley–Terry ratings with 95% bootstrap intervals, rank by interval, categories, style control.

    >>> board = compute_leaderboard(store.votes_frame(), bootstrap=1000, seed=0)
    >>> board.table            # bot, rating, ci_low, ci_high, rank, votes, wins, losses, ties, both_bad, provisional
    >>> board = compute_leaderboard(votes_with_style(store), category="dialogue", style_control=True)
    >>> board.table            # ... plus sc_rating, sc_ci_low, sc_ci_high, sc_rank (the style-controlled ranking)
    >>> board.style            # {"length": {"beta", "ci_low", "ci_high", "points"}, "question": {...}}
    >>> print(board.to_markdown())

Model: P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)), fitted by maximum likelihood (:func:`core.arena.bt.fit_bt`)
with a tie (``tie`` or ``tie (bothbad)``) counted as half a win for each side, on the Elo-like scale ``R = 400 b``
anchored so that the mean rating of the bots is 1000. Each vote weighs its ``pair_weight`` (1 / (P(pair) * number of
pairs) for an actively drawn pair, see :mod:`core.arena.active`; 1 when absent), so the estimate targets uniform
pairing. The rating shown is the fit on all the category's votes; its 95% interval is the 2.5th and 97.5th
percentiles of the ratings refitted on ``bootstrap`` resamples of the votes (drawn with replacement, seeded). Rank:
1 + the number of bots whose lower bound is above this bot's upper bound, so bots whose intervals overlap share a
rank. A bot with fewer than ``min_votes`` votes in the category is marked provisional.

Style control (``style_control=True``): the same fit with the standardised style covariates of
:mod:`core.arena.style` (reply length in words, share of replies ending with a question), logit P(A beats B) =
ln 10 (b_A - b_B) + sum_k beta_k z_k, as Chatbot Arena does; the bots' ratings are then what is left once style is
accounted for, and beta_k (with its bootstrap interval) is what style bought. Both rankings are in the table.

Categories (``category``): see :data:`CATEGORIES`. A frame without ``kind`` counts as single battles, one without
``turn`` as one turn each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.arena.bt import LN_BASE, SCALE, fit_bt
from core.arena.store import WINNERS
from core.arena.style import LABELS, style_covariates

TABLE_COLUMNS = ["bot", "rating", "ci_low", "ci_high", "rank", "votes", "wins", "losses", "ties", "both_bad",
                 "provisional"]
SC_COLUMNS = ["sc_rating", "sc_ci_low", "sc_ci_high", "sc_rank"]  # with style control
EMPTY_NOTE = "No votes yet: the leaderboard fills as people vote in the Arena (no votes are made up)."
MIN_VOTES = 30  # fewer votes than this in the category: the bot's rating is provisional


def _kind(v: pd.DataFrame) -> pd.Series:
    return v["kind"].fillna("single") if "kind" in v else pd.Series("single", index=v.index)


def _turn(v: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(v["turn"], errors="coerce").fillna(1) if "turn" in v else pd.Series(1, index=v.index)


CATEGORIES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "all": ("every vote", lambda v: pd.Series(True, index=v.index)),
    "single_turn": ("single-turn battles", lambda v: (_kind(v) == "single") & (_turn(v) == 1)),
    "multi_turn": ("battles of 3+ turns", lambda v: (_kind(v) == "single") & (_turn(v) >= 3)),
    "per_turn": ("per-turn votes", lambda v: _kind(v) == "per_turn"),
    "dialogue": ("whole-dialogue votes", lambda v: _kind(v) == "dialogue"),
}


@dataclass
class Leaderboard:
    table: pd.DataFrame  # TABLE_COLUMNS (+ SC_COLUMNS with style control), best rank first
    win_rate: pd.DataFrame  # bots x bots, in table order; NaN where two bots never met
    battle_count: pd.DataFrame  # bots x bots, symmetric, 0 on the diagonal
    n_votes: int
    bootstrap: int
    seed: int
    note: str
    dropped: dict[str, int] = field(default_factory=dict)  # votes left out, by reason
    category: str = "all"
    style_control: bool = False
    style: dict[str, dict[str, float]] = field(default_factory=dict)  # feature -> beta, ci_low, ci_high, points
    min_votes: int = MIN_VOTES

    def to_markdown(self) -> str:
        """The table as GitHub markdown, with the note under it."""
        if self.table.empty:
            return self.note
        sc = self.style_control
        head = ["rank", "bot", "rating", "95% CI"]
        head = (["rank (style controlled)", "bot", "rating", "95% CI", "rank without", "rating without"] if sc
                else head) + ["votes", "wins", "losses", "ties", "both bad"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.table.itertuples():
            bot = f"{r.bot} (provisional)" if r.provisional else r.bot
            cells = ([r.sc_rank, bot, f"{r.sc_rating:.0f}", _ci(r.sc_ci_low, r.sc_ci_high), r.rank, f"{r.rating:.0f}"]
                     if sc else [r.rank, bot, f"{r.rating:.0f}", _ci(r.ci_low, r.ci_high)])
            lines.append("| " + " | ".join(str(c) for c in [*cells, r.votes, r.wins, r.losses, r.ties, r.both_bad])
                         + " |")
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
                "n_votes": self.n_votes, "category": self.category, "style_control": self.style_control,
                "style": {k: {kk: clean(vv) for kk, vv in v.items()} for k, v in self.style.items()},
                "min_votes": self.min_votes, "bootstrap": self.bootstrap, "seed": self.seed, "note": self.note,
                "dropped": self.dropped, "win_rate": matrix(self.win_rate),
                "battle_count": matrix(self.battle_count)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _ci(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"{low:.0f} to {high:.0f}"


def rank_by_ci(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    """rank_i = 1 + #{j : ci_low[j] > ci_high[i]}."""
    return 1 + (ci_low[None, :] > ci_high[:, None]).sum(axis=1)


# ----------------------------------------------------------------------------- fitting


@dataclass
class _Rows:
    """Votes as fitting rows: distinct (A, B, outcome, weight) with their counts, or one row per vote (with
    covariates). Shapes: r rows, p bots, k covariates."""

    matchups: np.ndarray  # (r, 2)
    outcomes: np.ndarray  # (r,)
    weights: np.ndarray  # (r,) the votes' pair weights
    counts: np.ndarray  # (r,) votes per row
    features: np.ndarray | None  # (r, k)

    def fit(self, p: int, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        c = self.counts if counts is None else counts
        fit = fit_bt(self.matchups, self.outcomes, self.weights * c, p, features=self.features)
        return fit.ratings, fit.coefs


def _rows(votes: pd.DataFrame, models: list[str], features: np.ndarray | None) -> _Rows:
    idx = {m: k for k, m in enumerate(models)}
    outcome = votes["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}).to_numpy()
    weight = (pd.to_numeric(votes["pair_weight"], errors="coerce").fillna(1.0).to_numpy(dtype=float)
              if "pair_weight" in votes else np.ones(len(votes)))
    a, b = votes["model_a"].map(idx).to_numpy(), votes["model_b"].map(idx).to_numpy()
    if features is not None:  # one row per vote
        return _Rows(np.stack([a, b], axis=1), outcome, weight, np.ones(len(votes)), features)
    table = np.stack([a, b, outcome, weight], axis=1)  # (n, 4)
    distinct, counts = np.unique(table, axis=0, return_counts=True)
    return _Rows(distinct[:, :2].astype(np.int64), distinct[:, 2], distinct[:, 3], counts.astype(float), None)


def _fit_with_intervals(rows: _Rows, p: int, bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """Full-data ratings and coefs, their 95% bootstrap intervals (NaN without bootstrap) and ranks."""
    with threadpool_limits(1):  # many small fits: BLAS threads only add overhead
        rating, coefs = rows.fit(p)
        k = len(coefs)
        if not bootstrap:
            nan_p, nan_k = np.full(p, np.nan), np.full(k, np.nan)
            return {"rating": rating, "ci_low": nan_p, "ci_high": nan_p, "rank": rank_by_ci(rating, rating),
                    "coefs": coefs, "coef_low": nan_k, "coef_high": nan_k}
        rng = np.random.default_rng(seed)
        n = int(rows.counts.sum())
        draws = rng.multinomial(n, rows.counts / n, size=bootstrap)  # (bootstrap, r): resampled votes per row
        fits = [rows.fit(p, d.astype(float)) for d in draws]
    boot = np.stack([f[0] for f in fits])  # (bootstrap, p)
    coef_boot = np.stack([f[1] for f in fits]) if k else np.zeros((bootstrap, 0))  # (bootstrap, k)
    ci_low, ci_high = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
    return {"rating": rating, "ci_low": ci_low, "ci_high": ci_high, "rank": rank_by_ci(ci_low, ci_high),
            "coefs": coefs, "coef_low": np.percentile(coef_boot, 2.5, axis=0),
            "coef_high": np.percentile(coef_boot, 97.5, axis=0)}


# ----------------------------------------------------------------------------- the leaderboard


def _select(votes: pd.DataFrame, category: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The category's valid votes, and the counts of those left out by reason."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}; got {str(category)[:40]!r}")
    missing = {"model_a", "model_b", "winner"} - set(votes.columns)
    if missing:
        raise ValueError(f"the votes need columns model_a, model_b and winner; missing {sorted(missing)}")
    votes = votes[CATEGORIES[category][1](votes).to_numpy(dtype=bool)]
    dropped = {}
    bad = ~votes["winner"].isin(WINNERS)
    if bad.any():
        dropped["unknown winner"] = int(bad.sum())
    same = votes["model_a"] == votes["model_b"]
    if same.any():
        dropped["a bot against itself"] = int(same.sum())
    return votes[~bad & ~same].reset_index(drop=True), dropped


def compute_leaderboard(votes: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0, category: str = "all",
                        style_control: bool = False, min_votes: int = MIN_VOTES) -> Leaderboard:
    """The leaderboard of ``votes`` (a frame with model_a, model_b, winner: e.g. ``ArenaStore.votes_frame()``, or
    :func:`core.arena.interchange.votes_with_style` / ``read_votes`` for style control) in ``category``.
    ``bootstrap=0``: no intervals (rank by rating alone)."""
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if min_votes < 0:
        raise ValueError(f"min_votes must be >= 0, got {min_votes}")
    votes, dropped = _select(votes, category)
    models = sorted(set(votes["model_a"]) | set(votes["model_b"]))
    p, n = len(models), len(votes)
    settings = dict(bootstrap=bootstrap, seed=seed, dropped=dropped, category=category, style_control=style_control,
                    min_votes=min_votes)
    if n == 0:
        empty = pd.DataFrame(columns=TABLE_COLUMNS + (SC_COLUMNS if style_control else []))
        note = EMPTY_NOTE if category == "all" else f"No {CATEGORIES[category][0]} yet."
        return Leaderboard(empty, pd.DataFrame(), pd.DataFrame(), 0, note=note, **settings)

    # 1. the plain fit and, with style control, the fit with the style covariates
    plain = _fit_with_intervals(_rows(votes, models, None), p, bootstrap, seed)
    table = pd.DataFrame({"bot": models, **{c: plain[c] for c in ("rating", "ci_low", "ci_high", "rank")}})
    style: dict[str, dict[str, float]] = {}
    if style_control:
        z, used, left_out = style_covariates(votes)
        sc = _fit_with_intervals(_rows(votes, models, z), p, bootstrap, seed)
        for c in ("rating", "ci_low", "ci_high", "rank"):
            table[f"sc_{c}"] = sc[c]
        style = {name: {"beta": float(sc["coefs"][k]), "ci_low": float(sc["coef_low"][k]),
                        "ci_high": float(sc["coef_high"][k]), "points": float(sc["coefs"][k] * SCALE / LN_BASE)}
                 for k, name in enumerate(used)}
        style.update({name: {"beta": 0.0, "ci_low": math.nan, "ci_high": math.nan, "points": 0.0}
                      for name in left_out})

    # 2. counts per bot and the pairwise matrices (raw votes, unweighted)
    table, win_rate, battle_count = _counts(votes, models, table, min_votes)
    key = ["sc_rank", "sc_rating"] if style_control else ["rank", "rating"]
    order = table.sort_values(key, ascending=[True, False]).index
    table = table.loc[order].reset_index(drop=True)
    win_rate, battle_count = (m.loc[table["bot"], table["bot"]] for m in (win_rate, battle_count))
    note = _note(votes, p, bootstrap, seed, category, style, dropped, table["provisional"].sum(), min_votes)
    return Leaderboard(table, win_rate, battle_count, n, note=note, style=style, **settings)


def _counts(votes: pd.DataFrame, models: list[str], table: pd.DataFrame,
            min_votes: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    a, b, w = votes["model_a"], votes["model_b"], votes["winner"]
    in_ = {m: (a == m) | (b == m) for m in models}
    table["votes"] = [int(in_[m].sum()) for m in models]
    table["wins"] = [int(((a == m) & (w == "model_a")).sum() + ((b == m) & (w == "model_b")).sum()) for m in models]
    table["losses"] = [int(((a == m) & (w == "model_b")).sum() + ((b == m) & (w == "model_a")).sum())
                       for m in models]
    table["ties"] = [int((in_[m] & (w == "tie")).sum()) for m in models]
    table["both_bad"] = [int((in_[m] & (w == "tie (bothbad)")).sum()) for m in models]
    table["provisional"] = table["votes"] < min_votes
    table = table[TABLE_COLUMNS + [c for c in SC_COLUMNS if c in table]]
    idx = {m: k for k, m in enumerate(models)}
    p = len(models)
    pts = np.zeros((p, p))  # (p, p) points of i against j: wins + half the ties
    score = w.map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}).to_numpy()
    ai, bi = a.map(idx).to_numpy(), b.map(idx).to_numpy()
    np.add.at(pts, (ai, bi), score)
    np.add.at(pts, (bi, ai), 1 - score)
    games = pts + pts.T  # (p, p) votes between i and j
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, pts / games, np.nan)
    return (table, pd.DataFrame(rate, index=models, columns=models),
            pd.DataFrame(games.astype(int), index=models, columns=models))


def _note(votes: pd.DataFrame, p: int, bootstrap: int, seed: int, category: str, style: dict[str, dict[str, float]],
          dropped: dict[str, int], provisional: int, min_votes: int) -> str:
    ci = f"95% intervals from {bootstrap} bootstrap resamples of the votes (seed {seed})" if bootstrap else \
        "no intervals (bootstrap 0): rank by rating alone"
    note = (f"{len(votes)} votes, {p} bots ({CATEGORIES[category][0]}); Bradley–Terry ratings (mean 1000, 400 "
            f"points = 10:1 odds), each the fit on all these votes; {ci}; ties and both-bad count half a win for "
            "each side.")
    if "pair_weight" in votes and pd.to_numeric(votes["pair_weight"], errors="coerce").notna().any():
        note += " Actively paired votes weigh 1 / (P(pair) x pairs)."
    if style:
        parts = [f"{LABELS[k]} {v['points']:+.0f} points per standard deviation"
                 + ("" if math.isnan(v["ci_low"]) else
                    f" (95% CI {v['ci_low'] * SCALE / LN_BASE:+.0f} to {v['ci_high'] * SCALE / LN_BASE:+.0f})")
                 for k, v in style.items()]
        note += " Style control: the ranking is by the style-controlled rating; what style bought: " \
            + "; ".join(parts) + "."
    if provisional:
        note += f" Provisional: fewer than {min_votes} votes in this category ({provisional} bots)."
    if dropped:
        note += " Left out: " + ", ".join(f"{k} ({v})" for k, v in dropped.items()) + "."
    return note
