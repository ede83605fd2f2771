"""The server's lifespan: shutting the HTTP server down closes what its context started (the Messenger pool, the
scheduler's workers and decode processes, the vote store), and the server binds its own port."""

from __future__ import annotations

import os
import urllib.parse

import httpx
import pytest

from core.serving import Busy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) is not alive
        return f.read().split(")")[-1].split()[0] != "Z"


def test_closing_the_server_closes_the_scheduler_decode_processes_messenger_and_store(tiny_checkpoints, tmp_path):
    from demo_app.app import build_app
    from demo_app.server import make_context, start_server

    ctx = make_context(tiny_checkpoints, device="cpu", data_dir=tmp_path / "data", threads=1, decode_process=True)
    handle = start_server(ctx, build_app(ctx))
    assert urllib.parse.urlsplit(handle.url).port > 0  # bound to port 0: the system chose a free port
    r = httpx.post(handle.url + "api/v1/reply", json={"bot": "greedy", "message": "hi there"}, timeout=60)
    assert r.status_code == 200 and r.json()["text"] is not None
    pids = [p.pid for p in ctx.scheduler._procs]
    assert pids and all(_alive(pid) for pid in pids)
    bridge = ctx.extra["messenger"]

    handle.close()

    assert not handle.thread.is_alive()
    with pytest.raises(Busy):
        ctx.scheduler.submit("greedy", "hi there")
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError):  # the Messenger pool takes no more jobs
        bridge.pool.submit(print)
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url, timeout=5)
    ctx.close()  # a second close is harmless


def test_a_shared_context_outlives_the_server_when_asked(tiny_ctx):
    from demo_app.app import build_app
    from demo_app.server import start_server

    handle = start_server(tiny_ctx, build_app(tiny_ctx), close_context=False)
    handle.close()
    assert tiny_ctx.scheduler.submit("greedy", "hi there").result(timeout=60).text is not None
