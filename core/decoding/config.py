"""Decoder settings: :class:`DecodeConfig`, the one place that holds each setting's default, range, help
and UI metadata, and its validation (a bad value raises :class:`core.errors.SettingError` naming the field).
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.decoding.registry import STRATEGIES
from core.errors import SettingError

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


