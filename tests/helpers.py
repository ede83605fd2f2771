"""Helpers shared by the test modules (the one place they live; test modules never import each other):
a free port, the shipped-checkpoints check, the API harness (an app with the API routes, a server on a free port,
the error shape), the command line, and registries of other sizes.

    from helpers import api_app, error_of, serve
    with serve(api_app(ctx)) as url: ...
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastapi
import httpx
import uvicorn

from core.serving import BatchScheduler, Busy
from demo_app.api import api_router
from demo_app.context import AppContext
from demo_app.errors import install_error_handling

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A free localhost port, for servers in another process (in-process servers bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_checkpoints_complete(root: Path = SHIPPED) -> bool:
    """True when every folder bots.json names has its weights (i.e. the trained checkpoints are shipped)."""
    try:
        bots = json.loads((root / "bots.json").read_text(encoding="utf-8"))["bots"]
    except (OSError, ValueError, KeyError):
        return False
    folders = {b[k] for b in bots for k in ("checkpoint", "lm", "backward") if b.get(k)}
    return all((root / f / "model.safetensors").exists() for f in folders)


# ----------------------------------------------------------------------------- the API harness


def api_app(ctx: AppContext, **limits: Any) -> fastapi.FastAPI:
    """A FastAPI app with the API routes of ``ctx`` and the error handling (``limits``: install_error_handling's)."""
    app = fastapi.FastAPI(title="Seq2Seq Chatbot Arena API")
    install_error_handling(app, **limits)
    app.include_router(api_router(ctx))
    return app


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free localhost port; yield its URL; stop it on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the system picks a free port, and the server serves this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class FullScheduler(BatchScheduler):
    """A scheduler whose queue is always full."""

    def submit(self, bot, prompt, overrides=None, *, history=None):
        raise Busy("256 requests waiting")


def error_of(r: httpx.Response) -> dict[str, Any]:
    """The error object of an error answer, after checking its shape."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "param"}, body
    assert body["error"]["message"], body
    return body["error"]


# ----------------------------------------------------------------------------- the command line


def cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "core.cli", *args], input=stdin, capture_output=True, text=True,
                         env=ENV, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


# ----------------------------------------------------------------------------- registries of other sizes

SAMPLER = {"name": "sampler", "label": "Sampling (T=0.8, top-p 0.9)", "description": "Draws 5 replies.",
           "checkpoint": "mle", "lm": None, "backward": None,
           "decoder": {"strategy": "sample", "beam_size": 5, "temperature": 0.8, "top_p": 0.9, "seed": 7}}


def registry(tiny_checkpoints, tmp_path, size: int):
    """A copy of the tiny checkpoint folder whose bots.json has ``size`` bots (3: the first three; 5: + a sampler)."""
    root = tmp_path / f"bots{size}"
    shutil.copytree(tiny_checkpoints, root)
    spec = json.loads((root / "bots.json").read_text())
    spec["bots"] = spec["bots"][:3] if size == 3 else spec["bots"] + [SAMPLER]
    (root / "bots.json").write_text(json.dumps(spec))
    return root
