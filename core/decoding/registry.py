"""The strategy registry and its building blocks. Strategies are the plug-ins of :func:`core.decoding.generate`:
each proposes the candidates of one step.

Shape legend: B batch (prompts), K rows kept per prompt, R rows per prompt at this step (1 at the first step,
then K), N = B*R rows, C candidates per prompt, V vocab, H hidden, t tokens generated so far.

A strategy is a class registered in :data:`STRATEGIES` under the name ``DecodeConfig.strategy`` takes. The engine
makes one per :func:`~core.decoding.generate` call and, at every step, calls it with the running scores (B, R),
the step scores (B, R, V) (model log-probs after the score modifiers) and K; it returns :class:`Candidates`
(B, C) in rank order, C >= K. The engine then finishes the </s> candidates ranked within the top K and keeps the
first K others as the next rows. A strategy with ``groups = G`` ranks G independent blocks of C/G candidates,
each of which keeps K/G rows (diverse beam search).

Adding a strategy = one class in :mod:`core.decoding.strategies` (``name``, ``reads``, ``__call__``,
``describe``) + ``@register`` + its tests:

    >>> @register
    ... class Greedy(Strategy):
    ...     name, reads = "greedy", ()              # DecodeConfig fields it reads
    ...     width = staticmethod(lambda cfg: 1)     # rows kept per prompt
    ...     describe = classmethod(lambda cls, cfg: "greedy")
    ...     def __call__(self, scores, step_scores, K, ctx): return beam_candidates(scores, step_scores, K)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from core.decoding.config import DecodeConfig

NEG_INF = float("-inf")


class Candidates(NamedTuple):
    """The candidates of one step, each (B, C), best first (within each group)."""

    scores: Tensor  # running score after the step
    tokens: Tensor  # token id
    beams: Tensor  # row within the prompt it extends, 0 .. R-1
    extra: Tensor | None = None  # what the strategy itself added to the score (diverse beam: -diversity penalty)


class StepContext(NamedTuple):
    """What the engine offers a strategy beyond the scores, at step t."""

    t: int
    hidden: Tensor | None = None  # (N, t+1, H) decoder output states after <s> and each token of each row
    lookahead: Callable[[Tensor], Tensor] | None = None  # tokens (N, C) -> hidden state after each (N, C, H)


# ----------------------------------------------------------------------------- top-k of wide rows

TOPK_BLOCK = 128  # columns per block in wide_topk
WIDE_TOPK_FROM = 1 << 14  # narrower rows (greedy, the first beam step) are faster with one topk call


def wide_topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)`` of x (B, W): values (B, k) best first and their columns (B, k), faster for the wide
    rows of beam search on CPU (top 20 of 80000: 244 us with topk, 71 us here). The k best entries of a row lie
    in the k blocks of TOPK_BLOCK columns with the largest maxima (and the tail of the row that fills no block),
    so topk runs on those columns only. Exact values; among equal values it may pick other columns than topk."""
    B, W = x.shape
    n_blocks = W // TOPK_BLOCK
    if W < WIDE_TOPK_FROM or n_blocks < 2 * k or x.device.type != "cpu":
        return x.topk(k, dim=1)
    blocks = x[:, : n_blocks * TOPK_BLOCK].reshape(B, n_blocks, TOPK_BLOCK)  # (B, W // blk, blk)
    best = blocks.amax(2).topk(k, dim=1, sorted=False).indices  # (B, k) blocks with the largest maxima
    offsets = torch.arange(TOPK_BLOCK, device=x.device)
    cols = (best.unsqueeze(-1) * TOPK_BLOCK + offsets).view(B, k * TOPK_BLOCK)  # (B, k*blk) their columns
    if W > n_blocks * TOPK_BLOCK:
        cols = torch.cat([cols, torch.arange(n_blocks * TOPK_BLOCK, W, device=x.device).expand(B, -1)], 1)
    top, pos = x.gather(1, cols).topk(k, dim=1)  # (B, k)
    return top, cols.gather(1, pos)


# ----------------------------------------------------------------------------- sampling filters


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (N, V); the rest become -inf. k=0: unchanged."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def _keep_mass(logits: Tensor, order: Tensor, mass: float) -> Tensor:
    """Keep the tokens of each row (N, V) taken in ``order`` (N, V) until they hold ``mass`` of the probability;
    the token that crosses it is kept, so every row keeps at least one."""
    probs = logits.softmax(-1).gather(1, order)  # (N, V) in that order
    mass_before = probs.cumsum(-1) - probs  # (N, V) mass of the tokens taken before
    past = mass_before >= mass  # a mass below float32's smallest number reads as 0 here: still keep the first
    past[:, 0] = False
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, past)  # vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the most likely tokens of each row (N, V) until they hold ``p`` of the probability mass (nucleus);
    the token that crosses ``p`` is kept, so every row keeps at least one. p=1: unchanged."""
    if p >= 1.0:
        return logits
    return _keep_mass(logits, logits.argsort(dim=-1, descending=True, stable=True), p)


def typical_filter(logits: Tensor, mass: float) -> Tensor:
    """Typical sampling (Meister et al. 2023): keep the tokens whose surprise -log p is closest to the row's
    entropy H until they hold ``mass`` of the probability (the crossing token kept). mass=1: unchanged."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(-1)  # (N, V)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, 0.0).sum(-1, keepdim=True)  # (N, 1)
    distance = (-logp - entropy).abs()  # (N, V); +inf at blocked tokens
    return _keep_mass(logits, distance.argsort(dim=-1, stable=True), mass)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep the tokens of each row (N, V) with p >= min_p * (the row's largest p). min_p=0: unchanged."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)  # (N, V)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), NEG_INF)


# ----------------------------------------------------------------------------- the registry


class Strategy:
    """Base of the strategies. ``reads``: the DecodeConfig fields it reads beyond those every strategy shares
    (:data:`core.decoding.COMMON_FIELDS`), so a UI shows only the controls that matter."""

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    groups: int = 1  # independent blocks of candidates (see the module docstring)
    random: ClassVar[bool] = False  # draws from the generator: a seeded request is decoded alone (its draws)
    needs_hidden: bool = False  # the engine passes StepContext.hidden and .lookahead

    def __init__(self, cfg: DecodeConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg

    @staticmethod
    def width(cfg: DecodeConfig) -> int:
        """K, the rows kept per prompt."""
        return cfg.beam_size

    @classmethod
    def check(cls, cfg: DecodeConfig) -> None:
        """Raise :class:`core.errors.SettingError` (naming the setting to change) when settings that are each in
        range do not fit together for this strategy."""

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        """The short tag of the strategy's own settings, e.g. ``beam K=10``."""
        raise NotImplementedError

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        """scores (B, R) running totals, step_scores (B, R, V) -> candidates (B, C), C >= K."""
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available as ``DecodeConfig(strategy=cls.name)``."""
    if not cls.name or cls.name in STRATEGIES:
        raise ValueError(f"strategy name {cls.name!r} is empty or already registered")
    STRATEGIES[cls.name] = cls
    return cls


# ----------------------------------------------------------------------------- strategies


def beam_candidates(scores: Tensor, step_scores: Tensor, K: int) -> Candidates:
    """The top 2K of the R*V continuations of each prompt (2K so that K survive even when K of them are </s>),
    best first: scores (B, R), step_scores (B, R, V) -> (B, 2K); dead candidates pad a vocabulary below 2K."""
    B, R, V = step_scores.shape
    total = (scores.unsqueeze(-1) + step_scores).view(B, R * V)  # (B, R*V)
    top, idx = wide_topk(total, min(2 * K, R * V))  # (B, C)
    tokens, beams = idx % V, torch.div(idx, V, rounding_mode="floor")
    if top.size(1) < 2 * K:  # a vocabulary smaller than 2K: pad with dead candidates
        pad = 2 * K - top.size(1)
        top = torch.cat([top, top.new_full((B, pad), NEG_INF)], 1)
        tokens, beams = (torch.cat([x, x.new_zeros(B, pad)], 1) for x in (tokens, beams))
    return Candidates(top, tokens, beams)
