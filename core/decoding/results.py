"""What a decode returns: :class:`Reply` (the best hypothesis, the n-best, attention, settings, an optional
trace) and :class:`Hypothesis`, each with its one JSON form (``to_json``: every non-finite number is null);
the score parts every hypothesis carries and the ranking of finished hypotheses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.decoding.config import DecodeConfig


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




def zero_parts() -> dict[str, float]:
    """Score parts of an empty path: every part 0 (see :mod:`core.decoding`)."""
    return {"logp": 0.0, "antilm": 0.0, "bonus": 0.0, "diversity": 0.0, "repetition": 0.0, "mmi": 0.0}


Ranker = Callable[[float, int], float]


def ranker(cfg: DecodeConfig) -> Ranker | None:
    """(search total, tokens incl. </s>) -> ranking score, where finished hypotheses are length-normalised."""
    if cfg.length_norm:
        return lambda raw, n: raw / n
    if cfg.length_penalty > 0:
        alpha = cfg.length_penalty
        return lambda raw, n: raw / ((5 + n) / 6) ** alpha
    return None
