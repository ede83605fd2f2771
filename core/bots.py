"""Bots: a checkpoint (+ an optional anti-LM and backward model) with default decoder settings, from bots.json.

``<checkpoint dir>/bots.json``::

    {"bots": [{"name": "greedy", "label": "Greedy", "description": "one line about the decoder",
               "checkpoint": "mle", "lm": null, "backward": null, "decoder": {"strategy": "greedy"}},
              ...]}

``checkpoint``, ``lm`` and ``backward`` name checkpoint folders beside bots.json (see :mod:`core.checkpoint`);
``decoder`` holds :class:`~core.decoding.DecodeConfig` fields. Each folder is loaded once and shared, read-only,
by every bot that names it. The RL policy is just another checkpoint.

    >>> bots = load_bots()                  # $CHATBOT_ARENA_CHECKPOINTS, else the repository's checkpoints/
    >>> bots["antilm"].respond("how are you?", antilm=0.3).text
    >>> bots["rl"].respond("why not?", history=["let's go hiking", "i can't this weekend"]).text

``history`` is the conversation before the message, oldest first, the bot's own replies included; a bot reads
as much of it as its checkpoint was trained to (``context_turns``, see :mod:`core.context`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import CheckpointError, load_checkpoint, resolve
from core.context import history_turns, window_ids, window_of
from core.corpora import normalize_text
from core.decoding import DecodeConfig, Reply, generate
from core.errors import SettingError
from core.model import LanguageModel, Seq2Seq, pick_device
from core.tokenizer import Tokenizer

ENV_DIR = "CHATBOT_ARENA_CHECKPOINTS"
DEFAULT_MAX_SRC_LEN = 40
CHARS_PER_TOKEN = 64  # a prompt is cut to its last max_src_len * 64 characters before tokenising


def default_checkpoint_dir() -> Path:
    """$CHATBOT_ARENA_CHECKPOINTS, else the ``checkpoints/`` folder of the repository."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def load_model(path: str | Path, device: str | torch.device = "auto") -> tuple[Any, Tokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, config.json) of one checkpoint folder: base, RL, LM and backward alike."""
    path = Path(path)
    if not resolve(path).exists():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    model, tokenizer, config = load_checkpoint(path, device=pick_device(device))
    model.requires_grad_(False)
    return model, tokenizer, config


# ----------------------------------------------------------------------------- bots


@dataclass
class Bot:
    """A model plus decoder defaults. ``respond`` normalises and tokenises the prompt, then decodes."""

    name: str
    label: str
    description: str
    defaults: DecodeConfig
    model: Seq2Seq
    tokenizer: Tokenizer
    lm: LanguageModel | None = None
    backward: Seq2Seq | None = None
    checkpoint: Path | None = None
    max_src_len: int = DEFAULT_MAX_SRC_LEN
    context_turns: int = 0  # earlier turns the model reads with the message (0: the message only)
    speaker_markers: bool = False

    def settings(self, **overrides: Any) -> DecodeConfig:
        """The defaults with ``overrides`` applied and validated: a bad one raises SettingError carrying the
        setting's ``field`` (and ``range``)."""
        cfg = self.defaults.with_overrides(**overrides)
        if cfg.antilm > 0 and cfg.gamma > 0 and self.lm is None:
            raise SettingError(f"bot {self.name!r} has no language model, so antilm must be 0 (got {cfg.antilm})",
                               field="antilm")
        if cfg.mmi_lambda > 0 and self.backward is None:
            raise SettingError(f"bot {self.name!r} has no backward model, so mmi_lambda must be 0 "
                               f"(got {cfg.mmi_lambda})", field="mmi_lambda")
        return cfg

    def encode_prompt(self, prompt: str, history: Sequence[str] | None = None) -> list[int]:
        """Token ids of the window the model reads: the message and the last ``context_turns`` turns of
        ``history`` (oldest first), joined by the turn separator, cut to the last ``max_src_len`` tokens.
        SettingError (field ``prompt``, ``history`` or ``history[i]``) if the message has nothing left to answer,
        or ``history`` is not a list of strings."""
        message = self._encode_turn(prompt, "prompt")
        if not message:
            raise SettingError("prompt is empty (nothing left after removing whitespace and control characters)",
                               field="prompt")
        earlier = [self._encode_turn(t, f"history[{i}]") for i, t in
                   enumerate(history_turns(history, limit=self.context_turns))]
        return window_ids([*earlier, message], context_turns=self.context_turns, max_src_len=self.max_src_len,
                          speaker_markers=self.speaker_markers)

    def _encode_turn(self, text: str, what: str) -> list[int]:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise SettingError(f"{what} must be a string, got {type(text).__name__}", field=what)
        text = normalize_text(text.encode("utf-8", errors="replace").decode("utf-8"))  # lone surrogates -> "?"
        return self.tokenizer.encode(text[-self.max_src_len * CHARS_PER_TOKEN :])[-self.max_src_len :] if text else []

    def respond(self, prompt: str, *, history: Sequence[str] | None = None, trace: bool = False,
                prefix_ids: Sequence[int] | None = None, **overrides: Any) -> Reply:
        """One reply to ``prompt`` after ``history`` (the earlier turns, oldest first); ``overrides`` are
        DecodeConfig fields (beam_size=5, antilm=0.3, ...); ``trace``: the reply lists every candidate of the
        search (see :mod:`core.decoding`); ``prefix_ids``: token ids the reply must start with (the ``prefix``
        setting without the text round trip: a branch from a traced node)."""
        return self.respond_batch([prompt], histories=[history], trace=trace, prefix_ids=prefix_ids,
                                  **overrides)[0]

    def respond_batch(self, prompts: list[str], *, histories: Sequence[Sequence[str] | None] | None = None,
                      trace: bool = False, prefix_ids: Sequence[int] | None = None,
                      **overrides: Any) -> list[Reply]:
        """One reply per prompt (each after its own history, of any length), decoded together in one search;
        ``prefix_ids`` (every reply's forced start) as in :meth:`respond`."""
        cfg = self.settings(**overrides)
        if not prompts:
            return []
        if histories is None:
            histories = [None] * len(prompts)
        if len(histories) != len(prompts):
            raise ValueError(f"histories: {len(histories)} for {len(prompts)} prompts; give one per prompt")
        src = [self.encode_prompt(p, h) for p, h in zip(prompts, histories)]
        own = [self.own_turns(h) for h in histories] if cfg.no_repeat_context_ngram > 0 else None
        return generate(self.model, src, cfg, lm=self.lm, backward=self.backward, tokenizer=self.tokenizer,
                        trace=trace, own_turns=own, prefix_ids=prefix_ids)

    def own_turns(self, history: Sequence[str] | None) -> list[list[int]]:
        """Token ids of the bot's own turns in ``history`` (every other turn back from the last one: the turn
        before the message is the bot's)."""
        turns = history_turns(history, limit=len(history) if history else 0)
        return [self.tokenizer.encode(normalize_text(t)) for t in turns[::-1][::2]]


# ----------------------------------------------------------------------------- bots.json


@dataclass
class BotSpec:
    """One entry of bots.json."""

    name: str
    checkpoint: str
    label: str = ""
    description: str = ""
    lm: str | None = None
    backward: str | None = None
    decoder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> BotSpec:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: each bot must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        missing = sorted({"name", "checkpoint"} - set(d))
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing} (known: {sorted(known)})")
        spec = cls(**d)
        for key in ("name", "checkpoint", "label", "description"):
            if not isinstance(getattr(spec, key), str) or (key in ("name", "checkpoint") and not getattr(spec, key)):
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        for key in ("lm", "backward"):
            if getattr(spec, key) is not None and not isinstance(getattr(spec, key), str):
                raise ValueError(f"{where}: {key!r} must be a folder name or null")
        if not isinstance(spec.decoder, dict):
            raise ValueError(f"{where}: 'decoder' must be an object of DecodeConfig fields")
        spec.label = spec.label or spec.name.title()
        return spec


def read_bots_json(path: str | Path) -> list[BotSpec]:
    """Parse and check bots.json; every problem is a ValueError (FileNotFoundError if absent) naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: it lists the bots (see core/bots.py for the format)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, dict) or not isinstance(data.get("bots"), list) or not data["bots"]:
        raise ValueError(f"{path}: expected {{\"bots\": [ ... ]}} with at least one bot")
    specs = [BotSpec.from_dict(d, f"{path}: bot {i}") for i, d in enumerate(data["bots"])]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate bot names {dupes}")
    return specs


_ROLES = {"checkpoint": ("seq2seq",), "lm": ("lm",), "backward": ("backward",)}


def missing_bots(checkpoint_dir: str | Path | None = None) -> dict[str, str]:
    """Bots of bots.json whose checkpoint folders are not there yet: name -> what is missing."""
    root = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
    out = {}
    for spec in read_bots_json(root / "bots.json"):
        gone = [f for f in (spec.checkpoint, spec.lm, spec.backward) if f and not resolve(root / f).exists()]
        if gone:
            out[spec.name] = f"{spec.label}: checkpoint folder(s) {', '.join(gone)} not found in {root}"
    return out


def load_bots(checkpoint_dir: str | Path | None = None, device: str = "auto", *,
              skip_missing: bool = False) -> dict[str, Bot]:
    """The bots of ``<checkpoint_dir>/bots.json``, in file order, keyed by name. ``skip_missing``: leave out
    bots whose checkpoint folders do not exist (see :func:`missing_bots`) instead of raising."""
    root = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
    bots_file = root / "bots.json"
    specs = read_bots_json(bots_file)
    if skip_missing:
        gone = missing_bots(root)
        specs = [s for s in specs if s.name not in gone]
        if not specs:
            raise FileNotFoundError(f"{bots_file}: no bot has its checkpoints ({'; '.join(gone.values())})")
    dev = pick_device(device)
    loaded: dict[str, tuple[Any, Tokenizer, dict[str, Any]]] = {}

    def get(spec: BotSpec, role: str) -> tuple[Any, Tokenizer, dict[str, Any]]:
        folder = getattr(spec, role)
        if folder not in loaded:
            path = root / folder
            if not resolve(path).exists():
                raise FileNotFoundError(f"{bots_file}: bot {spec.name!r} needs {role} folder {path}, which does "
                                        f"not exist (train it, or fix bots.json)")
            try:
                loaded[folder] = load_model(path, dev)
            except CheckpointError as e:
                raise CheckpointError(f"{bots_file}: bot {spec.name!r}: {e}") from e
        model, tokenizer, config = loaded[folder]
        kind = config["model"].get("kind", "seq2seq")
        if kind not in _ROLES[role]:
            raise ValueError(f"{bots_file}: bot {spec.name!r}: {role} {folder!r} is a {kind!r} model, "
                             f"expected {' or '.join(_ROLES[role])}")
        return model, tokenizer, config

    bots = {}
    for spec in specs:
        model, tokenizer, config = get(spec, "checkpoint")
        extra = {role: get(spec, role) for role in ("lm", "backward") if getattr(spec, role)}
        for role, (_, _, cfg) in extra.items():
            if cfg.get("tokenizer_sha256") != config.get("tokenizer_sha256"):
                raise ValueError(f"{bots_file}: bot {spec.name!r}: {role} {getattr(spec, role)!r} was trained with "
                                 f"another tokenizer than {spec.checkpoint!r}")
        try:
            defaults = DecodeConfig().with_overrides(**spec.decoder)
        except ValueError as e:
            raise ValueError(f"{bots_file}: bot {spec.name!r}: {e}") from e
        bot = Bot(
            name=spec.name, label=spec.label, description=spec.description, defaults=defaults, model=model,
            tokenizer=tokenizer, lm=extra["lm"][0] if "lm" in extra else None,
            backward=extra["backward"][0] if "backward" in extra else None, checkpoint=root / spec.checkpoint,
            **window_of(config),
        )
        try:
            bot.settings()  # antilm without an LM, mmi_lambda without a backward model
        except ValueError as e:
            raise ValueError(f"{bots_file}: {e}") from e
        bots[spec.name] = bot
    return bots


def load_bot_folders(folders: list[str | Path | None], device: str = "auto") -> tuple[dict[str, Bot], dict[str, str]]:
    """The bots of several checkpoint folders on one page, and the bots left out (name -> why). Every folder after
    the first prefixes its bot names with the folder's name (``mine/beam``), so "my corpus vs chitchat" is one
    page; None is the shipped folder. Bots whose checkpoints are missing are left out, not an error."""
    bots: dict[str, Bot] = {}
    missing: dict[str, str] = {}
    for i, folder in enumerate(folders):
        root = Path(folder) if folder is not None else default_checkpoint_dir()
        prefix = f"{root.name}/" if i else ""
        for name, bot in load_bots(root, device=device, skip_missing=True).items():
            if prefix:
                bot.name, bot.label = prefix + name, f"{bot.label} ({root.name})"
            if bot.name in bots:
                raise ValueError(f"two checkpoint folders give a bot named {bot.name!r}; rename one folder")
            bots[bot.name] = bot
        missing.update({prefix + k: v for k, v in missing_bots(root).items()})
    return bots, missing


def bots_of_folders(folders: list[str | Path | None], device: str = "auto") -> dict[str, Bot]:
    """Only the bots of :func:`load_bot_folders` (a picklable loader for a decode process)."""
    return load_bot_folders(folders, device)[0]


def bot_from_checkpoint(path: str | Path, *, device: str = "auto", lm: str | Path | None = None,
                        backward: str | Path | None = None, **decoder: Any) -> Bot:
    """One bot straight from a checkpoint folder (a training run's ``best/`` say), without a bots.json.

    >>> bot_from_checkpoint("runs/mle/best", strategy="greedy").respond("hi").text
    """
    path = Path(path)
    model, tokenizer, config = load_model(path, device)
    extra = {role: load_model(p, device)[0] for role, p in (("lm", lm), ("backward", backward)) if p}
    bot = Bot(name=path.name if path.name not in ("best", "last") else f"{path.parent.name}-{path.name}",
              label=str(path), description=f"{config['model'].get('kind', 'seq2seq')} checkpoint {path}",
              defaults=DecodeConfig().with_overrides(**decoder), model=model, tokenizer=tokenizer,
              lm=extra.get("lm"), backward=extra.get("backward"), checkpoint=path, **window_of(config))
    bot.settings()
    return bot
