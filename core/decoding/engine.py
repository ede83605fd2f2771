"""The engine: one batched search loop (:func:`generate`) with a strategy plugged in; see :mod:`core.decoding`
for the steps, the score parts and the trace.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from core.decoding.config import DecodeConfig, _is_int
from core.decoding.modifiers import (
    AntiLM,
    Step,
    _repetition_delta,
    build_modifiers,
    check_prefix_ids,
    encode_prefix,
    word_starts,
)
from core.decoding.registry import NEG_INF, STRATEGIES, StepContext, Strategy
from core.decoding.results import Hypothesis, Ranker, Reply, ranker, zero_parts
from core.decoding.trace import _Tracer
from core.errors import SettingError
from core.model import Memory, State, fold, map_state, select_memory, select_rows, tile, tile_memory
from core.scoring import sequence_logprobs
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

# ----------------------------------------------------------------------------- beam reshapes







# ----------------------------------------------------------------------------- the engine


@dataclass
class _Final:
    """A finished hypothesis, by back-pointer: its last token came from input row ``row`` at step ``t``."""

    score: float  # ranking score: the search total, length-normalised where asked
    raw: float  # the search total
    t: int
    row: int
    token: int
    logp: float
    antilm: float  # anti-LM part of the last token
    extra: float  # the strategy's own part of the last token (diverse beam: -diversity penalty)


class _Path(NamedTuple):
    tokens: list[int]
    logps: list[float]
    antilm: list[float]
    extra: list[float]
    attention: Tensor  # (T, S_max)


_CHANNELS = ("tokens", "logps", "antilm", "extra")


@dataclass
class _History:
    """Per step: for each new row, its parent row, token, model log-prob, anti-LM part (during the first
    lm_steps steps only) and strategy part (only from strategies that add one); and the attention of each
    input row."""

    parents: list[Tensor] = field(default_factory=list)  # (N,) each
    tokens: list[Tensor] = field(default_factory=list)  # (N,)
    logps: list[Tensor] = field(default_factory=list)  # (N,)
    antilm: list[Tensor] = field(default_factory=list)  # (N,)
    extra: list[Tensor] = field(default_factory=list)  # (N,)
    attn: list[Tensor] = field(default_factory=list)  # (N, S)

    def select_last(self, rows: Tensor, t: int) -> None:
        """Keep only ``rows`` of step ``t``'s new rows, renumbered 0.. in that order (the next step's input rows);
        the attention is per input row, so step t's stays as it is."""
        for name in ("parents", *_CHANNELS):
            steps = getattr(self, name)
            if len(steps) == t + 1:  # the anti-LM and strategy channels stop or never start
                steps[t] = steps[t].index_select(0, rows)

    def paths(self, finals: list[list[_Final]]) -> list[list[_Path]]:
        """Tokens, per-token parts and attention (T, S) of each finished hypothesis (a list per prompt), by following
        parents. Steps have fewer rows once done prompts leave the batch, so each step is its own list and the
        attention is padded to stack; both are built once for all prompts."""
        if not any(finals):
            return [[] for _ in finals]
        parents = [p.tolist() for p in self.parents]
        chans = {name: [x.tolist() for x in getattr(self, name)] for name in _CHANNELS}
        n = max(a.size(0) for a in self.attn)
        attn = torch.stack([torch.nn.functional.pad(a, (0, 0, 0, n - a.size(0))) for a in self.attn])  # (T, N, S)
        return [[self._path(f, parents, chans, attn) for f in fs] for fs in finals]

    @staticmethod
    def _path(f: _Final, parents: list[list[int]], chans: dict[str, list[list[float]]], attn: Tensor) -> _Path:
        vals = {"tokens": [f.token], "logps": [f.logp], "antilm": [f.antilm], "extra": [f.extra]}
        rows, r = [f.row], f.row
        for s in range(f.t - 1, -1, -1):
            for name, ch in chans.items():
                vals[name].append(ch[s][r] if s < len(ch) else 0.0)
            r = parents[s][r]
            rows.append(r)
        steps = torch.arange(f.t + 1, device=attn.device)
        att = attn[steps, torch.tensor(rows[::-1], device=attn.device)]  # (T, S)
        return _Path(*(vals[name][::-1] for name in _CHANNELS), att)




def _parts(path: _Path, final: _Final, cfg: DecodeConfig) -> dict[str, float]:
    """The score parts of a finished hypothesis (see the module docstring); they add up to ``final.score``."""
    toks, lps = path.tokens, path.logps
    parts = zero_parts()
    parts["logp"] = sum(lps)
    parts["antilm"] = sum(path.antilm)
    parts["diversity"] = sum(path.extra)
    if cfg.repetition_penalty != 1.0:
        parts["repetition"] = sum((_repetition_delta(lp, cfg.repetition_penalty)
                                   for k, (t, lp) in enumerate(zip(toks, lps)) if t in toks[:k]), 0.0)
    parts["bonus"] = cfg.n_bonus * sum(t != EOS_ID for t in toks) + (final.score - final.raw)
    return parts



def _device(model: Any) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _pad(src: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Token lists -> src (B, S) padded with <pad>, lens (B,)."""
    S = max(len(s) for s in src)
    out = torch.full((len(src), S), PAD_ID, dtype=torch.long)
    for i, s in enumerate(src):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device), torch.tensor([len(s) for s in src], device=device)


def _lookahead(model: Any, state: State, mem: Memory, tokens: Tensor) -> Tensor:
    """Decoder output states after feeding each candidate: tokens (N, C) -> (N, C, H), rows' states tiled C times."""
    N, C = tokens.shape
    out = model.decode_step(tokens.reshape(-1), map_state(state, lambda h: tile(h, C, dim=1)), tile_memory(mem, C),
                            return_hidden=True)  # hidden (N*C, H)
    return out[3].view(N, C, -1)


class _Search:
    """One batched search (see the module docstring of :mod:`core.decoding` for its numbered steps): the setup
    and step 1 in ``__init__``, then :meth:`run` loops over steps 2-8, one method each."""

    def __init__(self, model: Any, src: list[list[int]], cfg: DecodeConfig, lm: Any, strategy: Strategy,
                 tracer: _Tracer | None = None, starts: Tensor | None = None,
                 own_turns: Sequence[Sequence[Sequence[int]]] | None = None,
                 prefix: Sequence[int] | None = None) -> None:
        self.model, self.cfg, self.lm, self.strategy, self.tracer = model, cfg, lm, strategy, tracer
        self.device = device = _device(model)
        self.B = B = len(src)
        self.K, self.G = strategy.width(cfg), strategy.groups
        self.nbest = min(cfg.nbest, self.K)
        self.modifiers = build_modifiers(cfg, starts, own_turns, prefix)
        self.need_prompts = any(getattr(m, "needs_prompts", False) for m in self.modifiers)
        self.prompt_ids = list(range(B))  # the call's index of each prompt still in the batch
        self.anti = next((m for m in self.modifiers if isinstance(m, AntiLM)), None)
        lm_steps = self.anti.lm_steps if self.anti else 0
        self.lm_on = lm_steps > 0  # the anti-LM may still apply: the LM steps (its state follows the rows) while so
        self.antilm_w = cfg.antilm if lm_steps else 0.0
        keep_prefix = any(getattr(m, "needs_prefix", False) for m in self.modifiers)
        self.rank = ranker(cfg)

        # 1. encode once; the first step runs one row per prompt (the K rows would all be <s>), then K rows
        src_t, lens = _pad(src, device)  # (B, S), (B,)
        self.mem1 = model.encode(src_t, lens)  # outputs (B, S, H)
        self.memK = tile_memory(self.mem1, self.K)  # outputs (N, S, H)
        self.state = self.mem1.state  # (L, B, H), (L, N, H) after the first step
        self.lm_state = lm.init_state(B, device) if lm_steps else None
        self.tok = torch.full((B,), BOS_ID, dtype=torch.long, device=device)  # (B,), then (N,)
        self.prefix = torch.empty((B, 0), dtype=torch.long, device=device) if keep_prefix else None  # (N, t)
        self.hidden: Tensor | None = None  # (N, t+1, H) decoder output states, for strategies that compare them
        self.scores = torch.zeros(B, 1, device=device)  # (B, R) running scores; R = 1 row per prompt, then K
        self.hist = _History()
        self.finished: list[list[_Final]] = [[] for _ in range(B)]
        self.fin = list(self.finished)  # the finished lists of the prompts still in the batch, in batch order
        self.done = [False] * B

    def run(self) -> list[list[tuple[_Final, _Path]]]:
        """Steps 2-8 until every prompt is done or max_len; per prompt of the call, the n-best (finished
        hypothesis, its path), best first."""
        for t in range(self.cfg.max_len):
            logp, attn, lm_logp, step_scores, ctx = self._model_step(t)
            cand = self._candidates(logp, lm_logp, step_scores, ctx)
            done_before = list(self.done) if self.tracer else []
            keep, ends, last = self._keep(cand, t)
            self._advance(attn, t)
            # 7. which prompts are done; their rows stop competing
            newly = _update_done(self.done, self.fin, self.scores.max(1).values.tolist(), self.K, self.nbest,
                                 _gain_left(self.cfg, self.lm_on, t, self.rank))
            if self.tracer:
                self.tracer.step(t, {"scores": cand.scores, "tokens": cand.tokens, "beams": cand.beams,
                                     "logp": cand.logp, "antilm": cand.antilm, "extra": cand.extra},
                                 keep, ends, self.K, done_before, self.done, last)
            if all(self.done):
                break
            if newly and self.tracer is None:
                self._drop_done(t)
            elif newly:  # the tracer's rows stay in place: the done prompts' rows stop competing
                self.scores = self.scores.masked_fill(torch.tensor(self.done, device=self.device).unsqueeze(1),
                                                      NEG_INF)
        best = [sorted(fs, key=lambda f: -f.score)[:self.nbest] for fs in self.finished]
        return [list(zip(b, p, strict=True)) for b, p in zip(best, self.hist.paths(best), strict=True)]

    def _model_step(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor, StepContext]:
        """2. step the model (and the LM while the anti-LM matters); the modifiers edit the step log-probs."""
        model, R = self.model, self.scores.size(1)
        mem = self.mem1 if t == 0 else self.memK
        if self.strategy.needs_hidden:
            logp, self.state, attn, h = model.decode_step(self.tok, self.state, mem, return_hidden=True)
            self.hidden = h.unsqueeze(1) if self.hidden is None else torch.cat([self.hidden, h.unsqueeze(1)], 1)
            ctx = StepContext(t, self.hidden, lambda cands, s=self.state, m=mem: _lookahead(model, s, m, cands))
        else:
            logp, self.state, attn = model.decode_step(self.tok, self.state, mem)  # (B*R, V), state, (B*R, S)
            ctx = StepContext(t)
        lm_logp = None
        if self.lm_on:
            lm_logp, self.lm_state = self.lm.decode_step(self.tok, self.lm_state)  # (B*R, V)
        rows_prompt = [b for b in self.prompt_ids for _ in range(R)] if self.need_prompts else None  # (B*R,)
        step = Step(t, self.prefix, lm_logp, logp, rows_prompt)
        step_scores = logp
        for mod in self.modifiers:
            step_scores = mod(step_scores, step)  # (B*R, V)
        return logp, attn, lm_logp, step_scores, ctx

    def _candidates(self, logp: Tensor, lm_logp: Tensor | None, step_scores: Tensor, ctx: StepContext) -> _Cands:
        """3. the strategy's candidates in rank order (within each of its G groups), with their input rows, model
        log-probs and anti-LM parts."""
        B, R, V = self.B, self.scores.size(1), step_scores.size(1)
        cand = self.strategy(self.scores, fold(step_scores, R), self.K, ctx)  # (B, C) each
        rows = cand.beams + (torch.arange(B, device=self.device) * R).unsqueeze(1)  # (B, C) input row of each
        flat = rows * V + cand.tokens  # (B, C)
        cand_logp = logp.flatten().take(flat)  # (B, C) model log-prob of its token
        cand_antilm = None  # (B, C) the anti-LM part of each candidate's step, while it applies
        if self.antilm_w and lm_logp is not None:
            cand_antilm = -self.antilm_w * lm_logp.flatten().take(flat).clamp(min=-1e4)
            if self.anti.applied is not None:  # (B*R, V) the mask the modifier used this step (words, floor)
                cand_antilm = cand_antilm * self.anti.applied.flatten().take(flat)
        return _Cands(cand.scores, cand.tokens, cand.beams, cand.extra, rows, cand_logp, cand_antilm)

    def _keep(self, cand: _Cands, t: int) -> tuple[Tensor | None, Tensor | None, bool]:
        """4. </s> among the top K (of each group) finishes a hypothesis, the first K other candidates become the
        rows; 5. rows still going at max_len finish without </s>. Returns (kept positions (B, K) where computed,
        the finished </s> candidates (B, C) or None, whether this was the last step)."""
        B, K, G, C, device = self.B, self.K, self.G, cand.scores.size(1), self.device
        is_eos = cand.tokens == EOS_ID  # (B, C)
        any_eos = bool(is_eos.any())
        Kg, Cg = K // G, C // G
        ends = keep = None
        if any_eos:
            in_top = torch.arange(C, device=device) % Cg < Kg  # (C,) ranked within the top K of its group
            ends = is_eos & in_top & (cand.scores > NEG_INF)  # (B, C)
            _finish(self.fin, self.done, ends, cand.scores, cand.rows, cand.tokens, cand.logp, cand.antilm,
                    cand.extra, t, self.rank)
            keep = is_eos.view(B * G, Cg).to(torch.uint8).argsort(dim=1, stable=True)[:, :Kg]  # (B*G, Kg)
            keep = (keep + torch.arange(0, C, Cg, device=device).repeat(B).unsqueeze(1)).view(B, K)  # (B, K)
        elif G > 1 or self.tracer:
            keep = (torch.arange(Kg, device=device) + torch.arange(0, C, Cg, device=device).unsqueeze(1))
            keep = keep.view(1, K).expand(B, K)  # (B, K) the first Kg of each group
        columns = (cand.scores, cand.tokens, cand.rows, cand.logp, cand.antilm, cand.extra)
        if G == 1 and not any_eos:
            picked = [x[:, :K] if x is not None else None for x in columns]
        else:
            picked = [x.gather(1, keep) if x is not None else None for x in columns]
        scores, tokens, rows, tok_logp, tok_antilm, tok_extra = picked  # (B, K) each
        if any_eos:
            scores = scores.masked_fill(tokens == EOS_ID, NEG_INF)  # sampling: a row that drew </s> is over
        last = t == self.cfg.max_len - 1
        if last:
            _finish(self.fin, self.done, scores > NEG_INF, scores, rows, tokens, tok_logp, tok_antilm, tok_extra, t,
                    self.rank)
        self.scores, self._picked = scores, (tokens, rows, tok_logp, tok_antilm, tok_extra)
        return keep, ends, last

    def _advance(self, attn: Tensor, t: int) -> None:
        """6. record the back-pointers, reorder the states, feed the chosen tokens."""
        tokens, rows, tok_logp, tok_antilm, tok_extra = self._picked
        rows, self.tok = rows.reshape(-1), tokens.reshape(-1)  # (N,)
        hist = self.hist
        hist.parents.append(rows)
        hist.tokens.append(self.tok)
        hist.logps.append(tok_logp.reshape(-1))
        if tok_antilm is not None:
            hist.antilm.append(tok_antilm.reshape(-1))
        if tok_extra is not None:
            hist.extra.append(tok_extra.reshape(-1))
        if t == 0:  # one input row per prompt: pad to N rows so that the steps stack (rows >= B are never read)
            attn = torch.cat([attn, attn.new_zeros(self.B * self.K - self.B, attn.size(1))])
        hist.attn.append(attn)
        self.state = select_rows(self.state, rows)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, rows)  # (N, t+1, H)
        if self.prefix is not None:
            self.prefix = torch.cat([self.prefix.index_select(0, rows), self.tok.unsqueeze(1)], 1)  # (N, t+1)
        if self.lm_on:
            self.lm_on = self.anti.lm_needed(t + 1, self.prefix, self.scores.reshape(-1) > NEG_INF)
        if self.lm_on:
            self.lm_state = select_rows(self.lm_state, rows)

    def _drop_done(self, t: int) -> None:
        """8. drop the done prompts' rows: the steps left cost only the prompts still going."""
        K, device = self.K, self.device
        alive = [b for b, d in enumerate(self.done) if not d]
        keep_b = torch.tensor(alive, device=device)  # (B',)
        keep = (keep_b.unsqueeze(1) * K + torch.arange(K, device=device)).reshape(-1)  # (B'*K,)
        self.hist.select_last(keep, t)
        self.fin = [self.fin[b] for b in alive]
        self.prompt_ids = [self.prompt_ids[b] for b in alive]
        self.done = [False] * len(self.fin)
        self.B = len(self.fin)
        self.scores, self.tok = self.scores.index_select(0, keep_b), self.tok.index_select(0, keep)
        self.state, self.memK = select_rows(self.state, keep), select_memory(self.memK, keep)
        if self.lm_on:
            self.lm_state = select_rows(self.lm_state, keep)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, keep)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, keep)


class _Cands(NamedTuple):
    """The candidates of one step (B, C) each, with what the engine adds to a strategy's Candidates."""

    scores: Tensor
    tokens: Tensor
    beams: Tensor
    extra: Tensor | None
    rows: Tensor  # the input row each extends
    logp: Tensor  # the model's log-prob of its token
    antilm: Tensor | None  # the anti-LM part of its step, while it applies


def _gain_left(cfg: DecodeConfig, lm_on: bool, t: int, rank: Ranker | None) -> float:
    """Most a live row can still add to its score after step t: n_bonus per remaining token; unbounded while
    the anti-LM still applies after step t (``lm_on``; it adds -antilm * log p_LM >= 0) or when scores are
    length-normalised. (The repetition penalty and diverse beam's penalty only lower scores.)"""
    if rank is not None or lm_on:
        return math.inf
    return cfg.n_bonus * (cfg.max_len - 1 - t)


def _finish(finished: list[list[_Final]], done: list[bool], mask: Tensor, scores: Tensor, rows: Tensor,
            tokens: Tensor, logps: Tensor, antilm: Tensor | None, extra: Tensor | None, t: int,
            rank: Ranker | None) -> None:
    """Add the candidates under ``mask`` (B, X) of prompts that are not done to their finished lists."""
    if not bool(mask.any()):
        return
    b_idx, k_idx = mask.nonzero(as_tuple=True)
    zeros = [0.0] * len(b_idx)
    picked = [x[b_idx, k_idx].tolist() if x is not None else zeros
              for x in (scores, rows, tokens, logps, antilm, extra)]
    for b, score, row, token, logp, a, e in zip(b_idx.tolist(), *picked):
        if not done[b]:
            finished[b].append(_Final(rank(score, t + 1) if rank else score, score, t, row, token, logp, a, e))


def _update_done(done: list[bool], finished: list[list[_Final]], best_live: list[float], K: int, nbest: int,
                 gain_left: float) -> bool:
    """Mark prompts done: K finished, no live row, or no live row able to beat the nbest-th finished score."""
    newly = False
    for b, fin in enumerate(finished):
        if done[b]:
            continue
        if len(fin) >= K or best_live[b] == NEG_INF:
            done[b] = newly = True
        elif len(fin) >= nbest and gain_left < math.inf:
            nth = sorted((f.score for f in fin), reverse=True)[nbest - 1]
            if best_live[b] + gain_left <= nth:
                done[b] = newly = True
    return newly




def mmi_rerank(backward: Any, src: list[int], hyps: list[Hypothesis], lam: float) -> list[Hypothesis]:
    """Rescore ``hyps`` by (1 - lam) log p(T|S) + lam log p(S|T) and sort them, best first; a hypothesis with
    ``parts`` gets ``parts["mmi"]`` = new score - old score, so its parts still add up to its score."""
    if not hyps:
        return hyps
    replies = [[t for t in h.tokens if t != EOS_ID] for h in hyps]
    ok = [i for i, r in enumerate(replies) if r]  # an empty reply says nothing about the source: -inf
    back = [NEG_INF] * len(hyps)
    if ok:
        with torch.inference_mode():
            scores = sequence_logprobs(backward, [replies[i] for i in ok], [src] * len(ok)).tolist()
        for i, v in zip(ok, scores):
            back[i] = v
    for h, lp_back in zip(hyps, back):
        score = NEG_INF if lp_back == NEG_INF else (1 - lam) * sum(h.logprobs) + lam * lp_back
        if h.parts:  # the search parts stay; mmi holds what the rerank changed
            h.parts = {**h.parts, "mmi": h.parts.get("mmi", 0.0) + (score - h.score)}
        h.score = score
    return sorted(hyps, key=lambda h: -h.score)


# ----------------------------------------------------------------------------- entry point


def _check_inputs(model: Any, src: list[list[int]], cfg: DecodeConfig, lm: Any, backward: Any) -> None:
    if not src:
        raise ValueError("generate() needs at least one source sequence")
    V = getattr(getattr(model, "cfg", None), "vocab_size", None)
    for i, s in enumerate(src):
        if not s:
            raise ValueError(f"source sequence {i} is empty")
        if any(not _is_int(t) or t < 0 or (V is not None and t >= V) for t in s):
            raise ValueError(f"source sequence {i} has ids outside 0..{V - 1 if V else 'V-1'}")
    if cfg.antilm > 0 and cfg.gamma > 0 and lm is None:
        raise SettingError(f"antilm={cfg.antilm} needs a language model (lm=None); set antilm=0", field="antilm")
    if cfg.mmi_lambda > 0 and backward is None:
        raise SettingError(f"mmi_lambda={cfg.mmi_lambda} needs a backward model (backward=None); set mmi_lambda=0",
                           field="mmi_lambda")
    for name, other in (("lm", lm), ("backward", backward)):
        W = getattr(getattr(other, "cfg", None), "vocab_size", None)
        if other is not None and V is not None and W is not None and W != V:
            raise ValueError(f"the {name} model has vocab_size={W} but the seq2seq model has {V}")


@torch.inference_mode()
def generate(model: Any, src: list[list[int]], cfg: DecodeConfig, *, lm: Any = None, backward: Any = None,
             tokenizer: Tokenizer | None = None, trace: bool = False,
             own_turns: Sequence[Sequence[Sequence[int]]] | None = None,
             prefix_ids: Sequence[int] | None = None) -> list[Reply]:
    """Decode one reply per source sequence (token ids, no specials), all prompts in one batched search.
    ``trace``: fill each Reply's ``trace`` with every candidate of every step (see the module docstring);
    ``own_turns``: per prompt, the bot's own earlier turns (token ids) for ``no_repeat_context_ngram``;
    ``prefix_ids``: token ids every reply starts with, forced as ``cfg.prefix`` is but without a text round trip
    (a branch from a traced node forces its path's ids; see :func:`check_prefix_ids`); not with ``cfg.prefix``."""
    t0 = time.perf_counter()
    cfg.validate()
    _check_inputs(model, src, cfg, lm, backward)
    cls = STRATEGIES[cfg.strategy]
    generator = None
    if "seed" in cls.reads and cfg.seed is not None:
        generator = torch.Generator(device=_device(model)).manual_seed(cfg.seed)
    strategy = cls(cfg, generator)
    if strategy.needs_hidden and "return_hidden" not in inspect.signature(model.decode_step).parameters:
        raise ValueError(f"strategy={cfg.strategy!r} compares decoder states: the model's decode_step must accept "
                         "return_hidden=True")

    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids) if tokenizer else " ".join(str(i) for i in ids if i != EOS_ID)

    def piece(i: int) -> str:
        return tokenizer.id_to_token(i) if tokenizer else str(i)

    tracer = _Tracer(len(src), cfg, piece) if trace else None
    starts = None
    if cfg.gamma_words and cfg.antilm > 0 and cfg.gamma > 0:
        if tokenizer is None:
            raise ValueError("gamma_words=True counts words: pass the tokenizer (generate(..., tokenizer=...)) "
                             "or set gamma_words=False")
        starts = word_starts(tokenizer)
        V = getattr(getattr(model, "cfg", None), "vocab_size", None)
        if V is not None and len(starts) != V:
            raise ValueError(f"the tokenizer has {len(starts)} tokens but the model's vocab_size is {V}")
    if own_turns is not None and len(own_turns) != len(src):
        raise ValueError(f"own_turns: {len(own_turns)} for {len(src)} prompts; give one list per prompt")
    prefix = encode_prefix(cfg.prefix, tokenizer, cfg.max_len) if cfg.prefix else None
    if prefix_ids is not None:
        if cfg.prefix:
            raise SettingError("give the reply's start as prefix (text) or as prefix_ids, not both", field="prefix")
        prefix = check_prefix_ids(prefix_ids, getattr(getattr(model, "cfg", None), "vocab_size", None), cfg)
    results = _Search(model, src, cfg, lm, strategy, tracer, starts, own_turns, prefix).run()
    replies = []
    for b, (s, found) in enumerate(zip(src, results)):
        hyps, attention = [], {}
        for final, path in found:
            h = Hypothesis(path.tokens, text_of(path.tokens), final.score, path.logps, _parts(path, final, cfg),
                           [piece(i) for i in path.tokens])
            hyps.append(h)
            attention[id(h)] = path.attention  # (T, S_max)
        if cfg.mmi_lambda > 0:
            hyps = mmi_rerank(backward, s, hyps, cfg.mmi_lambda)
        best = hyps[0] if hyps else Hypothesis([], "", NEG_INF, [], zero_parts())
        att = attention[id(best)][:, : len(s)].tolist() if hyps else []  # (T, S) without padding
        replies.append(Reply(text=best.text, tokens=best.tokens, token_strs=[piece(i) for i in best.tokens],
                             logprobs=best.logprobs, score=best.score, nbest=hyps, attention=att,
                             source_tokens=[piece(i) for i in s], latency_s=0.0, settings=cfg.to_dict(),
                             trace=tracer.rows[b] if tracer else None))
    latency = time.perf_counter() - t0
    for r in replies:
        r.latency_s = latency
    return replies


