"""The Messenger webhook against a stub Send API on loopback: verification, signatures, replies, slow senders,
and each sender's conversation (history, idle forgetting, the cap on senders, messages arriving at once).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_messenger.py
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from helpers import api_app, error_of, serve

from core.bots import Reply
from core.serving import BatchScheduler
from demo_app.context import AppContext
from demo_app.messenger import MessengerBridge, MessengerConfig, messenger_router, signature, text_messages

SECRET, VERIFY, PAGE = "app-secret-4f1c", "verify-me-93a2", "page-token-77e0"


class StubSendApi:
    """A tiny Send API on 127.0.0.1: records each POST; ``mode`` is "ok", "fail" (500) or "hang" (until released)."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.arrived: queue.Queue[str] = queue.Queue()  # every request, as it arrives (before any hang)
        self.mode = "ok"
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                stub.arrived.put(body["message"]["text"])
                if stub.mode == "hang":
                    stub.release.wait(30)
                if stub.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                stub.received.put({"body": body, "query": query, "path": self.path})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"recipient_id": "1", "message_id": "m"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0/me/messages"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubSendApi]:
    s = StubSendApi()
    yield s
    s.close()


def config_for(stub: StubSendApi, **kw: Any) -> MessengerConfig:
    return replace(MessengerConfig(verify_token=VERIFY, app_secret=SECRET, page_token=PAGE, bot="antilm",
                                   send_api=stub.url, send_timeout_s=20), **kw)


class RecordingScheduler(BatchScheduler):
    """The real scheduler; ``calls`` lists (prompt, history) of every ``respond``, in the order they came."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, list[str]]] = []

    def respond(self, bot: str, prompt: str, overrides: Any = None, *, history: Sequence[str] | None = None,
                timeout: float | None = None) -> Reply:
        self.calls.append((prompt, list(history or [])))
        return super().respond(bot, prompt, overrides, history=history, timeout=timeout)


@contextmanager
def webhook(tiny_bots, tiny_checkpoints, config: MessengerConfig) -> Iterator[tuple[str, AppContext]]:
    """The API and the webhook served on loopback; yields (url, ctx); ``ctx.extra["messenger"]`` is the bridge,
    ``ctx.scheduler.calls`` what reached the scheduler."""
    scheduler = RecordingScheduler(tiny_bots, threads=1)
    ctx = AppContext(bots=tiny_bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints)
    app = api_app(ctx, rate_limit=None)
    app.include_router(messenger_router(ctx, config))
    try:
        with serve(app) as url:
            yield url, ctx
    finally:
        ctx.extra["messenger"].close()
        scheduler.close()


def event(text: str, sender: str = "4242", *more: str) -> dict[str, Any]:
    """A webhook payload with one text message from ``sender`` (and ``more`` after it, from the same sender)."""
    return {"object": "page", "entry": [{"id": "page", "time": 1, "messaging": [
        {"sender": {"id": sender}, "recipient": {"id": "page"}, "timestamp": 1,
         "message": {"mid": f"m{i}", "text": t}} for i, t in enumerate([text, *more])]}]}


def post(url: str, payload: Any, *, secret: str | None = SECRET, sig: str | None = None) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if sig is not None or secret is not None:
        headers["x-hub-signature-256"] = sig if sig is not None else signature(secret, body)
    return httpx.post(f"{url}/webhook/messenger", content=body, headers=headers, timeout=10)


# ----------------------------------------------------------------------------- verification and signatures


def test_verification_returns_the_challenge_only_for_the_right_token(tiny_bots, tiny_checkpoints, stub):
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, _):
        ok = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
        r = httpx.get(f"{url}/webhook/messenger", params=ok)
        assert r.status_code == 200 and r.text == "1158201444"
        for bad in ({**ok, "hub.verify_token": "wrong"}, {**ok, "hub.mode": "unsubscribe"},
                    {"hub.challenge": "1"}):
            r = httpx.get(f"{url}/webhook/messenger", params=bad)
            assert r.status_code == 403 and "verify_token" in error_of(r)["message"]
    unset = config_for(stub, verify_token=None)
    with webhook(tiny_bots, tiny_checkpoints, unset) as (url, _):
        r = httpx.get(f"{url}/webhook/messenger", params={"hub.mode": "subscribe", "hub.verify_token": "",
                                                          "hub.challenge": "1"})
        assert r.status_code == 403


def test_signed_message_is_answered_through_the_send_api(tiny_bots, tiny_checkpoints, stub):
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, ctx):
        r = post(url, event("hi there", sender="1234567"))
        assert r.status_code == 200 and r.text == "EVENT_RECEIVED"
        sent = stub.received.get(timeout=30)
    assert sent["body"]["recipient"] == {"id": "1234567"}
    assert sent["body"]["message"]["text"] == tiny_bots["antilm"].respond("hi there").text
    assert sent["query"]["access_token"] == [PAGE]
    assert ctx.extra["messenger"].stats["sent"] == 1


def test_bad_or_missing_signatures_are_refused(tiny_bots, tiny_checkpoints, stub):
    payload = event("hi")
    other_body = json.dumps(event("something else")).encode()
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, ctx):
        for sig in ("", "sha256=" + "0" * 64, signature("wrong secret", json.dumps(payload).encode()),
                    signature(SECRET, other_body), signature(SECRET, json.dumps(payload).encode())[7:], "sha1=abc"):
            r = post(url, payload, sig=sig)
            assert r.status_code == 403, sig
            assert "X-Hub-Signature-256" in error_of(r)["message"]
        r = post(url, payload, secret=None)
        assert r.status_code == 403
        # a signed body that is not JSON, and a payload without text messages
        r = httpx.post(f"{url}/webhook/messenger", content=b"{", timeout=10,
                       headers={"content-type": "application/json", "x-hub-signature-256": signature(SECRET, b"{")})
        assert r.status_code == 400
        assert post(url, {"object": "page", "entry": [{"messaging": [{"read": {"watermark": 1}}]}]}).status_code == 200
        assert ctx.extra["messenger"].stats == {"sent": 0, "failed": 0, "dropped": 0}
    assert stub.arrived.empty()  # nothing was sent


def test_without_app_secret_every_post_is_refused(tiny_bots, tiny_checkpoints, stub):
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, app_secret=None)) as (url, _):
        assert post(url, event("hi"), secret="").status_code == 403


# ----------------------------------------------------------------------------- a slow or failing Send API


def test_a_hanging_send_api_does_not_block_other_requests(tiny_bots, tiny_checkpoints, stub):
    stub.mode = "hang"
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, _):
        assert post(url, event("first message", "111")).status_code == 200
        assert stub.arrived.get(timeout=30) == tiny_bots["antilm"].respond("first message").text
        # the stub now holds that reply open; the server keeps answering (httpx's 10 s timeout would fail these)
        assert post(url, event("second message", "222")).status_code == 200
        assert httpx.get(f"{url}/api/v1/bots", timeout=10).status_code == 200
        assert stub.received.empty()  # the first send is still hanging
        stub.release.set()
        texts = {stub.received.get(timeout=30)["body"]["message"]["text"] for _ in range(2)}
    assert texts == {tiny_bots["antilm"].respond(m).text for m in ("first message", "second message")}


def test_a_failing_send_api_is_counted_and_the_next_reply_still_goes_out(tiny_bots, tiny_checkpoints, stub):
    stub.mode = "fail"
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, workers=1)) as (url, ctx):
        assert post(url, event("hello")).status_code == 200
        stub.arrived.get(timeout=30)
        stub.mode = "ok"
        assert post(url, event("hello again")).status_code == 200
        sent = stub.received.get(timeout=30)
        stats = ctx.extra["messenger"].stats
    assert sent["body"]["message"]["text"] == tiny_bots["antilm"].respond("hello again").text
    assert stats["failed"] == 1 and stats["sent"] == 1


def test_pending_replies_are_bounded(tiny_bots, tiny_checkpoints, stub):
    stub.mode = "hang"
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, workers=1, max_pending=1)) as (url, ctx):
        assert post(url, event("one")).status_code == 200
        stub.arrived.get(timeout=30)
        assert post(url, event("two")).status_code == 200  # acknowledged, but no slot: dropped
        assert ctx.extra["messenger"].stats["dropped"] == 1
        stub.release.set()
        stub.received.get(timeout=30)


def test_secrets_and_sender_ids_never_reach_the_logs(tiny_bots, tiny_checkpoints, stub, caplog):
    caplog.set_level(logging.DEBUG)
    stub.mode = "fail"
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, ctx):
        post(url, event("hi there", sender="98765"))
        post(url, event("hi there"), sig="sha256=" + "1" * 64)
        httpx.get(f"{url}/webhook/messenger", params={"hub.mode": "subscribe", "hub.verify_token": "nope"})
        stub.arrived.get(timeout=30)
        ctx.extra["messenger"].close(wait=True)
        assert ctx.extra["messenger"].stats["failed"] == 1
    assert caplog.records  # the failed send was logged ...
    for secret in (SECRET, VERIFY, PAGE, "98765", "hi there"):
        assert secret not in caplog.text  # ... without any secret, sender id or message text
    assert PAGE not in repr(config_for(stub)) and SECRET not in repr(config_for(stub))


# ----------------------------------------------------------------------------- each sender's conversation


def until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def sent(stub: StubSendApi) -> tuple[str, str]:
    """(recipient id, text) of the next reply the Send API received."""
    body = stub.received.get(timeout=30)["body"]
    return body["recipient"]["id"], body["message"]["text"]


def expected(bot, message: str, history: list[str]) -> str:
    return bot.respond(message, history=history).text or "..."


def test_a_second_message_is_answered_after_the_first_exchange(tiny_bots, tiny_checkpoints, stub):
    bot = tiny_bots["antilm"]
    m1, m2, m3 = "hi there", "where are you from?", "i like tea"
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub)) as (url, ctx):
        bridge = ctx.extra["messenger"]
        assert bridge.keep_turns == bot.context_turns == 2  # the bot's window, nothing more
        replies = []
        for m in (m1, m2, m3):
            assert post(url, event(m, "555")).status_code == 200
            replies.append(sent(stub))
        until(lambda: bridge.pending() == 0)
        r1, r2, r3 = (text for _, text in replies)
        assert {who for who, _ in replies} == {"555"}
        assert ctx.scheduler.calls == [(m1, []), (m2, [m1, r1]), (m3, [m2, r2])]  # what reached the scheduler
        assert bridge.history("555") == [m3, r3] and bridge.remembered() == 1
    assert r1 == expected(bot, m1, [])
    assert r2 == expected(bot, m2, [m1, r1]) != expected(bot, m2, [])  # the history changed the reply
    assert r3 == expected(bot, m3, [m2, r2])


def test_each_sender_has_a_conversation_of_its_own(tiny_bots, tiny_checkpoints, stub):
    bot = tiny_bots["antilm"]
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, workers=1)) as (url, ctx):
        bridge = ctx.extra["messenger"]
        post(url, event("hi there", "aaa"))
        _, ra = sent(stub)
        post(url, event("where are you from?", "bbb"))
        _, rb = sent(stub)
        post(url, event("\x00\x01", "bbb"))  # nothing to answer: the fallback, and the conversation is unchanged
        assert sent(stub)[1].startswith("Sorry")
        post(url, event("what do you do?", "aaa"))
        _, ra2 = sent(stub)
        until(lambda: bridge.pending() == 0)
        assert ctx.scheduler.calls == [("hi there", []), ("where are you from?", []),
                                       ("\x00\x01", ["where are you from?", rb]),
                                       ("what do you do?", ["hi there", ra])]
        assert bridge.history("bbb") == ["where are you from?", rb]
        assert bridge.history("aaa") == ["what do you do?", ra2] and bridge.history("ccc") == []
    assert rb == expected(bot, "where are you from?", [])
    assert ra2 == expected(bot, "what do you do?", ["hi there", ra])


def test_messages_arriving_at_once_from_one_sender_are_answered_in_turn(tiny_bots, tiny_checkpoints, stub):
    bot = tiny_bots["antilm"]
    messages = ["hello", "how are you", "where do you live", "i like tea", "good night", "see you"]
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, workers=4)) as (url, ctx):
        bridge = ctx.extra["messenger"]
        start = threading.Barrier(len(messages))

        def send_one(m: str) -> None:
            start.wait(10)
            assert post(url, event(m, "777")).status_code == 200

        threads = [threading.Thread(target=send_one, args=(m,)) for m in messages]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        texts = [sent(stub)[1] for _ in messages]
        post(url, event("one", "888", "two"))  # two messages in one payload: answered in order
        first, second = sent(stub)[1], sent(stub)[1]
        until(lambda: bridge.pending() == 0)
        calls = ctx.scheduler.calls
        final = bridge.history("777")
    seven = [c for c in calls if c[0] in messages]
    assert sorted(m for m, _ in seven) == sorted(messages)
    history: list[str] = []
    for (message, seen), text in zip(seven, texts):  # each one after the exchange before it, none interleaved
        assert seen == history
        assert text == expected(bot, message, seen)
        history = [*history, message, text][-2:]
    assert final == history
    assert [c for c in calls if c[0] in ("one", "two")] == [("one", []), ("two", ["one", first])]
    assert second == expected(bot, "two", ["one", first])


def test_an_idle_conversation_is_forgotten(tiny_bots, tiny_checkpoints, stub, caplog):
    caplog.set_level(logging.DEBUG)
    bot = tiny_bots["antilm"]
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, forget_after_s=0.5)) as (url, ctx):
        bridge = ctx.extra["messenger"]
        post(url, event("hi there", "31337"))
        _, r1 = sent(stub)
        until(lambda: bridge.pending() == 0)
        assert bridge.history("31337") == ["hi there", r1]
        time.sleep(0.7)
        assert bridge.history("31337") == []
        post(url, event("good morning", "4444"))  # another sender: the idle conversation is dropped from memory
        sent(stub)
        until(lambda: bridge.pending() == 0)
        assert bridge.remembered() == 1
        post(url, event("where are you from?", "31337"))
        _, r2 = sent(stub)
        assert ctx.scheduler.calls[-1] == ("where are you from?", [])
    assert r2 == expected(bot, "where are you from?", [])
    assert "forgotten" in caplog.text
    for private in ("31337", "4444", "hi there", "good morning", "where are you from", r1, r2):
        assert private not in caplog.text


def test_the_number_of_senders_remembered_is_capped(tiny_bots, tiny_checkpoints, stub):
    with webhook(tiny_bots, tiny_checkpoints, config_for(stub, max_conversations=2)) as (url, ctx):
        bridge = ctx.extra["messenger"]
        for sender in ("1", "2", "3"):
            post(url, event("hello", sender))
            sent(stub)
            until(lambda: bridge.pending() == 0)
        assert bridge.remembered() == 2
        assert bridge.history("1") == []  # the least recently active one went first
        assert bridge.history("2") and bridge.history("3")
        post(url, event("are you there?", "1"))
        sent(stub)
        assert ctx.scheduler.calls[-1] == ("are you there?", [])


def test_keep_turns_and_a_clock_can_be_set(tiny_ctx):
    now = [0.0]
    bridge = MessengerBridge(tiny_ctx, MessengerConfig(None, None, None, bot="beam", keep_turns=0),
                             clock=lambda: now[0])
    try:
        assert bridge.keep_turns == 0 and bridge.config.forget_after_s == 1800
        wide = MessengerBridge(tiny_ctx, MessengerConfig(None, None, None, bot="rl", keep_turns=500))
        assert wide.keep_turns == 64  # no more than a request may carry
        wide.close()
        # no page token: the reply fails and nothing is remembered
        assert bridge.enqueue("s", "hello")
        until(lambda: bridge.pending() == 0)
        assert bridge.stats["failed"] == 1 and bridge.history("s") == [] and bridge.remembered() == 1
        now[0] = 1801.0
        assert bridge.enqueue("t", "hello")
        until(lambda: bridge.pending() == 0)
        assert bridge.remembered() == 1  # "s" was idle for more than 30 minutes
    finally:
        bridge.close()


# ----------------------------------------------------------------------------- configuration and parsing


def test_config_from_environment():
    bots = ["greedy", "beam", "antilm", "rl"]
    cfg = MessengerConfig.from_env(bots, {"MESSENGER_APP_SECRET": "s", "MESSENGER_PAGE_TOKEN": "p"})
    assert cfg.bot == "antilm" and cfg.send_api.startswith("https://graph.facebook.com/")
    assert cfg.app_secret == "s" and cfg.page_token == "p" and cfg.verify_token is None
    assert MessengerConfig.from_env(["greedy", "beam"], {}).bot == "greedy"
    assert MessengerConfig.from_env(bots, {"MESSENGER_BOT": "rl", "MESSENGER_SEND_API": "http://x/y"}).send_api \
        == "http://x/y"
    with pytest.raises(ValueError, match="MESSENGER_BOT='nope'"):
        MessengerConfig.from_env(bots, {"MESSENGER_BOT": "nope"})


def test_messenger_bot_from_the_environment_answers(tiny_bots, tiny_checkpoints, stub, monkeypatch):
    for key, value in (("MESSENGER_APP_SECRET", SECRET), ("MESSENGER_PAGE_TOKEN", PAGE),
                       ("MESSENGER_VERIFY_TOKEN", VERIFY), ("MESSENGER_BOT", "greedy"),
                       ("MESSENGER_SEND_API", stub.url)):
        monkeypatch.setenv(key, value)
    scheduler = BatchScheduler(tiny_bots)
    ctx = AppContext(bots=tiny_bots, scheduler=scheduler, checkpoint_dir=tiny_checkpoints)
    app = api_app(ctx, rate_limit=None)
    app.include_router(messenger_router(ctx))
    with serve(app) as url:
        assert post(url, event("where are you from?")).status_code == 200
        sent = stub.received.get(timeout=30)
    ctx.extra["messenger"].close()
    assert sent["body"]["message"]["text"] == tiny_bots["greedy"].respond("where are you from?").text


def test_text_messages_skips_echoes_attachments_and_junk():
    payload = {"object": "page", "entry": [
        {"messaging": [{"sender": {"id": "1"}, "message": {"text": "hi"}},
                       {"sender": {"id": "2"}, "message": {"text": "me", "is_echo": True}},
                       {"sender": {"id": "3"}, "message": {"attachments": [{"type": "image"}]}},
                       {"sender": {"id": 4}, "message": {"text": "id not a string"}},
                       "junk", {"sender": "x", "message": "y"}]},
        "junk", {"messaging": None}]}
    assert text_messages(payload) == [("1", "hi")]
    assert text_messages({"object": "user"}) == [] and text_messages([1, 2]) == []
