"""The batching scheduler on the tiny real bots: batched replies equal unbatched ones, a cancelled or failing
request leaves its batch-mates intact, the queue bound, checks at submit, and how many decodes run at once.

Batches are made deterministic without timing: either ``max_batch`` equals the number of requests sent (the group
is decoded as soon as it is full; ``max_wait_s`` is long), or a first request holds the only worker (its bot's
``respond_batch`` waits on an event) while the others queue up behind it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import torch

from core.decoding import STRATEGIES
from core.serving import BatchScheduler, Busy, Ticket, usable_cpus

PROMPTS = [
    "hi", "hello there, how are you doing today?", "what do you do for fun?", "i like dogs",
    "do you have any pets? my cat is called tom and he is very lazy", "where do you live?", "ok",
    "what is your favourite food and why do you like it so much?", "good morning", "tell me about your day",
    "are you a student?", "that sounds great, thanks",
]
HOLD = "please wait here"  # the prompt of the request that holds a worker
LONG_WAIT = 30.0  # s: max_wait_s when a full group (max_batch) is what sends a batch


class Gate:
    """Wraps one bot's ``respond_batch``: a call containing HOLD blocks until ``release``; every call's prompts
    are recorded; a prompt in ``fail_on`` makes the call raise."""

    def __init__(self, monkeypatch, bot, fail_on: str | None = None) -> None:
        self.started, self.released, self.calls, self.fail_on = threading.Event(), threading.Event(), [], fail_on
        real = bot.respond_batch

        def respond_batch(prompts, **overrides):
            self.calls.append(list(prompts))
            if HOLD in prompts:
                self.started.set()
                assert self.released.wait(60), "the test never released the held worker"
            if fail_on is not None and fail_on in prompts:
                raise RuntimeError("the model broke on this prompt")
            return real(prompts, **overrides)

        monkeypatch.setattr(bot, "respond_batch", respond_batch)

    def hold(self, scheduler: BatchScheduler, bot: str) -> Ticket:
        ticket = scheduler.submit(bot, HOLD, {"max_len": 3})
        assert self.started.wait(60), "the worker never started the holding request"
        return ticket

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def scheduler_factory():
    made = []

    def make(bots, **kwargs):
        kwargs.setdefault("threads", 1)
        made.append(BatchScheduler(bots, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()
    torch.set_num_threads(1)


def assert_same_reply(batched, alone, *, exact_floats=False):
    assert batched.text == alone.text and batched.tokens == alone.tokens
    assert [h.tokens for h in batched.nbest] == [h.tokens for h in alone.nbest]
    assert batched.settings == alone.settings
    if exact_floats:  # the same computation: bit for bit
        assert (batched.score, batched.logprobs) == (alone.score, alone.logprobs)
        assert [h.score for h in batched.nbest] == [h.score for h in alone.nbest]
    else:  # another GEMM row count: the same up to float32 rounding (see core/serving.py)
        assert batched.score == pytest.approx(alone.score, rel=1e-5, abs=1e-5)
        assert batched.logprobs == pytest.approx(alone.logprobs, rel=1e-5, abs=1e-5)
        assert [h.score for h in batched.nbest] == pytest.approx([h.score for h in alone.nbest], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("bot,overrides", [
    ("greedy", {}),
    ("beam", {}),
    ("beam", {"beam_size": 4, "max_len": 12}),
    ("antilm", {"max_len": 12}),
])
def test_concurrent_requests_form_one_batch_and_reply_as_if_alone(tiny_bots, scheduler_factory, bot, overrides):
    scheduler = scheduler_factory(tiny_bots, max_batch=len(PROMPTS), max_wait_s=LONG_WAIT)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # one thread per visitor
        tickets = list(pool.map(lambda p: scheduler.submit(bot, p, overrides), PROMPTS))
    replies = [t.result(60) for t in tickets]
    stats = scheduler.stats()
    assert (stats["requests"], stats["batches"], stats["largest_batch"]) == (len(PROMPTS), 1, len(PROMPTS))
    assert all(t.batch_size == len(PROMPTS) and t.queue_s >= 0 for t in tickets)
    assert stats["queue_s_max"] == max(t.queue_s for t in tickets)
    assert len({r.latency_s for r in replies}) == 1  # the wall time of the one batched call
    for p, r in zip(PROMPTS, replies):
        assert_same_reply(r, tiny_bots[bot].respond(p, **overrides))


def test_without_batching_each_request_is_decoded_alone_in_arrival_order(tiny_bots, scheduler_factory,
                                                                           monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["beam"])
    scheduler = scheduler_factory(tiny_bots, batching=False, max_wait_s=LONG_WAIT)
    held = gate.hold(scheduler, "beam")
    tickets = [scheduler.submit("beam", p, {"beam_size": 3}) for p in PROMPTS[:5]]
    gate.release()
    replies = [t.result(60) for t in tickets]
    held.result(60)
    assert gate.calls == [[HOLD]] + [[p] for p in PROMPTS[:5]]
    for p, t, r in zip(PROMPTS[:5], tickets, replies):
        assert_same_reply(r, tiny_bots["beam"].respond(p, beam_size=3), exact_floats=True)
        assert t.batch_size == 1
    assert scheduler.stats()["batches"] == scheduler.stats()["requests"] == 6


def test_requests_queued_behind_a_busy_worker_are_batched_per_bot_and_settings(tiny_bots, scheduler_factory,
                                                                                 monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "greedy")
    same = [scheduler.submit("beam", p, {"beam_size": 4}) for p in PROMPTS[:4]]
    same += [scheduler.submit("beam", p, {"beam_size": 4, "nbest": 4}) for p in PROMPTS[4:6]]  # same effective
    other = [scheduler.submit("beam", p, {"beam_size": 5}) for p in PROMPTS[6:9]]
    gate.release()
    assert {t.result(60).settings["beam_size"] for t in same} == {4}
    assert {t.result(60).settings["beam_size"] for t in other} == {5}
    assert {t.batch_size for t in same} == {6} and {t.batch_size for t in other} == {3}
    assert scheduler.stats()["batches"] == 3  # the holder, then one batch per effective setting


def test_a_cancelled_request_is_dropped_and_its_batch_mates_are_intact(tiny_bots, scheduler_factory, monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["beam"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "beam")
    tickets = [scheduler.submit("beam", p, {"max_len": 10}) for p in PROMPTS[:5]]
    assert tickets[2].cancel()  # the visitor went away
    gate.release()
    for i, (p, t) in enumerate(zip(PROMPTS[:5], tickets)):
        if i == 2:
            assert t.cancelled()
        else:
            assert_same_reply(t.result(60), tiny_bots["beam"].respond(p, max_len=10))
    assert gate.calls[1] == [p for i, p in enumerate(PROMPTS[:5]) if i != 2]  # never decoded
    assert scheduler.stats()["cancelled"] == 1


def test_respond_that_times_out_cancels_its_request(tiny_bots, scheduler_factory, monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "greedy")
    with pytest.raises(FutureTimeout):
        scheduler.respond("greedy", "nobody waits for this", {}, timeout=0.01)
    later = scheduler.submit("greedy", "hello", {})
    gate.release()
    later.result(60)
    assert all("nobody waits for this" not in call for call in gate.calls)
    assert scheduler.stats()["cancelled"] == 1


def test_a_failing_request_fails_alone(tiny_bots, scheduler_factory, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="core.serving")
    bad = "this one breaks the model"
    gate = Gate(monkeypatch, tiny_bots["greedy"], fail_on=bad)
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "greedy")
    prompts = PROMPTS[:2] + [bad] + PROMPTS[2:4]
    tickets = [scheduler.submit("greedy", p, {}) for p in prompts]
    gate.release()
    with pytest.raises(RuntimeError, match="the model broke on this prompt"):
        tickets[2].result(60)
    replies = {p: t.result(60) for p, t in zip(prompts, tickets) if p != bad}
    assert gate.calls[1:] == [prompts] + [[p] for p in prompts]  # the batched call, then one by one
    for p, r in replies.items():
        assert_same_reply(r, tiny_bots["greedy"].respond(p))
    assert {t.batch_size for t in tickets} == {1}  # each reply came from a call of its own
    stats = scheduler.stats()
    assert (stats["failed"], stats["decoded"]) == (1, len(prompts))  # four good ones and the holder
    # the fallback is logged (a batch that keeps failing costs one decode per request), without the prompts
    [warning] = [r.getMessage() for r in caplog.records if r.name == "core.serving"]
    assert "a batch of 5 'greedy' requests failed (RuntimeError" in warning and "one by one" in warning
    assert not any(p in warning for p in PROMPTS[1:4])


@pytest.mark.parametrize("strategy", [name for name, cls in STRATEGIES.items() if cls.random])
def test_seeded_sampling_is_never_batched_but_unseeded_sampling_is(tiny_bots, scheduler_factory, monkeypatch,
                                                                   strategy):
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "greedy")
    seeded = {"strategy": strategy, "seed": 7, "beam_size": 3, "max_len": 8}
    with_seed = [scheduler.submit("beam", p, seeded) for p in PROMPTS[:3]]
    without = [scheduler.submit("beam", p, {**seeded, "seed": None}) for p in PROMPTS[:3]]
    gate.release()
    for p, t in zip(PROMPTS[:3], with_seed):
        assert t.result(60).tokens == tiny_bots["beam"].respond(p, **seeded).tokens  # the same draws as alone
        assert t.batch_size == 1
    assert {t.result(60).settings["strategy"] for t in without} == {strategy}
    assert {t.batch_size for t in without} == {3}


def test_the_queue_bound_answers_busy_with_a_clear_message(tiny_bots, scheduler_factory, monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_queue=3, max_wait_s=0)
    gate.hold(scheduler, "greedy")  # decoding, so not waiting
    tickets = [scheduler.submit("greedy", p, {}) for p in PROMPTS[:3]]
    with pytest.raises(Busy, match=r"^the server is busy: 3 requests are waiting; try again in a few seconds$"):
        scheduler.submit("greedy", "one too many", {})
    assert tickets[0].cancel()  # a cancelled request no longer counts
    tickets.append(scheduler.submit("greedy", PROMPTS[3], {}))
    gate.release()
    assert all(t.result(60).text for t in tickets[1:])
    assert scheduler.stats()["busy"] == 1


@pytest.mark.parametrize("bot,prompt,overrides,message", [
    ("nobody", "hello", {}, r"unknown bot 'nobody'; this server has \['greedy', 'beam', 'antilm', 'rl'\]"),
    ("beam", "hello", {"beam_size": 0}, r"beam_size=0 is out of range: allowed \[1, 50\]"),
    ("beam", "hello", {"temprature": 0.5}, r"unknown decoding setting\(s\) \['temprature'\]"),
    ("greedy", "hello", {"antilm": 0.5}, "has no language model, so antilm must be 0"),
    ("greedy", " \t\n ", {}, "prompt is empty"),
    ("greedy", None, {}, "prompt must be a string"),
    ("greedy", "hello", ["beam_size", 3], "settings must be a mapping"),
])
def test_a_bad_request_raises_at_submit_and_never_enters_a_batch(tiny_bots, scheduler_factory, bot, prompt,
                                                                  overrides, message):
    scheduler = scheduler_factory(tiny_bots)
    with pytest.raises(ValueError, match=message):
        scheduler.submit(bot, prompt, overrides)
    assert scheduler.stats()["requests"] == 0
    assert scheduler.respond("greedy", "hello", {}, timeout=60).text == tiny_bots["greedy"].respond("hello").text


def assert_same_trace(batched, alone):
    """The same search: every candidate with the same id, parent, token and status; scores up to float32 rounding."""
    assert (batched.trace is None) == (alone.trace is None)
    rows = [[(x["id"], x["parent"], x["token"], x["status"]) for x in r.trace or []] for r in (batched, alone)]
    assert rows[0] == rows[1]
    assert [x["score"] for x in batched.trace or []] == pytest.approx([x["score"] for x in alone.trace or []],
                                                                     rel=1e-5, abs=1e-5)


def test_traced_and_forced_requests_share_a_search_only_with_their_like(tiny_bots, scheduler_factory, monkeypatch):
    """``trace`` and ``prefix_ids`` are part of the group: each kind is one batch, and every reply is the one
    ``bot.respond`` gives with the same arguments (its trace included)."""
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    gate.hold(scheduler, "greedy")
    bot = tiny_bots["antilm"]
    start = bot.tokenizer.encode("i am")
    kinds = [{}, {"trace": True}, {"trace": True, "prefix_ids": start}, {"prefix_ids": start},
             {"prefix_ids": start[:1]}]
    history = ["do you like tea?", "yes"]
    tickets = [[scheduler.submit("antilm", p, {"max_len": 8}, history=history, **kind) for p in PROMPTS[:3]]
               for kind in kinds]
    gate.release()
    for kind, group in zip(kinds, tickets):
        replies = [t.result(60) for t in group]
        assert {t.batch_size for t in group} == {3}, kind  # one batch per kind, never mixed
        for p, reply in zip(PROMPTS[:3], replies):
            alone = bot.respond(p, history=history, max_len=8, **kind)
            assert_same_reply(reply, alone)
            assert_same_trace(reply, alone)
            assert reply.tokens[: len(kind.get("prefix_ids", []))] == kind.get("prefix_ids", [])
    assert scheduler.stats()["batches"] == 1 + len(kinds)


def test_a_bad_trace_or_forced_start_raises_at_submit(tiny_bots, scheduler_factory):
    from core.errors import SettingError

    scheduler = scheduler_factory(tiny_bots)
    hi = tiny_bots["beam"].tokenizer.encode("hi")
    cases = [({"prefix_ids": [10**7]}, "prefix", "ints in 0"), ({"prefix_ids": [1, *hi]}, "prefix", "cannot hold"),
             ({"prefix_ids": hi * 80}, "prefix", "longer than max_len"),
             ({"prefix_ids": "hi"}, "prefix", "must be a list of token ids"),
             ({"prefix_ids": 5}, "prefix", "must be a list of token ids"),
             ({"prefix_ids": hi, "overrides": {"prefix": "hello"}}, "prefix", "not both"),
             ({"trace": "yes"}, "trace", "trace must be true or false")]
    for kwargs, field, message in cases:
        overrides = kwargs.pop("overrides", {})
        with pytest.raises(SettingError, match=message) as e:
            scheduler.submit("beam", "hello", overrides, **kwargs)
        assert e.value.field == field
    assert scheduler.stats()["requests"] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_decodes_at_once_never_exceed_the_workers(tiny_bots, scheduler_factory, workers):
    scheduler = scheduler_factory(tiny_bots, workers=workers, max_wait_s=0)
    jobs = [(bot, p) for p in PROMPTS for bot in tiny_bots]  # different bots: separate groups
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda job: scheduler.respond(*job, {"max_len": 6}, timeout=120), jobs))
    assert len(replies) == len(jobs)
    stats = scheduler.stats()
    assert 1 <= stats["max_decodes_at_once"] <= workers and stats["decoding_now"] == 0
    assert stats["decoded"] == len(jobs) and stats["waiting"] == 0


def test_two_workers_do_decode_at_the_same_time(tiny_bots, scheduler_factory, monkeypatch):
    gates = [Gate(monkeypatch, tiny_bots[name]) for name in ("greedy", "beam")]
    scheduler = scheduler_factory(tiny_bots, workers=2, max_wait_s=0)
    held = [gate.hold(scheduler, name) for gate, name in zip(gates, ("greedy", "beam"))]  # both decoding now
    assert scheduler.stats()["decoding_now"] == 2
    for gate in gates:
        gate.release()
    assert all(t.result(60).tokens for t in held)
    assert scheduler.stats()["max_decodes_at_once"] == 2


def test_torch_threads_are_the_usable_cpus_shared_by_the_workers(tiny_bots, scheduler_factory, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert usable_cpus() == 4
    scheduler = scheduler_factory(tiny_bots, workers=2, threads=None)
    assert scheduler.threads == 2 == torch.get_num_threads() and scheduler.stats()["threads"] == 2
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        BatchScheduler(tiny_bots, workers=0)


def test_close_fails_queued_requests_with_busy_and_refuses_new_ones(tiny_bots, scheduler_factory, monkeypatch):
    gate = Gate(monkeypatch, tiny_bots["greedy"])
    scheduler = scheduler_factory(tiny_bots, max_wait_s=0)
    held = gate.hold(scheduler, "greedy")
    queued = scheduler.submit("greedy", "hello", {})
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    with pytest.raises(Busy, match="shutting down"):
        queued.result(60)
    gate.release()
    closer.join(60)
    assert held.result(60).tokens  # the decode under way finishes
    with pytest.raises(Busy, match="shutting down"):
        scheduler.submit("greedy", "hello", {})


def test_the_server_leaves_a_cpu_to_the_web_server(tiny_checkpoints, monkeypatch):
    """`serve`'s default: torch threads = the usable CPUs less one (the event loop and HTTP need a core), at least
    one; --threads and --workers override it."""
    from demo_app.serve import add_serve_args
    from demo_app.server import make_context

    saved = torch.get_num_threads()
    try:
        for cpus, workers, expected in (("4", 1, 3), ("4", 2, 1), ("1", 1, 1), ("2", 1, 1)):
            monkeypatch.setenv("OMP_NUM_THREADS", cpus)
            ctx = make_context(tiny_checkpoints, device="cpu", arena=False, workers=workers)
            try:
                assert (ctx.scheduler.threads, ctx.scheduler.workers) == (expected, workers)
            finally:
                ctx.scheduler.close()
        ctx = make_context(tiny_checkpoints, device="cpu", arena=False, threads=2)
        assert ctx.scheduler.threads == 2 == torch.get_num_threads()
        ctx.scheduler.close()
    finally:
        torch.set_num_threads(saved)
    import argparse

    p = argparse.ArgumentParser()
    add_serve_args(p)
    args = p.parse_args(["--threads", "3", "--workers", "2"])
    assert (args.threads, args.workers) == (3, 2)


@pytest.fixture(scope="module")
def process_scheduler(tiny_checkpoints):
    """A scheduler whose one worker decodes in a child process that loads the tiny checkpoints itself."""
    import functools

    from core.bots import bots_of_folders

    bots = bots_of_folders([tiny_checkpoints], "cpu")
    saved = torch.get_num_threads()
    scheduler = BatchScheduler(bots, threads=1, max_wait_s=0.05,
                               process_loader=functools.partial(bots_of_folders, [tiny_checkpoints], "cpu"))
    yield scheduler
    scheduler.close()
    torch.set_num_threads(saved)


@pytest.mark.parametrize("bot", ["greedy", "beam", "antilm", "rl"])
def test_a_decode_process_replies_as_this_process_does(tiny_bots, process_scheduler, bot):
    prompts = ["hello there", "how are you", "what do you do for fun?"]
    with ThreadPoolExecutor(3) as pool:  # sent together: one batch in the child
        replies = list(pool.map(lambda p: process_scheduler.respond(bot, p, {"max_len": 8}), prompts))
    for prompt, reply in zip(prompts, replies, strict=True):
        alone = tiny_bots[bot].respond(prompt, max_len=8)
        assert (reply.tokens, reply.text) == (alone.tokens, alone.text)
        assert reply.score == pytest.approx(alone.score, abs=1e-5)
    assert process_scheduler.stats()["decode_processes"] == 1


def test_a_decode_process_carries_traces_and_forced_starts(tiny_bots, process_scheduler):
    """The decode-process protocol carries ``trace`` and ``prefix_ids``: the reply (its trace included) is the one
    ``bot.respond`` gives here; a bad forced start still fails in this process, before any decode."""
    bot = tiny_bots["antilm"]
    start = bot.tokenizer.encode("i am")
    respond = process_scheduler.responder("antilm", timeout=60)
    before = process_scheduler.stats()["requests"]
    for kind in ({"trace": True}, {"trace": True, "prefix_ids": start}, {"prefix_ids": start}):
        reply = respond("hello there", history=["hi", "hey"], max_len=8, **kind)
        alone = bot.respond("hello there", history=["hi", "hey"], max_len=8, **kind)
        assert_same_reply(reply, alone)
        assert_same_trace(reply, alone)
    with pytest.raises(ValueError, match="cannot hold"):
        respond("hello there", prefix_ids=[1, *start])
    assert process_scheduler.stats()["requests"] == before + 3


def test_a_decode_process_that_dies_fails_its_batch_and_starts_again(process_scheduler):
    import os
    import signal

    proc = process_scheduler._procs[0]
    old = proc.pid
    os.kill(old, signal.SIGKILL)
    proc._proc.join(10)
    # the next request finds the child gone and starts a new one before decoding (nothing is lost)
    assert process_scheduler.respond("beam", "hello there", {"max_len": 6}).tokens
    assert proc.pid != old and proc.restarts >= 1
    # a child that dies during a decode fails that batch with a message; the one after is answered again
    real = proc._conn.send

    def die_then_send(msg):
        os.kill(proc.pid, signal.SIGKILL)
        proc._proc.join(10)
        real(msg)

    proc._conn.send = die_then_send
    with pytest.raises(RuntimeError, match="the decode process exited"):
        process_scheduler.respond("greedy", "hi", {"max_len": 6})
    assert process_scheduler.respond("greedy", "hi", {"max_len": 6}).tokens
    # bad requests still fail in this process, before any decode
    with pytest.raises(ValueError, match="beam_size"):
        process_scheduler.submit("beam", "hi", {"beam_size": 0})


def test_serve_decodes_in_child_processes_that_end_with_it(tiny_checkpoints, tiny_bots, tmp_path):
    """`chatbot-arena serve` (its defaults: decode processes, 2 workers with 2+ CPUs) answers the JSON API with
    the bots' own replies, and its decode processes exit when the server is killed (no orphans)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from demo_app.server import free_port

    script = Path(sys.executable).with_name("chatbot-arena")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "core.cli"]
    port = free_port("127.0.0.1")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "serve", "--checkpoints", str(tiny_checkpoints), "--port", str(port),
                                 "--data-dir", str(tmp_path / "votes")], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/api/v1/bots", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the server did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        children = [int(c) for t in Path(f"/proc/{proc.pid}/task").glob("*/children") for c in t.read_text().split()]
        names = [Path(f"/proc/{c}/cmdline").read_bytes() for c in children]
        assert sum(b"spawn_main" in n for n in names) == 2, names  # (beside multiprocessing's resource tracker)
        decoders = children
        for bot in ("greedy", "beam", "antilm", "rl"):
            r = httpx.post(url + "/api/v1/reply", json={"bot": bot, "message": "hello there",
                                                        "settings": {"max_len": 8}}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["text"] == tiny_bots[bot].respond("hello there", max_len=8).text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() and b"Z" not in Path(
            f"/proc/{c}/stat").read_bytes().split(b")")[-1][:3] for c in decoders):
        time.sleep(0.2)
    alive = [c for c in decoders if Path(f"/proc/{c}").exists()
             and Path(f"/proc/{c}/stat").read_bytes().split(b")")[-1].split()[0] != b"Z"]
    assert not alive, f"child processes left running after the server died: {alive}"


def test_release_free_memory_gives_freed_heap_pages_back():
    """What a decode process does after each batch: tensors freed by a batch no longer count in its RSS."""
    from core.serving import release_free_memory

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    release_free_memory()
    before = rss_mb()
    many = [torch.ones(8000) for _ in range(10000)]  # 32 KB each: glibc's heap, not mmap
    kept = many[::10]  # one in ten stays: the freed ones are holes inside the heap, which glibc keeps
    grown = rss_mb()
    del many
    assert grown - before > 250 and rss_mb() - before > 200  # 90% freed, but the pages still count
    assert release_free_memory() is True  # Linux with glibc, as the server runs
    assert rss_mb() - before < 32 + 50  # the kept tenth (32 MB) and some slack
    assert len(kept) == 1000
