"""How many earlier turns the seq2seq model should read: the same short training run from the single-turn MLE
model for each conversation window, compared on validation perplexity (the same (window -> reply) pairs, so the
reply tokens scored are the same for every window; only what the model reads differs).

    python bench/context_sweep.py --init runs/mle/best                   # 5 windows x 400 steps, 2 at a time
    python bench/context_sweep.py --init runs/mle/best --steps 100 --only ct0,ct2 --parallel 1

``--init`` is a single-turn MLE model (``make checkpoints`` trains one into ``runs/mle``; the shipped
``checkpoints/mle`` already reads two turns, so it is no fair start). Each window trains ``--steps`` steps with
the window stage's learning rate (5e-4, cosine to 0 with 20 warm-up steps, seed 3) into ``<out>/<window>`` and is
evaluated on the whole validation split at its last step; a finished window is read back, not trained again. The
windows: the message alone (40 tokens, as the single-turn model), 1 earlier turn (the paper's [p_i; q_i]; 64
tokens), 2 (80), 2 with speaker markers (the replier's own turns marked with <s>), 4 (128). Runs in parallel use
one thread each.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOWS: dict[str, list[str]] = {
    "ct0": ["--context-turns", "0", "--max-src-len", "40"],
    "ct1": ["--context-turns", "1", "--max-src-len", "64"],
    "ct2": ["--context-turns", "2", "--max-src-len", "80"],
    "ct2_markers": ["--context-turns", "2", "--max-src-len", "80", "--speaker-markers"],
    "ct4": ["--context-turns", "4", "--max-src-len", "128"],
}


def last_valid_ppl(run: Path) -> float | None:
    """The validation perplexity of the run's last evaluated step (None if it has none yet)."""
    log = run / "log.csv"
    if not log.exists():
        return None
    rows = [r for r in csv.DictReader(log.open()) if r.get("valid_ppl")]
    return float(rows[-1]["valid_ppl"]) if rows else None


def train(name: str, init: Path, out: Path, steps: int, threads: int) -> tuple[str, float | None, float]:
    """Train window ``name`` (resuming a stopped run); returns (name, validation perplexity, seconds)."""
    run = out / name
    cmd = [sys.executable, "-m", "core.cli", "train", "--out", str(run), "--init-from", str(init),
           *WINDOWS[name], "--lr", "5e-4", "--lr-schedule", "cosine", "--warmup-steps", "20",
           "--max-steps", str(steps), "--eval-every", str(steps), "--save-every", "50", "--seed", "3",
           "--threads", str(threads)]
    t0 = time.perf_counter()
    log = (out / f"{name}.log").open("w")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    return name, last_valid_ppl(run), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, required=True, help="a single-turn MLE checkpoint folder (runs/mle/best)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "context_sweep")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--only", default=",".join(WINDOWS), help="comma-separated windows: " + ", ".join(WINDOWS))
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WINDOWS]
    if unknown:
        ap.error(f"unknown windows {unknown}; choose among {list(WINDOWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel > 1 else 0
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(lambda n: train(n, args.init, args.out, args.steps, threads), names))
    print(f"\nvalidation perplexity after {args.steps} steps from {args.init}:\n")
    print("| window | flags | valid ppl | wall s |\n|---|---|---:|---:|")
    for name, ppl, secs in results:
        shown = "-" if ppl is None else f"{ppl:.2f}"
        print(f"| {name} | `{' '.join(WINDOWS[name])}` | {shown} | {secs:.0f} |")


if __name__ == "__main__":
    main()
