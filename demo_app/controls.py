"""The side-by-side tab's decoder controls and the policy of what a moved control does to each bot: no gradio import.

The controls are generated from :class:`core.decoding.DecodeConfig` (its defaults, ranges and help are the truth),
a control starts at the bots.json value of the first bot it fits, and only the controls moved from where they
started override a bot's own settings; some moved controls switch a bot's strategy (:data:`SWITCHES`: the sample
checkbox turns a beam bot to sampling, diverse-beam groups a beam bot to diverse beam, the contrastive alpha a
greedy bot to contrastive search).

    >>> initial = default_settings(bots)
    >>> settings, notes = resolve_settings({"beam_size": 4.4}, initial)     # 4, and a note that it was rounded
    >>> overrides_for(bots["beam"], changed_settings(settings, initial))    # {"beam_size": 4}
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.bots import Bot
from core.decoding import STRATEGIES, fields_for, ui_controls


@dataclass(frozen=True)
class Control:
    """One decoder control of the side-by-side tab. ``name`` is a DecodeConfig field, or ``sample``;
    ``group``: ``main`` (always shown), ``search`` or ``sampling`` (under "Advanced"); ``text``: a text box (a
    free-text setting such as the reply prefix; ``maximum`` is its most characters), else a slider or checkbox."""

    name: str
    label: str
    info: str
    minimum: float = 0
    maximum: float = 1
    step: float = 0.05
    integer: bool = False
    group: str = "main"
    checkbox: bool = False
    text: bool = False


CONTROLS: tuple[Control, ...] = tuple(  # generated from DecodeConfig: its defaults, ranges and help are the truth
    Control(c.name, c.label, c.help, c.lo, c.hi, c.step, integer=c.kind == "int", group=c.group or "main",
            checkbox=c.kind == "bool", text=c.kind == "text")
    # the shared controls, then the free-text settings (the reply prefix), which every strategy reads
    for c in [*ui_controls(), *(c for c in ui_controls(every_field=True) if c.kind == "text")])
CONTROL_NAMES = tuple(c.name for c in CONTROLS)
# A moved control that switches a bot's strategy: control -> (the bot's strategy, the strategy it switches to)
SWITCHES = {"sample": ("beam", "sample"), "num_groups": ("beam", "diverse_beam"),
            "diversity_penalty": ("beam", "diverse_beam"), "penalty_alpha": ("greedy", "contrastive")}
CONTRASTIVE_TOP_K = 4  # candidates per step when the contrastive slider turns a greedy bot contrastive


def _models_allow(bot: Bot, name: str) -> bool:
    """Anti-LM settings need the bot's language model, MMI its backward model."""
    if name in ("antilm", "gamma", "gamma_words", "antilm_min_p"):
        return bot.lm is not None
    if name == "mmi_lambda":
        return bot.backward is not None
    return True


def applies_to(bot: Bot, name: str) -> bool:
    """Whether control ``name`` changes ``bot``: a setting its strategy reads (or one that switches its strategy:
    sampling for beam bots, diverse beam for beam bots, contrastive for greedy bots); anti-LM needs an LM, MMI a
    backward model."""
    if not _models_allow(bot, name):
        return False
    strategy = bot.defaults.strategy
    if name in SWITCHES:
        return strategy in SWITCHES[name]
    reachable = {strategy} | {to for frm, to in SWITCHES.values() if frm == strategy}
    return any(name in fields_for(s) for s in reachable)


def strategy_for(bot: Bot, settings: Mapping[str, Any], picked: str | None = None) -> str:
    """The strategy ``bot`` decodes with: the one picked for its column (else its bots.json one), switched by
    the moved controls ``settings`` (the sample checkbox, diverse-beam groups, contrastive alpha)."""
    strategy = picked or bot.defaults.strategy
    if "sample" in settings and strategy in ("beam", "sample"):
        strategy = "sample" if settings["sample"] else "beam"
    if strategy == "beam" and settings.get("num_groups", 1) > 1:
        strategy = "diverse_beam"
    if strategy == "greedy" and settings.get("penalty_alpha", 0) > 0:
        strategy = "contrastive"
    return strategy


def picker_choices() -> list[tuple[str, str]]:
    """The choices of each column's decoder picker: the bot's own decoder, or any registered strategy."""
    return [("as in bots.json", BOT_DECODER), *[(name.replace("_", " "), name) for name in STRATEGIES]]


BOT_DECODER = ""  # the picker value meaning "the bot's own bots.json decoder"


def default_settings(bots: Mapping[str, Bot]) -> dict[str, Any]:
    """Each control starts at the bots.json value of the first bot it applies to (e.g. the beam size of the first
    beam bot, the anti-LM weight of the first bot with a language model)."""
    out: dict[str, Any] = {}
    for c in CONTROLS:
        if c.checkbox:
            out[c.name] = any(b.defaults.strategy == "sample" for b in bots.values())
            continue
        owner = next((b for b in bots.values() if applies_to(b, c.name)), None)
        value = getattr(owner.defaults if owner else next(iter(bots.values())).defaults, c.name)
        out[c.name] = value if c.text else min(max(value, c.minimum), c.maximum)
    return out


def resolve_settings(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Control values as sent by a browser or a Gradio API client -> (usable settings, notes on what was changed).

    Gradio has already refused values outside a slider's range and values that are not numbers, with its own
    message naming the bound ("Value 35 is greater than maximum value 20."), so what is left to do here: a
    fractional value of an integer control is rounded, and a checkbox value that is not true/false is replaced by
    the default; each adds a note. A text box left blank (or only spaces) means the setting is off ("").
    A missing control keeps its default.
    """
    settings, notes = {}, []
    for c in CONTROLS:
        v = values.get(c.name, defaults[c.name])
        if c.text:
            settings[c.name] = v if isinstance(v, str) and v.strip() else ""
            if v is not None and not isinstance(v, str):
                notes.append(f"{c.label}: {_show(v)} is not text; left empty")
            continue
        if c.checkbox:
            settings[c.name] = v if isinstance(v, bool) else defaults[c.name]
            if not isinstance(v, bool):
                notes.append(f"{c.label}: {_show(v)} is not true/false; used {defaults[c.name]}")
            continue
        x = float(v)
        if c.integer and x != int(math.floor(x + 0.5)):
            notes.append(f"{c.label}: {x:g} rounded to {int(math.floor(x + 0.5))}")
        settings[c.name] = int(math.floor(x + 0.5)) if c.integer else x
    return settings, notes


def changed_settings(settings: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """The controls whose value differs from the value they started with (:func:`default_settings`).

    Only these override a bot's bots.json settings: a control's starting value is the setting of the first bot
    it fits, so sending every value would give that bot's setting to the other bots as well."""
    return {name: value for name, value in settings.items() if name not in initial or value != initial[name]}


def overrides_for(bot: Bot, settings: Mapping[str, Any], picked: str | None = None) -> dict[str, Any]:
    """The DecodeConfig overrides the (changed) control values ``settings`` mean for ``bot``: its strategy (the
    one ``picked`` for its column, or its own, switched by a control), then every moved setting that strategy reads
    (controls that do not fit the bot are left out, e.g. temperature while a bot does not sample)."""
    picked = picked if picked in STRATEGIES else None
    strategy = strategy_for(bot, settings, picked)
    out: dict[str, Any] = {"strategy": strategy} if strategy != bot.defaults.strategy else {}
    for name, value in settings.items():
        fits = applies_to(bot, name) or (picked is not None and _models_allow(bot, name))
        if name != "sample" and fits and name in fields_for(strategy):
            out[name] = value
    if strategy == "contrastive" and out.get("top_k", bot.defaults.top_k) < 1:
        out["top_k"] = CONTRASTIVE_TOP_K
    return out


def _show(value: Any) -> str:
    """A user-supplied value, quoted and HTML-escaped for a status line."""
    return html.escape(repr(value)[:60])

