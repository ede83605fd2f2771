"""Votes needed for the true order, active vs uniform pairing: a scripted crowd with known strengths votes, and
after every ``--step`` votes the leaderboard's fit is checked against the true order.

    python bench/active_sampling.py                              # 4 bots, 1,000 runs of up to 1,500 votes each
    python bench/active_sampling.py --runs 100 --max-votes 3000 --ratings 1100,1075,1050,1000

Each run draws ``--max-votes`` votes from :class:`core.arena.crowd.Crowd` (ties 12% of the time) with the pair of
each vote chosen by one of:
    uniform   every pair equally likely (the baseline of the Chatbot Arena paper)
    active    :class:`core.arena.active.ActivePairing` (P(pair) ~ how much one more vote narrows the pair's interval,
              refitted every 20 votes, 10% uniform floor); the fit weighs each vote by 1 / (P(pair) * pairs)
The figure: the smallest checked number of votes at which the fitted order is the true order in at least 95% of
the runs (and the share of runs in order at a few sizes, +- its standard error). Both modes see the same crowd
seeds. Takes about a minute per 100 runs on one core (active pairing refits; uniform takes seconds).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # many tiny fits: BLAS threads only add overhead
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.arena.active import ActivePairing, outcomes_of  # noqa: E402
from core.arena.bt import fit_bt  # noqa: E402
from core.arena.crowd import Crowd  # noqa: E402

MODES = ("uniform", "active")
TIE_RATE = 0.12


def run_once(mode: str, ratings: dict[str, float], seed: int, max_votes: int, step: int) -> np.ndarray:
    """For one crowd: (max_votes // step,) booleans, whether the fit after k * step votes has the true order."""
    names = sorted(ratings)
    idx = {n: k for k, n in enumerate(names)}
    true_order = sorted(names, key=ratings.get, reverse=True)
    crowd = Crowd(ratings, tie_rate=TIE_RATE, seed=seed)
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, float]] = []
    pairing = ActivePairing(names, lambda: pd.DataFrame(rows, columns=["model_a", "model_b", "winner",
                                                                       "pair_weight"]))
    pairs = pairing.pairs
    ok = np.zeros(max_votes // step, dtype=bool)
    for n in range(1, max_votes + 1):
        if mode == "active":
            pair, weight = pairing.draw(rng)
        else:
            pair, weight = rng.choice(pairs), 1.0
        a, b = pair if rng.random() < 0.5 else pair[::-1]
        rows.append((a, b, crowd.judge(a, b), weight))
        if n % step == 0:
            m = np.array([[idx[r[0]], idx[r[1]]] for r in rows])
            fit = fit_bt(m, outcomes_of([r[2] for r in rows]), np.array([r[3] for r in rows]), len(names))
            fitted = [names[k] for k in np.argsort(-np.nan_to_num(fit.ratings, nan=-1e9))]
            ok[n // step - 1] = fitted == true_order
    return ok


def votes_needed(share: np.ndarray, step: int, target: float = 0.95) -> int | None:
    """The smallest checked size whose share of runs in the true order is >= target (None: never)."""
    hit = np.flatnonzero(share >= target)
    return int((hit[0] + 1) * step) if len(hit) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000, help="crowds per mode (default: %(default)s)")
    ap.add_argument("--max-votes", type=int, default=1500, help="votes per run (default: %(default)s)")
    ap.add_argument("--step", type=int, default=50, help="check the order every this many votes (default: 50)")
    ap.add_argument("--ratings", default="1100,1050,1000,900",
                    help="true ratings of the bots, comma-separated (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="first crowd seed (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        values = [float(x) for x in args.ratings.split(",")]
    except ValueError:
        ap.error(f"--ratings must be numbers separated by commas, got {args.ratings!r}")
    if len(values) < 2 or len(set(values)) != len(values):
        ap.error("--ratings needs at least two different ratings (the true order must be strict)")
    if args.runs < 1 or args.step < 1 or args.max_votes < args.step:
        ap.error("--runs and --step must be >= 1 and --max-votes >= --step")
    ratings = {f"bot{k}": r for k, r in enumerate(values)}
    print(f"true ratings {values}, ties {TIE_RATE:.0%}, {args.runs} runs per mode, up to {args.max_votes} votes")
    shares = {}
    for mode in MODES:
        start = time.perf_counter()
        ok = np.stack([run_once(mode, ratings, args.seed + r, args.max_votes, args.step) for r in range(args.runs)])
        shares[mode] = ok.mean(axis=0)  # (checks,)
        need = votes_needed(shares[mode], args.step)
        print(f"{mode:8} true order in >=95% of runs from {need if need else f'> {args.max_votes}'} votes "
              f"({time.perf_counter() - start:.0f} s)")
    sizes = [s for s in (250, 500, 750, 1000, 1500, 2000, 3000) if s <= args.max_votes and s % args.step == 0]
    se = 100 * math.sqrt(0.95 * 0.05 / args.runs)
    print(f"share of runs in the true order (standard error near 95%: +-{se:.1f} points):")
    print(f"{'votes':>8} " + " ".join(f"{m:>8}" for m in MODES))
    for s in sizes:
        print(f"{s:8d} " + " ".join(f"{shares[m][s // args.step - 1]:8.1%}" for m in MODES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
