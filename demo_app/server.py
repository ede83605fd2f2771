"""One HTTP server for everything: the Gradio app at ``/`` and the JSON / OpenAI-compatible / webhook routes
beside it, on one FastAPI app run by uvicorn.

    >>> ctx = make_context("checkpoints")                     # bots, batching scheduler, arena store
    >>> demo = build_app(ctx)
    >>> handle = start_server(ctx, demo, host="127.0.0.1", port=7860)   # in a thread; handle.url
    >>> handle.close()

``chatbot-arena serve`` (:mod:`demo_app.serve`) runs the same server in the foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi
import gradio as gr
import uvicorn

from core.bots import bots_of_folders, default_checkpoint_dir, load_bot_folders
from core.serving import BatchScheduler
from demo_app.api import api_router
from demo_app.context import AppContext
from demo_app.errors import install_error_handling
from demo_app.messenger import messenger_router

log = logging.getLogger(__name__)

CSS = """
.reply-meta { color: var(--body-text-color-subdued); font-size: 0.78em; }
.reply-error { color: var(--error-text-color); }
.bot-head { min-height: 8.5em; }
.bot-head p { margin: 0; font-size: 0.9em; color: var(--body-text-color-subdued); }
"""


def make_context(checkpoints: str | Path | list[str | Path] | None = None, *, device: str = "auto",
                 batching: bool = True, data_dir: str | Path | None = None, db: str | None = None,
                 arena: bool = True, threads: int | None = None, workers: int = 1,
                 decode_process: bool = False) -> AppContext:
    """Load the bots of one or more checkpoint folders, start the batching scheduler and open the vote store.
    ``threads``: torch threads of the decode workers (None: the usable CPUs less one, at least one, split over
    ``workers``). ``decode_process``: each decode worker searches in a child process of its own, which loads the
    same bots (see :class:`core.serving.DecodeProcess`).

    Several folders (``--checkpoints`` given twice) serve all their bots side by side; every folder after the first
    prefixes its bot names with the folder's name (``mine/beam``), so "my corpus vs chitchat" is one page."""
    folders = [checkpoints] if checkpoints is None or isinstance(checkpoints, (str, Path)) else list(checkpoints)
    bots, missing = load_bot_folders(folders, device=device)
    loader = functools.partial(bots_of_folders, folders, device) if decode_process else None
    # reserve_cpus: the event loop and HTTP need a CPU of their own (bench/load.py: see README, Benchmarks)
    scheduler = BatchScheduler(bots, batching=batching, threads=threads, workers=workers, process_loader=loader,
                               reserve_cpus=1)
    ctx = AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=Path(folders[0] or default_checkpoint_dir()),
                     missing=missing)
    if arena:
        ctx.arena = open_arena(bots, data_dir=data_dir, db=db)
    return ctx


SALT_ENV = "ARENA_SESSION_SALT"


def open_arena(bots: dict[str, Any], *, data_dir: str | Path | None = None, db: str | None = None) -> Any:
    """The battle service over the vote store (SQLite under the data folder, or the PostgreSQL of ``db``); None
    with fewer than two bots (a battle needs two)."""
    from core.arena.battles import Arena
    from core.arena.store import ArenaStore, resolve_db_url

    if len(bots) < 2:
        return None
    salt = os.environ.get(SALT_ENV)  # replicas sharing one store need the same salt (same session, same hash)
    return Arena(ArenaStore(resolve_db_url(db, data_dir)), bots, salt=salt)


def create_server(ctx: AppContext, demo: gr.Blocks, *, mcp: bool = False,
                  close_context: bool = True) -> fastapi.FastAPI:
    """The FastAPI app: the API routers first (so ``/api/v1``, ``/v1`` and ``/webhook`` are theirs), the Gradio
    Blocks mounted at ``/``. Its lifespan closes ``ctx`` (:meth:`AppContext.close`: the Messenger pool, the
    scheduler and its decode processes, the vote store) when the server shuts down, unless ``close_context`` is
    False (a context shared by several servers)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: fastapi.FastAPI) -> AsyncIterator[None]:
        yield
        if close_context:
            await asyncio.to_thread(ctx.close)  # joins worker threads: off the event loop

    app = fastapi.FastAPI(title="Seq2Seq Chatbot Arena", description="JSON, OpenAI-compatible and webhook APIs of "
                          "the arena's bots; the web app is at /.", version="1", lifespan=lifespan)
    install_error_handling(app)
    app.include_router(api_router(ctx))
    app.include_router(messenger_router(ctx))
    return gr.mount_gradio_app(app, demo, path="/", theme=gr.themes.Soft(), css=CSS, mcp_server=mcp,
                               footer_links=["api", "gradio"])


@dataclass
class ServerHandle:
    """A server running in a thread of this process (tests, benchmarks)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def close(self) -> None:
        """Shut the server down as Ctrl-C does: open event streams (browsers) are cut after the config's
        ``timeout_graceful_shutdown``, then the lifespan closes the context (see :func:`create_server`)."""
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the streams it cuts are expected
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(ctx: AppContext, demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None,
                 mcp: bool = False, close_context: bool = True) -> ServerHandle:
    """Run :func:`create_server` with uvicorn in a daemon thread; return once it accepts connections. Without a
    ``port``, the server's socket is bound to port 0 here (the system picks a free port; no probe-then-bind race)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port or 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_server(ctx, demo, mcp=mcp, close_context=close_context), host=host, port=port,
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="arena-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    return ServerHandle(f"http://{host}:{port}/", server, thread)


def run_server(ctx: AppContext, demo: gr.Blocks, *, host: str, port: int, mcp: bool = False) -> None:
    """Serve in the foreground until interrupted."""
    print(f"* Seq2Seq Chatbot Arena on http://{host}:{port}/ (API docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(create_server(ctx, demo, mcp=mcp), host=host, port=port, log_level="warning")
