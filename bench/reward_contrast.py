"""What do the RL rewards prefer? Dull vs non-dull replies to the *same* opening message, per reward.

    python bench/reward_contrast.py                         # the shipped checkpoints/mle + checkpoints/backward
    python bench/reward_contrast.py --policy runs/mle/best --backward runs/backward/best --temperature 1.0

For each of ``--n-openings`` validation openings, the policy samples ``--group`` replies (and its greedy reply);
every reply is scored with r1 (ease of answering), the two halves of r3 (forward log p(a|q), backward
log p(q|a), each per token) and the combination 0.25 r1 + 0.5 r3 (r2 needs an agent's previous turn; see
core/training/rl.py). The table gives, per reward, the mean of (dull - non-dull) *within* an opening, over the openings
that got both kinds, next to the same difference across all replies (what a single global baseline sees). A
positive within-opening difference means the reward pushes a policy toward dull replies. This measurement is
why RL uses a per-opening group baseline and standardised rewards (NOTES.md).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.checkpoint import load_checkpoint, read_config  # noqa: E402
from core.corpora import opening_messages  # noqa: E402
from core.decoding import DecodeConfig, generate, sequence_logprobs  # noqa: E402
from core.evaluation.metrics import normalize_reply  # noqa: E402
from core.tokenizer import EOS_ID  # noqa: E402
from core.training.rewards import dull_list, ease_of_answering  # noqa: E402
from core.training.train import TrainConfig, prepare_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=str(REPO / "checkpoints" / "mle"), help="policy checkpoint folder")
    p.add_argument("--backward", default=str(REPO / "checkpoints" / "backward"), help="backward model folder")
    p.add_argument("--n-openings", type=int, default=48)
    p.add_argument("--group", type=int, default=6, help="sampled replies per opening")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    fwd, tok, _ = load_checkpoint(args.policy)
    bwd, _, _ = load_checkpoint(args.backward)
    train_cfg = read_config(args.policy)["meta"]["train"]
    data = prepare_data(TrainConfig.from_dict({**train_cfg, "tokenizer": str(Path(args.policy) / "tokenizer.json")}))
    dull_texts = dull_list(data.split.train, top=10)
    dull_set, dull = set(dull_texts), [tok.encode(s) for s in dull_texts]
    openings = [o[-train_cfg.get("max_src_len", 40):] for o in tok.encode_batch(opening_messages(data.split.valid))
                if o]
    random.Random(0).shuffle(openings)
    openings = openings[: args.n_openings]
    G = args.group
    queries = [o for o in openings for _ in range(G)]
    with torch.no_grad():
        sampled = generate(fwd, queries, DecodeConfig(strategy="sample", beam_size=1, nbest=1, max_len=20, min_len=1,
                                                      temperature=args.temperature, seed=1))
        greedy = generate(fwd, openings, DecodeConfig(strategy="greedy", max_len=20, min_len=1))
        replies = [[t for t in r.tokens if t != EOS_ID] or [EOS_ID] for r in sampled + greedy]
        qs = queries + openings
        r1 = ease_of_answering(fwd, replies, dull)
        forward = sequence_logprobs(fwd, qs, replies, mean=True)
        backward = sequence_logprobs(bwd, replies, qs, mean=True)
    is_dull = torch.tensor([normalize_reply(tok.decode(r)) in dull_set for r in replies])
    rows = []
    for name, v in [("r1", r1), ("r3 forward", forward), ("r3 backward", backward), ("r3", forward + backward),
                    ("0.25 r1 + 0.5 r3", 0.25 * r1 + 0.5 * (forward + backward))]:
        diffs = []
        for i in range(len(openings)):
            idx = range(i * G, i * G + G)
            d, n = [float(v[j]) for j in idx if is_dull[j]], [float(v[j]) for j in idx if not is_dull[j]]
            if d and n:
                diffs.append(sum(d) / len(d) - sum(n) / len(n))
        rows.append({"reward": name, "within_opening_dull_minus_other": round(sum(diffs) / max(1, len(diffs)), 3),
                     "openings_with_both": len(diffs),
                     "global_dull_minus_other": round(float(v[is_dull].mean() - v[~is_dull].mean()), 3),
                     "std": round(float(v.std()), 3)})
    n = len(queries)
    print(f"dull share: sampled {float(is_dull[:n].float().mean()):.2f}, greedy {float(is_dull[n:].float().mean()):.2f}"
          f" (temperature {args.temperature}, {len(openings)} openings x {G}); {time.time() - t0:.0f} s")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
