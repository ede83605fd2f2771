"""Decoder settings for people: which fields a strategy reads (:func:`fields_for`), a short tag of
settings (:func:`describe_settings`) and the UI controls generated from the DecodeConfig metadata
(:func:`ui_controls`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from core.decoding.config import _FIELDS, _TYPES, UI_GROUPS, DecodeConfig
from core.decoding.registry import STRATEGIES

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
