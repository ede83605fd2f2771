"""Decoding engine: greedy, beam search and sampling in one batched loop; anti-LM, length bonus, n-gram blocking
as score modifiers; MMI-bidi reranking of the n-best list.

Shape legend: B batch (prompts), K hypotheses kept per prompt (beams or samples), N = B*K rows,
C candidates per prompt, S source length, T target length, H hidden, V vocab, L layers.

One loop (:func:`generate`) owns the search. The prompts are encoded once; at step t (t tokens generated):
  1. the seq2seq model steps all rows at once (one row per prompt at t=0, where the K rows would all be <s>;
     N rows after), and during the first ``gamma`` steps the anti-LM steps the same rows;
  2. score modifiers, small callables ``(scores (N, V), step) -> scores (N, V)``, edit the step log-probs;
  3. the strategy proposes C candidates per prompt: beam search the top 2K of its K*V continuations, sampling
     one draw per row (K draws at t=0); greedy is beam search with K=1;
  4. </s> candidates ranked within the top K become finished hypotheses, the first K others the next rows, and
     recurrent states follow their rows. Rows still going at ``max_len`` finish without </s>. A prompt is done
     when it has K finished hypotheses (fairseq's rule; K=1 is greedy), when it has no live row, or when no
     live row can still beat its n-th best finished score (an exact bound, used only where one exists).
Hypotheses are rebuilt from back-pointers at the end, so a step never copies the history of the search.
Hypothesis and Reply tokens end with </s> when the model produced it; per-token lists are aligned with them.

    >>> cfg = DecodeConfig(strategy="beam", beam_size=10, antilm=0.5, gamma=5)
    >>> [reply] = generate(model, [tokenizer.encode("hi there")], cfg, lm=lm, tokenizer=tokenizer)
    >>> reply.text, reply.score, [h.text for h in reply.nbest]
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

from core.batching import collate
from core.model import Memory, Seq2Seq, State, map_state
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

NEG_INF = float("-inf")
STRATEGIES = ("greedy", "beam", "sample")
NEVER_GENERATED = (PAD_ID, BOS_ID, UNK_ID)  # special ids a reply never contains

# ----------------------------------------------------------------------------- settings


def _setting(default: Any, help: str, *, lo: Any = None, hi: Any = None, lo_open: bool = False,
             choices: tuple[str, ...] | None = None) -> Any:
    """A DecodeConfig field: ``hi`` may name another field (``"beam_size"``) that bounds this one."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "choices": choices})


@dataclass
class DecodeConfig:
    """How to decode. Constructing one validates it; bad values raise ValueError naming field, value and range."""

    strategy: str = _setting("beam", "greedy, beam or sample", choices=STRATEGIES)
    beam_size: int = _setting(10, "hypotheses kept per prompt: beams (beam) or samples ranked by score (sample); "
                              "greedy uses 1", lo=1, hi=50)
    nbest: int = _setting(5, "size of the n-best list returned with each reply", lo=1, hi="beam_size")
    max_len: int = _setting(30, "most tokens in a reply (a reply that reaches it ends without </s>)", lo=1, hi=100)
    min_len: int = _setting(1, "fewest tokens before </s> is allowed", lo=0, hi="max_len")
    antilm: float = _setting(0.0, "anti-LM weight: subtract antilm * log p_LM(token | prefix) during the search",
                             lo=0.0, hi=1.0)
    gamma: int = _setting(5, "the anti-LM penalty applies to the first gamma generated tokens", lo=0, hi=100)
    n_bonus: float = _setting(0.0, "reward added per generated token (not </s>): favours longer replies",
                              lo=0.0, hi=1.0)
    length_norm: bool = _setting(False, "rank finished hypotheses by score / length")
    mmi_lambda: float = _setting(0.0, "MMI-bidi rerank of the n-best: (1 - lam) log p(T|S) + lam log p(S|T), "
                                 "needs a backward model", lo=0.0, hi=1.0)
    temperature: float = _setting(1.0, "sampling temperature", lo=0.0, hi=5.0, lo_open=True)
    top_k: int = _setting(0, "sample among the k most likely tokens (0: off)", lo=0, hi=1000)
    top_p: float = _setting(1.0, "sample among the most likely tokens holding p of the mass (1: off)",
                            lo=0.0, hi=1.0, lo_open=True)
    no_repeat_ngram: int = _setting(0, "never repeat an n-gram of this size within a reply (0: off)", lo=0, hi=10)
    seed: int | None = _setting(None, "seed of the sampler (None: torch's global generator)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DecodeConfig:
        """Raise ValueError on the first field with a wrong type or an out-of-range value; return self."""
        for f in fields(self):
            _check_field(self, f.name, getattr(self, f.name))
        return self

    def with_overrides(self, **overrides: Any) -> DecodeConfig:
        """A validated copy with ``overrides`` applied. A lowered ``beam_size`` / ``max_len`` pulls down a
        ``nbest`` / ``min_len`` that was not given too, so ``beam_size=3`` alone never fails on the default
        ``nbest=5``."""
        return DecodeConfig(**self._merged(overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _merged(self, overrides: dict[str, Any]) -> dict[str, Any]:
        known = [f.name for f in fields(self)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"unknown decoding setting(s) {unknown}; known settings: {known}")
        values = {**asdict(self), **overrides}
        for name in known:
            bound = _FIELDS[name].metadata["hi"]
            lowered = isinstance(bound, str) and bound in overrides and name not in overrides
            if lowered and _is_int(values[bound]):
                values[name] = min(values[name], values[bound])
        return values


_FIELDS = {f.name: f for f in fields(DecodeConfig)}
_TYPES = typing.get_type_hints(DecodeConfig)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range(values: Any, name: str) -> tuple[Any, Any, str]:
    """(lo, hi, "[lo, hi]") of a field; a bound naming another field is read from ``values`` (dict or config)."""
    meta = _FIELDS[name].metadata
    lo, hi, hi_text = meta["lo"], meta["hi"], str(meta["hi"])
    if isinstance(hi, str):
        hi = values[hi] if isinstance(values, dict) else getattr(values, hi)
        hi_text = f"{meta['hi']} (= {hi})"
    return lo, hi, f"{'(' if meta['lo_open'] else '['}{lo}, {hi_text}]"


def _check_field(cfg: DecodeConfig, name: str, v: Any) -> None:
    meta, typ = _FIELDS[name].metadata, _TYPES[name]
    where = f"DecodeConfig.{name}={v!r}"
    if meta["choices"]:
        if v not in meta["choices"]:
            raise ValueError(f"{where}: choose one of {meta['choices']}")
        return
    if typ is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where}: must be True or False")
        return
    if typ == (int | None):
        if v is not None and not _is_int(v):
            raise ValueError(f"{where}: must be an int or None")
        return
    if typ is int and not _is_int(v):
        raise ValueError(f"{where}: must be an int ({type(v).__name__} given)")
    if typ is float and not (_is_number(v) and math.isfinite(v)):
        raise ValueError(f"{where}: must be a finite number")
    lo, hi, text = _range(cfg, name)
    if (v <= lo if meta["lo_open"] else v < lo) or v > hi:
        raise ValueError(f"{where} is out of range: allowed {text}")


# ----------------------------------------------------------------------------- results


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, ending with </s> unless the hypothesis hit max_len
    text: str
    score: float  # search score (after MMI rerank: the rerank score)
    logprobs: list[float]  # log p(token | prefix, source) from the seq2seq model, one per token


@dataclass
class Reply:
    text: str
    tokens: list[int]
    token_strs: list[str]  # readable piece of each token
    logprobs: list[float]  # per-token log p from the seq2seq model
    score: float  # total search score of the best hypothesis
    nbest: list[Hypothesis]  # best first
    attention: list[list[float]]  # T rows (one per token), each S floats over the source tokens
    source_tokens: list[str]
    latency_s: float  # wall time of the generate() call that produced this reply
    settings: dict[str, Any]  # the effective DecodeConfig


# ----------------------------------------------------------------------------- beam reshapes


def tile(x: Tensor, K: int, dim: int = 0) -> Tensor:
    """[B, ...] -> [B*K, ...] along ``dim``: row b repeated K times as rows b*K .. b*K+K-1."""
    return x.repeat_interleave(K, dim=dim)


def fold(x: Tensor, K: int) -> Tensor:
    """[B*K, ...] -> [B, K, ...]"""
    return x.view(-1, K, *x.shape[1:])


def tile_memory(mem: Memory, K: int) -> Memory:
    """Memory of B prompts -> Memory of B*K rows (outputs [B, S, H] -> [B*K, S, H], state [L, B, H] -> [L, B*K, H])."""
    return Memory(tile(mem.outputs, K), tile(mem.mask, K), map_state(mem.state, lambda h: tile(h, K, dim=1)))


def select_rows(state: State, rows: Tensor) -> State:
    """[L, N, H] -> [L, N, H]: row i of the result is row ``rows[i]`` of ``state``."""
    return map_state(state, lambda h: h.index_select(1, rows))


# ----------------------------------------------------------------------------- score modifiers


class Step(NamedTuple):
    """What a score modifier may look at, for all rows of one step."""

    t: int  # tokens generated so far (0 at the first step)
    prefix: Tensor | None  # (N, t) tokens generated so far, kept only when a modifier needs_prefix
    lm_logp: Tensor | None  # (N, V) language-model log-probs, during the first lm_steps steps


Modifier = Callable[[Tensor, Step], Tensor]


class BanTokens:
    """Never generate ``ids`` (the specials <pad>, <s>, <unk>)."""

    def __init__(self, ids: Sequence[int] = NEVER_GENERATED) -> None:
        self.ids = torch.tensor(list(ids))

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if self.ids.device != scores.device:
            self.ids = self.ids.to(scores.device)
        return scores.index_fill(1, self.ids, NEG_INF)  # (N, V)


class MinLength(BanTokens):
    """Block </s> while fewer than ``min_len`` tokens have been generated."""

    def __init__(self, min_len: int, eos_id: int = EOS_ID) -> None:
        super().__init__([eos_id])
        self.min_len = min_len

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        return super().__call__(scores, step) if step.t < self.min_len else scores


class LengthBonus:
    """Add ``bonus`` to every token but </s>: n_bonus * |T| in the score of a finished reply."""

    def __init__(self, bonus: float, eos_id: int = EOS_ID) -> None:
        self.bonus, self.eos_id = bonus, eos_id

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        out = scores + self.bonus  # (N, V)
        out[:, self.eos_id] = scores[:, self.eos_id]
        return out


class AntiLM:
    """Li et al. (2016) MMI-antiLM: subtract ``weight * log p_LM(token | prefix)`` for the first ``gamma``
    tokens (</s> included), so tokens any reply would use lose to tokens that fit this prompt."""

    def __init__(self, weight: float, gamma: int) -> None:
        self.weight, self.gamma = weight, gamma
        self.lm_steps = gamma  # the engine steps the language model only while t < lm_steps

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.t >= self.gamma:
            return scores
        return scores - self.weight * step.lm_logp.clamp(min=-1e4)  # (N, V); clamp: -inf - -inf is NaN


class NoRepeatNGram:
    """Block a token that would complete an n-gram already present in the row's prefix."""

    needs_prefix = True

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        n, prefix = self.n, step.prefix  # prefix (N, t)
        if prefix is None or prefix.size(1) < n:
            return scores
        if n == 1:
            return scores.scatter(1, prefix, NEG_INF)  # every used token is blocked
        grams = prefix.unfold(1, n, 1)  # (N, t-n+1, n)
        seen = (grams[:, :, :-1] == prefix[:, None, -(n - 1):]).all(-1)  # (N, t-n+1) same first n-1 tokens
        hits = torch.zeros_like(scores).scatter_add_(1, grams[:, :, -1], seen.to(scores.dtype))  # (N, V)
        return scores.masked_fill(hits > 0, NEG_INF)


def build_modifiers(cfg: DecodeConfig) -> list[Modifier]:
    """The modifiers ``cfg`` asks for; zero weights add none, so antilm=0 / n_bonus=0 is plain beam search."""
    mods: list[Modifier] = [BanTokens()]
    if cfg.min_len > 0:
        mods.append(MinLength(cfg.min_len))
    if cfg.no_repeat_ngram > 0:
        mods.append(NoRepeatNGram(cfg.no_repeat_ngram))
    if cfg.antilm > 0 and cfg.gamma > 0:
        mods.append(AntiLM(cfg.antilm, cfg.gamma))
    if cfg.n_bonus > 0:
        mods.append(LengthBonus(cfg.n_bonus))
    return mods


# ----------------------------------------------------------------------------- strategies

Candidates = tuple[Tensor, Tensor, Tensor]  # scores, tokens, beams (row within the prompt): each (B, C)


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


class BeamSearch:
    """Keep the best continuations: the top 2K of the R*V candidates of each prompt (2K so that K survive
    even when K of them are </s>), best first."""

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int) -> Candidates:
        """scores (B, R) running totals, step_scores (B, R, V) -> candidates (B, 2K); R = 1 at the first step."""
        B, R, V = step_scores.shape
        total = (scores.unsqueeze(-1) + step_scores).view(B, R * V)  # (B, R*V)
        top, idx = wide_topk(total, min(2 * K, R * V))  # (B, C)
        tokens, beams = idx % V, torch.div(idx, V, rounding_mode="floor")
        if top.size(1) < 2 * K:  # a vocabulary smaller than 2K: pad with dead candidates
            pad = 2 * K - top.size(1)
            top = torch.cat([top, top.new_full((B, pad), NEG_INF)], 1)
            tokens, beams = (torch.cat([x, x.new_zeros(B, pad)], 1) for x in (tokens, beams))
        return top, tokens, beams


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (N, V); the rest become -inf. k=0: unchanged."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the most likely tokens of each row (N, V) until they hold ``p`` of the probability mass (nucleus);
    the token that crosses ``p`` is kept, so every row keeps at least one. p=1: unchanged."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # (N, V) mass of the more likely tokens
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, mass_before >= p)  # vocabulary order
    return logits.masked_fill(drop, NEG_INF)


class Sampler:
    """Draws from softmax(step_scores / temperature), restricted by top-k then top-p: K draws from the one row
    of each prompt at the first step, then one draw per row."""

    def __init__(self, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> None:
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator

    def __call__(self, scores: Tensor, step_scores: Tensor, K: int) -> Candidates:
        """scores (B, R) running totals, step_scores (B, R, V) -> K candidates per prompt, (B, K)."""
        B, R, V = step_scores.shape
        flat = step_scores.view(B * R, V)  # (B*R, V)
        logits = top_p_filter(top_k_filter(flat / self.temperature, self.top_k), self.top_p)
        dead = torch.isneginf(logits).all(-1, keepdim=True)  # (B*R, 1) everything blocked: draw </s>, score -inf
        logits = logits.masked_fill(dead & (torch.arange(V, device=flat.device) == EOS_ID), 0.0)
        tok = torch.multinomial(logits.softmax(-1), K // R, replacement=True, generator=self.generator)
        picked = flat.gather(1, tok).view(B, K)  # (B, K) step score of each draw
        beams = torch.arange(R, device=flat.device).repeat_interleave(K // R).expand(B, K)
        return scores.repeat_interleave(K // R, dim=1) + picked, tok.view(B, K), beams


# ----------------------------------------------------------------------------- the engine


@dataclass
class _Final:
    """A finished hypothesis, by back-pointer: its last token came from input row ``row`` at step ``t``."""

    score: float
    t: int
    row: int
    token: int
    logp: float


@dataclass
class _History:
    """Per step: for each new row, its parent row, token, model log-prob; and the attention of each input row."""

    parents: list[Tensor] = field(default_factory=list)  # (N,) each
    tokens: list[Tensor] = field(default_factory=list)  # (N,)
    logps: list[Tensor] = field(default_factory=list)  # (N,)
    attn: list[Tensor] = field(default_factory=list)  # (N, S)

    def paths(self, finals: list[_Final]) -> list[tuple[list[int], list[float], Tensor]]:
        """Tokens, log-probs and attention (T, S) of each finished hypothesis, by following parents."""
        if not finals:
            return []
        parents, tokens, logps = (torch.stack(h).tolist() for h in (self.parents, self.tokens, self.logps))
        attn = torch.stack(self.attn)  # (T, N, S)
        out = []
        for f in finals:
            toks, lps, rows = [f.token], [f.logp], [f.row]
            r = f.row
            for s in range(f.t - 1, -1, -1):
                toks.append(tokens[s][r])
                lps.append(logps[s][r])
                r = parents[s][r]
                rows.append(r)
            steps = torch.arange(f.t + 1, device=attn.device)
            out.append((toks[::-1], lps[::-1], attn[steps, torch.tensor(rows[::-1], device=attn.device)]))
        return out


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


def _search(model: Any, src: list[list[int]], cfg: DecodeConfig, lm: Any, generator: torch.Generator | None
            ) -> list[list[tuple[float, list[int], list[float], Tensor]]]:
    """The search loop. Returns, per prompt, the n-best (score, tokens, logprobs, attention (T, S)), best first."""
    device = _device(model)
    B = len(src)
    K = 1 if cfg.strategy == "greedy" else cfg.beam_size
    nbest = min(cfg.nbest, K)
    strategy = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, generator) if cfg.strategy == "sample" else BeamSearch()
    modifiers = build_modifiers(cfg)
    lm_steps = max([getattr(m, "lm_steps", 0) for m in modifiers])
    keep_prefix = any(getattr(m, "needs_prefix", False) for m in modifiers)

    # 1. encode once; the first step runs one row per prompt (the K rows would all be <s>), then K rows
    src_t, lens = _pad(src, device)  # (B, S), (B,)
    mem1 = model.encode(src_t, lens)  # outputs (B, S, H)
    memK = tile_memory(mem1, K)  # outputs (N, S, H)
    state = mem1.state  # (L, B, H), (L, N, H) after the first step
    lm_state = lm.init_state(B, device) if lm_steps else None
    tok = torch.full((B,), BOS_ID, dtype=torch.long, device=device)  # (B,), then (N,)
    prefix = torch.empty((B, 0), dtype=torch.long, device=device) if keep_prefix else None  # (N, t)
    scores = torch.zeros(B, 1, device=device)  # (B, R) running scores; R = 1 rows per prompt, then K
    hist = _History()
    finished: list[list[_Final]] = [[] for _ in range(B)]
    done = [False] * B

    for t in range(cfg.max_len):
        # 2. step the model (and the anti-LM while it matters)
        R = scores.size(1)
        logp, state, attn = model.decode_step(tok, state, mem1 if t == 0 else memK)  # (B*R, V), state, (B*R, S)
        lm_logp = None
        if t < lm_steps:
            lm_logp, lm_state = lm.decode_step(tok, lm_state)  # (B*R, V)
        step = Step(t, prefix, lm_logp)
        step_scores = logp
        for mod in modifiers:
            step_scores = mod(step_scores, step)  # (B*R, V)
        V = step_scores.size(1)

        # 3. candidates
        cand_scores, cand_tokens, cand_beams = strategy(scores, fold(step_scores, R), K)  # (B, C) each
        cand_rows = cand_beams + (torch.arange(B, device=device) * R).unsqueeze(1)  # (B, C) input row of each
        cand_logp = logp.flatten().take(cand_rows * V + cand_tokens)  # (B, C) model log-prob of its token
        is_eos = cand_tokens == EOS_ID  # (B, C)
        any_eos = bool(is_eos.any())

        # 4. </s> among the top K finishes a hypothesis; the first K other candidates become the new rows
        if any_eos:
            ends = is_eos[:, :K] & (cand_scores[:, :K] > NEG_INF)  # (B, K)
            _finish(finished, done, ends, cand_scores[:, :K], cand_rows[:, :K], cand_tokens[:, :K],
                    cand_logp[:, :K], t, cfg.length_norm)
            keep = is_eos.to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (B, K) non-EOS first, in rank order
            scores, tokens, rows, tok_logp = (x.gather(1, keep) for x in (cand_scores, cand_tokens, cand_rows,
                                                                          cand_logp))
            scores = scores.masked_fill(tokens == EOS_ID, NEG_INF)  # sampling: a row that drew </s> is over
        else:
            scores, tokens, rows, tok_logp = (x[:, :K] for x in (cand_scores, cand_tokens, cand_rows, cand_logp))
        if t == cfg.max_len - 1:  # 5. rows still going at max_len finish without </s>
            _finish(finished, done, scores > NEG_INF, scores, rows, tokens, tok_logp, t, cfg.length_norm)

        # 6. record back-pointers, reorder the states, feed the chosen tokens
        rows, tok = rows.reshape(-1), tokens.reshape(-1)  # (N,)
        hist.parents.append(rows)
        hist.tokens.append(tok)
        hist.logps.append(tok_logp.reshape(-1))
        if t == 0:  # one input row per prompt: pad to N rows so that the steps stack (rows >= B are never read)
            attn = torch.cat([attn, attn.new_zeros(B * K - B, attn.size(1))])
        hist.attn.append(attn)
        state = select_rows(state, rows)
        if t + 1 < lm_steps:
            lm_state = select_rows(lm_state, rows)
        if prefix is not None:
            prefix = torch.cat([prefix.index_select(0, rows), tok.unsqueeze(1)], 1)  # (N, t+1)

        # 7. which prompts are done; their rows stop competing
        newly = _update_done(done, finished, scores.max(1).values.tolist(), K, nbest,
                             _gain_left(cfg, lm_steps, t))
        if all(done):
            break
        if newly:
            scores = scores.masked_fill(torch.tensor(done, device=device).unsqueeze(1), NEG_INF)

    out = []
    for b in range(B):
        best = sorted(finished[b], key=lambda f: -f.score)[:nbest]
        out.append([(f.score, toks, lps, att) for f, (toks, lps, att) in zip(best, hist.paths(best))])
    return out


def _gain_left(cfg: DecodeConfig, lm_steps: int, t: int) -> float:
    """Most a live row can still add to its score after step t: n_bonus per remaining token; unbounded while
    the anti-LM still applies (it adds -antilm * log p_LM >= 0) or when scores are length-normalised."""
    if cfg.length_norm or t + 1 < lm_steps:
        return math.inf
    return cfg.n_bonus * (cfg.max_len - 1 - t)


def _finish(finished: list[list[_Final]], done: list[bool], mask: Tensor, scores: Tensor, rows: Tensor,
            tokens: Tensor, logps: Tensor, t: int, length_norm: bool) -> None:
    """Add the candidates under ``mask`` (B, K) of prompts that are not done to their finished lists."""
    if not bool(mask.any()):
        return
    b_idx, k_idx = mask.nonzero(as_tuple=True)
    picked = [x[b_idx, k_idx].tolist() for x in (scores, rows, tokens, logps)]
    for b, score, row, token, logp in zip(b_idx.tolist(), *picked):
        if not done[b]:
            finished[b].append(_Final(score / (t + 1) if length_norm else score, t, row, token, logp))


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


# ----------------------------------------------------------------------------- MMI-bidi


def sequence_logprobs(model: Seq2Seq, src: list[list[int]], tgt: list[list[int]], *, mean: bool = False,
                      min_len: int = 1, repeat: int = 1, temperature: float = 1.0,
                      eos: list[bool] | None = None) -> Tensor:
    """log p(tgt + </s> | src) per pair, (N,), teacher-forced in one batch; ``mean`` divides by the token count.

    The distribution is the one the decoders sample from (<pad> <s> <unk> excluded, no </s> before ``min_len``
    tokens), so a policy gradient on these log-probs cannot push probability into tokens that are never
    generated; ``temperature`` scales the logits as the sampler does. ``eos[i] = False`` leaves out the final
    </s> term of pair i (a sample cut at max_len never drew it). ``repeat=R`` scores every source against R
    targets (``tgt`` holds len(src) * R of them, R per source in order) with one encoder pass per source.
    Keeps the autograd graph; wrap in ``torch.no_grad`` to score only."""
    device = next(model.parameters()).device
    srcs = collate([(s or [PAD_ID], [PAD_ID]) for s in src]).to(device)
    mem = model.encode(srcs.src, srcs.src_lens)  # N sources
    if repeat > 1:
        mem = tile_memory(mem, repeat)  # [N, ...] -> [N*R, ...]
    tgts = collate([([PAD_ID], t) for t in tgt]).to(device)
    logits, _, _ = model.decoder(tgts.tgt_in, mem.state, mem)  # (N*R, T, V)
    logits = logits.float() / temperature
    logits[..., list(NEVER_GENERATED)] = float("-inf")  # the decoders never emit these: same distribution
    logits[:, :min_len, EOS_ID] = float("-inf")  # nor </s> before min_len tokens
    logp = torch.log_softmax(logits, -1).gather(2, tgts.tgt_out.unsqueeze(-1)).squeeze(-1)  # (N*R, T)
    mask = tgts.tgt_mask  # (N*R, T)
    if eos is not None:
        lengths = torch.tensor([len(t) for t in tgt], device=device)  # (N*R,) the </s> sits at index len(t)
        drop = ~torch.tensor(eos, device=device)
        mask = mask & ~(drop.unsqueeze(1) & (torch.arange(mask.size(1), device=device) == lengths.unsqueeze(1)))
    total = torch.where(mask, logp, 0.0).sum(1)  # (N*R,) padding may be -inf: select, never multiply
    return total / mask.sum(1) if mean else total


def mmi_rerank(backward: Any, src: list[int], hyps: list[Hypothesis], lam: float) -> list[Hypothesis]:
    """Rescore ``hyps`` by (1 - lam) log p(T|S) + lam log p(S|T) and sort them, best first."""
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
        h.score = NEG_INF if lp_back == NEG_INF else (1 - lam) * sum(h.logprobs) + lam * lp_back
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
        raise ValueError(f"antilm={cfg.antilm} needs a language model (lm=None); set antilm=0")
    if cfg.mmi_lambda > 0 and backward is None:
        raise ValueError(f"mmi_lambda={cfg.mmi_lambda} needs a backward model (backward=None); set mmi_lambda=0")
    for name, other in (("lm", lm), ("backward", backward)):
        W = getattr(getattr(other, "cfg", None), "vocab_size", None)
        if other is not None and V is not None and W is not None and W != V:
            raise ValueError(f"the {name} model has vocab_size={W} but the seq2seq model has {V}")


@torch.inference_mode()
def generate(model: Any, src: list[list[int]], cfg: DecodeConfig, *, lm: Any = None, backward: Any = None,
             tokenizer: Tokenizer | None = None) -> list[Reply]:
    """Decode one reply per source sequence (token ids, no specials), all prompts in one batched search."""
    t0 = time.perf_counter()
    cfg.validate()
    _check_inputs(model, src, cfg, lm, backward)
    generator = None
    if cfg.strategy == "sample" and cfg.seed is not None:
        generator = torch.Generator(device=_device(model)).manual_seed(cfg.seed)

    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids) if tokenizer else " ".join(str(i) for i in ids if i != EOS_ID)

    def pieces(ids: list[int]) -> list[str]:
        return [tokenizer.id_to_token(i) for i in ids] if tokenizer else [str(i) for i in ids]

    results = _search(model, src, cfg, lm, generator)
    replies = []
    for s, found in zip(src, results):
        hyps = [Hypothesis(toks, text_of(toks), score, lps) for score, toks, lps, _ in found]
        attention = {id(h): att for h, (_, _, _, att) in zip(hyps, found)}  # (T, S_max) each
        if cfg.mmi_lambda > 0:
            hyps = mmi_rerank(backward, s, hyps, cfg.mmi_lambda)
        best = hyps[0] if hyps else Hypothesis([], "", NEG_INF, [])
        att = attention[id(best)][:, : len(s)].tolist() if hyps else []  # (T, S) without padding
        replies.append(Reply(text=best.text, tokens=best.tokens, token_strs=pieces(best.tokens),
                             logprobs=best.logprobs, score=best.score, nbest=hyps, attention=att,
                             source_tokens=pieces(s), latency_s=0.0, settings=cfg.to_dict()))
    latency = time.perf_counter() - t0
    for r in replies:
        r.latency_s = latency
    return replies
