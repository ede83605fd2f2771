"""The strategies of the registry (:mod:`core.decoding.registry`): greedy, beam, sample, delayed beam,
diverse beam, contrastive. Adding one is a class here with ``@register`` and its tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from core.decoding.registry import (
    NEG_INF,
    Candidates,
    StepContext,
    Strategy,
    beam_candidates,
    min_p_filter,
    register,
    top_k_filter,
    top_p_filter,
    typical_filter,
)
from core.errors import SettingError
from core.scoring import tempered
from core.tokenizer import EOS_ID

if TYPE_CHECKING:
    from core.decoding.config import DecodeConfig




@register
class Greedy(Strategy):
    """The locally best token at every step: beam search with K=1."""

    name, reads = "greedy", ()

    @staticmethod
    def width(cfg: DecodeConfig) -> int:
        return 1

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        return "greedy"

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        return beam_candidates(scores, step_scores, K)


@register
class BeamSearch(Strategy):
    """Keep the K best continuations of all rows by running score."""

    name, reads = "beam", ("beam_size",)

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        return f"beam K={cfg.beam_size}"

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        return beam_candidates(scores, step_scores, K)


@register
class Sampler(Strategy):
    """Draws from softmax(step_scores / temperature), restricted by top-k, top-p, min-p then typical-p: K draws
    from the one row of each prompt at the first step, then one draw per row; the best score wins."""

    name, random = "sample", True
    reads = ("beam_size", "temperature", "top_k", "top_p", "typical_p", "min_p", "seed")

    def __init__(self, cfg: DecodeConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        self.generator = generator

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        tag = f"sample x{cfg.beam_size} T={cfg.temperature:g} top-k={cfg.top_k} top-p={cfg.top_p:g}"
        if cfg.min_p > 0:
            tag += f" min-p={cfg.min_p:g}"
        if cfg.typical_p < 1:
            tag += f" typical-p={cfg.typical_p:g}"
        return tag

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        """scores (B, R) running totals, step_scores (B, R, V) -> K candidates per prompt, (B, K)."""
        B, R, V = step_scores.shape
        cfg = self.cfg
        flat = step_scores.view(B * R, V)  # (B*R, V)
        logits = top_p_filter(top_k_filter(tempered(flat, cfg.temperature), cfg.top_k), cfg.top_p)
        logits = typical_filter(min_p_filter(logits, cfg.min_p), cfg.typical_p)
        dead = torch.isneginf(logits).all(-1, keepdim=True)  # (B*R, 1) everything blocked: draw </s>, score -inf
        logits = logits.masked_fill(dead & (torch.arange(V, device=flat.device) == EOS_ID), 0.0)
        tok = torch.multinomial(logits.softmax(-1), K // R, replacement=True, generator=self.generator)
        picked = flat.gather(1, tok).view(B, K)  # (B, K) step score of each draw
        beams = torch.arange(R, device=flat.device).repeat_interleave(K // R).expand(B, K)
        return Candidates(scores.repeat_interleave(K // R, dim=1) + picked, tok.view(B, K), beams)


@register
class DelayedBeamSearch(Strategy):
    """Delayed beam search (ParlAI's ``delayedbeam``; Massarelli et al. 2020): the first ``delay_tokens`` tokens
    are drawn as :class:`Sampler` draws them (K draws from the one row at the first step, then one per row, with
    the sampling settings), then the K rows go on as beam search. The sampled start varies the reply; the beam
    keeps the rest fluent. delay_tokens=0 is beam search."""

    name, random = "delayed_beam", True
    reads = ("beam_size", "delay_tokens", "temperature", "top_k", "top_p", "typical_p", "min_p", "seed")

    def __init__(self, cfg: DecodeConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        self.sampler = Sampler(cfg, generator)

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        sampling = Sampler.describe(cfg).split(" ", 2)[2]  # "sample xK T=.. top-k=.." without "sample xK"
        return f"delayed beam K={cfg.beam_size}, first {cfg.delay_tokens} tokens sampled ({sampling})"

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        if ctx.t < self.cfg.delay_tokens:
            return self.sampler(scores, step_scores, K, ctx)
        return beam_candidates(scores, step_scores, K)


@register
class DiverseBeamSearch(Strategy):
    """Vijayakumar et al. (2018): the K beams form G groups of K/G; the groups step in order, and group g's step
    scores lose ``diversity_penalty`` per earlier group at this step that chose the same token (Hamming
    diversity). A group ranks and keeps its own 2K/G candidates; G=1 is beam search."""

    name, reads = "diverse_beam", ("beam_size", "num_groups", "diversity_penalty")

    def __init__(self, cfg: DecodeConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        self.groups, self.penalty = cfg.num_groups, cfg.diversity_penalty

    @classmethod
    def check(cls, cfg: DecodeConfig) -> None:
        if cfg.beam_size % cfg.num_groups:
            raise SettingError(f"diverse_beam splits beam_size={cfg.beam_size} into num_groups={cfg.num_groups} "
                               f"equal groups: make beam_size a multiple of num_groups", field="num_groups")

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        return f"diverse beam K={cfg.beam_size} in {cfg.num_groups} groups, diversity {cfg.diversity_penalty:g}"

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        B, R, V = step_scores.shape
        G, Kg = self.groups, K // self.groups
        counts = step_scores.new_zeros(B, V)  # (B, V) how many earlier groups chose each token at this step
        blocks = []
        for g in range(G):
            lo, n = (g * Kg, Kg) if R == K else (0, R)  # the first step: every group extends the one <s> row
            step = step_scores[:, lo : lo + n]  # (B, Rg, V)
            if g > 0 and self.penalty > 0:
                step = step - self.penalty * counts.unsqueeze(1)
            cand = beam_candidates(scores[:, lo : lo + n], step, Kg)  # (B, 2Kg)
            penalty = self.penalty * counts.gather(1, cand.tokens)  # (B, 2Kg) what each candidate lost
            live = (cand.tokens != EOS_ID) & (cand.scores > NEG_INF)
            chosen = live & (live.cumsum(1) <= Kg)  # (B, 2Kg) the rows this group keeps
            counts = counts.scatter_add(1, cand.tokens, chosen.to(counts.dtype))
            blocks.append((cand.scores, cand.tokens, cand.beams + lo, -penalty))
        return Candidates(*(torch.cat(x, 1) for x in zip(*blocks)))


@register
class ContrastiveSearch(Strategy):
    """Su et al. (2022): among the ``top_k`` best next tokens v pick the argmax of
    (1 - penalty_alpha) p(v | x) - penalty_alpha max_j cos(h_v, h_j), h_j the decoder's output states after <s>
    and each token so far, h_v the state after v (one look-ahead decoder step on the top_k candidates).
    penalty_alpha=0 is greedy (and skips the look-ahead). The running score stays the sum of step scores."""

    name, reads = "contrastive", ("penalty_alpha", "top_k")

    def __init__(self, cfg: DecodeConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        self.alpha, self.k = cfg.penalty_alpha, cfg.top_k
        self.needs_hidden = self.alpha > 0

    @staticmethod
    def width(cfg: DecodeConfig) -> int:
        return 1

    @classmethod
    def check(cls, cfg: DecodeConfig) -> None:
        if cfg.top_k < 1:
            raise SettingError("contrastive search picks among the top_k most likely tokens: set top_k >= 1 "
                               "(4 to 10 is usual)", field="top_k")

    @classmethod
    def describe(cls, cfg: DecodeConfig) -> str:
        return f"contrastive top-k={cfg.top_k} alpha={cfg.penalty_alpha:g}"

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int, ctx: StepContext) -> Candidates:
        B, R, V = step_scores.shape  # R = K = 1
        flat = step_scores.view(B, V)  # (B, V)
        top, tok = flat.topk(min(self.k, V), dim=1)  # (B, k) best first
        if self.needs_hidden:
            probs = flat.softmax(-1).gather(1, tok)  # (B, k)
            h_v = F.normalize(ctx.lookahead(tok), dim=-1)  # (B, k, H)
            h_ctx = F.normalize(ctx.hidden, dim=-1)  # (B, t+1, H)
            degeneration = (h_v @ h_ctx.transpose(1, 2)).amax(-1)  # (B, k) max cosine to the context
            objective = ((1 - self.alpha) * probs - self.alpha * degeneration).masked_fill(top == NEG_INF, NEG_INF)
            order = objective.argsort(dim=1, descending=True, stable=True)  # (B, k)
            top, tok = top.gather(1, order), tok.gather(1, order)
        return Candidates(scores + top, tok, torch.zeros_like(tok))

