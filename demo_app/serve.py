"""``chatbot-arena serve``: the app and its APIs on one server (registered through the ``chatbot_arena.commands``
entry point of pyproject.toml, so core's command line never imports the app).

    chatbot-arena serve                                        # shipped checkpoints on http://127.0.0.1:7860
    chatbot-arena serve --host 0.0.0.0 --port 8000             # reachable from the network
    chatbot-arena serve --checkpoints runs/mine/checkpoints    # your own bots (chatbot-arena pipeline)
    chatbot-arena serve --checkpoints checkpoints --checkpoints runs/mine/checkpoints   # both, side by side
    chatbot-arena serve --db postgresql+psycopg://user@host/arena   # several replicas sharing one vote store
    chatbot-arena serve --mcp                                  # also an MCP server with a `reply` tool
    python -m demo_app.serve --help                            # the same command
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  chatbot-arena serve                                        # shipped checkpoints on http://127.0.0.1:7860
  chatbot-arena serve --host 0.0.0.0 --port 8000             # reachable from the network
  chatbot-arena serve --checkpoints runs/mine/checkpoints --device cuda
  chatbot-arena serve --checkpoints checkpoints --checkpoints runs/mine/checkpoints   # two folders, one page
  chatbot-arena serve --db postgresql+psycopg://arena@db/arena   # replicas sharing one vote store
  chatbot-arena serve --no-batching                          # decode every request alone (baseline for bench/load.py)
Needs the app extra: pip install -e ".[app]"."""


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None,
                   help="interface to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--checkpoints", action="append", default=None,
                   help="folder with bots.json (default: $CHATBOT_ARENA_CHECKPOINTS or the shipped checkpoints/); "
                        "give it twice to serve two folders side by side (the second one's bots are prefixed)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the vote database (default: /data when it exists, else ./arena_data)")
    p.add_argument("--db", default=None,
                   help="database URL of the votes, e.g. postgresql+psycopg://user@host/arena (default: "
                        "$ARENA_DB_URL, else SQLite in the data folder)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="decode concurrent requests for the same bot together (default: on)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the decode workers (default: the usable CPUs less one for the web "
                        "server, at least 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode workers, each with its decode process (default: 2 with two or more CPUs, else 1: "
                        "two bots' batches are searched at the same time)")
    p.add_argument("--decode-process", action=argparse.BooleanOptionalAction, default=True,
                   help="search in a child process per worker, beside the web server's (default: on; the two "
                        "then never wait for each other on Python's GIL)")
    p.add_argument("--mcp", action="store_true", help="also serve an MCP server (Gradio's mcp_server) with a "
                                                      "`reply` tool")


def default_workers() -> int:
    """Decode workers of ``serve``: two where there are two CPUs or more (measured on 2 cores with
    ``bench/load.py``: one user 0.15 s vs 0.24 s p50, 32 users 10.2 vs 9.0 requests/s), else one."""
    from core.serving import usable_cpus

    return 2 if usable_cpus() >= 2 else 1


def serve(checkpoints: str | Path | list[str | Path] | None = None, *, host: str | None = None,
          port: int | None = None, device: str = "auto", batching: bool = True, data_dir: str | Path | None = None,
          db: str | None = None, mcp: bool = False, threads: int | None = None, workers: int | None = None,
          decode_process: bool = True) -> None:
    """Load the bots once and serve the app and its APIs until interrupted (host/port: Gradio's environment
    variables, then 127.0.0.1:7860)."""
    from demo_app.app import build_app
    from demo_app.server import make_context, run_server

    host = host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    ctx = make_context(checkpoints, device=device, batching=batching, data_dir=data_dir, db=db, threads=threads,
                       workers=default_workers() if workers is None else workers, decode_process=decode_process)
    for reason in ctx.missing.values():
        print(f"not serving {reason}", file=sys.stderr)
    run_server(ctx, build_app(ctx, mcp=mcp), host=host, port=port, mcp=mcp)


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.checkpoints, host=args.host, port=args.port, device=args.device, batching=args.batching,
          data_dir=args.data_dir, db=args.db, mcp=args.mcp, threads=args.threads, workers=args.workers,
          decode_process=args.decode_process)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``chatbot-arena`` subcommands."""
    p = sub.add_parser("serve", help="serve the app and its APIs: every bot of bots.json side by side, the arena",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m demo_app.serve [flags]`` is ``chatbot-arena serve [flags]``."""
    from core.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
