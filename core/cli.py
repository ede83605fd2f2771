"""The ``chatbot-arena`` command line.

    chatbot-arena train --out runs/mle                      # MLE seq2seq on chitchat (resumes if interrupted)
    chatbot-arena train --task reverse --out runs/rev       # synthetic sanity task
    chatbot-arena --help                                    # every subcommand, each with its own --help
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable

EXAMPLES = {
    "train": """examples:
  chatbot-arena train --out runs/mle                                   # seq2seq on chitchat
  chatbot-arena train --kind lm --tokenizer runs/mle/tokenizer.json --out runs/lm
  chatbot-arena train --kind backward --tokenizer runs/mle/tokenizer.json --out runs/backward
  chatbot-arena train --corpus pairs.tsv --corpus-format tsv --out runs/mine
  chatbot-arena train --task reverse --out runs/reverse --max-minutes 1
  torchrun --nproc_per_node 2 -m core.cli train --out runs/ddp          # DistributedDataParallel
Run the same command again to resume from <out>/last.""",
}


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field, with the field's help text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_text = f.metadata.get("help", "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        parser.add_argument(flag, type=typ, default=f.default, help=f"{help_text} (default: %(default)s)")


def _cmd_train(args: argparse.Namespace) -> int:
    from core.train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    summary = train(cfg)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.train import TrainConfig

    parser = argparse.ArgumentParser(prog="chatbot-arena", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train", help="train a seq2seq, backward or language model (MLE)",
                       epilog=EXAMPLES["train"], formatter_class=fmt)
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chatbot-arena`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
