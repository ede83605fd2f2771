"""Decoding engine: one batched search loop with the strategies of :mod:`core.strategies` plugged in (greedy,
beam, sampling, diverse beam, contrastive); anti-LM, length bonus, repetition penalty, n-gram blocking as score
modifiers; GNMT length penalty in the finishing rule; MMI-bidi reranking of the n-best list; an optional trace.

Shape legend: B batch (prompts), K hypotheses kept per prompt (beams or samples), N = B*K rows,
C candidates per prompt, S source length, T target length, H hidden, V vocab, L layers.

One loop (:func:`generate`) owns the search. The prompts are encoded once; at step t (t tokens generated):
  1. the seq2seq model steps all rows at once (one row per prompt at t=0, where the K rows would all be <s>;
     N rows after), and while the anti-LM applies (the first ``gamma`` tokens, or with ``gamma_words`` until
     every live row has finished ``gamma`` words) the language model steps the same rows;
  2. score modifiers, small callables ``(scores (N, V), step) -> scores (N, V)``, edit the step log-probs;
  3. the strategy object (``STRATEGIES[cfg.strategy]``) proposes C candidates per prompt in rank order: beam
     search the top 2K of its K*V continuations, sampling one draw per row (K draws at t=0), greedy is beam
     search with K=1, diverse beam G groups of 2K/G, contrastive the top_k tokens re-ranked;
  4. </s> candidates ranked within the top K (of each group) become finished hypotheses, the first K others the
     next rows, and recurrent states follow their rows. Rows still going at ``max_len`` finish without </s>.
     A finished score is divided by |Y| (``length_norm``) or ((5 + |Y|) / 6) ** length_penalty (GNMT). A prompt
     is done when it has K finished hypotheses (fairseq's rule; K=1 is greedy), when it has no live row, or when
     no live row can still beat its n-th best finished score (an exact bound, used only where one exists).
     A done prompt leaves the batch: its rows, encoder memory and states are dropped before the next step, so
     the steps left cost only the prompts still going (with the trace on, its rows stay, masked).
Hypotheses are rebuilt from back-pointers at the end, so a step never copies the history of the search.
Hypothesis and Reply tokens end with </s> when the model produced it; per-token lists are aligned with them.

Score parts: every hypothesis carries ``parts`` that add up to its ``score`` (to float rounding):
  logp        sum of log p(t_k | t_<k, S), the seq2seq model's own log-probs;
  antilm      - antilm * sum_{k < gamma} log p_LM(t_k | t_<k): the anti-LM penalty as added (positive; with
              gamma_words the sum runs over the pieces of the first gamma words);
  bonus       n_bonus * (tokens that are not </s>), plus what the length normalisation (length_norm or
              length_penalty) changed: finished score - search total;
  diversity   the Hamming penalties diverse beam search subtracted (<= 0);
  repetition  what the repetition penalty changed: (theta - 1) * log p of each repeated token (<= 0 for theta > 1);
  mmi         what the MMI-bidi rerank changed: (1 - lam) log p(T|S) + lam log p(S|T) - the search score.
So after an MMI rerank the search parts stay as they were and ``mmi`` holds the difference.

Trace (``generate(..., trace=True)``, off by default and then free): ``Reply.trace`` lists, step by step, every
candidate of the step: ``{"step", "id", "parent", "token", "text", "logp", "score", "parts", "status"}``; ids
number the candidates of one prompt from 1 (``parent`` 0 is the start, <s>), ``logp`` is the step log-prob,
``score`` / ``parts`` are cumulative (a finished one's score is its ranking score), ``status`` is ``kept``,
``pruned`` or ``finished``.

    >>> cfg = DecodeConfig(strategy="beam", beam_size=10, antilm=0.5, gamma=5)
    >>> [reply] = generate(model, [tokenizer.encode("hi there")], cfg, lm=lm, tokenizer=tokenizer)
    >>> reply.text, reply.score, [(h.text, h.parts) for h in reply.nbest]
    >>> describe_settings(reply.settings)        # 'beam K=10 · anti-LM 0.5 (gamma 5) · max 30'
    >>> reply.to_json()                          # the reply as JSON-safe data: a -inf score or log p is None
"""

from __future__ import annotations

import inspect
import math
import time
import typing
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

from core.batching import collate
from core.errors import SettingError
from core.model import Memory, Seq2Seq, State, map_state
from core.strategies import (
    STRATEGIES,
    Candidates,
    StepContext,
    Strategy,
    min_p_filter,
    top_k_filter,
    top_p_filter,
    typical_filter,
    wide_topk,
)
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

__all__ = ["STRATEGIES", "Candidates", "DecodeConfig", "Hypothesis", "Reply", "StepContext", "Strategy",
           "UIControl", "describe_settings", "fields_for", "fold", "generate", "min_p_filter", "mmi_rerank",
           "select_rows", "sequence_logprobs", "tile", "tile_memory", "top_k_filter", "top_p_filter",
           "typical_filter", "ui_controls", "wide_topk"]

NEG_INF = float("-inf")
NEVER_GENERATED = (PAD_ID, BOS_ID, UNK_ID)  # special ids a reply never contains
SPACE_MARK = "\u0120"  # "Ġ": how byte-level BPE writes the space that begins a word
UI_GROUPS = ("main", "search", "sampling")
MAX_PREFIX_CHARS = 400  # the longest forced reply prefix, in characters

# ----------------------------------------------------------------------------- settings


def _setting(default: Any, help: str, *, lo: Any = None, hi: Any = None, lo_open: bool = False,
             choices: Any = None, label: str = "", step: float | None = None, group: str | None = None,
             ui_lo: float | None = None, ui_hi: float | None = None) -> Any:
    """A DecodeConfig field: ``hi`` may name another field (``"beam_size"``) that bounds this one. UI metadata:
    ``label``, slider ``step``, ``group`` (main, search, sampling; None: not a UI control) and ``ui_lo`` /
    ``ui_hi``, the slider's range where the core range is too wide (or open) for a slider."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "choices": choices, "label": label, "step": step, "group": group,
                                            "ui_lo": ui_lo, "ui_hi": ui_hi})


@dataclass
class DecodeConfig:
    """How to decode. Constructing one validates it; a bad value raises :class:`SettingError` (a ValueError)
    carrying its ``field`` and, for a numeric setting, its allowed ``range``; the message names both too.
    Each field's metadata is the one source of its default, range, help and UI control (:func:`ui_controls`)."""

    strategy: str = _setting("beam", "decoder: " + ", ".join(STRATEGIES), choices=STRATEGIES, label="Decoder")
    beam_size: int = _setting(10, "hypotheses kept per prompt: beams (beam, diverse_beam) or samples ranked by "
                              "score (sample); greedy and contrastive use 1", lo=1, hi=50, label="Beam size K",
                              step=1, group="main", ui_hi=20)
    nbest: int = _setting(5, "size of the n-best list returned with each reply", lo=1, hi="beam_size",
                          label="n-best size", step=1)
    max_len: int = _setting(30, "most tokens in a reply (a reply that reaches it ends without </s>)", lo=1, hi=100,
                            label="Max reply length", step=1, group="search")
    min_len: int = _setting(1, "fewest tokens before </s> is allowed", lo=0, hi="max_len", label="Min reply length",
                            step=1)
    antilm: float = _setting(0.0, "anti-LM weight: subtract antilm * log p_LM(token | prefix) during the search",
                             lo=0.0, hi=1.0, label="Anti-LM weight", step=0.05, group="main")
    gamma: int = _setting(5, "the anti-LM penalty applies to the first gamma generated tokens (or words, with "
                          "gamma_words)", lo=0, hi=100, label="Anti-LM span gamma", step=1, group="search", ui_hi=20)
    gamma_words: bool = _setting(False, "count the anti-LM span gamma in words, not tokens: every piece of the "
                                 "first gamma words is penalised, so a rare word fragment is not rewarded piece by "
                                 "piece (needs the tokenizer)", label="Gamma counts words", group="search")
    antilm_min_p: float = _setting(0.0, "anti-LM plausibility floor: the penalty applies only to tokens the model "
                                   "gives at least this share of its top token's probability, so an implausible "
                                   "symbol or fragment is never promoted (0: everywhere)", lo=0.0, hi=1.0,
                                   label="Anti-LM floor", step=0.01, group="search")
    n_bonus: float = _setting(0.0, "reward added per generated token (not </s>): favours longer replies",
                              lo=0.0, hi=1.0, label="Length bonus", step=0.05, group="main")
    length_norm: bool = _setting(False, "rank finished hypotheses by score / length", label="Length-normalised")
    mmi_lambda: float = _setting(0.0, "MMI-bidi rerank of the n-best: (1 - lam) log p(T|S) + lam log p(S|T), "
                                 "needs a backward model", lo=0.0, hi=1.0, label="MMI-bidi weight", step=0.05,
                                 group="search")
    temperature: float = _setting(1.0, "sampling temperature", lo=0.0, hi=5.0, lo_open=True, label="Temperature",
                                  step=0.05, group="sampling", ui_lo=0.05, ui_hi=2.0)
    top_k: int = _setting(0, "sample among the k most likely tokens (0: off); contrastive: the candidates of "
                          "each step", lo=0, hi=1000, label="Top-k", step=1, group="sampling", ui_hi=100)
    top_p: float = _setting(1.0, "sample among the most likely tokens holding p of the mass (1: off)",
                            lo=0.0, hi=1.0, lo_open=True, label="Top-p", step=0.05, group="sampling", ui_lo=0.05)
    no_repeat_ngram: int = _setting(0, "never repeat an n-gram of this size within a reply (0: off)", lo=0, hi=10,
                                    label="No-repeat n-gram", step=1, group="search", ui_hi=4)
    no_repeat_context_ngram: int = _setting(0, "never say an n-gram of this size that the bot itself said in an "
                                            "earlier turn of the conversation (ParlAI's context blocking; needs "
                                            "the history; 0: off)", lo=0, hi=10,
                                            label="No-repeat context n-gram", step=1, group="search", ui_hi=4)
    seed: int | None = _setting(None, "seed of the sampler (None: torch's global generator)", label="Seed")
    prefix: str = _setting("", "text the reply must start with: the search goes on from it, and the score counts "
                           "its tokens (log p and every part) like any other; '' (off)", hi=MAX_PREFIX_CHARS,
                           label="Reply starts with")
    delay_tokens: int = _setting(2, "delayed_beam: the first tokens of the reply are sampled (with the sampling "
                                 "settings), the rest is beam search", lo=0, hi=100,
                                 label="Delayed beam: sampled tokens", step=1, group="sampling", ui_hi=10)
    num_groups: int = _setting(1, "diverse_beam: groups the beams are split into (beam_size must be a multiple)",
                               lo=1, hi="beam_size", label="Diverse beam groups", step=1, group="search", ui_hi=20)
    diversity_penalty: float = _setting(0.0, "diverse_beam: score lost per earlier group that chose the same "
                                        "token at this step (Hamming diversity)", lo=0.0, hi=10.0,
                                        label="Diversity penalty", step=0.1, group="search", ui_hi=3.0)
    penalty_alpha: float = _setting(0.0, "contrastive: weight of the degeneration penalty (max cosine of the "
                                    "next state to earlier states); 0 is greedy", lo=0.0, hi=1.0,
                                    label="Contrastive alpha", step=0.05, group="search")
    repetition_penalty: float = _setting(1.0, "CTRL repetition penalty theta on tokens already in the reply: "
                                         "log p -> theta * log p (1: off)", lo=0.0, hi=10.0, lo_open=True,
                                         label="Repetition penalty", step=0.05, group="search", ui_lo=1.0,
                                         ui_hi=2.0)
    length_penalty: float = _setting(0.0, "GNMT length penalty alpha: rank finished hypotheses by "
                                     "score / ((5 + |Y|) / 6) ** alpha (0: off)", lo=0.0, hi=2.0,
                                     label="Length penalty alpha", step=0.1, group="search")
    typical_p: float = _setting(1.0, "typical sampling: keep the tokens whose surprise is closest to the entropy "
                                "until they hold this mass (1: off)", lo=0.0, hi=1.0, lo_open=True,
                                label="Typical-p", step=0.05, group="sampling", ui_lo=0.05)
    min_p: float = _setting(0.0, "min-p sampling: keep the tokens with p >= min_p * p_max (0: off)", lo=0.0,
                            hi=1.0, label="Min-p", step=0.05, group="sampling")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DecodeConfig:
        """Raise SettingError on the first field with a wrong type or an out-of-range value, or on settings that
        do not fit together; return self."""
        for f in fields(self):
            _check_field(self, f.name, getattr(self, f.name))
        if self.length_norm and self.length_penalty > 0:
            raise SettingError(f"length_norm=True and length_penalty={self.length_penalty} both rank by length: "
                               "use one of them", field="length_norm")
        STRATEGIES[self.strategy].check(self)
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
            raise SettingError(f"unknown decoding setting(s) {unknown}; known settings: {known}", field=unknown[0])
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
    """SettingError naming ``name`` (and, for a numeric field, its range) unless ``v`` fits the field."""
    meta, typ = _FIELDS[name].metadata, _TYPES[name]
    where = f"DecodeConfig.{name}={v!r}"
    numeric = typ in (int, float) and (meta["lo"] is not None or meta["hi"] is not None)
    bounds = _range(cfg, name) if numeric else None

    def fail(problem: str) -> SettingError:
        return SettingError(problem, field=name, range=bounds[:2] if bounds else None)

    if meta["choices"]:
        if v not in meta["choices"]:
            raise fail(f"{where}: choose one of {tuple(meta['choices'])}")
        return
    if typ is bool:
        if not isinstance(v, bool):
            raise fail(f"{where}: must be True or False")
        return
    if typ is str:
        if not isinstance(v, str):
            raise fail(f"{where}: must be a string ({type(v).__name__} given)")
        if len(v) > meta["hi"]:
            raise fail(f"DecodeConfig.{name}: {len(v)} characters; at most {meta['hi']}")
        return
    if typ == (int | None):
        if v is not None and not _is_int(v):
            raise fail(f"{where}: must be an int or None")
        return
    if typ is int and not _is_int(v):
        raise fail(f"{where}: must be an int ({type(v).__name__} given)")
    if typ is float and not (_is_number(v) and math.isfinite(v)):
        raise fail(f"{where}: must be a finite number")
    lo, hi, text = bounds or _range(cfg, name)
    if (v <= lo if meta["lo_open"] else v < lo) or v > hi:
        raise fail(f"{where} is out of range: allowed {text}")


# ----------------------------------------------------------------------------- results


def _json_number(x: float, digits: int | None) -> float | None:
    """JSON has no -inf, inf or NaN: a non-finite number becomes None (null); ``digits`` rounds the others."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x


def _json_data(value: Any, digits: int | None) -> Any:
    """``value`` (floats, ints, strings, None, in dicts, lists and tuples) with every float through
    :func:`_json_number`; dict keys become strings."""
    if isinstance(value, float):
        return _json_number(value, digits)
    if isinstance(value, Mapping):
        return {str(k): _json_data(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_data(v, digits) for v in value]
    return value


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, ending with </s> unless the hypothesis hit max_len
    text: str
    score: float  # search score (after MMI rerank: the rerank score)
    logprobs: list[float]  # log p(token | prefix, source) from the seq2seq model, one per token
    parts: dict[str, float] = field(default_factory=dict)  # what the score is made of (module docstring)
    token_strs: list[str] = field(default_factory=list)  # readable piece of each token ([]: not known)

    def to_json(self, *, digits: int | None = None) -> dict[str, Any]:
        """JSON-safe data: ``{"text", "score", "tokens" (pieces), "token_ids", "logprobs", "parts"}``; every
        non-finite number (a blocked score, a -inf log p or part) is None, ``parts`` None when there are none,
        ``digits`` rounds the floats. Without ``token_strs`` the pieces are the ids written as strings."""
        return {"text": self.text, "score": _json_number(self.score, digits),
                "tokens": list(self.token_strs) if self.token_strs else [str(i) for i in self.tokens],
                "token_ids": list(self.tokens), "logprobs": _json_data(self.logprobs, digits),
                "parts": _json_data(self.parts, digits) if self.parts else None}


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
    trace: list[dict[str, Any]] | None = None  # every candidate of every step, with generate(..., trace=True)

    def to_json(self, *, digits: int | None = None) -> dict[str, Any]:
        """The one JSON form of a reply, JSON-safe (strict JSON: ``json.dumps(..., allow_nan=False)`` works):

            {"text", "score", "parts" (the best hypothesis's), "tokens" (pieces), "token_ids", "logprobs",
             "nbest": [Hypothesis.to_json(), ...], "source_tokens", "attention", "latency_s", "settings",
             "trace" (only when the reply has one)}

        One policy for numbers JSON cannot hold: every non-finite float (a score no reply could reach, a -inf
        log p, score part, n-best score or trace score) is None (null). ``digits`` rounds the measured floats
        (scores, parts, log p, attention, latency); the settings are never rounded."""
        out = {"text": self.text, "score": _json_number(self.score, digits),
               "parts": _json_data(self.nbest[0].parts, digits) if self.nbest and self.nbest[0].parts else None,
               "tokens": list(self.token_strs), "token_ids": list(self.tokens),
               "logprobs": _json_data(self.logprobs, digits),
               "nbest": [h.to_json(digits=digits) for h in self.nbest],
               "source_tokens": list(self.source_tokens), "attention": _json_data(self.attention, digits),
               "latency_s": _json_number(self.latency_s, digits), "settings": _json_data(self.settings, None)}
        if self.trace is not None:
            out["trace"] = _json_data(self.trace, digits)
        return out


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


def select_memory(mem: Memory, rows: Tensor) -> Memory:
    """Memory of N rows -> Memory of len(rows) rows: row i of the result is row ``rows[i]``."""
    return Memory(mem.outputs.index_select(0, rows), mem.mask.index_select(0, rows), select_rows(mem.state, rows))


def select_rows(state: State, rows: Tensor) -> State:
    """[L, N, H] -> [L, N, H]: row i of the result is row ``rows[i]`` of ``state``."""
    return map_state(state, lambda h: h.index_select(1, rows))


# ----------------------------------------------------------------------------- score modifiers


class Step(NamedTuple):
    """What a score modifier may look at, for all rows of one step."""

    t: int  # tokens generated so far (0 at the first step)
    prefix: Tensor | None  # (N, t) tokens generated so far, kept only when a modifier needs_prefix
    lm_logp: Tensor | None  # (N, V) language-model log-probs, while the anti-LM may apply
    logp: Tensor | None = None  # (N, V) the seq2seq model's log-probs of this step, before any modifier
    prompts: list[int] | None = None  # (N,) the call's prompt index of each row, when a modifier needs_prompts


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
    tokens (</s> included), so tokens any reply would use lose to tokens that fit this prompt.

    With ``min_p`` > 0 the penalty applies only to plausible tokens: those the seq2seq model gives at least
    ``min_p`` times the probability of its most likely token (a floor like min-p sampling's), so a token the model
    itself finds implausible (a stray symbol, a rare fragment) is never promoted because the LM finds it rarer still.

    With ``starts`` (V,) bool, the "starts a word" table of :func:`word_starts`, gamma counts words: a token is
    penalised while it belongs to one of the first gamma words, continuation pieces included (a reply's first
    token always begins a word; </s> counts as a word start, so it is penalised while fewer than gamma words
    are complete). The word count of each row is read from the prefix, so the modifier then ``needs_prefix``."""

    def __init__(self, weight: float, gamma: int, starts: Tensor | None = None, min_p: float = 0.0) -> None:
        self.weight, self.gamma, self.starts = weight, gamma, starts
        self.log_min_p = math.log(min_p) if min_p > 0 else None
        self.applied: Tensor | None = None  # the mask of the last step it penalised (None: everywhere)
        self.needs_prefix = starts is not None
        self.lm_steps = gamma  # the language model steps at least while t < lm_steps (see lm_needed)

    def words_begun(self, prefix: Tensor) -> Tensor:
        """prefix (N, t) -> (N,) words begun so far: the first token, then every token that starts a word."""
        if prefix.size(1) == 0:
            return prefix.new_zeros(prefix.size(0))
        starts = self._starts(prefix.device)
        return 1 + starts[prefix[:, 1:]].sum(1)  # (N,)

    def mask(self, step: Step) -> Tensor | None:
        """(N, V) True where the penalty applies to the next token of a row; None: everywhere (token gamma, or
        before gamma steps where every token is in the first gamma words, and no plausibility floor)."""
        plausible = None
        if self.log_min_p is not None and step.logp is not None:
            plausible = step.logp >= step.logp.amax(1, keepdim=True) + self.log_min_p  # (N, V)
        if self.starts is None or step.t < self.gamma:
            return plausible
        words = self.words_begun(step.prefix).unsqueeze(1)  # (N, 1)
        in_span = (words < self.gamma) | ((words == self.gamma) & ~self._starts(words.device).unsqueeze(0))  # (N, V)
        return in_span if plausible is None else in_span & plausible

    def lm_needed(self, t: int, prefix: Tensor | None, live: Tensor) -> bool:
        """Whether step ``t`` can still be penalised for a live row (``live`` (N,) bool): t < gamma in tokens;
        in words, while some live row has begun at most gamma words (its next piece may continue word gamma)."""
        if t < self.gamma:
            return True
        if self.starts is None or prefix is None:
            return False
        return bool(((self.words_begun(prefix) <= self.gamma) & live).any())

    def _starts(self, device: torch.device) -> Tensor:
        if self.starts.device != device:
            self.starts = self.starts.to(device)
        return self.starts

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.lm_logp is None or (self.starts is None and step.t >= self.gamma):
            self.applied = torch.zeros_like(scores, dtype=torch.bool)  # nothing penalised this step
            return scores
        penalty = self.weight * step.lm_logp.clamp(min=-1e4)  # (N, V); clamp: -inf - -inf is NaN
        mask = self.applied = self.mask(step)  # kept for the engine's score parts of this step
        return scores - (penalty if mask is None else penalty * mask)  # (N, V)


_WORD_STARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def word_starts(tokenizer: Tokenizer) -> Tensor:
    """(V,) bool "this token starts a word", built once per tokenizer: a byte-level BPE piece that begins with
    the space marker (``Ġ``), and the special tokens (</s> ends the reply, so it counts as a new word); in a
    word-level vocabulary every token is a word."""
    table = _WORD_STARTS.get(tokenizer)
    if table is None:
        hf = tokenizer.hf
        pieces = [hf.id_to_token(i) or "" for i in range(tokenizer.vocab_size)]
        if type(hf.model).__name__ == "WordLevel":
            table = torch.ones(len(pieces), dtype=torch.bool)
        else:
            table = torch.tensor([p.startswith(SPACE_MARK) for p in pieces], dtype=torch.bool)
            table[[PAD_ID, BOS_ID, EOS_ID, UNK_ID]] = True
        _WORD_STARTS[tokenizer] = table
    return table


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


class NoRepeatContextNGram:
    """Block a token that would complete an n-gram of the bot's own earlier turns (ParlAI's context blocking):
    ``turns[b]`` holds the token lists of prompt b's own earlier turns."""

    needs_prefix = True
    needs_prompts = True

    def __init__(self, n: int, turns: Sequence[Sequence[Sequence[int]]]) -> None:
        self.n = n
        self.next_of: list[dict[tuple[int, ...], set[int]]] = []  # per prompt: first n-1 tokens -> last tokens
        for own in turns:
            table: dict[tuple[int, ...], set[int]] = {}
            for turn in own:
                for i in range(len(turn) - n + 1):
                    table.setdefault(tuple(turn[i: i + n - 1]), set()).add(turn[i + n - 1])
            self.next_of.append(table)

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.prefix is None or step.prompts is None or step.prefix.size(1) < self.n - 1:
            return scores
        rows, toks = [], []
        ends = step.prefix[:, step.prefix.size(1) - self.n + 1:].tolist() if self.n > 1 else [[]] * scores.size(0)
        for r, (b, end) in enumerate(zip(step.prompts, ends)):
            for tok in self.next_of[b].get(tuple(end), ()):
                rows.append(r)
                toks.append(tok)
        if not rows:
            return scores
        return scores.index_put((torch.tensor(rows, device=scores.device), torch.tensor(toks, device=scores.device)),
                                torch.tensor(NEG_INF, device=scores.device))


class RepetitionPenalty:
    """CTRL (Keskar et al. 2019): a token already in the row's prefix has its score l -> l * theta if l < 0 else
    l / theta. On the model's log-probs (all <= 0, as in Hugging Face's beam search) it multiplies by theta."""

    needs_prefix = True

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        prefix = step.prefix  # (N, t)
        if prefix is None or prefix.size(1) == 0:
            return scores
        seen = scores.gather(1, prefix)  # (N, t)
        return scores.scatter(1, prefix, torch.where(seen < 0, seen * self.theta, seen / self.theta))


def _repetition_delta(logp: float, theta: float) -> float:
    """What :class:`RepetitionPenalty` adds to a repeated token's step score of model log-prob ``logp``."""
    return logp * theta - logp if logp < 0 else logp / theta - logp


class ForcePrefix:
    """The reply starts with ``ids``: at step t < len(ids) every token but ids[t] is blocked. The forced token keeps
    the score every other modifier gave it, so its log p, anti-LM and bonus parts count as for any token. Applied
    last."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.t >= len(self.ids):
            return scores
        keep = self.ids[step.t]
        out = torch.full_like(scores, NEG_INF)
        out[:, keep] = scores[:, keep]
        return out


def encode_prefix(prefix: str, tokenizer: Tokenizer | None, max_len: int) -> list[int]:
    """Token ids of a forced reply prefix (normalised as a prompt is; without a tokenizer, ids written as
    space-separated integers, the way replies are written without one). SettingError naming ``prefix`` if it has
    nothing to encode, holds a token the tokenizer cannot represent, or is longer than ``max_len`` tokens."""
    from core.corpora import normalize_text

    text = normalize_text(prefix)
    if not text:
        raise SettingError("DecodeConfig.prefix: nothing left after removing whitespace and control characters",
                           field="prefix")
    if tokenizer is None:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError:
            raise SettingError(f"DecodeConfig.prefix={prefix!r}: without a tokenizer, give token ids separated by "
                               "spaces", field="prefix") from None
    else:
        ids = tokenizer.encode(text)
    if UNK_ID in ids:
        raise SettingError(f"DecodeConfig.prefix={prefix!r}: the tokenizer cannot encode part of it (it becomes "
                           "<unk>); leave that part out", field="prefix")
    if any(i in NEVER_GENERATED or i == EOS_ID for i in ids):
        raise SettingError(f"DecodeConfig.prefix={prefix!r}: it holds a special token (<s>, </s>, <pad>) that no "
                           "reply can contain", field="prefix")
    if len(ids) > max_len:
        raise SettingError(f"DecodeConfig.prefix: {len(ids)} tokens, longer than max_len={max_len}; shorten it or "
                           "raise max_len", field="prefix")
    return ids


def check_prefix_ids(ids: Sequence[int], vocab_size: int | None, cfg: DecodeConfig) -> list[int]:
    """Forced reply-start token ids given directly (a branch from a traced node: its path), checked as
    :func:`encode_prefix` checks a text prefix: SettingError naming ``prefix`` unless every id is a token a reply can
    hold (0 <= id < V, no <pad> <s> <unk>), </s> comes only last (then the whole reply is forced) and not before
    ``min_len`` tokens, and there are at most ``max_len`` of them."""
    ids = list(ids)
    V = vocab_size if vocab_size is not None else math.inf
    if any(not _is_int(i) or not 0 <= i < V for i in ids):
        raise SettingError(f"prefix_ids={ids[:12]!r}: token ids must be ints in 0..{V - 1}", field="prefix")
    if any(i in NEVER_GENERATED for i in ids) or EOS_ID in ids[:-1]:
        raise SettingError("prefix_ids: a reply cannot hold <pad>, <s> or <unk>, nor </s> before its end",
                           field="prefix")
    if ids and ids[-1] == EOS_ID and len(ids) - 1 < cfg.min_len:
        raise SettingError(f"prefix_ids: the reply would end after {len(ids) - 1} tokens, before "
                           f"min_len={cfg.min_len}", field="prefix")
    if len(ids) > cfg.max_len:
        raise SettingError(f"prefix_ids: {len(ids)} tokens, longer than max_len={cfg.max_len}", field="prefix")
    return ids


def build_modifiers(cfg: DecodeConfig, starts: Tensor | None = None,
                    own_turns: Sequence[Sequence[Sequence[int]]] | None = None,
                    prefix: Sequence[int] | None = None) -> list[Modifier]:
    """The modifiers ``cfg`` asks for; zero weights add none, so antilm=0 / n_bonus=0 is plain beam search.
    The repetition penalty comes first, so it acts on the model's own log-probs. ``starts``: the word-start
    table (:func:`word_starts`) the anti-LM needs with ``gamma_words``; ``own_turns``: per prompt, the bot's own
    earlier turns (token ids) that ``no_repeat_context_ngram`` blocks; ``prefix``: the forced reply start's ids
    (:func:`encode_prefix`)."""
    mods: list[Modifier] = [BanTokens()]
    if cfg.min_len > 0:
        mods.append(MinLength(cfg.min_len))
    if cfg.repetition_penalty != 1.0:
        mods.append(RepetitionPenalty(cfg.repetition_penalty))
    if cfg.no_repeat_ngram > 0:
        mods.append(NoRepeatNGram(cfg.no_repeat_ngram))
    if cfg.no_repeat_context_ngram > 0 and own_turns is not None and any(own_turns):
        mods.append(NoRepeatContextNGram(cfg.no_repeat_context_ngram, own_turns))
    if cfg.antilm > 0 and cfg.gamma > 0:
        if cfg.gamma_words and starts is None:
            raise ValueError("gamma_words=True counts words: pass the tokenizer (generate(..., tokenizer=...))")
        mods.append(AntiLM(cfg.antilm, cfg.gamma, starts if cfg.gamma_words else None, cfg.antilm_min_p))
    if cfg.n_bonus > 0:
        mods.append(LengthBonus(cfg.n_bonus))
    if prefix:
        mods.append(ForcePrefix(prefix))
    return mods


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


def _zero_parts() -> dict[str, float]:
    return {"logp": 0.0, "antilm": 0.0, "bonus": 0.0, "diversity": 0.0, "repetition": 0.0, "mmi": 0.0}


def _parts(path: _Path, final: _Final, cfg: DecodeConfig) -> dict[str, float]:
    """The score parts of a finished hypothesis (see the module docstring); they add up to ``final.score``."""
    toks, lps = path.tokens, path.logps
    parts = _zero_parts()
    parts["logp"] = sum(lps)
    parts["antilm"] = sum(path.antilm)
    parts["diversity"] = sum(path.extra)
    if cfg.repetition_penalty != 1.0:
        parts["repetition"] = sum((_repetition_delta(lp, cfg.repetition_penalty)
                                   for k, (t, lp) in enumerate(zip(toks, lps)) if t in toks[:k]), 0.0)
    parts["bonus"] = cfg.n_bonus * sum(t != EOS_ID for t in toks) + (final.score - final.raw)
    return parts


Ranker = Callable[[float, int], float]


def _ranker(cfg: DecodeConfig) -> Ranker | None:
    """(search total, tokens incl. </s>) -> ranking score, where finished hypotheses are length-normalised."""
    if cfg.length_norm:
        return lambda raw, n: raw / n
    if cfg.length_penalty > 0:
        alpha = cfg.length_penalty
        return lambda raw, n: raw / ((5 + n) / 6) ** alpha
    return None


class _Tracer:
    """Collects the rows of Reply.trace (made only with ``generate(..., trace=True)``)."""

    def __init__(self, B: int, cfg: DecodeConfig, piece: Callable[[int], str]) -> None:
        self.cfg, self.piece, self.rank = cfg, piece, _ranker(cfg)
        self.rows: list[list[dict[str, Any]]] = [[] for _ in range(B)]
        self.row_ids: list[list[int | None]] = [[0] for _ in range(B)]  # trace id of each live row of a prompt
        self.next_id = [1] * B
        self.paths: list[dict[int, tuple[list[int], dict[str, float]]]] = [{0: ([], _zero_parts())} for _ in range(B)]

    def step(self, t: int, cand: dict[str, Tensor | None], kept: Tensor, ends: Tensor | None, K: int,
             done_before: list[bool], done_after: list[bool], last: bool) -> None:
        """Record every candidate (B, C) of step t: ``kept`` (B, K) their positions that became rows, ``ends``
        (B, C) the ones finished by </s>; ``last``: the kept rows finish at max_len."""
        cfg, theta = self.cfg, self.cfg.repetition_penalty
        B, C = cand["scores"].shape
        lists = {k: v.tolist() if v is not None else [[0.0] * C for _ in range(B)] for k, v in cand.items()}
        kept_l = kept.tolist()
        ends_l = ends.tolist() if ends is not None else [[False] * C for _ in range(B)]
        for b in range(B):
            if done_before[b]:
                continue
            row_of = {pos: k for k, pos in enumerate(kept_l[b])}
            new_ids: list[int | None] = [None] * K
            for c in range(C):
                score = lists["scores"][b][c]
                if score == NEG_INF:
                    continue
                parent = self.row_ids[b][lists["beams"][b][c]]
                ptoks, pparts = self.paths[b][parent]
                tok, lp = lists["tokens"][b][c], lists["logp"][b][c]
                parts = dict(pparts)
                parts["logp"] += lp
                parts["antilm"] += lists["antilm"][b][c]
                parts["diversity"] += lists["extra"][b][c]
                parts["bonus"] += cfg.n_bonus if tok != EOS_ID else 0.0
                if theta != 1.0 and tok in ptoks:
                    parts["repetition"] += _repetition_delta(lp, theta)
                cid = self.next_id[b]
                self.next_id[b] += 1
                is_row = c in row_of and tok != EOS_ID
                shown = score
                if ends_l[b][c] or (last and is_row):
                    status = "finished"
                    shown = self.rank(score, t + 1) if self.rank else score
                    parts["bonus"] += shown - score
                elif is_row and not done_after[b]:
                    status = "kept"
                    new_ids[row_of[c]] = cid
                    self.paths[b][cid] = (ptoks + [tok], parts)
                else:
                    status = "pruned"
                self.rows[b].append({"step": t, "id": cid, "parent": parent, "token": tok, "text": self.piece(tok),
                                     "logp": lp, "score": shown, "parts": parts, "status": status})
            self.row_ids[b] = new_ids


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


def _search(model: Any, src: list[list[int]], cfg: DecodeConfig, lm: Any, strategy: Strategy,
            tracer: _Tracer | None = None, starts: Tensor | None = None,
            own_turns: Sequence[Sequence[Sequence[int]]] | None = None,
            prefix: Sequence[int] | None = None) -> list[list[tuple[_Final, _Path]]]:
    """The search loop. Returns, per prompt, the n-best (finished hypothesis, its path), best first."""
    device = _device(model)
    B = len(src)
    K, G = strategy.width(cfg), strategy.groups
    nbest = min(cfg.nbest, K)
    modifiers = build_modifiers(cfg, starts, own_turns, prefix)
    need_prompts = any(getattr(m, "needs_prompts", False) for m in modifiers)
    prompt_ids = list(range(B))  # the call's index of each prompt still in the batch
    anti = next((m for m in modifiers if isinstance(m, AntiLM)), None)
    lm_steps = anti.lm_steps if anti else 0
    lm_on = lm_steps > 0  # the anti-LM may still apply: the LM steps (its state follows the rows) while it does
    antilm_w = cfg.antilm if lm_steps else 0.0
    keep_prefix = any(getattr(m, "needs_prefix", False) for m in modifiers)
    rank = _ranker(cfg)

    # 1. encode once; the first step runs one row per prompt (the K rows would all be <s>), then K rows
    src_t, lens = _pad(src, device)  # (B, S), (B,)
    mem1 = model.encode(src_t, lens)  # outputs (B, S, H)
    memK = tile_memory(mem1, K)  # outputs (N, S, H)
    state = mem1.state  # (L, B, H), (L, N, H) after the first step
    lm_state = lm.init_state(B, device) if lm_steps else None
    tok = torch.full((B,), BOS_ID, dtype=torch.long, device=device)  # (B,), then (N,)
    prefix = torch.empty((B, 0), dtype=torch.long, device=device) if keep_prefix else None  # (N, t)
    hidden = None  # (N, t+1, H) decoder output states, for strategies that compare them
    scores = torch.zeros(B, 1, device=device)  # (B, R) running scores; R = 1 rows per prompt, then K
    hist = _History()
    finished: list[list[_Final]] = [[] for _ in range(B)]
    fin = list(finished)  # the finished lists of the prompts still in the batch (B of them), in batch order
    done = [False] * B

    for t in range(cfg.max_len):
        # 2. step the model (and the anti-LM while it matters)
        R = scores.size(1)
        mem = mem1 if t == 0 else memK
        if strategy.needs_hidden:
            logp, state, attn, h = model.decode_step(tok, state, mem, return_hidden=True)  # ..., (B*R, H)
            hidden = h.unsqueeze(1) if hidden is None else torch.cat([hidden, h.unsqueeze(1)], 1)  # (B*R, t+1, H)
            ctx = StepContext(t, hidden, lambda cands, s=state, m=mem: _lookahead(model, s, m, cands))
        else:
            logp, state, attn = model.decode_step(tok, state, mem)  # (B*R, V), state, (B*R, S)
            ctx = StepContext(t)
        lm_logp = None
        if lm_on:
            lm_logp, lm_state = lm.decode_step(tok, lm_state)  # (B*R, V)
        rows_prompt = [b for b in prompt_ids for _ in range(R)] if need_prompts else None  # (B*R,)
        step = Step(t, prefix, lm_logp, logp, rows_prompt)
        step_scores = logp
        for mod in modifiers:
            step_scores = mod(step_scores, step)  # (B*R, V)
        V = step_scores.size(1)

        # 3. candidates, in rank order (within each of the strategy's G groups)
        cand = strategy(scores, fold(step_scores, R), K, ctx)  # (B, C) each
        C = cand.scores.size(1)
        cand_rows = cand.beams + (torch.arange(B, device=device) * R).unsqueeze(1)  # (B, C) input row of each
        flat = cand_rows * V + cand.tokens  # (B, C)
        cand_logp = logp.flatten().take(flat)  # (B, C) model log-prob of its token
        cand_antilm = None  # (B, C) the anti-LM part of each candidate's step, while it applies
        if antilm_w and lm_logp is not None:
            cand_antilm = -antilm_w * lm_logp.flatten().take(flat).clamp(min=-1e4)
            if anti.applied is not None:  # (B*R, V) the mask the modifier used this step (words, floor)
                cand_antilm = cand_antilm * anti.applied.flatten().take(flat)
        is_eos = cand.tokens == EOS_ID  # (B, C)
        any_eos = bool(is_eos.any())
        done_before = list(done) if tracer else []

        # 4. </s> among the top K (of each group) finishes a hypothesis; the first K other candidates become rows
        Kg, Cg = K // G, C // G
        ends = None
        if any_eos:
            in_top = torch.arange(C, device=device) % Cg < Kg  # (C,) ranked within the top K of its group
            ends = is_eos & in_top & (cand.scores > NEG_INF)  # (B, C)
            _finish(fin, done, ends, cand.scores, cand_rows, cand.tokens, cand_logp, cand_antilm, cand.extra,
                    t, rank)
            keep = is_eos.view(B * G, Cg).to(torch.uint8).argsort(dim=1, stable=True)[:, :Kg]  # (B*G, Kg)
            keep = (keep + torch.arange(0, C, Cg, device=device).repeat(B).unsqueeze(1)).view(B, K)  # (B, K)
        elif G > 1 or tracer:
            keep = (torch.arange(Kg, device=device) + torch.arange(0, C, Cg, device=device).unsqueeze(1))
            keep = keep.view(1, K).expand(B, K)  # (B, K) the first Kg of each group
        if G == 1 and not any_eos:
            picked = [x[:, :K] if x is not None else None
                      for x in (cand.scores, cand.tokens, cand_rows, cand_logp, cand_antilm, cand.extra)]
        else:
            picked = [x.gather(1, keep) if x is not None else None
                      for x in (cand.scores, cand.tokens, cand_rows, cand_logp, cand_antilm, cand.extra)]
        scores, tokens, rows, tok_logp, tok_antilm, tok_extra = picked  # (B, K) each
        if any_eos:
            scores = scores.masked_fill(tokens == EOS_ID, NEG_INF)  # sampling: a row that drew </s> is over
        last = t == cfg.max_len - 1
        if last:  # 5. rows still going at max_len finish without </s>
            _finish(fin, done, scores > NEG_INF, scores, rows, tokens, tok_logp, tok_antilm, tok_extra, t, rank)

        # 6. record back-pointers, reorder the states, feed the chosen tokens
        rows, tok = rows.reshape(-1), tokens.reshape(-1)  # (N,)
        hist.parents.append(rows)
        hist.tokens.append(tok)
        hist.logps.append(tok_logp.reshape(-1))
        if tok_antilm is not None:
            hist.antilm.append(tok_antilm.reshape(-1))
        if tok_extra is not None:
            hist.extra.append(tok_extra.reshape(-1))
        if t == 0:  # one input row per prompt: pad to N rows so that the steps stack (rows >= B are never read)
            attn = torch.cat([attn, attn.new_zeros(B * K - B, attn.size(1))])
        hist.attn.append(attn)
        state = select_rows(state, rows)
        if hidden is not None:
            hidden = hidden.index_select(0, rows)  # (N, t+1, H)
        if prefix is not None:
            prefix = torch.cat([prefix.index_select(0, rows), tok.unsqueeze(1)], 1)  # (N, t+1)
        if lm_on:
            lm_on = anti.lm_needed(t + 1, prefix, scores.reshape(-1) > NEG_INF)
        if lm_on:
            lm_state = select_rows(lm_state, rows)

        # 7. which prompts are done; their rows stop competing
        newly = _update_done(done, fin, scores.max(1).values.tolist(), K, nbest,
                             _gain_left(cfg, lm_on, t, rank))
        if tracer:
            tracer.step(t, {"scores": cand.scores, "tokens": cand.tokens, "beams": cand.beams, "logp": cand_logp,
                            "antilm": cand_antilm, "extra": cand.extra}, keep, ends, K, done_before, done, last)
        if all(done):
            break
        if newly and tracer is None:  # 8. drop the done prompts' rows: the steps left cost only the live prompts
            alive = [b for b, d in enumerate(done) if not d]
            keep_b = torch.tensor(alive, device=device)  # (B',)
            keep = (keep_b.unsqueeze(1) * K + torch.arange(K, device=device)).reshape(-1)  # (B'*K,)
            hist.select_last(keep, t)
            fin = [fin[b] for b in alive]
            prompt_ids = [prompt_ids[b] for b in alive]
            done = [False] * len(fin)
            B = len(fin)
            scores, tok = scores.index_select(0, keep_b), tok.index_select(0, keep)
            state, memK = select_rows(state, keep), select_memory(memK, keep)
            if lm_on:
                lm_state = select_rows(lm_state, keep)
            if hidden is not None:
                hidden = hidden.index_select(0, keep)
            if prefix is not None:
                prefix = prefix.index_select(0, keep)
        elif newly:  # the tracer's rows stay in place: the done prompts' rows stop competing
            scores = scores.masked_fill(torch.tensor(done, device=device).unsqueeze(1), NEG_INF)

    # every prompt of the call, in order (B counts those still in the batch)
    best = [sorted(fs, key=lambda f: -f.score)[:nbest] for fs in finished]
    return [list(zip(b, p, strict=True)) for b, p in zip(best, hist.paths(best), strict=True)]


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
    results = _search(model, src, cfg, lm, strategy, tracer, starts, own_turns, prefix)
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
        best = hyps[0] if hyps else Hypothesis([], "", NEG_INF, [], _zero_parts())
        att = attention[id(best)][:, : len(s)].tolist() if hyps else []  # (T, S) without padding
        replies.append(Reply(text=best.text, tokens=best.tokens, token_strs=[piece(i) for i in best.tokens],
                             logprobs=best.logprobs, score=best.score, nbest=hyps, attention=att,
                             source_tokens=[piece(i) for i in s], latency_s=0.0, settings=cfg.to_dict(),
                             trace=tracer.rows[b] if tracer else None))
    latency = time.perf_counter() - t0
    for r in replies:
        r.latency_s = latency
    return replies


# ----------------------------------------------------------------------------- settings for people

# the settings every strategy reads
COMMON_FIELDS = ("prefix", "nbest", "max_len", "min_len", "antilm", "gamma", "gamma_words", "antilm_min_p", "n_bonus",
                 "length_norm", "mmi_lambda", "no_repeat_ngram", "no_repeat_context_ngram", "repetition_penalty",
                 "length_penalty")


def fields_for(strategy: str) -> tuple[str, ...]:
    """The DecodeConfig fields that change what ``strategy`` does (its ``reads`` and COMMON_FIELDS), in field
    order: a UI shows only these controls."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {tuple(STRATEGIES)}")
    used = set(STRATEGIES[strategy].reads) | set(COMMON_FIELDS) | {"strategy"}
    return tuple(f.name for f in fields(DecodeConfig) if f.name in used)


def describe_settings(settings: Mapping[str, Any] | DecodeConfig) -> str:
    """Short tag of decoder settings (a DecodeConfig or its dict, missing fields at their defaults), e.g.
    ``beam K=10 · anti-LM 0.4 (gamma 4) · max 30``: the strategy's own tag, then the modifiers that are on."""
    cfg = settings if isinstance(settings, DecodeConfig) else DecodeConfig().with_overrides(**dict(settings))
    parts = [STRATEGIES[cfg.strategy].describe(cfg)]
    if cfg.antilm > 0 and cfg.gamma > 0:
        floor = f", floor {cfg.antilm_min_p:g}" if cfg.antilm_min_p > 0 else ""
        parts.append(f"anti-LM {cfg.antilm:g} (gamma {cfg.gamma}{' words' if cfg.gamma_words else ''}{floor})")
    if cfg.n_bonus > 0:
        parts.append(f"bonus {cfg.n_bonus:g}")
    if cfg.mmi_lambda > 0:
        parts.append(f"MMI {cfg.mmi_lambda:g}")
    if cfg.no_repeat_ngram > 0:
        parts.append(f"no-repeat {cfg.no_repeat_ngram}")
    if cfg.no_repeat_context_ngram > 0:
        parts.append(f"no-repeat context {cfg.no_repeat_context_ngram}")
    if cfg.repetition_penalty != 1.0:
        parts.append(f"repetition {cfg.repetition_penalty:g}")
    if cfg.length_penalty > 0:
        parts.append(f"length penalty {cfg.length_penalty:g}")
    if cfg.length_norm:
        parts.append("length-normalised")
    if cfg.prefix:
        parts.append(f"starts with {cfg.prefix!r}")
    parts.append(f"max {cfg.max_len}")
    return " · ".join(parts)


@dataclass(frozen=True)
class UIControl:
    """One control a UI generates from DecodeConfig: ``lo`` / ``hi`` are the slider's range (within the core
    range), ``kind`` is ``int``, ``float``, ``bool``, ``choice`` or ``text`` (``hi``: its most characters)."""

    name: str
    label: str
    help: str
    lo: float
    hi: float
    step: float
    kind: str
    group: str | None
    default: Any
    choices: tuple[str, ...] = ()


SAMPLE_CONTROL = UIControl("sample", "Sample instead of beam search", "strategy sample instead of beam: K samples, "
                           "the best score wins", 0, 1, 1, "bool", "sampling", False)


def _control(f: Any) -> UIControl:
    meta, typ = f.metadata, _TYPES[f.name]
    if meta["choices"]:
        return UIControl(f.name, meta["label"], meta["help"], 0, 0, 0, "choice", meta["group"], f.default,
                         tuple(meta["choices"]))
    if typ is bool:
        return UIControl(f.name, meta["label"], meta["help"], 0, 1, 1, "bool", meta["group"], f.default)
    if typ is str:  # free text (the reply prefix): hi is its most characters
        return UIControl(f.name, meta["label"], meta["help"], 0, meta["hi"], 0, "text", meta["group"], f.default)
    hi = meta["hi"]
    if isinstance(hi, str):  # bounded by another field: its slider's maximum
        other = _FIELDS[hi].metadata
        hi = other["ui_hi"] if other["ui_hi"] is not None else other["hi"]
    lo = meta["ui_lo"] if meta["ui_lo"] is not None else (meta["lo"] if meta["lo"] is not None else 0)
    hi = meta["ui_hi"] if meta["ui_hi"] is not None else (hi if hi is not None else 2**31 - 1)
    integer = typ is int or typ == (int | None)
    step = meta["step"] if meta["step"] is not None else 1
    return UIControl(f.name, meta["label"], meta["help"], lo, hi, step, "int" if integer else "float",
                     meta["group"], f.default)


def ui_controls(*, every_field: bool = False) -> list[UIControl]:
    """The controls of the decoder settings, in display order: groups main, search, sampling (the sampling
    group led by the ``sample`` checkbox, which switches strategy between beam and sample), each in field order.
    ``every_field``: then also the fields that are no shared control (strategy as a choice, nbest, ...)."""
    out = []
    for group in UI_GROUPS:
        if group == "sampling":
            out.append(SAMPLE_CONTROL)
        out += [_control(f) for f in fields(DecodeConfig) if f.metadata["group"] == group]
    if every_field:
        out += [_control(f) for f in fields(DecodeConfig) if f.metadata["group"] is None]
    return out
