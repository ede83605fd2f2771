"""The Arena of the launched app under a crowd: scripted voters with known Bradley–Terry ratings cast 2,000 votes
through the app's HTTP API (gradio_client) and the leaderboard recovers them; votes confirmed to 32 concurrent
clients survive a SIGKILL of ``chatbot-arena serve``.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -s tests/test_arena_app.py   # -s prints the figures

The voters never learn the bots from what the app sends them: each looks its hidden battle up in the vote store
(by the salted hash of its own session, as the server stores it) and judges by the true ratings of the two bots.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.arena import WINNERS, Arena, ArenaStore
from core.arena.crowd import Crowd
from core.arena.store import BattleRecord, battles, votes

MESSAGE = "hi"
SESSION_VOTES = 15  # votes per browser session, under the arena's limit of 20 per minute
TRUE_RATINGS = (1150.0, 1050.0, 950.0, 850.0)  # given to the four bots in a seeded random order
TIE_RATE = 0.12  # share of votes that are a tie or "both bad"
SALT = "arena-app-test-salt"


def client_for(url: str) -> Any:
    """One browser session. ``ssl_verify=False``: the app is plain HTTP on loopback, and it spares httpx a
    certificate store for every request (which otherwise costs the clients more CPU than the server uses)."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=False, httpx_kwargs={"timeout": 60})


def open_battle(store: ArenaStore, session_hash: str) -> BattleRecord:
    """The one battle of this session that has no vote yet (a voter plays its battles one after the other)."""
    q = (select(battles.c.id).outerjoin(votes, votes.c.battle_id == battles.c.id)
         .where(battles.c.session_hash == session_hash, votes.c.battle_id.is_(None)))
    with store._read() as conn:
        ids = list(conn.execute(q).scalars())
    assert len(ids) == 1, f"expected one open battle for the session, found {len(ids)}"
    rec = store.battle(ids[0])
    assert rec is not None
    return rec


def before_vote(output: tuple) -> str:
    """What a /new_battle or /battle answer sends to the page, without the bots' reply texts."""
    chat_a, chat_b, *rest = output
    chats = [[m if m["role"] == "user" else {**m, "content": None} for m in chat] for chat in (chat_a, chat_b)]
    return json.dumps([chats, rest])


def chatbot_arena() -> list[str]:
    """The ``chatbot-arena`` command of this environment."""
    script = Path(sys.executable).with_name("chatbot-arena")
    return [str(script)] if script.exists() else [sys.executable, "-m", "core.cli"]


# ----------------------------------------------------------------------------- the scripted crowd


@pytest.fixture
def arena_server(tiny_checkpoints, tmp_path):
    """The full app (demo_app.server, as ``chatbot-arena serve`` builds it) on the tiny bots, in this process."""
    from demo_app.app import build_app
    from demo_app.server import make_context, start_server

    ctx = make_context(tiny_checkpoints, device="cpu", data_dir=tmp_path / "data", threads=1)
    handle = start_server(ctx, build_app(ctx))
    try:
        yield ctx, handle.url
    finally:
        handle.close()
        ctx.scheduler.close()
        ctx.arena.store.close()


def play_sessions(url: str, arena: Arena, crowd: Crowd, n_votes: int, secrets: list[str]) -> int:
    """Browser sessions one after another until ``n_votes`` votes are in: each opens with /new_battle, then
    sends a message (/battle) and votes (/vote); the message after a vote starts the next battle."""
    done = 0
    while done < n_votes:
        client = client_for(url)
        try:
            session = arena.session_hash(client.session_hash)
            shown = [before_vote(client.predict(api_name="/new_battle"))]
            for _ in range(min(SESSION_VOTES, n_votes - done)):
                answered = client.predict(MESSAGE, api_name="/battle")
                assert "Both replies are in" in answered[2], answered[2]
                shown.append(before_vote(answered))
                rec = open_battle(arena.store, session)
                revealed = client.predict(crowd.judge(rec.model_a, rec.model_b), api_name="/vote")
                assert revealed[2] == "Vote saved.", revealed[2]
                assert f"(`{rec.model_a}`)" in revealed[3].split("**Bot B**")[0], "the reveal names another bot"
                done += 1
            leaks = {s for s in secrets for text in set(shown) if s in text}
            assert not leaks, f"{leaks} sent to the page before the vote"
        finally:
            client.close()
    return done


@pytest.mark.slow
def test_a_scripted_crowd_recovers_the_true_ratings(arena_server):
    """2,000 votes by 16 concurrent voters; rule: the leaderboard orders the bots as their true ratings do, and
    the true rating (anchored like the fit: mean 1000) lies in the 95% interval for at least 3 of the 4 bots."""
    ctx, url = arena_server
    names = list(ctx.bots)
    assert len(names) == 4
    order = random.Random(0)
    shuffled = names[:]
    order.shuffle(shuffled)
    mean = sum(TRUE_RATINGS) / len(TRUE_RATINGS)
    truth = {name: r - mean + 1000.0 for name, r in zip(shuffled, TRUE_RATINGS)}
    crowd = Crowd(truth, tie_rate=TIE_RATE, seed=0)
    secrets = [s for bot in ctx.bots.values() for s in (bot.name, bot.label)]

    n_votes, n_voters = 2000, 16
    share = [n_votes // n_voters + (k < n_votes % n_voters) for k in range(n_voters)]
    start = time.perf_counter()
    with ThreadPoolExecutor(n_voters) as pool:
        cast = sum(pool.map(lambda n: play_sessions(url, ctx.arena, crowd, n, secrets), share))
    elapsed = time.perf_counter() - start
    counts = ctx.arena.store.counts()
    assert cast == counts["votes"] == counts["battles"] == n_votes
    print(f"\nscripted crowd: {n_votes} votes by {n_voters} concurrent voters in {elapsed:.0f} s "
          f"({n_votes / elapsed:.1f} votes/s, 2 API calls per vote + 1 per session of {SESSION_VOTES})")

    run = subprocess.run([*chatbot_arena(), "leaderboard", "--db", ctx.arena.store.url, "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    board = {row["bot"]: row for row in json.loads(run.stdout)["leaderboard"]}
    assert set(board) == set(names) and sum(row["votes"] for row in board.values()) == 2 * n_votes
    inside = {n: board[n]["ci_low"] <= truth[n] <= board[n]["ci_high"] for n in names}
    ties = sum(row["ties"] + row["both_bad"] for row in board.values()) // 2
    print(f"{ties} of the votes are ties or both bad; rule: the true order, and the true rating inside the 95% CI "
          "for at least 3 of 4 bots")
    print(f"{'bot':8} {'true':>6} {'fitted':>7} {'95% CI':>15} {'inside':>7} {'votes':>6}")
    for n in sorted(names, key=truth.get, reverse=True):
        r = board[n]
        print(f"{n:8} {truth[n]:6.0f} {r['rating']:7.1f} {r['ci_low']:7.1f}-{r['ci_high']:<7.1f} "
              f"{'yes' if inside[n] else 'NO':>7} {r['votes']:6d}")

    assert sorted(names, key=lambda n: board[n]["rating"], reverse=True) == sorted(names, key=truth.get,
                                                                                    reverse=True)
    assert sum(inside.values()) >= 3, inside

    # the Leaderboard tab's API shows the same votes
    client = client_for(url)
    try:
        table, note, *_ = client.predict(api_name="/leaderboard")
    finally:
        client.close()
    rows = [dict(zip(table["headers"], row)) for row in table["data"]]
    assert f"{n_votes} votes, 4 bots" in note
    assert {r["Bot"]: r["Votes"] for r in rows} == {n: board[n]["votes"] for n in names}


# ----------------------------------------------------------------------------- durability under SIGKILL


class ServeProcess:
    """``chatbot-arena serve`` as a subprocess on the given port; its output goes to ``log``."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*chatbot_arena(), "serve", *args, "--host", "127.0.0.1", "--port",
                                          str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "config", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"the server did not come up:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Storm:
    """Clients that play battles and vote in a loop until ``stop`` is set; ``confirmed`` maps each battle whose
    vote came back "saved" to its winner."""

    def __init__(self, url: str, store: ArenaStore, hasher: Callable[[str], str]) -> None:
        self.url, self.store, self.hasher = url, store, hasher
        self.stop = threading.Event()
        self.confirmed: dict[str, str] = {}
        self.confirmations = 0
        self.voting = 0  # /vote requests in flight
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        client = None
        try:
            while not self.stop.is_set():
                client = client_for(self.url)
                session = self.hasher(client.session_hash)
                for _ in range(SESSION_VOTES):
                    if self.stop.is_set():
                        return
                    answered = client.predict(MESSAGE, api_name="/battle")
                    if "Both replies are in" not in answered[2]:
                        raise AssertionError(f"/battle: {answered[2]}")
                    battle_id = open_battle(self.store, session).id
                    winner = rng.choice(WINNERS)
                    with self._lock:
                        self.voting += 1
                    try:
                        revealed = client.predict(winner, api_name="/vote")
                    finally:
                        with self._lock:
                            self.voting -= 1
                    if revealed[2] != "Vote saved." or "Bot A** was" not in revealed[3]:
                        raise AssertionError(f"/vote: {revealed[2]}")
                    with self._lock:
                        self.confirmations += 1
                        self.confirmed[battle_id] = winner
                client.close()
                client = None
        except Exception as e:  # noqa: BLE001 - after the kill every request fails; before it, none may
            if not self.stop.is_set():
                self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            if client is not None:
                client.close()


@pytest.mark.slow
def test_confirmed_votes_survive_a_sigkill(tiny_checkpoints, tmp_path, free_port):
    """32 clients vote in a loop; the server is SIGKILLed mid-storm; after a restart on the same data folder every
    vote a client saw confirmed is stored, with its winner, exactly once."""
    n_clients, kill_after = 32, 150
    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "ARENA_SESSION_SALT": SALT, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--checkpoints", str(tiny_checkpoints), "--data-dir", str(data), "--device", "cpu"]
    server = ServeProcess(args, port, tmp_path / "serve.log", env)
    store = None
    try:
        server.wait_ready()
        url = f"sqlite:///{data / 'arena.sqlite3'}"
        store = ArenaStore(url)
        hasher = Arena(store, ["a", "b"], salt=SALT).session_hash  # the server's hash of a session (same salt)
        storm = Storm(server.url, store, hasher)
        threads = [threading.Thread(target=storm.run, args=(k,), daemon=True) for k in range(n_clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 150
        while storm.confirmations < kill_after and not storm.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not storm.errors, storm.errors[:3]
        assert storm.confirmations >= kill_after, f"only {storm.confirmations} votes confirmed before the deadline"
        with contextlib.redirect_stderr(io.StringIO()):  # gradio_client prints each stream the kill cuts
            with storm._lock:  # no confirmation is counted while the kill happens
                in_flight = storm.voting
                os.kill(server.proc.pid, signal.SIGKILL)
                storm.stop.set()
            server.proc.wait(timeout=30)
            for t in threads:
                t.join(timeout=60)
        assert not [t for t in threads if t.is_alive()], "a client hung after the kill"
        confirmed = dict(storm.confirmed)
        assert len(confirmed) == storm.confirmations  # no battle confirmed twice
        store.close()
        store = None

        server = ServeProcess(args, port, tmp_path / "serve.log", env)  # same data folder: opens, migrates
        server.wait_ready()
        client = client_for(server.url)
        try:
            client.predict(MESSAGE, api_name="/battle")
            assert client.predict("tie", api_name="/vote")[2] == "Vote saved."  # the store takes votes again
        finally:
            client.close()

        store = ArenaStore(url)
        stored = store.votes_frame()
        by_id = dict(zip(stored["question_id"], stored["winner"]))
        duplicated = int(stored["question_id"].duplicated().sum())
        lost = [b for b in confirmed if b not in by_id]
        changed = [b for b, w in confirmed.items() if b in by_id and by_id[b] != w]
        unconfirmed = len(by_id) - len(confirmed) - 1  # minus the vote after the restart
        with sqlite3.connect(data / "arena.sqlite3") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        print(f"\nSIGKILL durability: {len(confirmed)} votes confirmed to {n_clients} clients, {in_flight} votes in "
              f"flight at the kill; after the restart {len(by_id) - 1} stored ({len(lost)} confirmed ones missing, "
              f"{duplicated} duplicated, {unconfirmed} stored without a confirmation), integrity_check: {integrity}")
        assert not lost and not changed and duplicated == 0
        assert 0 <= unconfirmed <= in_flight  # only a vote cut off by the kill may be stored unconfirmed
        assert integrity == "ok"
    finally:
        if store is not None:
            store.close()
        server.stop()
