"""Clean errors and abuse limits for the HTTP API: every bad request gets a 4xx JSON body in OpenAI's error shape.

    app = fastapi.FastAPI()
    install_error_handling(app)                                  # before include_router(...)
    app.include_router(api_router(ctx))

An error body is ``{"error": {"message": "...", "type": "invalid_request_error", "param": "settings.beam_size",
"code": null}}``, so the official OpenAI clients show the message. What is checked, and where:

- in a middleware, on the JSON routes (paths under ``json_prefixes``), before any handler runs: body size
  (413 past ``max_body_bytes``), content type (415 unless JSON), UTF-8 (400), nesting depth (400 past
  ``max_json_depth``), and per-client rate limits on the expensive routes (429 with ``Retry-After``);
- by exception handlers: request validation (422 naming the field), :class:`ApiError` (the routes' own 4xx/503),
  HTTP errors (404 unknown route, 405 wrong method), and anything unexpected (500, logged, message generic).

The rate-limit key of a client is a salted hash of its address (a fresh salt per process), so no raw IP address
is stored or logged. Behind a reverse proxy, run uvicorn with ``--proxy-headers`` so the address is the client's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # a chat request is a few KB; 1 MB bodies are refused before they are parsed
MAX_JSON_DEPTH = 32
JSON_PREFIXES = ("/api/", "/v1/", "/webhook/")
RATE_LIMIT = "60/minute"  # per client, on each expensive route (see `limits` for the notation)
LIMITED_ROUTES = (("POST", "/api/v1/reply"), ("POST", "/api/v1/self_chat"), ("POST", "/v1/chat/completions"))

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
        (400, "Malformed request: invalid JSON, invalid UTF-8 or JSON nested too deep"),
        (404, "Unknown bot (model)"),
        (413, "Request body too large"),
        (415, "Content type is not application/json"),
        (422, "A field is missing, of the wrong type, unknown, or out of range (the message names it)"),
        (429, "Too many requests from this client; see Retry-After"),
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


class RateLimiter:
    """Per-client moving-window limits (the `limits` package, in memory) keyed by a salted hash of the address.

    >>> limiter = RateLimiter("60/minute")
    >>> limiter.hit("POST /api/v1/reply", "203.0.113.7")      # None when allowed, else seconds to wait
    """

    def __init__(self, rate: str = RATE_LIMIT) -> None:
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._salt = os.urandom(16)

    def client_key(self, address: str) -> str:
        """A salted hash of the client address: stable within this process, meaningless outside it."""
        return hashlib.blake2b(address.encode("utf-8", "replace"), key=self._salt, digest_size=12).hexdigest()

    def hit(self, route: str, address: str) -> int | None:
        """Count one request of ``address`` on ``route``; None if allowed, else the seconds until it would be."""
        key = self.client_key(address)
        if self.limiter.hit(self.item, route, key):
            return None
        reset = self.limiter.get_window_stats(self.item, route, key).reset_time
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


class RequestGuard:
    """ASGI middleware for the JSON routes: size, content type, UTF-8, nesting depth and rate limits, checked
    before a handler parses anything. Other paths (the Gradio app) pass through untouched."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES, max_json_depth: int = MAX_JSON_DEPTH,
                 json_prefixes: tuple[str, ...] = JSON_PREFIXES, limiter: RateLimiter | None = None,
                 limited_routes: Iterable[tuple[str, str]] = LIMITED_ROUTES) -> None:
        self.app, self.max_body_bytes, self.max_json_depth = app, max_body_bytes, max_json_depth
        self.json_prefixes, self.limiter = json_prefixes, limiter
        self.limited = {(m.upper(), p) for m, p in limited_routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.json_prefixes):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        if self.limiter is not None and (method, path) in self.limited:
            client = scope.get("client") or ("unknown", 0)
            wait = self.limiter.hit(f"{method} {path}", str(client[0]))
            if wait is not None:
                await _send(scope, receive, send, error_response(
                    429, f"too many requests to {path} from this client (limit {self.limiter.item}); "
                         f"retry in {wait} s", headers={"Retry-After": str(wait)}))
                return
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        problem, body = await self._read_checked(scope, receive)
        if problem is not None:
            await _send(scope, receive, send, problem)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)

    async def _read_checked(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, bytes]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        too_large = error_response(413, f"request body is larger than {self.max_body_bytes} bytes", param="body")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return too_large, b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error_response(400, "client disconnected before sending the whole body"), b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return too_large, b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media == "application/json" or media.endswith("+json")):
            shown = _short(media, 40) if media else "none"
            return error_response(415, f"send the body as JSON with 'Content-Type: application/json' "
                                       f"(got content type {shown})", param="content-type"), b""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return error_response(400, f"request body is not valid UTF-8 (byte {e.start})", param="body"), b""
        if json_depth_exceeds(body, self.max_json_depth):
            return error_response(400, f"JSON nested deeper than {self.max_json_depth} levels", param="body"), b""
        return None, body


async def _send(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    await response(scope, receive, send)


# ----------------------------------------------------------------------------- installing


def install_error_handling(app: FastAPI, *, max_body_bytes: int = MAX_BODY_BYTES,
                           max_json_depth: int = MAX_JSON_DEPTH, rate_limit: str | None = RATE_LIMIT,
                           limited_routes: Iterable[tuple[str, str]] = LIMITED_ROUTES,
                           json_prefixes: tuple[str, ...] = JSON_PREFIXES) -> None:
    """Install the exception handlers and the :class:`RequestGuard` middleware on ``app``.

    ``rate_limit``: per client and per route in ``limited_routes``, in `limits` notation ("60/minute",
    "5/second"); None turns rate limiting off.
    """
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    limiter = RateLimiter(rate_limit) if rate_limit else None
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth,
                       json_prefixes=json_prefixes, limiter=limiter, limited_routes=tuple(limited_routes))

