"""One Bradley–Terry fitter for the leaderboard and the active pairing: weighted votes, optional covariates.

    >>> fit = fit_bt(matchups, outcomes, weights, n_bots)                  # plain Bradley–Terry
    >>> fit = fit_bt(matchups, outcomes, weights, n_bots, features=z)      # with style covariates (style control)
    >>> fit.ratings, fit.coefs                                             # Elo-like ratings, one beta per covariate

Model: logit P(A beats B) = ln(10) * (b_A - b_B) + sum_k beta_k z_k, with ratings R = 400 * b on the Elo-like
scale, anchored so that the bots that played have mean 1000. A vote's outcome is 1 (A won), 0 (B won) or 0.5 (a tie
or "both bad": half a win each), and the weighted log-likelihood is maximised by L-BFGS (scipy), as FastChat's
``fit_bt`` / ``fit_contextual_bt`` do; ``reg`` adds ``reg / 2 * |params|^2`` (FastChat's style fit uses 0.5; the
default here is 0: the unpenalised maximum likelihood). Unpenalised, a bot that won (or lost) every vote has no
finite estimate: the fit stops with a large rating, and its bootstrap interval is wide, the honest answer.

Shapes: n votes (or distinct outcomes), p bots, k covariates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0
LN_BASE = math.log(BASE)


@dataclass(frozen=True)
class BTFit:
    ratings: np.ndarray  # (p,) Elo-like scale; NaN for a bot without a vote
    coefs: np.ndarray  # (k,) beta per covariate, on the logit scale (per standard deviation of a standardised z)
    natural: np.ndarray  # (p,) b on the natural scale (mean 0 over the bots that played): R = 400 b + 1000


def _loss_and_grad(params: np.ndarray, matchups: np.ndarray, outcomes: np.ndarray, weights: np.ndarray, p: int,
                   features: np.ndarray | None, reg: float) -> tuple[float, np.ndarray]:
    b, beta = params[:p], params[p:]  # (p,), (k,)
    logits = LN_BASE * (b[matchups[:, 0]] - b[matchups[:, 1]])  # (n,)
    if features is not None:
        logits = logits + features @ beta
    # log sigma(l) and log(1 - sigma(l)), stable for large |l|
    log_p, log_q = -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)
    total = weights.sum()
    loss = -(weights * (outcomes * log_p + (1 - outcomes) * log_q)).sum() / total + 0.5 * reg * params @ params
    err = weights * (outcomes - np.exp(log_p)) / total  # (n,) d(-loss)/d(logit)
    grad = reg * params
    grad[:p] += LN_BASE * (np.bincount(matchups[:, 1], err, p) - np.bincount(matchups[:, 0], err, p))
    if features is not None:
        grad[p:] -= features.T @ err
    return float(loss), grad


def fit_bt(matchups: np.ndarray, outcomes: np.ndarray, weights: np.ndarray | None, p: int, *,
           features: np.ndarray | None = None, reg: float = 0.0, tol: float = 1e-9, max_iter: int = 500) -> BTFit:
    """Fit ratings of ``p`` bots to votes ``matchups`` (n, 2: the indices of A and B), ``outcomes`` (n,: 1 A won,
    0 B won, 0.5 tie) and ``weights`` (n,; None: 1 each); ``features`` (n, k) are covariates of each vote."""
    from scipy.optimize import minimize

    matchups = np.asarray(matchups, dtype=np.int64).reshape(-1, 2)
    outcomes = np.asarray(outcomes, dtype=np.float64)
    weights = np.ones(len(outcomes)) if weights is None else np.asarray(weights, dtype=np.float64)
    k = 0 if features is None else features.shape[1]
    played = np.zeros(p, dtype=bool)
    played[matchups[weights > 0].ravel()] = True
    if not played.any():
        return BTFit(np.full(p, np.nan), np.zeros(k), np.full(p, np.nan))
    result = minimize(_loss_and_grad, np.zeros(p + k), args=(matchups, outcomes, weights, p, features, reg),
                      jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol, "ftol": tol * 1e-3})
    b = result.x[:p].copy()
    b[played] -= b[played].mean()
    b[~played] = np.nan
    return BTFit(SCALE * b + INIT_RATING, result.x[p:], b)


def fisher_information(matchups: np.ndarray, weights: np.ndarray, natural: np.ndarray) -> np.ndarray:
    """(p, p) Fisher information of the ratings b (natural scale) at ``natural``: sum_v w_v s_v (1 - s_v) x_v x_v^T
    with x_v = ln(10) (e_A - e_B) and s_v the fitted P(A beats B)."""
    p = len(natural)
    b = np.nan_to_num(natural)
    s = 1.0 / (1.0 + np.exp(-LN_BASE * (b[matchups[:, 0]] - b[matchups[:, 1]])))  # (n,)
    h = weights * s * (1 - s) * LN_BASE ** 2  # (n,)
    info = np.zeros((p, p))
    np.add.at(info, (matchups[:, 0], matchups[:, 0]), h)
    np.add.at(info, (matchups[:, 1], matchups[:, 1]), h)
    np.add.at(info, (matchups[:, 0], matchups[:, 1]), -h)
    np.add.at(info, (matchups[:, 1], matchups[:, 0]), -h)
    return info
