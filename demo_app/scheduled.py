"""A tab's decodes through the batching scheduler (``ctx.scheduler``), and what the page says when one fails.

Every search of the app goes through the scheduler (the rule of :mod:`demo_app.context`), so it is batched with
other visitors' requests and, when the server has decode processes, runs there, off the web server's GIL. A tab
waits at most :func:`timeout_s` for its replies and shows :func:`problem`'s message when the server is busy, a
reply takes too long, or the request is bad.

    >>> plain, traced = results([ctx.scheduler.submit("beam", "hi", {}),
    ...                          ctx.scheduler.submit("beam", "hi", {}, trace=True)], timeout_s(ctx))
    >>> respond = responder(ctx, "beam")        # Bot.respond's signature, through the scheduler
    >>> respond("hi", trace=True, prefix_ids=[42]).text
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from core.decoding import Reply
from core.serving import Busy, Ticket
from demo_app.context import AppContext

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 120.0  # the longest a tab waits for its replies; ctx.extra["api_timeout_s"] overrides it


def timeout_s(ctx: AppContext) -> float:
    """How long a tab waits for the replies of one event."""
    return float(ctx.extra.get("api_timeout_s", DECODE_TIMEOUT_S))


def results(tickets: Sequence[Ticket], timeout: float) -> list[Reply]:
    """The replies of ``tickets``, in order, all within ``timeout`` seconds (one deadline for all); raises the
    first one's error, or TimeoutError naming the limit. The requests not decoded yet are cancelled when it
    raises (the visitor gets a message, nobody waits for them)."""
    deadline = time.monotonic() + timeout
    try:
        return [t.result(max(0.0, deadline - time.monotonic())) for t in tickets]
    except FutureTimeout as e:  # the builtin TimeoutError only from Python 3.11
        raise TimeoutError(f"no reply within {timeout:g} s") from e
    finally:
        for t in tickets:
            t.cancel()  # no-op for the finished ones


def responder(ctx: AppContext, bot: str) -> Callable[..., Reply]:
    """``ctx.bots[bot].respond`` through ``ctx.scheduler`` (the same arguments, the same reply), waiting at most
    :func:`timeout_s`; raises ValueError for a bad request, Busy, or TimeoutError."""
    respond = ctx.scheduler.responder(bot, timeout=timeout_s(ctx))

    def scheduled(prompt: str, **kwargs: object) -> Reply:
        try:
            return respond(prompt, **kwargs)
        except FutureTimeout as e:
            raise TimeoutError(f"no reply within {timeout_s(ctx):g} s") from e

    return scheduled


def problem(error: BaseException) -> str:
    """What the page says (plain text, to be escaped) when a decode did not give a reply: the message of a bad
    request, a busy server or a reply that took too long; any other error is logged and named."""
    if isinstance(error, Busy):
        return f"{error}"  # "the server is busy: ... try again in a few seconds"
    if isinstance(error, (TimeoutError, FutureTimeout)):
        return f"{error or 'no reply in time'}: the server is busy; try again in a moment"
    if isinstance(error, ValueError):
        return str(error)
    log.error("a decode failed", exc_info=error)
    return f"the search failed ({type(error).__name__}: {error}); try again in a moment"
