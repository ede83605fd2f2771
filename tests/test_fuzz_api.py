"""Fuzzing the API from its own OpenAPI schema with schemathesis: >= 1,000 generated requests, no 5xx.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -s tests/test_fuzz_api.py      # -s prints the figures

Every operation of the launched app's ``/openapi.json`` gets schema-valid ("positive") and schema-violating
("negative") requests; half of the generated ``bot`` / ``model`` fields are replaced by a served bot's name so the
requests reach the decoder instead of stopping at "unknown bot". Each answer goes through schemathesis' checks
(no server error, documented status code and content type, response matches its schema, invalid data refused)
except ``positive_data_acceptance``: some schema-valid requests are refused on purpose, by rules a JSON schema
cannot say (``nbest <= beam_size``, a message with no readable word, a chat whose last message is not the user's);
they are counted as "refused valid". Conversations are fuzzed too: ``/api/v1/reply``'s ``history`` (the schema
bounds it: at most 64 turns of at most 4,000 characters, and bodies over 64 KB are refused) and the chat's
``messages``; at least one answered request of each must have carried earlier turns. The server must answer
afterwards and the process RSS stay bounded.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from helpers import api_app, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup

pytestmark = pytest.mark.slow

# examples per (operation, mode); the GET operations without parameters have one request only
EXAMPLES = {("POST", "/api/v1/reply"): (320, 180), ("POST", "/v1/chat/completions"): (320, 180),
            ("GET", "/v1/models/{model}"): (100, 50)}
MIN_REQUESTS = 1000
RSS_GROWTH_MB = 300
# the nasty inputs kept as fixed regression cases (besides tests/test_api.py's list): bodies schemathesis found
# worth keeping, sent as raw bytes
SEEDS = [
    b'{"bot": "greedy", "message": ""}',
    b'{"bot": "beam", "message": "hi", "settings": {"nbest": 50}}',
    b'{"bot": "beam", "message": "hi", "settings": {"beam_size": 50, "max_len": 100, "no_repeat_ngram": 1}}',
    b'{"bot": "antilm", "message": "\\u0000", "nbest": 1}',
    b'{"bot": "beam", "message": "\\ud800"}',
    b'{"model": "beam", "messages": [{"role": "user", "content": null}]}',
    b'{"model": "beam", "messages": [{"role": "user", "content": []}]}',
    b'{"model": "beam", "messages": [{"role": "user", "content": "hi"}], "n": 50, "beam_size": 1}',
    b'{"model": "greedy", "messages": [{"role": "user", "content": "hi"}], "stop": ["", ""]}',
    b'{"model": "beam", "messages": [{"role": "user", "content": "hi"}], "temperature": 5.0, "top_k": 1000}',
    b'{"bot": "rl", "message": "hi", "history": ["", "\\u0000\\t", "\\ud800", "<b>\xf0\x9f\x99\x82</b>"]}',
    b'{"bot": "rl", "message": "hi", "history": [null]}',
    b'{"bot": "antilm", "message": "hi", "history": ' + json.dumps(["a b " * 225] * 64).encode() + b"}",
    b'{"model": "rl", "messages": [{"role": "assistant", "content": null}, {"role": "user", "content": "hi"}]}',
    b'{"model": "rl", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
    b'{"model": "rl", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "yo"}]}',
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def url(tiny_ctx) -> Iterator[str]:
    with serve(api_app(tiny_ctx, rate_limit=None)) as u:
        yield u


@pytest.mark.parametrize("body", SEEDS, ids=range(len(SEEDS)))
def test_seed_inputs_get_a_clean_answer(url, body):
    path = "/v1/chat/completions" if b'"model"' in body else "/api/v1/reply"
    r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code in (200, 404, 422), r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]


class Tally:
    """Answers by status and check failures by kind, per operation and generation mode."""

    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.refused_valid = 0
        self.answered_with_history: collections.Counter[str] = collections.Counter()  # 200s with earlier turns
        self.examples: dict[str, str] = {}  # the first failure of each kind, for the assertion message

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if int(k.rsplit(" ", 1)[1]) >= 500)


def with_bot(pair: tuple[Any, str | None]) -> Any:
    """When a name was drawn: put a served bot's name into the generated ``bot`` / ``model`` field and end the
    chat with a user message, so the request reaches the decoder."""
    case, name = pair
    if name is not None and isinstance(case.body, dict):
        for key in ("bot", "model"):
            if key in case.body:
                case.body[key] = name
        if isinstance(case.body.get("messages"), list):
            case.body["messages"].append({"role": "user", "content": "hi there"})
    return case


def earlier_turns(body: Any) -> int:
    """How many earlier turns a request carries: its ``history``, or its chat messages other than system ones
    before the last."""
    if not isinstance(body, dict):
        return 0
    if isinstance(body.get("history"), list):
        return len(body["history"])
    if isinstance(body.get("messages"), list):
        turns = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        return max(0, len(turns) - 1)
    return 0


def fuzz_operation(op: Any, mode: GenerationMode, n: int, url: str, names: list[str], tally: Tally) -> None:
    """Send up to ``n`` generated requests to one operation and tally the answers and failed checks."""
    label = f"{op.method.upper()} {op.path}"
    # negative cases are left as generated: a served name could repair the very field that was broken
    drawn = st.sampled_from([*names, *[None] * len(names)]) if mode == GenerationMode.POSITIVE else st.none()
    strategy = st.tuples(op.as_strategy(generation_mode=mode), drawn)

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=strategy.map(with_bot))
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=60)
        tally.statuses[f"{label} {mode.value} {response.status_code}"] += 1
        if mode == GenerationMode.POSITIVE and response.status_code == 422:
            tally.refused_valid += 1
        if response.status_code == 200 and earlier_turns(case.body):
            tally.answered_with_history[label] += 1
        try:
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        except FailureGroup as group:
            for failure in group.exceptions:
                kind = f"{label}: {getattr(failure, 'title', type(failure).__name__)}"
                tally.failures[kind] += 1
                tally.examples.setdefault(kind, f"{str(failure)[:1000]}\nbody: {str(case.body)[:300]}")
        except AssertionError as failure:
            tally.failures[f"{label}: {getattr(failure, 'title', str(failure)[:80])}"] += 1

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to negate in an operation without parameters


def test_fuzz_the_openapi_schema(url, tiny_bots):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]  # too large is a rejection too
    tally = Tally()
    rss_before, start = rss_mb(), time.perf_counter()
    for result in schema.get_all_operations():
        op = result.ok()
        positive, negative = EXAMPLES.get((op.method.upper(), op.path), (1, 1))
        fuzz_operation(op, GenerationMode.POSITIVE, positive, url, list(tiny_bots), tally)
        fuzz_operation(op, GenerationMode.NEGATIVE, negative, url, list(tiny_bots), tally)
    elapsed, rss_after = time.perf_counter() - start, rss_mb()

    print(f"\nfuzz: {tally.total} requests in {elapsed:.0f} s, {tally.server_errors} server errors, "
          f"{tally.refused_valid} schema-valid requests refused (422), RSS {rss_before:.0f} -> {rss_after:.0f} MB; "
          f"answered with earlier turns: {dict(tally.answered_with_history)}")
    for k, v in sorted(tally.statuses.items()):
        print(f"  {v:5d}  {k}")
    for k, v in sorted(tally.failures.items()):
        print(f"  FAIL {v:5d}  {k}")
    assert tally.total >= MIN_REQUESTS
    assert tally.answered_with_history["POST /api/v1/reply"] > 0  # history was fuzzed, not only refused
    assert tally.answered_with_history["POST /v1/chat/completions"] > 0
    assert tally.server_errors == 0
    assert not tally.failures, "\n\n".join(tally.examples.values())
    assert rss_after - rss_before < RSS_GROWTH_MB
    r = httpx.post(f"{url}/api/v1/reply", json={"bot": "greedy", "message": "still there?"}, timeout=60)
    assert r.status_code == 200 and r.json()["text"] is not None
