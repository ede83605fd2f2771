"""Sampled softmax vs full softmax on a 32k-token vocabulary: step time and exact validation perplexity after the
same wall time of training (same model, data order and seed; one arm after the other in this process).

    python bench/sampled_softmax.py                          # 32k BPE on chitchat's training split, 2.5 min per arm
    python bench/sampled_softmax.py --minutes 1 --n-sampled 1024 --proposal uniform

The 32k tokenizer is trained once with core.tokenizer on the training split and kept in ``--work``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from core.corpora import load_corpus, split_conversations
from core.evaluation.evaluate import to_markdown
from core.model import ModelConfig
from core.tokenizer import train_tokenizer
from core.training.runs import set_threads
from core.training.train import TrainConfig, train


def tokenizer_32k(work: Path, vocab: int, split_seed: int) -> Path:
    """``work/tokenizer_<vocab>.json``, trained on chitchat's training split the first time."""
    path = work / f"tokenizer_{vocab}.json"
    if not path.exists():
        split = split_conversations(load_corpus("chitchat"), seed=split_seed)
        work.mkdir(parents=True, exist_ok=True)
        train_tokenizer([u for conv in split.train for u in conv], vocab_size=vocab).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000, help="BPE vocabulary size")
    ap.add_argument("--minutes", type=float, default=2.5, help="training wall time per arm")
    ap.add_argument("--n-sampled", type=int, default=2048, help="negative classes per batch of the sampled arm")
    ap.add_argument("--proposal", default="unigram", choices=["unigram", "uniform"], help="negatives' proposal")
    ap.add_argument("--hidden", type=int, default=128, help="embedding and hidden size of the small model")
    ap.add_argument("--valid-batches", type=int, default=20, help="validation batches of 128 pairs (exact ppl)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--work", default="runs/bench_sampled_softmax", help="where the 32k tokenizer is kept")
    args = ap.parse_args()
    set_threads(args.threads)
    tok = tokenizer_32k(Path(args.work), args.vocab, TrainConfig().split_seed)
    model = ModelConfig(emb_dim=args.hidden, hidden=args.hidden, enc_layers=1, dec_layers=1, dropout=0.1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("full softmax", 0), (f"sampled {args.n_sampled} ({args.proposal})", args.n_sampled)):
            cfg = TrainConfig(out=str(Path(tmp) / f"arm{n}"), tokenizer=str(tok), model=model, max_minutes=args.minutes,
                              eval_every=10**9, save_every=10**9, valid_max_batches=args.valid_batches,
                              threads=args.threads, progress=False, sampled_softmax=n,
                              sampled_proposal=args.proposal)
            s = train(cfg)
            rows.append({"arm": name, "vocab": args.vocab, "steps": s["step"],
                         "ms_per_step": round(1000 * s["train_seconds"] / max(1, s["step"]), 1),
                         "valid_ppl_exact": round(s["best_valid_ppl"], 2)})
    df = pd.DataFrame(rows)
    df["step_speedup"] = (df["ms_per_step"].iloc[0] / df["ms_per_step"]).round(2)
    print(to_markdown(df))


if __name__ == "__main__":
    main()
