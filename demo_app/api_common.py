"""What the JSON and OpenAI-compatible routes share: the decoder settings as request fields (read from
DecodeConfig's metadata, so each field's type, range and help are the decoder's own), and one decode
through the scheduler with its errors mapped to API errors (422 naming the field, 503 busy, 504 timeout).
"""

from __future__ import annotations

import asyncio
import math
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal

from pydantic import (
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

from core.bots import Bot
from core.decoding import DecodeConfig, Reply
from core.errors import SettingError
from core.serving import Busy
from demo_app.context import AppContext
from demo_app.errors import ApiError

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


