"""The JSON API (/api/v1/bots, /api/v1/reply) and its clean errors, over real HTTP against a launched server.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_api.py

``api_app`` and ``serve`` are shared with the other API test files (test_openai_compat, test_messenger,
test_fuzz_api): the API routers and error handling on a FastAPI app, run by uvicorn in a thread on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fastapi
import httpx
import pytest
from helpers import FullScheduler, api_app, error_of, serve

from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS
from core.decoding import DecodeConfig
from demo_app.context import AppContext
from demo_app.errors import (
    _STATUS_TYPE,
    DECLARED,
    RATE_LIMIT,
    GuardedRoute,
    RateLimiter,
    RouteLimits,
    install_error_handling,
    json_depth_exceeds,
    route_limits,
)

# ----------------------------------------------------------------------------- shared harness


@pytest.fixture(scope="module")
def ctx(tiny_ctx) -> AppContext:
    return tiny_ctx  # tests/conftest.py: the tiny bots and their scheduler


@pytest.fixture(scope="module")
def client(ctx) -> Iterator[httpx.Client]:
    with serve(api_app(ctx, rate_limit=None)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


# ----------------------------------------------------------------------------- /api/v1/bots


def test_bots_lists_the_registry_with_defaults_and_setting_ranges(client, tiny_bots):
    body = client.get("/api/v1/bots").json()
    assert [b["name"] for b in body["bots"]] == list(tiny_bots)
    antilm = next(b for b in body["bots"] if b["name"] == "antilm")
    assert antilm["label"] == tiny_bots["antilm"].label and antilm["description"]
    assert antilm["checkpoints"] == {"checkpoint": "mle", "lm": "lm", "backward": "backward"}
    assert antilm["defaults"] == tiny_bots["antilm"].defaults.to_dict()
    assert antilm["has_lm"] is True
    assert {b["name"]: b["context_turns"] for b in body["bots"]} == {n: b.context_turns for n, b in tiny_bots.items()}
    settings = {s["name"]: s for s in body["settings"]}
    assert set(settings) == set(DecodeConfig().to_dict())
    assert settings["beam_size"]["lo"] == 1 and settings["beam_size"]["hi"] == 50 and settings["beam_size"]["help"]
    assert settings["nbest"]["hi"] == "beam_size"
    assert {"greedy", "beam", "sample"} <= set(settings["strategy"]["choices"])
    assert body["missing"] == {}


# ----------------------------------------------------------------------------- /api/v1/reply


def test_reply_is_the_bots_reply_with_nbest_tokens_and_logprobs(client, tiny_bots):
    r = client.post("/api/v1/reply", json={"bot": "antilm", "message": "hi there", "nbest": 3,
                                           "settings": {"beam_size": 4, "max_len": 8}})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = tiny_bots["antilm"].respond("hi there", beam_size=4, max_len=8, nbest=3)
    assert body["text"] == expected.text and body["score"] == pytest.approx(expected.score)
    assert [h["text"] for h in body["nbest"]] == [h.text for h in expected.nbest]
    assert len(body["nbest"]) == 3
    assert len(body["tokens"]) == len(body["token_ids"]) == len(body["logprobs"]) >= 1
    assert all(lp <= 0 for lp in body["logprobs"])
    assert body["settings"]["antilm"] == tiny_bots["antilm"].defaults.antilm  # the bot's default kept
    assert body["settings"]["beam_size"] == 4 and body["settings"]["max_len"] == 8
    assert body["latency_s"] > 0 and body["wall_s"] >= body["latency_s"]
    for h in body["nbest"]:
        assert len(h["tokens"]) == len(h["logprobs"]) == len(h["token_ids"])


def window_turns(source_tokens: list[str]) -> list[str]:
    """The turns of a reply's window: its source tokens joined and split at the separator token."""
    return [t.strip() for t in "".join(source_tokens).split("</s>")]


def test_reply_with_history_reads_the_conversation_over_the_launched_app(launched_app, tiny_bots):
    url = launched_app.rstrip("/")
    bot = tiny_bots["rl"]
    assert bot.context_turns == 2
    history = ["hello", "how are you?", "fine"]
    r = httpx.post(f"{url}/api/v1/reply", timeout=60,
                   json={"bot": "rl", "message": "cool", "history": history, "settings": {"max_len": 6}})
    assert r.status_code == 200, r.text
    body = r.json()
    # the window: the last two earlier turns, then the message, joined by </s>; the oldest turn is not read
    assert "</s>" in body["source_tokens"]
    assert window_turns(body["source_tokens"]) == ["how are you?", "fine", "cool"]
    expected = bot.respond("cool", history=history, max_len=6)
    assert body["source_tokens"] == expected.source_tokens and body["text"] == expected.text
    # without a history the window is the message alone
    r = httpx.post(f"{url}/api/v1/reply", json={"bot": "rl", "message": "cool", "settings": {"max_len": 6}},
                   timeout=60)
    assert r.status_code == 200 and window_turns(r.json()["source_tokens"]) == ["cool"]
    r = httpx.post(f"{url}/api/v1/reply", json={"bot": "rl", "message": "cool", "history": ["x"] * 65}, timeout=60)
    assert r.status_code == 422 and error_of(r)["param"] == "history"


def test_a_reply_no_search_could_reach_has_a_null_score_in_strict_json(client, tiny_bots):
    blocked = {"prefix": "hi hi", "no_repeat_ngram": 1}  # the forced start repeats a token the setting blocks
    assert tiny_bots["beam"].respond("hello", **blocked).score == float("-inf")
    r = client.post("/api/v1/reply", json={"bot": "beam", "message": "hello", "settings": blocked})
    assert r.status_code == 200, r.text

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    body = json.loads(r.text, parse_constant=refuse)
    assert body["score"] is None and body["parts"] is None and body["nbest"] == [] and body["text"] == ""


def test_reply_history_is_the_bots_history(client, tiny_bots):
    conversations = [(["where are you from?", "paris"], "do you have any pets?"),
                     (["i love dogs", "me too"], "what about cats?"),
                     (["how was work today?", "long and boring"], "want to get dinner?")]
    differs = 0
    for history, message in conversations:
        r = client.post("/api/v1/reply", json={"bot": "greedy", "message": message, "history": history})
        assert r.status_code == 200, r.text
        expected = tiny_bots["greedy"].respond(message, history=history)
        assert r.json()["text"] == expected.text and r.json()["source_tokens"] == expected.source_tokens
        differs += expected.text != tiny_bots["greedy"].respond(message).text
    assert differs >= 1  # the history changes what the bot says
    # an empty history is the message alone; a bot without a window (context_turns 0) ignores any history
    r = client.post("/api/v1/reply", json={"bot": "greedy", "message": "hi there", "history": []})
    assert r.json()["text"] == tiny_bots["greedy"].respond("hi there").text


def test_whole_floats_count_as_integers(client):
    r = client.post("/api/v1/reply", json={"bot": "beam", "message": "hi", "settings": {"beam_size": 2.0}})
    assert r.status_code == 200 and r.json()["settings"]["beam_size"] == 2


def test_reply_accepts_markup_and_emoji(client):
    for message in ("<script>alert(1)</script>", "hi 🙂 there", "ünïcödé ...", "a" * 4000):
        r = client.post("/api/v1/reply", json={"bot": "greedy", "message": message, "settings": {"max_len": 5}})
        assert r.status_code == 200, (message[:20], r.text)
        assert isinstance(r.json()["text"], str)


JSON = {"content-type": "application/json"}
HI = {"bot": "beam", "message": "hi"}

# A fixed list of nasty inputs: (name, request kwargs, status, param, words the message must contain)
NASTY: list[tuple[str, dict[str, Any], int, str | None, tuple[str, ...]]] = [
    ("unknown bot", dict(json={"bot": "nope", "message": "hi"}), 404, "bot", ("nope", "greedy")),
    ("unknown setting", dict(json={**HI, "settings": {"beam_sizee": 3}}), 422, "settings.beam_sizee", ("unknown",)),
    ("unknown top-level field", dict(json={**HI, "temperature": 1}), 422, "temperature", ("unknown",)),
    ("out of range", dict(json={**HI, "settings": {"beam_size": 99}}), 422, "settings.beam_size", ("50", "99")),
    ("below range", dict(json={**HI, "settings": {"temperature": 0}}), 422, "settings.temperature", ("0",)),
    ("non-numeric", dict(json={**HI, "settings": {"antilm": "abc"}}), 422, "settings.antilm", ("number",)),
    ("numeric string", dict(json={**HI, "settings": {"beam_size": "5"}}), 422, "settings.beam_size", ("integer",)),
    ("float for int", dict(json={**HI, "settings": {"beam_size": 2.5}}), 422, "settings.beam_size", ("integer",)),
    ("bool for int", dict(json={**HI, "settings": {"max_len": True}}), 422, "settings.max_len", ("integer",)),
    ("NaN", dict(content=b'{"bot":"beam","message":"hi","settings":{"antilm":NaN}}', headers=JSON), 422,
     "settings.antilm", ("finite",)),
    ("Infinity", dict(content=b'{"bot":"beam","message":"hi","settings":{"n_bonus":Infinity}}', headers=JSON), 422,
     "settings.n_bonus", ("finite",)),
    ("unknown strategy", dict(json={**HI, "settings": {"strategy": "magic"}}), 422, "settings.strategy",
     ("greedy",)),
    ("nbest above beam_size", dict(json={**HI, "nbest": 20}), 422, "settings.nbest", ("beam_size",)),
    ("nbest disagrees", dict(json={**HI, "nbest": 2, "settings": {"nbest": 3}}), 422, "nbest", ("disagree",)),
    ("groups do not divide the beam", dict(json={**HI, "settings": {"strategy": "diverse_beam", "beam_size": 5,
                                                                  "num_groups": 2}}), 422, "settings.num_groups",
     ("multiple",)),
    ("both length rankings", dict(json={**HI, "settings": {"length_norm": True, "length_penalty": 1.0}}), 422,
     "settings.length_norm", ("length",)),
    ("blank prefix", dict(json={**HI, "settings": {"prefix": "   "}}), 422, "settings.prefix", ("nothing left",)),
    ("anti-LM without LM", dict(json={"bot": "greedy", "message": "hi", "settings": {"antilm": 0.5}}), 422,
     "settings.antilm", ("language model",)),
    ("empty message", dict(json={"bot": "beam", "message": ""}), 422, "message", ("empty",)),
    ("control characters", dict(json={"bot": "beam", "message": "\x00\x01 \t"}), 422, "message", ("empty",)),
    ("message not a string", dict(json={"bot": "beam", "message": ["hi"]}), 422, "message", ("string",)),
    ("message too long", dict(json={"bot": "beam", "message": "a" * 5000}), 422, "message", ("4000",)),
    ("settings a list", dict(json={**HI, "settings": [1, 2]}), 422, "settings", ("dictionary",)),
    ("history instead of message", dict(json={"bot": "beam", "message": [["hi", "hello"], ["how", None]]}), 422,
     "message", ("string",)),
    ("history a string", dict(json={**HI, "history": "hello"}), 422, "history", ("list",)),
    ("history an object", dict(json={**HI, "history": {"0": "hello"}}), 422, "history", ("list",)),
    ("history null", dict(json={**HI, "history": None}), 422, "history", ("list",)),
    ("history turn a number", dict(json={**HI, "history": ["a", "b", "c", 4]}), 422, "history[3]", ("string",)),
    ("history turn null", dict(json={**HI, "history": [None]}), 422, "history[0]", ("string",)),
    ("history of pairs", dict(json={**HI, "history": [["hi", "hello"]]}), 422, "history[0]", ("string",)),
    ("history turn too long", dict(json={**HI, "history": ["ok", "a" * 4001]}), 422, "history[1]", ("4000",)),
    ("history too long", dict(json={**HI, "history": ["ok"] * 65}), 422, "history", ("64", "65")),
    ("body a list", dict(json=[]), 422, "body", ("dictionary",)),
    ("missing fields", dict(json={}), 422, "bot", ("bot", "message", "missing")),
    ("empty body", dict(content=b"", headers=JSON), 422, "body", ("missing",)),
    ("broken JSON", dict(content=b'{"bot":', headers=JSON), 400, "body", ("invalid JSON",)),
    ("invalid UTF-8", dict(content=b'{"bot":"beam","message":"\xff\xfe"}', headers=JSON), 400, "body", ("UTF-8",)),
    ("deeply nested", dict(content=b"[" * 30_000 + b"]" * 30_000, headers=JSON), 400, "body", ("nested",)),
    ("nested 40 deep", dict(content=b'{"bot":"beam","message":' + b"[" * 40 + b"]" * 40 + b"}", headers=JSON), 400,
     "body", ("nested",)),
    ("1 MB body", dict(content=b'{"bot":"beam","message":"' + b"a" * 1_000_000 + b'"}', headers=JSON), 413, "body",
     ("larger",)),
    ("text/plain", dict(content=b'{"bot":"beam","message":"hi"}', headers={"content-type": "text/plain"}), 415,
     "content-type", ("application/json",)),
    ("no content type", dict(content=b'{"bot":"beam","message":"hi"}'), 415, "content-type", ("application/json",)),
    ("form data", dict(data={"bot": "beam", "message": "hi"}), 415, "content-type", ("urlencoded",)),
]


@pytest.mark.parametrize("name,kwargs,status,param,words", NASTY, ids=[n[0] for n in NASTY])
def test_bad_input_gets_a_4xx_naming_the_field(client, name, kwargs, status, param, words):
    r = client.post("/api/v1/reply", **kwargs)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["param"] == param
    for word in words:
        assert word in err["message"], err
    assert "Traceback" not in err["message"]


def test_wrong_method_and_unknown_route_answer_json(client):
    r = client.get("/api/v1/reply")
    assert r.status_code == 405 and "GET" in error_of(r)["message"]
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and "/api/v1/nope" in error_of(r)["message"]


def test_server_still_answers_after_the_nasty_inputs(client):
    for _, kwargs, *_ in NASTY:
        client.post("/api/v1/reply", **kwargs)
    r = client.post("/api/v1/reply", json={"bot": "greedy", "message": "still there?"})
    assert r.status_code == 200 and r.json()["text"] is not None


def test_openapi_documents_the_routes_and_their_errors(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/bots", "/api/v1/reply", "/v1/chat/completions", "/v1/models"):
        assert path in schema["paths"]
    answered = {str(status) for status in _STATUS_TYPE if status != 405}  # every error status the API answers
    for path in ("/api/v1/reply", "/v1/chat/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "504"} | answered <= set(responses), path
    settings = schema["components"]["schemas"]["Settings"]
    assert settings["additionalProperties"] is False
    assert settings["properties"]["beam_size"]["maximum"] == 50
    request = schema["components"]["schemas"]["ReplyRequest"]
    history = request["properties"]["history"]
    assert history["type"] == "array" and history["maxItems"] == MAX_HISTORY_TURNS
    assert history["items"] == {"type": "string", "maxLength": MAX_TURN_CHARS}
    assert "oldest first" in history["description"] and "history" not in request.get("required", [])
    reply = schema["components"]["schemas"]["ReplyResponse"]["properties"]["source_tokens"]
    assert "</s>" in reply["description"]


# ----------------------------------------------------------------------------- limits


def test_rate_limit_answers_429_with_retry_after(ctx):
    with serve(api_app(ctx, rate_limit="3/minute")) as url, httpx.Client(base_url=url, timeout=60) as c:
        body = {"bot": "greedy", "message": "hi", "settings": {"max_len": 3}}
        codes = [c.post("/api/v1/reply", json=body).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = c.post("/api/v1/reply", json=body)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        err = error_of(r)
        assert err["type"] == "rate_limit_exceeded" and "retry" in err["message"]
        # the limit is per route: the registry and the other expensive route still answer
        assert c.get("/api/v1/bots").status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "greedy", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200


def test_every_api_route_of_the_server_is_guarded_as_it_declares(launched_app):
    """Read from the running server's OpenAPI schema: every route that takes a body has the body checks (so none
    was added unguarded), the expensive routes are rate-limited at RATE_LIMIT (so no @route_limits sits above its
    route decorator, where it would be ignored), the webhook checks bodies only, a GET route lists no body status."""
    paths = httpx.get(f"{launched_app.rstrip('/')}/openapi.json", timeout=30).json()["paths"]
    posts = {p: ops["post"]["responses"] for p, ops in paths.items() if "post" in ops}
    assert {"/api/v1/reply", "/api/v1/self_chat", "/v1/chat/completions", "/webhook/messenger"} <= set(posts)
    unguarded = [p for p, responses in posts.items() if not {"400", "413", "415"} <= set(responses)]
    assert not unguarded, unguarded
    for path in ("/api/v1/reply", "/api/v1/self_chat", "/v1/chat/completions"):
        assert RATE_LIMIT in posts[path]["429"]["description"], path
    assert "429" not in posts["/webhook/messenger"]
    assert not {"400", "413", "415", "429"} & set(paths["/v1/models/{model}"]["get"]["responses"])


def test_limits_are_checked_where_they_are_declared_and_copy_the_responses_they_extend():
    for bad in ("60/minit", "sixty"):
        with pytest.raises(ValueError, match="limits` notation"):
            route_limits(rate=bad)
        with pytest.raises(ValueError, match="limits` notation"):
            install_error_handling(fastapi.FastAPI(), rate_limit=bad)
    with pytest.raises(ValueError, match="positive"):
        RouteLimits(max_body_bytes=0)
    shared = {404: {"description": "not found"}}
    app = fastapi.FastAPI()
    install_error_handling(app)

    @app.post("/api/plain", responses=shared)  # an app route, no router: guarded all the same
    async def plain(body: dict) -> dict:
        return body

    assert shared == {404: {"description": "not found"}}
    assert {"413", "415"} <= set(app.openapi()["paths"]["/api/plain"]["post"]["responses"])
    with serve(app) as url:
        assert httpx.post(f"{url}/api/plain", content=b"x", timeout=30).status_code == 415


def test_a_new_route_gets_what_it_declares():
    """A route added with its own limits is held to them: its rate, its body size, its depth; with
    ``rate_limit=None`` the app turns rate limits off and with a rate it overrides the declared one."""
    def app_with(rate_limit):
        app = fastapi.FastAPI()
        install_error_handling(app, rate_limit=rate_limit)
        router = fastapi.APIRouter(route_class=GuardedRoute)

        @router.post("/api/echo")
        @route_limits(rate="2/minute", max_body_bytes=100, max_json_depth=2)
        async def echo(body: dict) -> dict:
            return body

        app.include_router(router)
        return app

    with serve(app_with(DECLARED)) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/api/echo", json={"a": "x" * 200}).status_code == 413
        assert c.post("/api/echo", json={"a": [[1]]}).status_code == 400
        assert c.post("/api/echo", json={"a": 1}).status_code == 429  # the third request this minute
    with serve(app_with(None)) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert [c.post("/api/echo", json={"a": i}).json() for i in range(4)] == [{"a": i} for i in range(4)]
    with serve(app_with("1/minute")) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert [c.post("/api/echo", json={"a": 1}).status_code for _ in range(2)] == [200, 429]
        assert "1/minute" in error_of(c.post("/api/echo", json={}))["message"]


def test_client_key_is_a_salted_hash_not_the_address():
    a, b = RateLimiter(), RateLimiter()
    key = a.client_key("203.0.113.7")
    # a hex digest (a random one holds "203" about one time in 200, so only the whole address is looked for)
    assert "203.0.113.7" not in key and "." not in key and int(key, 16) >= 0
    assert key == a.client_key("203.0.113.7") != b.client_key("203.0.113.7")  # fresh salt per limiter
    assert a.hit("POST /x", "203.0.113.7", rate="1/minute") is None
    assert a.hit("POST /x", "203.0.113.7", rate="1/minute") >= 1
    assert a.hit("POST /x", "198.51.100.1", rate="1/minute") is None  # another client has its own budget
    assert RateLimiter("1/minute").hit("POST /x", "203.0.113.7", rate="5/minute") is None  # the override wins


def test_json_depth_counts_brackets_outside_strings_only():
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 3)
    assert not json_depth_exceeds(b'{"a": "\\"[[[["}', 1)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', 3)
    assert not json_depth_exceeds(b'{"a": [[[1]]]}', 4)


def test_busy_scheduler_answers_503_with_retry_after(tiny_bots, tiny_checkpoints):
    busy = AppContext(bots=tiny_bots, scheduler=FullScheduler(tiny_bots), checkpoint_dir=tiny_checkpoints)
    with serve(api_app(busy, rate_limit=None)) as url:
        r = httpx.post(f"{url}/api/v1/reply", json={"bot": "beam", "message": "hi"}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    err = error_of(r)
    assert err["type"] == "server_busy" and "busy" in err["message"]


# ----------------------------------------------------------------------------- the full server


def test_full_server_serves_the_api_beside_gradio_and_answers_bad_input_cleanly(ctx):
    from gradio_client import Client

    from demo_app.app import build_app
    from demo_app.server import start_server

    handle = start_server(ctx, build_app(ctx), close_context=False)  # ctx serves the module's other tests
    url = handle.url.rstrip("/")
    try:
        r = httpx.post(f"{url}/api/v1/reply", json={"bot": "beam", "message": "hi", "settings": {"beam_size": 99}})
        assert r.status_code == 422 and error_of(r)["param"] == "settings.beam_size"
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"model": "greedy", "messages": [{"role": "user", "content": "hi there"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
        # the Gradio routes: the UI's message for a bad value, a 4xx (never a 5xx) for a broken payload
        with pytest.raises(Exception, match="not in the list of choices"):
            Client(handle.url, verbose=False).predict({"x": 1}, "nope", api_name="/attention")
        for body in (b"\xff\xfe", b"[" * 30_000, b"{"):
            r = httpx.post(f"{url}/gradio_api/call/attention", content=body,
                           headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body[:10], r.status_code)
    finally:
        handle.close()
