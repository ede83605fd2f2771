"""Clean errors and abuse limits for the HTTP API: every bad request gets a 4xx JSON body in OpenAI's error shape.

    router = APIRouter(route_class=GuardedRoute)                 # each route declares what it accepts:
    @router.post("/api/v1/reply", responses=ERROR_RESPONSES)
    @route_limits(rate=RATE_LIMIT)                               # per client; the body checks' defaults below
    async def reply(req: ReplyRequest) -> ReplyResponse: ...
    install_error_handling(app)                                  # the handlers and the app's rate limiter
    app.include_router(router)

An error body is ``{"error": {"message": "...", "type": "invalid_request_error", "param": "settings.beam_size",
"code": null}}``, so the official OpenAI clients show the message. What is checked, and where:

- by the route itself (:class:`GuardedRoute`, from the :class:`RouteLimits` declared with :func:`route_limits`
  beside it), before its body is parsed: the per-client rate limit (429 with ``Retry-After``), then for a
  method with a body its size (413 past ``max_body_bytes``), content type (415 unless JSON), UTF-8 (400) and
  nesting depth (400 past ``max_json_depth``). A route that declares nothing gets the body checks with the
  defaults and no rate limit. The statuses a route can answer this way are added to its OpenAPI responses;
- by exception handlers: request validation (422 naming the field), :class:`ApiError` (the routes' own 4xx/503),
  HTTP errors (404 unknown route, 405 wrong method), and anything unexpected (500, logged, message generic).

The rate-limit key of a client is a salted hash of its address (a fresh salt per process), so no raw IP address
is stored or logged. Behind a reverse proxy, run uvicorn with ``--proxy-headers`` so the address is the client's.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # a chat request is a few KB; 1 MB bodies are refused before they are parsed
MAX_JSON_DEPTH = 32
RATE_LIMIT = "60/minute"  # per client, on each expensive route (see `limits` for the notation)
DECLARED = "declared"  # install_error_handling(rate_limit=DECLARED): each route's own rate
BODY_METHODS = ("POST", "PUT", "PATCH")

_STATUS_TYPE = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "request_too_large", 415: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_exceeded", 503: "server_busy", 504: "timeout"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAI's shape)."""

    error: ErrorDetail


# responses= for the routes, so the OpenAPI schema documents every status the API can answer
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (404, "Unknown bot (model)"),
        (422, "A field is missing, of the wrong type, unknown, or out of range (the message names it)"),
        (503, "The server is busy; see Retry-After"),
        (504, "No reply within the server's time limit; see Retry-After"),
    )
}


class ApiError(Exception):
    """An error answer: ``raise ApiError(422, "beam_size must be ...", param="settings.beam_size")``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _STATUS_TYPE.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    err = ApiError(status, message, param=param, code=code, type=type, headers=headers)
    return JSONResponse(error_body(err.message, type=err.type, param=err.param, code=err.code),
                        status_code=status, headers=err.headers)


# ----------------------------------------------------------------------------- validation errors


# what pydantic adds to an error's loc to say which member of a union failed: not a field of the request
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _is_union_tag(part: Any) -> bool:
    """"constrained-str", "list[ContentPart]", "function-after[...]", "str": a union member, not a field name."""
    return isinstance(part, str) and (part in _UNION_TAGS or not part.isidentifier())


def _loc_to_param(loc: Iterable[Any]) -> str:
    """("body", "settings", "beam_size") -> "settings.beam_size"; list indices as [i]; pydantic's union member
    tags are left out: ("body", "messages", 0, "content", "constrained-str") -> "messages[0].content"."""
    loc = list(loc)
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if out and _is_union_tag(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or (str(loc[0]) if loc else "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(one readable sentence per error, the first error's field) from pydantic's error list."""
    parts, first = [], None
    for e in errors[:5]:
        kind, msg = e.get("type", ""), e.get("msg", "invalid value")
        param = "body" if kind == "json_invalid" else _loc_to_param(e.get("loc", ()))
        first = first if first is not None else (param or None)
        if kind == "extra_forbidden":
            msg = "unknown field (not a setting of this API; see GET /api/v1/bots for the settings)"
        elif kind == "missing":
            msg = "request body is missing (send a JSON object)" if param == "body" else "required field is missing"
        elif kind == "json_invalid":
            position = e.get("loc", ("body", "?"))[-1]
            msg = f"invalid JSON at character {position} ({e.get('ctx', {}).get('error', 'parse error')})"
        elif "input" in e and kind not in ("model_attributes_type",):
            msg = f"{msg} (got {_short(e['input'])})"
        parts.append(f"{param}: {msg}" if param else msg)
    more = f" (and {len(errors) - 5} more errors)" if len(errors) > 5 else ""
    return "; ".join(parts) + more, first


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    message, param = validation_message(errors)
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return error_response(status, message, param=param)


async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code),
                        status_code=exc.status, headers=exc.headers)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such route: {request.method} {request.url.path} (see /docs for the API)"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error while answering this request; it has been logged",
                          type="server_error")


# ----------------------------------------------------------------------------- rate limits


@functools.lru_cache(maxsize=64)
def parse_rate(rate: str) -> Any:
    """The `limits` item of a rate such as "60/minute" (parsed once per rate, not on every request); ValueError
    naming it when it is not one."""
    from limits import parse

    try:
        return parse(rate)
    except ValueError as e:
        raise ValueError(f"rate limit {rate!r} is not in `limits` notation (e.g. '60/minute'): {e}") from None


class RateLimiter:
    """Per-client moving-window limits (the `limits` package, in memory) keyed by a salted hash of the address.
    ``rate``: the rate of every route (an override); None: each hit's own rate (the route's declared one).

    >>> limiter = RateLimiter("60/minute")
    >>> limiter.hit("POST /api/v1/reply", "203.0.113.7")      # None when allowed, else seconds to wait
    >>> RateLimiter().hit("POST /api/v1/reply", "203.0.113.7", rate="5/second")
    """

    def __init__(self, rate: str | None = None) -> None:
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.rate = rate
        if rate is not None:
            parse_rate(rate)  # a typo fails when the app starts, not on the first request
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._salt = os.urandom(16)

    def client_key(self, address: str) -> str:
        """A salted hash of the client address: stable within this process, meaningless outside it."""
        return hashlib.blake2b(address.encode("utf-8", "replace"), key=self._salt, digest_size=12).hexdigest()

    def item(self, rate: str | None = None) -> Any:
        """The `limits` item of a hit: the override if set, else ``rate``."""
        chosen = self.rate or rate
        if not chosen:
            raise ValueError("no rate: give RateLimiter a rate or hit(..., rate=...)")
        return parse_rate(chosen)

    def hit(self, route: str, address: str, rate: str | None = None) -> int | None:
        """Count one request of ``address`` on ``route`` (at ``rate`` unless this limiter overrides it); None if
        allowed, else the seconds until it would be."""
        key, item = self.client_key(address), self.item(rate)
        if self.limiter.hit(item, route, key):
            return None
        reset = self.limiter.get_window_stats(item, route, key).reset_time
        return max(1, math.ceil(reset - time.time()))


# ----------------------------------------------------------------------------- the request guard


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if the JSON text nests arrays/objects deeper than ``limit`` (brackets inside strings ignored)."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


@dataclass(frozen=True)
class RouteLimits:
    """What one route accepts, declared beside it with :func:`route_limits` and enforced by :class:`GuardedRoute`.

    ``rate``: per client, in `limits` notation ("60/minute"); None: no rate limit. ``max_body_bytes`` and
    ``max_json_depth``: the body checks of a method with a body (POST, PUT, PATCH), which must be JSON."""

    rate: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_json_depth: int = MAX_JSON_DEPTH

    def __post_init__(self) -> None:
        if self.rate is not None:
            parse_rate(self.rate)  # a typo fails where the route is declared, not on its first request
        if self.max_body_bytes < 1 or self.max_json_depth < 1:
            raise ValueError(f"route limits must be positive: {self}")

    def statuses(self, methods: Iterable[str]) -> dict[int, str]:
        """The statuses these checks can answer on a route with ``methods``, for its OpenAPI responses."""
        out = {}
        if any(m in BODY_METHODS for m in methods):
            out |= {400: "Malformed request: invalid JSON, invalid UTF-8 or JSON nested too deep",
                    413: f"Request body larger than {self.max_body_bytes} bytes",
                    415: "Content type is not application/json"}
        if self.rate:
            out[429] = f"More than {self.rate} requests from this client; see Retry-After"
        return out


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def route_limits(rate: str | None = None, *, max_body_bytes: int = MAX_BODY_BYTES,
                 max_json_depth: int = MAX_JSON_DEPTH) -> Callable[[Endpoint], Endpoint]:
    """Declare a route's limits on its endpoint (under the ``@router.post(...)`` line of a router whose
    ``route_class`` is :class:`GuardedRoute`)."""
    limits = RouteLimits(rate, max_body_bytes, max_json_depth)

    def declare(endpoint: Endpoint) -> Endpoint:
        endpoint.route_limits = limits  # type: ignore[attr-defined]
        return endpoint

    return declare


class GuardedRoute(APIRoute):
    """A FastAPI route that enforces its endpoint's :class:`RouteLimits` before anything parses the body, and
    lists the statuses they can answer in its OpenAPI responses. Use as ``APIRouter(route_class=GuardedRoute)``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.limits: RouteLimits = getattr(endpoint, "route_limits", RouteLimits())  # before super() builds the handler
        super().__init__(path, endpoint, **kwargs)
        self.responses = {**self.responses}  # the caller's dict (often a shared constant) stays as it was
        for status, text in self.limits.statuses(self.methods or ()).items():
            self.responses.setdefault(status, {"model": ErrorResponse, "description": text})

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        # one budget per route and client (a router included twice shares it: one endpoint, one budget)
        limits, label = self.limits, f"{'/'.join(sorted(self.methods or ()))} {self.path}"

        async def guarded(request: Request) -> Response:
            limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
            if limits.rate and limiter is not None:
                client = request.client.host if request.client else "unknown"
                wait = limiter.hit(label, client, rate=limits.rate)
                if wait is not None:
                    rate = limiter.rate or limits.rate
                    return error_response(429, f"too many requests to {request.url.path} from this client (limit "
                                               f"{rate}); retry in {wait} s", headers={"Retry-After": str(wait)})
            if request.method not in BODY_METHODS:
                return await handler(request)
            problem, body = await read_checked(request, limits)
            if problem is not None:
                return problem
            return await handler(replayed(request, body))

        return guarded


def replayed(request: Request, body: bytes) -> Request:
    """A request like ``request`` whose body (already read) is ``body``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # after the body: wait for the disconnect

    return Request(request.scope, receive)


async def read_checked(request: Request, limits: RouteLimits) -> tuple[JSONResponse | None, bytes]:
    """Read the body of ``request`` up to ``limits.max_body_bytes`` and check it is JSON text: (the error response
    or None, the body)."""
    too_large = error_response(413, f"request body is larger than {limits.max_body_bytes} bytes", param="body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        return too_large, b""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                return too_large, b""
            chunks.append(chunk)
    except ClientDisconnect:
        return error_response(400, "client disconnected before sending the whole body"), b""
    body = b"".join(chunks)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        shown = _short(media, 40) if media else "none"
        return error_response(415, f"send the body as JSON with 'Content-Type: application/json' "
                                   f"(got content type {shown})", param="content-type"), b""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return error_response(400, f"request body is not valid UTF-8 (byte {e.start})", param="body"), b""
    if json_depth_exceeds(body, limits.max_json_depth):
        return error_response(400, f"JSON nested deeper than {limits.max_json_depth} levels", param="body"), b""
    return None, body


# ----------------------------------------------------------------------------- installing


def install_error_handling(app: FastAPI, *, rate_limit: str | None = DECLARED) -> None:
    """Install the exception handlers and the rate limiter the :class:`GuardedRoute` routes of ``app`` use.

    ``rate_limit``: ``DECLARED`` (default) limits each route at its declared rate; a rate in `limits` notation
    ("5/second") replaces every declared rate (tests, a stricter deployment); None turns rate limiting off. Routes
    added with ``@app.post(...)`` afterwards are guarded too (the app's route class becomes GuardedRoute); a
    router's routes are guarded when the router is built with ``route_class=GuardedRoute``.
    """
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.state.rate_limiter = None if rate_limit is None else RateLimiter(None if rate_limit == DECLARED else rate_limit)
    app.router.route_class = GuardedRoute
