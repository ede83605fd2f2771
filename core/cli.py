"""The ``chatbot-arena`` command line.

    chatbot-arena train --out runs/mle                      # MLE seq2seq on chitchat (resumes if interrupted)
    chatbot-arena train --task reverse --out runs/rev       # synthetic sanity task
    chatbot-arena train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl
    chatbot-arena export runs/mle checkpoints/mle           # fp16 + model card, ready to ship
    chatbot-arena evaluate                                  # the evaluation table of the shipped bots
    chatbot-arena chat --bot antilm                         # talk to a bot in the terminal (/reset: start over)
    chatbot-arena respond --file prompts.txt --format csv   # one reply per line, every bot
    chatbot-arena respond --file chats.jsonl                # one reply per conversation (JSON lines)
    chatbot-arena serve                                     # the app (installed with the app extra)
    chatbot-arena --help                                    # every subcommand, each with its own --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

EXAMPLES = {
    "train": """examples:
  chatbot-arena train --out runs/mle                                   # seq2seq on chitchat
  chatbot-arena train --kind lm --tokenizer runs/mle/tokenizer.json --out runs/lm
  chatbot-arena train --kind backward --tokenizer runs/mle/tokenizer.json --out runs/backward
  chatbot-arena train --corpus pairs.tsv --corpus-format tsv --out runs/mine
  chatbot-arena train --task reverse --out runs/reverse --max-minutes 1
  torchrun --nproc_per_node 2 -m core.cli train --out runs/ddp          # DistributedDataParallel
Run the same command again to resume from <out>/last.""",
    "train-rl": """examples:
  chatbot-arena train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl
  chatbot-arena train-rl --steps 200 --batch-size 16 --max-minutes 30 --out runs/rl-short
Run the same command again to resume from <out>/last.""",
    "export": """examples:
  chatbot-arena export runs/mle checkpoints/mle              # best/ of the run, fp16, with MODEL_CARD.md
  chatbot-arena export runs/rl checkpoints/rl --which best""",
    "evaluate": """examples:
  chatbot-arena evaluate                                     # shipped bots -> checkpoints/report.csv and .md
  chatbot-arena evaluate --bots beam,antilm --n-prompts 100 --out runs/eval.csv
  chatbot-arena evaluate --checkpoints runs/compare          # any folder with a bots.json""",
    "tune": """examples:
  chatbot-arena tune                                         # grid over the anti-LM bot on the validation split
  chatbot-arena tune --write                                 # ... and store the winner in bots.json
  chatbot-arena tune --checkpoints runs/compare --bot antilm --n-prompts 100 --max-logp-drop 0.3""",
    "chat": """examples:
  chatbot-arena chat                                         # the beam bot of the shipped checkpoints
  chatbot-arena chat --bot antilm --antilm 0.3 --gamma 4
  chatbot-arena chat --checkpoint runs/mle/best --strategy greedy
Type a message and press Enter. The bot answers after the conversation so far (your messages and its replies;
it reads its last context_turns of them). /reset starts a new conversation; an empty line or Ctrl-D quits.""",
    "respond": """examples:
  chatbot-arena respond --file prompts.txt                   # CSV: prompt, bot, reply, score, latency_ms
  chatbot-arena respond --file prompts.txt --bots beam,rl --format json > replies.json
  chatbot-arena respond --file prompts.txt --checkpoint runs/mle/best --beam-size 5
  chatbot-arena respond --file chats.jsonl --format json     # one reply per conversation
  chatbot-arena respond --file chats.txt --input jsonl       # JSON lines whatever the file is called
Input: a plain file is one prompt per line, each answered alone (blank lines skipped). A .jsonl file (or
--input jsonl) is one conversation per line, a JSON object with "message" (the turn answered) and optional
"history" (the turns before it, oldest first, the bot's own replies included; at most 64 of at most 4000
characters), e.g.
  {"history": ["want to go hiking?", "no"], "message": "why not?"}
Its rows add "line" (the line number in the file) and "history" (in CSV a JSON list). A bad line is an error
naming its line number and field.""",
}


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                       only_given: bool = False, exclude: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field (but those in ``exclude``), with the field's help text and default.
    ``only_given``: flags the user did not type are left out of the namespace (for overrides of another set of
    defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_text = f.metadata.get("help", "")
        default = argparse.SUPPRESS if only_given else f.default
        shown = "" if only_given else " (default: %(default)s)"
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        parser.add_argument(flag, type=typ, default=default, help=f"{help_text}{shown}")


def _from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _cmd_train(args: argparse.Namespace) -> int:
    from core.training.train import TrainConfig, train

    summary = train(TrainConfig.from_dict(vars(args)))  # the model's flags (--hidden ...) go into cfg.model
    print(summary)
    return 130 if summary["interrupted"] else 0


def _cmd_train_rl(args: argparse.Namespace) -> int:
    from core.training.rl import RLConfig, train_rl

    summary = train_rl(_from_args(RLConfig, args))
    print(summary)
    return 130 if summary["interrupted"] else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from core.export import export_run

    print(f"wrote {export_run(args.run, args.dest, which=args.which, notes=args.notes)}")
    return 0


def _decoder_overrides(args: argparse.Namespace) -> dict:
    from core.decoding import DecodeConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig) if hasattr(args, f.name)}


def _pick_bots(args: argparse.Namespace, default: list[str] | None) -> dict:
    """Bots named by --bots/--bot from --checkpoints, or one bot made from --checkpoint."""
    from core.bots import bot_from_checkpoint, load_bots, missing_bots

    if getattr(args, "checkpoint", None):
        bot = bot_from_checkpoint(args.checkpoint, device=args.device)
        return {bot.name: bot}
    bots = load_bots(args.checkpoints, device=args.device, skip_missing=True)
    missing = missing_bots(args.checkpoints)
    names = args.bots.split(",") if getattr(args, "bots", None) else default or list(bots)
    for name in names:
        if name in missing:
            raise ValueError(f"bot {name!r} is not available: {missing[name]}")
        if name not in bots:
            raise ValueError(f"unknown bot {name!r}; this folder has {list(bots) + list(missing)}")
    if not getattr(args, "bots", None) and default is None and missing:
        print(f"(skipping bots without checkpoints: {', '.join(missing)})", file=sys.stderr)
    return {n: bots[n] for n in names}


RESET = "/reset"  # the chat command that starts a new conversation


def _cmd_chat(args: argparse.Namespace) -> int:
    """``chatbot-arena chat --bot antilm``: a conversation in the terminal; each message is answered after the
    earlier turns (the user's and the bot's, the last ``context_turns`` kept); ``/reset`` starts over."""
    bot = next(iter(_pick_bots(args, [args.bot]).values()))
    overrides = _decoder_overrides(args)
    bot.settings(**overrides)  # bad settings fail here, before the first prompt
    keep = max(0, bot.context_turns)  # the bot reads no more than this many earlier turns
    print(f"{bot.label}: {bot.description}\n(reads the last {keep} turns with each message; {RESET} starts a new "
          "conversation; empty line or Ctrl-D to quit)")
    history: list[str] = []
    while True:
        try:
            prompt = input("you> ")
        except EOFError:
            break
        if not prompt.strip():
            break
        if prompt.strip() == RESET:
            history = []
            print("(new conversation: the earlier turns are forgotten)")
            continue
        try:
            reply = bot.respond(prompt, history=history, **overrides)
        except ValueError as e:
            print(f"({e})")
            continue
        history = [*history, prompt, reply.text][-keep:] if keep else []
        print(f"{bot.name}> {reply.text}    [score {reply.score:.2f}, {1000 * reply.latency_s:.0f} ms]")
    return 0


class Conversation(NamedTuple):
    """One line of a conversations file: its line number, the earlier turns (oldest first), the message."""

    line: int
    history: list[str]
    message: str


CONVERSATION_FIELDS = ("history", "message")


def read_conversations(data: bytes | str, *, source: str = "input") -> list[Conversation]:
    """Conversations from JSON lines, one object a line: ``{"history": ["...", "..."], "message": "..."}``
    (``history`` optional). Blank lines are skipped; bytes are decoded as UTF-8 (bad bytes replaced). A bad line
    is a ValueError naming ``source``, the line number and the field:

        >>> read_conversations('{"history": ["hi", "hello"], "message": "how are you?"}')
        [Conversation(line=1, history=['hi', 'hello'], message='how are you?')]
        >>> read_conversations('{"message": 3}', source="chats.jsonl")
        Traceback (most recent call last):
        ValueError: chats.jsonl line 1: message must be a string, got int
    """
    from core.context import check_history
    from core.corpora import MAX_PROMPTS, normalize_text

    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    out: list[Conversation] = []
    for n, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):  # JSON strings hold no raw \n
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f'{where}: expected an object like {{"history": ["..."], "message": "..."}}, got '
                             f"{type(obj).__name__}")
        unknown = [k for k in obj if k not in CONVERSATION_FIELDS]
        if unknown:
            raise ValueError(f'{where}: unknown field {unknown[0]!r} (the fields are "message" and optionally '
                             f'"history")')
        if "message" not in obj:
            raise ValueError(f"{where}: message is missing")
        message = obj["message"]
        if not isinstance(message, str):
            raise ValueError(f"{where}: message must be a string, got {type(message).__name__}")
        if not normalize_text(message):
            raise ValueError(f"{where}: message is empty (nothing left after removing whitespace and control "
                             "characters)")
        try:
            history = check_history(obj.get("history"), field="history")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append(Conversation(n, history, message))
        if len(out) > MAX_PROMPTS:
            raise ValueError(f"{source}: more than {MAX_PROMPTS} conversations; at most {MAX_PROMPTS} at a time")
    return out


def _cmd_respond(args: argparse.Namespace) -> int:
    """``chatbot-arena respond --file prompts.txt`` (one prompt a line, each answered alone) or ``--file
    chats.jsonl`` (one conversation a line, see :func:`read_conversations`): a row per input and bot."""
    import pandas as pd

    from core.corpora import read_prompts

    path = Path(args.file)
    jsonl = args.input == "jsonl" or (args.input == "auto" and path.suffix.lower() == ".jsonl")
    data = path.read_bytes()
    convs = read_conversations(data, source=path.name) if jsonl else None
    prompts = [c.message for c in convs] if convs is not None else read_prompts(data)
    histories = [c.history for c in convs] if convs is not None else None
    bots = _pick_bots(args, None)
    overrides = _decoder_overrides(args)
    rows = []
    for name, bot in bots.items():
        bot.settings(**overrides)  # a bad setting is named before any line is blamed
        for c in convs or []:  # a line the bot cannot read is named before anything is decoded
            try:
                bot.encode_prompt(c.message, c.history)
            except ValueError as e:
                raise ValueError(f"{path.name} line {c.line}: {e}") from None
        for i, reply in enumerate(bot.respond_batch(prompts, histories=histories, **overrides)):
            data = reply.to_json(digits=4)  # the one JSON form of a reply: a -inf score is null (an empty cell)
            row = {"prompt": prompts[i], "bot": name, "reply": data["text"], "score": data["score"],
                   "latency_ms": round(1000 * reply.latency_s, 1)}
            if convs is not None:
                turns = convs[i].history
                row = {"line": convs[i].line, "prompt": prompts[i],
                       "history": turns if args.format == "json" else json.dumps(turns, ensure_ascii=False),
                       **{k: v for k, v in row.items() if k != "prompt"}}
            rows.append(row)
    if args.format == "json":
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        print(pd.DataFrame(rows).to_csv(index=False), end="")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from core.bots import default_checkpoint_dir
    from core.evaluation.evaluate import load_split_for, to_markdown
    from core.evaluation.tune import tune_antilm, write_bot_defaults
    from core.training.rewards import dull_list

    bot = next(iter(_pick_bots(args, [args.bot]).values()))
    split = load_split_for(bot)
    chosen, df = tune_antilm(bot, split, n_prompts=args.n_prompts, max_logp_drop=args.max_logp_drop,
                             max_worst_drop=args.max_worst_drop, max_rare_increase=args.max_rare_increase,
                             max_unknown_increase=args.max_unknown_increase, max_dull_rate=args.max_dull_rate,
                             dull=dull_list(split.train))
    print(to_markdown(df.round(4)))
    print(f"\nchosen for {bot.name}: {chosen}")
    if args.write:
        bots_json = Path(args.checkpoints or default_checkpoint_dir()) / "bots.json"
        write_bot_defaults(bots_json, bot.name, chosen)
        print(f"wrote {bots_json}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from core.bots import default_checkpoint_dir
    from core.evaluation.evaluate import evaluate_bots, load_split_for, to_markdown, write_report
    from core.training.rewards import dull_list

    bots = _pick_bots(args, None)
    split = load_split_for(next(iter(bots.values())))
    if args.split == "valid":  # for choosing settings; the reported table always uses the test split
        split = dataclasses.replace(split, test=split.valid)
    df = evaluate_bots(bots, split, n_prompts=args.n_prompts, n_dialogues=args.n_dialogues,
                       dull=dull_list(split.train), seed=args.seed)
    if args.out:
        out = Path(args.out)
    elif args.checkpoint:  # one checkpoint: the report goes beside it, never over the shipped one
        out = Path(args.checkpoint) / "report.csv"
    else:
        out = Path(args.checkpoints or default_checkpoint_dir()) / "report.csv"
    write_report(df, out)
    print(to_markdown(df))
    print(f"\nwrote {out} and {Path(out).with_suffix('.md')}")
    return 0

def build_parser() -> argparse.ArgumentParser:
    from core.model import ModelConfig
    from core.training.train import TrainConfig

    parser = argparse.ArgumentParser(prog="chatbot-arena", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train", help="train a seq2seq, backward or language model (MLE)",
                       epilog=EXAMPLES["train"], formatter_class=fmt)
    add_dataclass_args(p, TrainConfig, exclude=("model",))
    add_dataclass_args(p.add_argument_group("model (TrainConfig.model)"), ModelConfig,
                       exclude=("vocab_size", "kind"))
    p.set_defaults(func=_cmd_train)

    from core.decoding import DecodeConfig
    from core.training.rl import RLConfig

    p = sub.add_parser("train-rl", help="RL fine-tuning by self-play from an MLE checkpoint",
                       epilog=EXAMPLES["train-rl"], formatter_class=fmt)
    add_dataclass_args(p, RLConfig)
    p.set_defaults(func=_cmd_train_rl)

    p = sub.add_parser("export", help="ship a run's checkpoint: fp16 weights, training log, model card",
                       epilog=EXAMPLES["export"], formatter_class=fmt)
    p.add_argument("run", help="run folder (with best/, last/, log.csv)")
    p.add_argument("dest", help="destination folder, e.g. checkpoints/mle")
    p.add_argument("--which", default="best", choices=["best", "last"], help="which checkpoint of the run")
    p.add_argument("--notes", default="", help="extra Markdown for the model card's known weaknesses")
    p.set_defaults(func=_cmd_export)

    def bot_args(p: argparse.ArgumentParser, *, many: bool) -> None:
        p.add_argument("--checkpoints", default=None, help="folder with bots.json (default: the shipped one)")
        p.add_argument("--checkpoint", default=None, help="one checkpoint folder instead of bots.json")
        if many:
            p.add_argument("--bots", default=None, help="comma-separated bot names (default: all)")
        else:
            p.add_argument("--bot", default="beam", help="bot name in bots.json (default: beam)")
        p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")

    p = sub.add_parser("evaluate", help="evaluation table: perplexity, distinct-1/2, dull rate, BLEU, "
                       "simulated dialogues, latency", epilog=EXAMPLES["evaluate"], formatter_class=fmt)
    bot_args(p, many=True)
    p.add_argument("--n-prompts", type=int, default=300, help="test prompts sampled (seeded)")
    p.add_argument("--n-dialogues", type=int, default=100, help="simulated dialogues from test openings")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the test prompts")
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="held-out split to evaluate on (valid: for choosing settings without touching test)")
    p.add_argument("--out", default=None, help="CSV path (default: <checkpoints>/report.csv); .md beside it")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("tune", help="choose the anti-LM bot's antilm, gamma, n_bonus on the validation split",
                       epilog=EXAMPLES["tune"], formatter_class=fmt)
    bot_args(p, many=False)
    p.set_defaults(bot="antilm")
    p.add_argument("--n-prompts", type=int, default=200, help="validation prompts sampled (seeded)")
    p.add_argument("--max-logp-drop", type=float, default=0.5,
                   help="largest allowed drop of mean per-token log p(T|S) vs plain beam, in nats")
    p.add_argument("--max-worst-drop", type=float, default=1.0,
                   help="largest allowed drop of the least likely token's log p vs plain beam, in nats")
    p.add_argument("--max-rare-increase", type=float, default=0.05,
                   help="largest allowed rise of the share of replies with a token below -8 nats vs plain beam")
    p.add_argument("--max-unknown-increase", type=float, default=0.02,
                   help="largest allowed rise of the share of replies with a word never seen in the training split "
                        "vs plain beam")
    p.add_argument("--max-dull-rate", type=float, default=0.10,
                   help="largest allowed share of dull replies (\"i don't know\"), whatever plain beam's is, with 95%% "
                        "confidence over the sampled prompts")
    p.add_argument("--write", action="store_true", help="write the chosen settings into bots.json")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("chat", help="talk to one bot in the terminal", epilog=EXAMPLES["chat"],
                       formatter_class=fmt)
    bot_args(p, many=False)
    add_dataclass_args(p, DecodeConfig, only_given=True)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("respond", help="one reply per input line (a prompt, or a conversation as JSON), as CSV or "
                       "JSON", epilog=EXAMPLES["respond"],
                       formatter_class=fmt)
    bot_args(p, many=True)
    p.add_argument("--file", required=True, help="text file, one prompt per line (blank lines skipped), or a .jsonl "
                   'file, one conversation per line: {"history": [...], "message": "..."}')
    p.add_argument("--input", choices=["auto", "lines", "jsonl"], default="auto",
                   help="how --file is read: auto (jsonl when it ends in .jsonl, else lines), lines or jsonl "
                   "(default: auto)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="output format (default: csv)")
    add_dataclass_args(p, DecodeConfig, only_given=True)
    p.set_defaults(func=_cmd_respond)

    for register in command_plugins():
        register(sub)
    return parser


# Subcommands that live in their own modules: each module has ``register(subparsers)``. Packages outside core
# (the Gradio app's ``serve``) add theirs through the ``chatbot_arena.commands`` entry-point group of their
# pyproject, so core never imports them.
CORE_COMMAND_MODULES: tuple[str, ...] = ("core.training.pipeline", "core.arena.cli")
ENTRY_POINT_GROUP = "chatbot_arena.commands"


def command_plugins() -> list[Callable[[argparse._SubParsersAction], None]]:
    """The ``register(subparsers)`` functions of the core command modules, then of the installed entry points
    (a plugin that fails to import is reported on stderr and left out, so the other commands still work)."""
    import importlib
    from importlib.metadata import entry_points

    found = [importlib.import_module(m).register for m in CORE_COMMAND_MODULES]
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except ImportError as e:  # e.g. the app extra is not installed
            print(f"(chatbot-arena {ep.name} is not available: {e})", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chatbot-arena`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from core.checkpoint import CheckpointError
    from core.corpora import CorpusError

    try:
        return func(args)
    except (ValueError, FileNotFoundError, CheckpointError, CorpusError) as e:
        print(f"chatbot-arena {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
