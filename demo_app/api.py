"""The JSON API: the bot registry, one reply with its n-best list, and OpenAI-compatible chat completions.

    app = fastapi.FastAPI()
    install_error_handling(app)                  # demo_app.errors: clean 4xx bodies; the routes declare their limits
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

The OpenAI-compatible routes and how their fields map onto the decoder: :mod:`demo_app.openai_api`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
from starlette.concurrency import run_in_threadpool

from core.bots import read_bots_json
from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS
from core.evaluation.evaluate import AGENTS, END_REASONS, MAX_TURNS
from core.serving import Busy
from demo_app.api_common import (
    MAX_MESSAGE_CHARS,
    Integer,
    Settings,
    _find_bot,
    _jsonable,
    _no_default,
    _static_bound,
    decode,
    settings_catalog,
)
from demo_app.context import AppContext
from demo_app.errors import ERROR_RESPONSES, RATE_LIMIT, ApiError, GuardedRoute, route_limits
from demo_app.openai_api import openai_router
from demo_app.self_chat import TURN_RANGE, run_self_chat

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


def _bots_json_folders(ctx: AppContext) -> dict[str, dict[str, str | None]]:
    try:
        specs = read_bots_json(ctx.checkpoint_dir / "bots.json")
    except (OSError, ValueError):
        return {}
    return {s.name: {"checkpoint": s.checkpoint, "lm": s.lm, "backward": s.backward} for s in specs}


# ----------------------------------------------------------------------------- the router


def api_router(ctx: AppContext) -> APIRouter:
    """The JSON and OpenAI-compatible routes over ``ctx.bots`` (see the module docstring)."""
    router = APIRouter(route_class=GuardedRoute)

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
    @route_limits(rate=RATE_LIMIT)
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
    @route_limits(rate=RATE_LIMIT)
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

    router.include_router(openai_router(ctx))
    return router


