"""A Facebook Messenger webhook: each text message a page receives is answered by one of the bots.

    export MESSENGER_VERIFY_TOKEN=...   # any string; the same one goes into the app's webhook settings
    export MESSENGER_APP_SECRET=...     # the app secret: signs every POST (X-Hub-Signature-256)
    export MESSENGER_PAGE_TOKEN=...     # the page access token: lets the replies be sent
    export MESSENGER_BOT=antilm         # optional: which bot answers (default antilm if served, else the first)
    export MESSENGER_SEND_API=...       # optional: the Send API URL (default: the Graph API's me/messages)
    chatbot-arena serve                 # the webhook is https://<host>/webhook/messenger

``GET /webhook/messenger`` answers Meta's verification (``hub.mode=subscribe``, ``hub.verify_token``) with
``hub.challenge``; ``POST`` checks the HMAC-SHA256 of the raw body against the app secret (constant-time; a bad
or missing signature is a 403), answers 200 at once and replies in the background: a small thread pool with a
bounded number of waiting messages, each reply decoded through ``ctx.scheduler`` and sent with a timeout, so a
slow or failing Send API never holds up other requests. Tokens and secrets come from the environment only and
are never logged (nor is the sender id, nor any message or reply text).

Each sender has a conversation, in memory only: the bot answers every message after the sender's recent turns
(their messages and the bot's replies, oldest first). The bridge keeps no more than the bot reads: its last
``context_turns`` turns (``MessengerConfig.keep_turns`` to change it; a single-turn bot keeps none). A turn enters
the conversation once its reply was sent (a dropped, failed or unanswerable message leaves it as it was), a
message is kept to its last 4,000 characters, and a conversation is forgotten after ``forget_after_s`` (30 min) with
no message. At most ``max_conversations`` senders are remembered; past that the least recently active one is
forgotten first. A sender's messages are answered one at a time, in the order they came, each after the reply to
the one before (a queue per sender, so one busy sender holds at most one worker):

    bridge = ctx.extra["messenger"]
    bridge.history("<sender id>")    # the turns the next message of that sender is answered after
    bridge.remembered()              # how many senders have a conversation now
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS
from core.serving import Busy
from demo_app.context import AppContext
from demo_app.errors import ApiError, GuardedRoute, route_limits

log = logging.getLogger(__name__)

DEFAULT_SEND_API = "https://graph.facebook.com/v21.0/me/messages"
MAX_TEXT = 2000  # Messenger's limit on a text message
FALLBACK = "Sorry, I can only answer text messages with some words in them."


@dataclass(frozen=True)
class MessengerConfig:
    verify_token: str | None
    app_secret: str | None
    page_token: str | None
    bot: str
    send_api: str = DEFAULT_SEND_API
    workers: int = 4  # replies decoded and sent at once
    max_pending: int = 64  # replies waiting or in flight; past it a message is dropped (and counted)
    send_timeout_s: float = 10.0
    reply_timeout_s: float = 60.0
    forget_after_s: float = 30 * 60.0  # a conversation with no message for this long is forgotten
    max_conversations: int = 10_000  # senders remembered at once; past it the least recently active is forgotten
    keep_turns: int | None = None  # earlier turns kept per sender (None: the bot's context_turns, what it reads)

    def __repr__(self) -> str:  # never show the secrets
        return f"MessengerConfig(bot={self.bot!r}, send_api={urllib.parse.urlsplit(self.send_api).netloc!r})"

    @classmethod
    def from_env(cls, bots: list[str], env: dict[str, str] | None = None) -> MessengerConfig:
        """Read the MESSENGER_* variables (see the module docstring); ValueError for an unknown MESSENGER_BOT."""
        env = dict(os.environ if env is None else env)
        default_bot = "antilm" if "antilm" in bots else (bots[0] if bots else "")
        bot = env.get("MESSENGER_BOT") or default_bot
        if bot not in bots:
            raise ValueError(f"MESSENGER_BOT={bot!r} is not a served bot; choose one of {bots}")
        return cls(verify_token=env.get("MESSENGER_VERIFY_TOKEN") or None,
                   app_secret=env.get("MESSENGER_APP_SECRET") or None,
                   page_token=env.get("MESSENGER_PAGE_TOKEN") or None, bot=bot,
                   send_api=env.get("MESSENGER_SEND_API") or DEFAULT_SEND_API)


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends with ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def text_messages(payload: Any) -> list[tuple[str, str]]:
    """(sender id, text) of every text message in a webhook payload; echoes, reads and attachments skipped."""
    out = []
    if not isinstance(payload, dict) or payload.get("object") != "page":
        return out
    for entry in payload.get("entry") or []:
        for event in (entry.get("messaging") or []) if isinstance(entry, dict) else []:
            if not isinstance(event, dict):
                continue
            message, sender = event.get("message"), event.get("sender")
            if not isinstance(message, dict) or not isinstance(sender, dict) or message.get("is_echo"):
                continue
            if isinstance(message.get("text"), str) and isinstance(sender.get("id"), str):
                out.append((sender["id"], message["text"]))
    return out


@dataclass
class _Conversation:
    """One sender's recent turns (oldest first) and the messages waiting for a reply; guarded by the bridge's
    lock."""

    turns: deque[str]
    last_active: float
    pending: deque[str] = field(default_factory=deque)
    busy: bool = False  # a job of the pool is answering this sender's pending messages


class MessengerBridge:
    """Decodes and sends replies in the background, each after the sender's conversation so far (see the module
    docstring); ``stats`` counts sent, failed and dropped replies. ``clock`` (seconds, monotonic) is for tests.

        bridge = MessengerBridge(ctx, MessengerConfig.from_env(list(ctx.bots)))
        bridge.enqueue("<sender id>", "hi there")   # answered through the Send API in the background
    """

    def __init__(self, ctx: AppContext, config: MessengerConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self.config, self.clock = ctx, config, clock
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="messenger")
        self.stats = {"sent": 0, "failed": 0, "dropped": 0}
        bot = ctx.bots.get(config.bot)
        window = int(getattr(bot, "context_turns", 0) or 0)
        keep = window if config.keep_turns is None else config.keep_turns
        self.keep_turns = min(max(0, keep), MAX_HISTORY_TURNS)  # what one request may carry at most
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()  # least recently active first
        self._in_flight = 0  # messages accepted and not yet answered (at most max_pending)
        self._lock = threading.Lock()  # guards stats, the counter and every conversation

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    # ------------------------------------------------------------------------- conversations

    def history(self, sender: str) -> list[str]:
        """The turns (oldest first) the sender's next message would be answered after; [] when forgotten."""
        with self._lock:
            conv = self._conversations.get(sender)
            if conv is None or self.clock() - conv.last_active > self.config.forget_after_s:
                return []
            return list(conv.turns)

    def remembered(self) -> int:
        """How many senders have a conversation in memory now (idle ones are dropped as messages arrive)."""
        with self._lock:
            return len(self._conversations)

    def pending(self) -> int:
        """Messages accepted and not yet answered (waiting, decoding or being sent)."""
        with self._lock:
            return self._in_flight

    def _conversation(self, sender: str, now: float) -> _Conversation:
        """The sender's conversation, made the most recently active (under the lock): an idle one starts over.
        Idle conversations are dropped, and the least recently active ones past ``max_conversations``."""
        conv = self._conversations.get(sender)
        if conv is None:
            conv = self._conversations[sender] = _Conversation(turns=deque(maxlen=self.keep_turns), last_active=now)
        elif now - conv.last_active > self.config.forget_after_s:
            conv.turns.clear()
        conv.last_active = now
        self._conversations.move_to_end(sender)
        forgotten = 0
        for key, other in list(self._conversations.items()):  # least recently active first
            idle = now - other.last_active > self.config.forget_after_s
            if not idle and len(self._conversations) <= self.config.max_conversations:
                break
            if other is not conv and not other.busy:  # one being answered is dropped once it is done
                del self._conversations[key]
                forgotten += 1
        if forgotten:
            log.debug("messenger: %d conversations forgotten (idle, or past %d senders)", forgotten,
                      self.config.max_conversations)
        return conv

    # ------------------------------------------------------------------------- replies

    def enqueue(self, sender: str, text: str) -> bool:
        """Queue one reply; False (and counted as dropped) when ``max_pending`` replies are already waiting."""
        with self._lock:
            if self._in_flight >= self.config.max_pending:
                self.stats["dropped"] += 1
                full = True
            else:
                full = False
                self._in_flight += 1
                conv = self._conversation(sender, self.clock())
                conv.pending.append(text)
                if conv.busy:  # the job answering this sender takes it after the messages before it
                    return True
                conv.busy = True
        if full:
            log.warning("messenger: %d replies pending, a message was dropped", self.config.max_pending)
            return False
        try:
            self.pool.submit(self._drain, sender, conv)
        except RuntimeError:  # the pool is shut down
            with self._lock:
                dropped, conv.busy = len(conv.pending), False
                conv.pending.clear()
                self._in_flight -= dropped
                self.stats["dropped"] += dropped
            return False
        return True

    def _drain(self, sender: str, conv: _Conversation) -> None:
        """Answer the sender's pending messages one by one, in order, each after the turns before it."""
        said: tuple[str, str] | None = None
        answered = False
        while True:
            with self._lock:
                if answered:
                    self._in_flight -= 1
                    if said:
                        conv.turns.extend(said)
                        conv.last_active = self.clock()
                        if self._conversations.get(sender) is conv:
                            self._conversations.move_to_end(sender)
                if not conv.pending:
                    conv.busy = False
                    return
                text = conv.pending.popleft()
                history = list(conv.turns)
            said, answered = self._answer(sender, text, history), True

    def _answer(self, sender: str, text: str, history: list[str]) -> tuple[str, str] | None:
        """Decode and send one reply; the (message, reply) turns to remember, or None when nothing was said."""
        try:
            try:
                reply = self.ctx.scheduler.respond(self.config.bot, text, {}, history=history,
                                                   timeout=self.config.reply_timeout_s).text or "..."
                remember = True
            except ValueError:  # nothing to answer (e.g. emoji or control characters only)
                reply, remember = FALLBACK, False
            except Busy:
                self._count("dropped")
                log.warning("messenger: the scheduler is busy, a message was dropped")
                return None
            self.send(sender, reply)
            return (text[-MAX_TURN_CHARS:], reply[:MAX_TEXT]) if remember else None
        except Exception as e:  # noqa: BLE001 - a background job: count and log, never raise into the pool
            self._count("failed")
            log.warning("messenger: a reply could not be sent (%s)", type(e).__name__)
            return None

    def send(self, recipient: str, text: str) -> None:
        """POST one text message to the Send API (the page token goes in the query, as the Graph API expects)."""
        if not self.config.page_token:
            raise RuntimeError("MESSENGER_PAGE_TOKEN is not set")
        body = json.dumps({"recipient": {"id": recipient}, "messaging_type": "RESPONSE",
                           "message": {"text": text[:MAX_TEXT]}}).encode("utf-8")
        sep = "&" if "?" in self.config.send_api else "?"
        url = f"{self.config.send_api}{sep}{urllib.parse.urlencode({'access_token': self.config.page_token})}"
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.config.send_timeout_s) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as e:  # its str() holds no URL; status only
            raise RuntimeError(f"Send API answered {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"Send API unreachable ({type(e).__name__})") from None
        self._count("sent")

    def close(self, wait: bool = False) -> None:
        """Stop answering: messages still waiting are dropped (a reply being decoded or sent may finish); every
        conversation is forgotten."""
        with self._lock:
            for conv in self._conversations.values():
                self._in_flight -= len(conv.pending)
                conv.pending.clear()
            self._conversations.clear()
        self.pool.shutdown(wait=wait, cancel_futures=True)


def messenger_router(ctx: AppContext, config: MessengerConfig | None = None) -> APIRouter:
    """``GET``/``POST /webhook/messenger`` (see the module docstring); ``config`` defaults to the environment.
    The bridge is kept in ``ctx.extra["messenger"]`` (call its ``close()`` at shutdown)."""
    config = config or MessengerConfig.from_env(list(ctx.bots))
    bridge = MessengerBridge(ctx, config)
    ctx.extra["messenger"] = bridge
    for name, value in (("MESSENGER_VERIFY_TOKEN", config.verify_token), ("MESSENGER_APP_SECRET", config.app_secret),
                        ("MESSENGER_PAGE_TOKEN", config.page_token)):
        if not value:
            log.info("messenger webhook: %s is not set, so the webhook %s", name, {
                "MESSENGER_VERIFY_TOKEN": "refuses verification", "MESSENGER_APP_SECRET": "refuses every POST",
                "MESSENGER_PAGE_TOKEN": "cannot send replies"}[name])
    router = APIRouter(tags=["messenger"], route_class=GuardedRoute)
    refused = {403: {"description": "wrong verify token, or a missing or bad signature"}}

    @router.get("/webhook/messenger", response_class=PlainTextResponse, responses=refused,
                summary="Meta's webhook verification: answers hub.challenge")
    def verify(request: Request) -> PlainTextResponse:
        q = request.query_params
        token = q.get("hub.verify_token", "")
        if (config.verify_token and q.get("hub.mode") == "subscribe"
                and hmac.compare_digest(token.encode("utf-8"), config.verify_token.encode("utf-8"))):
            return PlainTextResponse(q.get("hub.challenge", "")[:1000])
        raise ApiError(403, "verification refused: wrong hub.mode or hub.verify_token", param="hub.verify_token",
                       type="permission_error")

    @router.post("/webhook/messenger", responses=refused, summary="Incoming messages (signed by the app secret)")
    @route_limits(rate=None)  # Meta sends every event of the page from its servers: body checks only
    async def receive(request: Request) -> PlainTextResponse:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256", "")
        if not config.app_secret or not hmac.compare_digest(given.encode("utf-8", "replace"),
                                                            signature(config.app_secret, body).encode("ascii")):
            raise ApiError(403, "missing or bad X-Hub-Signature-256", param="X-Hub-Signature-256",
                           type="permission_error")
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise ApiError(400, f"body is not JSON ({e})", param="body") from e
        for sender, text in text_messages(payload):
            bridge.enqueue(sender, text)
        return PlainTextResponse("EVENT_RECEIVED")

    return router
