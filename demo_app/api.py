"""The JSON API: the bot registry, one reply with its n-best list, and OpenAI-compatible chat completions.

    app = fastapi.FastAPI()
    install_error_handling(app)                  # demo_app.errors: clean 4xx bodies, size and rate limits
    app.include_router(api_router(ctx))          # ctx: demo_app.context.AppContext

    curl -s localhost:7860/api/v1/bots
    curl -s localhost:7860/api/v1/reply -H 'content-type: application/json' \\
         -d '{"bot": "antilm", "message": "hi there", "settings": {"antilm": 0.3}, "nbest": 3}'
    curl -s localhost:7860/api/v1/reply -H 'content-type: application/json' \\
         -d '{"bot": "rl", "message": "why not?", "history": ["want to go hiking?", "no"]}'
    curl -s localhost:7860/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "antilm", "messages": [{"role": "user", "content": "hi there"}]}'
    curl -s localhost:7860/api/v1/self_chat -H 'content-type: application/json' \\
         -d '{"bot_a": "rl", "bot_b": "beam", "opening": "hi, how are you?", "max_turns": 8}'

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:7860/v1", api_key="unused")
    client.chat.completions.create(model="beam", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"beam_size": 5, "n_bonus": 0.2}).choices[0].message.content

Routes: ``GET /api/v1/bots``, ``POST /api/v1/reply``, ``POST /api/v1/self_chat`` (two bots talk:
:mod:`demo_app.self_chat`), ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{model}``. Every reply
goes through ``ctx.scheduler`` (batched with the app's requests).

A conversation: ``/api/v1/reply`` takes ``history``, the turns before ``message`` (oldest first, the bot's own
replies included; at most ``MAX_HISTORY_TURNS`` turns of at most ``MAX_TURN_CHARS`` characters, else a 422 naming
``history`` or ``history[i]``). A bot reads only the last ``context_turns`` of them (``GET /api/v1/bots`` says how
many; 0: the message alone); its reply's ``source_tokens`` are that window, the turns joined by ``</s>``.

How the OpenAI fields map onto the decoder (a bot's own settings apply to everything not given):

- ``model`` is a bot name; ``messages`` is the conversation: its last message must be the user's (a 422 naming
  ``messages[i].role`` otherwise) and is the one answered; every earlier ``user`` and ``assistant`` message, in
  order, is the history (only its last ``MAX_HISTORY_TURNS`` turns are kept, and a bot reads only its last
  ``context_turns``); ``system`` and ``developer`` messages are ignored anywhere (these small models follow no
  instructions) and are no turn of the history; any other role (``tool``, ``function``) is a 422 naming
  ``messages[i].role``; content is a string or a list of text parts (other parts: a 422 naming
  ``messages[i].content``), and an assistant's null content is an empty turn;
- ``max_tokens`` / ``max_completion_tokens`` -> ``max_len`` (1..100; larger is a 422, not silently capped);
- ``temperature`` or ``top_p`` given -> sampling with them (``strategy: "sample"``), unless ``strategy`` is given
  too; ``temperature: 0`` means the deterministic greedy reply (``strategy: "greedy"``);
- ``n`` -> the first n hypotheses of the n-best list (beam: the n best beams; sample: the n best of
  ``beam_size`` samples); ``beam_size`` is raised to n when it is smaller and not given; greedy gives one;
- ``stop`` cuts each choice at the first stop string; ``logprobs: true`` returns the per-token log p;
- ``stream: true`` sends the reply as server-sent ``chat.completion.chunk`` events, one per word, after the
  search has finished (a beam search only knows its reply at the end), then ``data: [DONE]``;
- every decoder setting (``beam_size``, ``antilm``, ``gamma``, ``n_bonus``, ``no_repeat_ngram``, ...) may be
  sent as an extra body field; unknown fields are refused with a 422 naming them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import typing
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)
from starlette.concurrency import run_in_threadpool

from core.bots import Bot, read_bots_json
from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS
from core.decoding import DecodeConfig, Reply
from core.errors import SettingError
from core.evaluate import AGENTS, END_REASONS, MAX_TURNS
from core.serving import Busy
from core.tokenizer import EOS_ID
from demo_app.context import AppContext
from demo_app.errors import ERROR_RESPONSES, ApiError
from demo_app.self_chat import TURN_RANGE, run_self_chat

MAX_MESSAGE_CHARS = 4000  # a bot reads at most its last max_src_len tokens anyway
MAX_MESSAGES = 256
TIMEOUT_S = 60.0  # ctx.extra["api_timeout_s"] overrides it
OWNER = "chatbot-arena"
# OpenAI fields the router handles itself; DecodeConfig fields of the same name are not repeated as extras
OPENAI_FIELDS = ("temperature", "top_p")

# ----------------------------------------------------------------------------- settings, read from DecodeConfig


def _static_bound(value: Any) -> Any:
    """A bound naming another field ("beam_size") -> that field's own static bound."""
    while isinstance(value, str):
        value = _DC_FIELDS[value].metadata.get("hi")
    return value


def _jsonable(value: Any) -> Any:
    """Metadata as JSON: a mapping to non-JSON values (strategy name -> class) becomes the list of its keys."""
    if isinstance(value, Mapping):
        if all(isinstance(v, (str, int, float, bool, type(None))) for v in value.values()):
            return {str(k): _jsonable(v) for k, v in value.items()}
        return [str(k) for k in value]
    if isinstance(value, (tuple, list, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


_DC_FIELDS = {f.name: f for f in fields(DecodeConfig)}
_DC_TYPES = typing.get_type_hints(DecodeConfig)


def _whole_float_to_int(value: Any) -> Any:
    """2.0 -> 2 (JSON Schema counts it as an integer); anything else is left for the strict int check."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# an int that refuses strings and booleans but takes a whole float such as 2.0
Integer = Annotated[StrictInt, BeforeValidator(_whole_float_to_int)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "not given" means the bot's own default, which differs per bot


def _setting_field(name: str) -> tuple[Any, Any]:
    """(annotation, Field) of one DecodeConfig field, with its range and help as the schema says them."""
    f = _DC_FIELDS[name]
    meta, typ = f.metadata, _DC_TYPES[name]
    help_text = str(meta.get("help", name))
    lo, hi = meta.get("lo"), _static_bound(meta.get("hi"))
    bounds: dict[str, Any] = {}
    if typ is str and not meta.get("choices"):  # free text (the reply prefix): hi is its most characters
        return StrictStr, Field(None, description=help_text, max_length=hi, json_schema_extra=_no_default)
    if lo is not None:
        bounds["gt" if meta.get("lo_open") else "ge"] = lo
    if hi is not None:
        bounds["le"] = hi
    if isinstance(meta.get("hi"), str):
        help_text += f" (at most {meta['hi']})"
    if meta.get("choices"):
        annotation: Any = Literal[tuple(meta["choices"])]
    elif typ is bool:
        annotation = StrictBool
    elif typ is int:
        annotation = Integer
    elif typ is float:
        annotation = StrictFloat
        bounds["allow_inf_nan"] = False
    elif typ == (int | None):
        annotation = Integer | None
    elif typ == (float | None):
        annotation = StrictFloat | None
        bounds["allow_inf_nan"] = False
    else:
        annotation = Any
    return annotation, Field(None, description=help_text, json_schema_extra=_no_default, **bounds)


def _settings_fields(exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    return {name: _setting_field(name) for name in _DC_FIELDS if name not in exclude}


Settings = create_model("Settings", __config__=ConfigDict(extra="forbid"), **_settings_fields())
Settings.__doc__ = "Decoder settings overriding the bot's defaults; GET /api/v1/bots lists them with their ranges."


def settings_catalog() -> list[dict[str, Any]]:
    """Every DecodeConfig field: name, type, default and its metadata (help, lo, hi, choices, ...)."""
    out = []
    for f in fields(DecodeConfig):
        default = f.default if f.default is not MISSING else None
        typ = _DC_TYPES[f.name]
        out.append({"name": f.name, "type": getattr(typ, "__name__", str(typ)), "default": _jsonable(default),
                    **{k: _jsonable(v) for k, v in f.metadata.items()}})
    return out


# ----------------------------------------------------------------------------- request and response models


class ReplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot: str = Field(min_length=1, max_length=100, description="a bot name (GET /api/v1/bots lists them)")
    message: str = Field(max_length=MAX_MESSAGE_CHARS, description="the message to answer")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]
    nbest: Integer | None = Field(None, ge=1, le=_static_bound("nbest"), json_schema_extra=_no_default,
                                    description="size of the n-best list (the same as settings.nbest)")
    history: list[Annotated[str, Field(max_length=MAX_TURN_CHARS)]] = Field(
        default_factory=list, max_length=MAX_HISTORY_TURNS,
        description=f"the conversation before message, oldest first, the bot's own replies included: at most "
                    f"{MAX_HISTORY_TURNS} turns of at most {MAX_TURN_CHARS} characters each; the bot reads only "
                    f"its last context_turns (GET /api/v1/bots; 0: the message alone)")


Score = float | None  # JSON has no -inf: a score no reply can reach (every continuation blocked) is null


class HypothesisOut(BaseModel):
    text: str
    score: Score
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[Score]
    parts: dict[str, Score] | None = None  # the score's terms, when the decoder reports them


class ReplyResponse(BaseModel):
    bot: str
    text: str
    score: Score = Field(description="the search score; null when no reply was possible under these settings")
    parts: dict[str, Score] | None = None
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[Score] = Field(description="log p(token | prefix, message) from the seq2seq model")
    nbest: list[HypothesisOut]
    source_tokens: list[str] = Field(description="the window the model read: the last context_turns turns of "
                                                 "history, then message, joined by the separator token </s> and "
                                                 "cut from the oldest side to the bot's max_src_len tokens")
    latency_s: float = Field(description="wall time of the batched search that produced this reply")
    wall_s: float = Field(description="wall time of this request on the server (queue + search)")
    settings: dict[str, Any] = Field(description="the effective decoder settings")


# what /api/v1/reply returns of Reply.to_json() (the attention matrix and the trace stay out)
REPLY_FIELDS = ("text", "score", "parts", "tokens", "token_ids", "logprobs", "nbest", "source_tokens", "latency_s",
                "settings")


class SelfChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot_a: str = Field(min_length=1, max_length=100, description="agent A's bot, which answers the opening")
    bot_b: str | None = Field(None, min_length=1, max_length=100,
                              description="agent B's bot, which answers A (default: bot_a again)")
    opening: str = Field(max_length=MAX_TURN_CHARS, description="the first turn (counted as agent B's)")
    max_turns: Integer = Field(MAX_TURNS, ge=TURN_RANGE[0], le=TURN_RANGE[1],
                               description="the turn limit: the dialogue ends after this many turns at most")


class SelfChatTurn(BaseModel):
    agent: Literal[AGENTS]  # type: ignore[valid-type]
    bot: str
    text: str
    score: Score = Field(description="the search score of the turn")


class SelfChatResponse(BaseModel):
    bot_a: str
    bot_b: str
    opening: str
    turns: list[SelfChatTurn] = Field(description="the turns after the opening, A first, the ending turn not "
                                                  "included")
    length: int = Field(description="the number of turns the dialogue lasted")
    end: Literal[tuple(END_REASONS)] = Field(  # type: ignore[valid-type]
        description="why it ended: dull (a dull or empty turn), repetition (an agent's turn shares more than 80% "
                    "of its words with its own previous turn), limit (max_turns reached)")
    end_reason: str
    ending_turn: SelfChatTurn | None = Field(description="the turn that ended the dialogue (dull or repetition), "
                                                         "not among turns; null at the limit")
    wall_s: float


class ContentPart(BaseModel):
    type: str = Field(max_length=100)
    text: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients echo fields such as name, refusal or tool_calls

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="user and assistant messages are the conversation; system and developer messages are ignored "
                    "(no turn of it): these small models follow no instructions")
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | Annotated[
        list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class ChatBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100, description="a bot name (GET /v1/models lists them)")
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES,
        description=f"the conversation, oldest first: the last message (system messages aside) must be the user's "
                    f"and is answered; the user and assistant messages before it are the history (the last "
                    f"{MAX_HISTORY_TURNS} kept; a bot reads only its last context_turns); system and developer "
                    f"messages are ignored")
    max_tokens: Integer | None = Field(None, ge=1, le=_static_bound("max_len"),
                                         description="most tokens in a reply (the decoder's max_len)")
    max_completion_tokens: Integer | None = Field(None, ge=1, le=_static_bound("max_len"),
                                                    description="the same as max_tokens")
    temperature: StrictFloat | None = Field(None, ge=0.0, le=_static_bound("temperature"), allow_inf_nan=False,
                                            description="given: sample with it; 0: the greedy reply")
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                      description="given: sample among the tokens holding top_p of the mass")
    n: Integer | None = Field(None, ge=1, le=_static_bound("beam_size"),
                                description="number of choices, taken from the n-best list")
    stream: StrictBool | None = Field(None, description="send server-sent events")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, max_length=4, description="cut each choice at these strings")
    logprobs: StrictBool | None = Field(None, description="return the per-token log p")
    top_logprobs: Integer | None = Field(None, ge=0, le=0, description="not supported: only 0")
    frequency_penalty: StrictFloat | None = Field(None, ge=0.0, le=0.0, description="not supported: only 0 "
                                                  "(use no_repeat_ngram)")
    presence_penalty: StrictFloat | None = Field(None, ge=0.0, le=0.0, description="not supported: only 0 "
                                                 "(use no_repeat_ngram)")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")


ChatCompletionRequest = create_model(
    "ChatCompletionRequest", __base__=ChatBase,
    **_settings_fields(exclude=OPENAI_FIELDS),
)
ChatCompletionRequest.__doc__ = ("OpenAI's chat completion request; any decoder setting may be added as a field "
                                 "(beam_size, antilm, gamma, n_bonus, ...).")


# ----------------------------------------------------------------------------- helpers


def _find_bot(ctx: AppContext, name: str, param: str) -> Bot:
    bot = ctx.bots.get(name)
    if bot is None:
        raise ApiError(404, f"unknown {'model' if param == 'model' else 'bot'} {name[:100]!r}; this server has "
                            f"{list(ctx.bots)}", param=param, code="model_not_found")
    return bot


def _param_of(error: ValueError, settings_prefix: str, message_param: str) -> str | None:
    """The request field a core error is about, from its ``field`` (:class:`SettingError`): a decoder setting
    under ``settings_prefix``, the prompt as ``message_param``, any other field (``history[3]``) as it is; None
    for an error that names no field."""
    if not isinstance(error, SettingError):
        return None
    if error.field in _DC_FIELDS:
        return settings_prefix + error.field
    return message_param if error.field == "prompt" else error.field


async def decode(ctx: AppContext, bot: str, prompt: str, overrides: Mapping[str, Any], *,
                 history: list[str] | None = None, settings_prefix: str = "settings.",
                 message_param: str = "message") -> Reply:
    """One reply to ``prompt`` after ``history`` (oldest first) through the scheduler; ValueError -> 422 (its
    ``param`` a SettingError's field, :func:`_param_of`), Busy -> 503, no answer in time -> 504."""
    timeout = float(ctx.extra.get("api_timeout_s", TIMEOUT_S))
    future = None
    try:
        extra = {"history": history} if history else {}
        future = await run_in_threadpool(ctx.scheduler.submit, bot, prompt, dict(overrides), **extra)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except Busy as e:
        raise ApiError(503, f"the server is busy ({e or 'queue full'}); retry in a second",
                       headers={"Retry-After": "1"}) from e
    except ValueError as e:
        text = str(e).replace("DecodeConfig.", settings_prefix)
        raise ApiError(422, text, param=_param_of(e, settings_prefix, message_param)) from e
    except asyncio.TimeoutError as e:
        if future is not None:
            future.cancel()
        raise ApiError(504, f"no reply within {timeout:g} s; retry later", headers={"Retry-After": "5"}) from e


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


IGNORED_ROLES = ("system", "developer")  # instructions: these small models follow none, and they are no turn


def _text_of(msg: ChatMessage, i: int) -> str:
    """A message's text: its string, or its text parts joined by spaces (other parts: a 422)."""
    if isinstance(msg.content, list):
        other = [p.type for p in msg.content if p.type != "text"]
        if other:
            raise ApiError(422, f"messages[{i}].content: only text parts are supported (got {other[0]!r})",
                           param=f"messages[{i}].content")
        return " ".join(p.text or "" for p in msg.content)
    return msg.content or ""


def chat_conversation(messages: list[ChatMessage]) -> tuple[str, list[str]]:
    """(the message answered, the history before it) of a chat's ``messages`` (see the module docstring): the
    last message, system and developer messages aside, must be the user's; the user and assistant messages
    before it are the history, oldest first, of which the last ``MAX_HISTORY_TURNS`` are kept."""
    turns = [(i, msg.role, _text_of(msg, i)) for i, msg in enumerate(messages) if msg.role not in IGNORED_ROLES]
    if not any(role == "user" for _, role, _ in turns):
        raise ApiError(422, "messages: no message with role 'user' to answer", param="messages")
    i, role, prompt = turns[-1]
    if role != "user":
        raise ApiError(422, f"messages[{i}].role: the last message (system messages aside) must be the user's, the "
                            f"one the bot answers; got {role!r}", param=f"messages[{i}].role")
    kept = turns[:-1][-MAX_HISTORY_TURNS:]
    for j, _, text in kept:
        if len(text) > MAX_TURN_CHARS:  # text parts joined can be longer than one string may be
            raise ApiError(422, f"messages[{j}].content: {len(text)} characters; at most {MAX_TURN_CHARS}",
                           param=f"messages[{j}].content")
    return prompt, [text for _, _, text in kept]


def chat_overrides(req: Any, bot: Bot) -> tuple[dict[str, Any], int]:
    """(decoder overrides, n) for a chat completion request: the mapping of the module docstring."""
    given = req.model_dump(exclude_unset=True)
    overrides = {k: v for k, v in given.items() if k in _DC_FIELDS and k not in OPENAI_FIELDS}
    max_tokens = given.get("max_completion_tokens", given.get("max_tokens"))
    if max_tokens is not None:
        if "max_len" in overrides and overrides["max_len"] != max_tokens:
            raise ApiError(422, f"max_tokens={max_tokens} and max_len={overrides['max_len']} disagree: give one",
                           param="max_tokens")
        overrides["max_len"] = max_tokens
    temperature, top_p = given.get("temperature"), given.get("top_p")
    if temperature == 0:
        overrides.setdefault("strategy", "greedy")
    elif temperature is not None or top_p is not None:
        overrides.setdefault("strategy", "sample")
        overrides.update({k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None})
    n = given.get("n") or 1
    if n > 1:
        cfg = _settings_or_422(bot, overrides)
        if cfg.beam_size < n and "beam_size" not in overrides:
            overrides["beam_size"] = n
            cfg = _settings_or_422(bot, overrides)
        width = _strategy_width(cfg)
        if width is not None and width < n:
            raise ApiError(422, f"n={n}: the {cfg.strategy} strategy gives {width} reply per message; use a beam "
                                f"or sample strategy (\"strategy\": \"beam\")", param="n")
        overrides.setdefault("nbest", n)
    _settings_or_422(bot, overrides)
    return overrides, n


def _strategy_width(cfg: DecodeConfig) -> int | None:
    """Hypotheses the configured strategy keeps per prompt, when its registry says (``width(cfg)``)."""
    choices = _DC_FIELDS["strategy"].metadata.get("choices")
    width = getattr(choices.get(cfg.strategy), "width", None) if isinstance(choices, Mapping) else None
    if callable(width):
        return int(width(cfg))
    return 1 if cfg.strategy == "greedy" else None


def _settings_or_422(bot: Bot, overrides: Mapping[str, Any]) -> DecodeConfig:
    try:
        return bot.settings(**overrides)
    except ValueError as e:
        raise ApiError(422, str(e).replace("DecodeConfig.", ""), param=_param_of(e, "", "messages")) from e


def _bots_json_folders(ctx: AppContext) -> dict[str, dict[str, str | None]]:
    try:
        specs = read_bots_json(ctx.checkpoint_dir / "bots.json")
    except (OSError, ValueError):
        return {}
    return {s.name: {"checkpoint": s.checkpoint, "lm": s.lm, "backward": s.backward} for s in specs}


# ----------------------------------------------------------------------------- the router


def api_router(ctx: AppContext) -> APIRouter:
    """The JSON and OpenAI-compatible routes over ``ctx.bots`` (see the module docstring)."""
    router = APIRouter()
    created = int(time.time())

    @router.get("/api/v1/bots", tags=["bots"], summary="The bots, their decoder defaults and every setting's range")
    def list_bots() -> dict[str, Any]:
        folders = _bots_json_folders(ctx)
        bots = []
        for name, bot in ctx.bots.items():
            checkpoints = folders.get(name) or {"checkpoint": bot.checkpoint.name if bot.checkpoint else None,
                                                "lm": None, "backward": None}
            bots.append({"name": name, "label": bot.label, "description": bot.description,
                         "checkpoints": checkpoints, "has_lm": bot.lm is not None,
                         "has_backward": bot.backward is not None, "context_turns": bot.context_turns,
                         "defaults": {k: _jsonable(v) for k, v in bot.defaults.to_dict().items()}})
        return {"bots": bots, "settings": settings_catalog(), "missing": dict(ctx.missing)}

    @router.post("/api/v1/reply", tags=["bots"], response_model=ReplyResponse, responses=ERROR_RESPONSES,
                 summary="One reply of one bot, with its n-best list, tokens and per-token log p")
    async def reply(req: ReplyRequest) -> ReplyResponse:
        _find_bot(ctx, req.bot, "bot")
        overrides = req.settings.model_dump(exclude_unset=True)
        if req.nbest is not None:
            if overrides.get("nbest", req.nbest) != req.nbest:
                raise ApiError(422, f"nbest={req.nbest} and settings.nbest={overrides['nbest']} disagree",
                               param="nbest")
            overrides["nbest"] = req.nbest
        start = time.perf_counter()
        r = await decode(ctx, req.bot, req.message, overrides, history=list(req.history))
        data = r.to_json()  # the one JSON form of a reply: a -inf score or log p is null
        return ReplyResponse(bot=req.bot, wall_s=time.perf_counter() - start,
                             **{k: data[k] for k in REPLY_FIELDS})

    @router.post("/api/v1/self_chat", tags=["dialogues"], response_model=SelfChatResponse,
                 responses=ERROR_RESPONSES, summary="Two bots (or one bot twice) talk from an opening",
                 description="Agent A (bot_a) answers the opening, agent B (bot_b) answers A, and so on, each "
                             "reading the conversation, until a dull turn, an agent repeating its own previous "
                             "turn, or max_turns: the rules of the evaluation's simulated dialogues.")
    async def self_chat(req: SelfChatRequest) -> SelfChatResponse:
        start = time.perf_counter()
        try:
            dialogue = await run_in_threadpool(run_self_chat, ctx, req.bot_a, req.bot_b, req.opening,
                                               req.max_turns)
        except Busy as e:
            raise ApiError(503, f"the server is busy ({e or 'queue full'}); retry in a second",
                           headers={"Retry-After": "1"}) from e
        except TimeoutError as e:
            raise ApiError(504, f"{e}; retry later", headers={"Retry-After": "5"}) from e
        except ValueError as e:
            raise ApiError(422, str(e), param=getattr(e, "field", None)) from e
        return SelfChatResponse(bot_a=req.bot_a, bot_b=req.bot_b or req.bot_a, wall_s=time.perf_counter() - start,
                                **dialogue.to_json())

    @router.get("/v1/models", tags=["openai"], summary="The bots, as OpenAI models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name, created) for name in ctx.bots]}

    @router.get("/v1/models/{model:path}", tags=["openai"], responses=ERROR_RESPONSES, summary="One bot, as a model")
    def get_model(model: str) -> dict[str, Any]:
        _find_bot(ctx, model, "model")
        return _model_card(model, created)

    @router.post("/v1/chat/completions", tags=["openai"], responses={
        **ERROR_RESPONSES, 200: {"description": "a chat.completion, or with stream: true server-sent "
                                                "chat.completion.chunk events ending with data: [DONE]",
                                 "content": {"text/event-stream": {}}}},
        summary="OpenAI-compatible chat completion (model = bot name)",
        description="The last message (system messages aside) must be the user's: it is answered after the "
                    "user and assistant messages before it, in order (the conversation the bot reads the last "
                    "context_turns of). system and developer messages are ignored: these small models follow no "
                    "instructions, and such a message is no turn of the conversation. Any other role is refused.")
    async def chat_completions(req: ChatCompletionRequest) -> Any:  # type: ignore[valid-type]
        bot = _find_bot(ctx, req.model, "model")
        prompt, history = chat_conversation(req.messages)
        overrides, n = chat_overrides(req, bot)
        r = await decode(ctx, req.model, prompt, overrides, history=history, settings_prefix="",
                         message_param="messages")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        data = r.to_json()  # the one JSON form of a reply: a -inf log p is null
        hyps = data["nbest"][:n] if n > 1 else [data]  # each: text, tokens (pieces), token_ids, logprobs
        choices = []
        for i, h in enumerate(hyps):
            ids = h["token_ids"]
            text, stopped = _cut_at_stop(h["text"], stop)
            finish = "stop" if stopped or (ids and ids[-1] == EOS_ID) else "length"
            logprobs = None
            if req.logprobs:
                logprobs = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")),
                                         "top_logprobs": []} for t, lp in zip(h["tokens"], h["logprobs"])]}
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": logprobs, "finish_reason": finish, "n_tokens": len(ids)})
        completion_tokens = sum(c.pop("n_tokens") for c in choices)
        usage = {"prompt_tokens": len(r.source_tokens), "completion_tokens": completion_tokens,
                 "total_tokens": len(r.source_tokens) + completion_tokens}
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": None}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(base, choices, usage if include_usage else None),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    return router


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def _words(text: str) -> list[str]:
    """Pieces that concatenate back to ``text`` exactly, one per word (with the spaces before it)."""
    return [p for p in re.split(r"(?<=\S)(?=\s)", text) if p]


async def _sse(base: dict[str, Any], choices: list[dict[str, Any]],
               usage: dict[str, Any] | None) -> AsyncIterator[str]:
    """OpenAI's chunk stream: per choice a role delta, one content delta per word, a finish delta; [DONE]."""

    def event(delta_choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {**base, "object": "chat.completion.chunk", "choices": delta_choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"

    for c in choices:
        i = c["index"]
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
        for piece in _words(c["message"]["content"]):
            yield event([{"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c["finish_reason"]}])
    if usage is not None:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"
