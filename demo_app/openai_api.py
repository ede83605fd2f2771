"""OpenAI-compatible chat completions over the bots: ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /v1/models/{model}`` (included in :func:`demo_app.api.api_router`).

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:7860/v1", api_key="unused")
    client.chat.completions.create(model="beam", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"beam_size": 5, "n_bonus": 0.2}).choices[0].message.content

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

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    create_model,
)

from core.bots import Bot
from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS
from core.decoding import DecodeConfig, Reply
from core.tokenizer import EOS_ID
from demo_app.api_common import (
    _DC_FIELDS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    OPENAI_FIELDS,
    OWNER,
    Integer,
    _find_bot,
    _param_of,
    _settings_fields,
    _static_bound,
    decode,
)
from demo_app.context import AppContext
from demo_app.errors import ERROR_RESPONSES, RATE_LIMIT, ApiError, GuardedRoute, route_limits


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




# ----------------------------------------------------------------------------- the router


def openai_router(ctx: AppContext) -> APIRouter:
    """The OpenAI-compatible routes over ``ctx.bots`` (see the module docstring)."""
    router = APIRouter(route_class=GuardedRoute)
    created = int(time.time())

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
    @route_limits(rate=RATE_LIMIT)
    async def chat_completions(req: ChatCompletionRequest) -> Any:  # type: ignore[valid-type]
        bot = _find_bot(ctx, req.model, "model")
        prompt, history = chat_conversation(req.messages)
        overrides, n = chat_overrides(req, bot)
        r = await decode(ctx, req.model, prompt, overrides, history=history, settings_prefix="",
                         message_param="messages")
        choices = _choices(req, r, n)
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


def _choices(req: Any, r: Reply, n: int) -> list[dict[str, Any]]:
    """The ``choices`` of a completion: the reply, or the first n of its n-best list, each cut at the stop
    strings, with its finish reason, per-token log p when asked, and its token count (``n_tokens``)."""
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
    return choices


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
