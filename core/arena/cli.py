"""``chatbot-arena votes export|import`` and ``chatbot-arena leaderboard``: the vote store from the command line.

    chatbot-arena votes export --format jsonl --out votes.jsonl      # FastChat clean-battle records
    chatbot-arena votes export --format csv > votes.csv
    chatbot-arena votes import clean_battle_20240814_public.json     # FastChat's logs (any model names)
    chatbot-arena leaderboard                                        # markdown table of the stored votes
    chatbot-arena leaderboard --votes votes.jsonl --bootstrap 1000 --format json
    chatbot-arena leaderboard --db postgresql+psycopg://arena@db.internal/arena --format csv
    chatbot-arena leaderboard --category dialogue --style-control     # whole-dialogue votes, style controlled

Categories (``--category``): all, single_turn (single-turn battles), multi_turn (battles of 3+ turns), per_turn
(per-turn votes), dialogue (whole-dialogue votes). ``--style-control`` fits reply length and the share of replies
ending with a question as covariates and shows both rankings; ``--min-votes`` marks bots with fewer votes in the
category as provisional.

The store: ``--db URL`` (or $ARENA_DB_URL), else the SQLite file ``arena.sqlite3`` in ``--data-dir`` (default
``/data`` when it exists, else ``./arena_data``).
"""

from __future__ import annotations

import argparse
import sys

from core.arena.interchange import FORMATS, import_votes, read_votes, votes_with_style, write_votes
from core.arena.leaderboard import CATEGORIES, MIN_VOTES, compute_leaderboard
from core.arena.store import ArenaStore, resolve_db_url

EXAMPLES = {
    "votes": """examples:
  chatbot-arena votes export --format jsonl --out votes.jsonl
  chatbot-arena votes export --format csv > votes.csv
  chatbot-arena votes import clean_battle.jsonl                   # FastChat's format; any model names
  chatbot-arena votes import votes.jsonl --db postgresql+psycopg://arena@db.internal/arena""",
    "leaderboard": """examples:
  chatbot-arena leaderboard                                       # the stored votes, as a markdown table
  chatbot-arena leaderboard --votes clean_battle.jsonl --format json
  chatbot-arena leaderboard --bootstrap 200 --seed 1 --format csv
  chatbot-arena leaderboard --category dialogue --style-control   # whole-dialogue votes, both rankings
  chatbot-arena leaderboard --category multi_turn --min-votes 50  # battles of 3+ turns""",
}


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="database URL: sqlite:///file.sqlite3 or "
                                              "postgresql+psycopg://user@host/dbname (default: $ARENA_DB_URL)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the SQLite store when no --db is given (default: /data if it exists, "
                        "else ./arena_data)")


def _open(args: argparse.Namespace) -> ArenaStore:
    return ArenaStore(resolve_db_url(args.db, args.data_dir))


def _cmd_export(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        n = write_votes(store, args.out or sys.stdout, fmt=args.format)
    finally:
        store.close()
    if args.out:
        print(f"wrote {n} votes to {args.out}", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        added, skipped = import_votes(store, args.file)
    finally:
        store.close()
    print(f"imported {added} battles from {args.file} into {store.display_url} "
          f"({skipped} already there or repeated in the file)", file=sys.stderr)
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.min_votes < 0:
        raise ValueError(f"--min-votes must be >= 0, got {args.min_votes}")
    if args.votes:
        votes = read_votes(args.votes)
    else:
        store = _open(args)
        try:  # the replies' style is read only when it is needed (it reads every turn)
            votes = votes_with_style(store) if args.style_control else store.votes_frame()
        finally:
            store.close()
    board = compute_leaderboard(votes, bootstrap=args.bootstrap, seed=args.seed, category=args.category,
                                style_control=args.style_control, min_votes=args.min_votes)
    out = {"md": board.to_markdown, "csv": board.to_csv, "json": board.to_json}[args.format]()
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if args.format != "md":
        print(board.note, file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``votes`` (export, import) and ``leaderboard`` to the ``chatbot-arena`` command line."""
    fmt = argparse.RawDescriptionHelpFormatter
    votes = subparsers.add_parser("votes", help="export or import arena votes (FastChat clean-battle format)",
                                  epilog=EXAMPLES["votes"], formatter_class=fmt)
    sub = votes.add_subparsers(dest="votes_command", required=True, metavar="{export,import}")
    p = sub.add_parser("export", help="write every vote as JSON Lines or CSV", formatter_class=fmt,
                       epilog=EXAMPLES["votes"])
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or csv")
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    add_store_args(p)
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("import", help="add the votes of a clean-battle JSON Lines file (same ids: skipped)",
                       formatter_class=fmt, epilog=EXAMPLES["votes"])
    p.add_argument("file", help="JSON Lines, one clean-battle record per line (or FastChat's JSON array)")
    add_store_args(p)
    p.set_defaults(func=_cmd_import)

    p = subparsers.add_parser("leaderboard", help="Bradley–Terry ratings with 95%% bootstrap intervals",
                              epilog=EXAMPLES["leaderboard"], formatter_class=fmt)
    p.add_argument("--votes", default=None, help="read the votes from this clean-battle file instead of the store")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals "
                                                                "(default: %(default)s; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md", help="output format (default: md)")
    p.add_argument("--category", choices=list(CATEGORIES), default="all",
                   help="which votes: " + ", ".join(f"{k} ({v[0]})" for k, v in CATEGORIES.items())
                   + " (default: %(default)s)")
    p.add_argument("--style-control", action="store_true",
                   help="also fit reply length and the share of replies ending with a question as covariates "
                        "(Chatbot Arena's style control); ranks by the style-controlled rating, shows both")
    p.add_argument("--min-votes", type=int, default=MIN_VOTES,
                   help="bots with fewer votes in the category are marked provisional (default: %(default)s)")
    add_store_args(p)
    p.set_defaults(func=_cmd_leaderboard)
