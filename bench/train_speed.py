"""Training throughput: the project's teacher-forced step vs the classic per-timestep decoder loop.

The project step is what ``chatbot-arena train`` does: one teacher-forced pass and the fused Adam of
:func:`core.training.train.make_adam`; the loop is the tutorial's, with the default Adam. Both train the same real model
(the shipped size: 2-layer bi-GRU encoder, 2-layer GRU decoder, dot attention, H=E=256, BPE 8000) on the same
chitchat batches, in one process, alternating so both see the same machine load.

    python bench/train_speed.py                 # default: 30 timed steps each, 1 thread
    python bench/train_speed.py --steps 50 --threads 2 --batch-size 64
    python bench/train_speed.py --encoder-merge concat   # both on the H/2-per-direction encoder

It also splits the project step into its parts (encoder forward+backward, decoder RNN + attention, output
projection + softmax, optimizer), timed on the same batches: what the per-timestep loop shares with the project
step (the encoder, the output layer) bounds the ratio between them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.batching import Batch, collate, encode_pairs, make_batches  # noqa: E402
from core.corpora import load_corpus, make_pairs, split_conversations  # noqa: E402
from core.model import ModelConfig, Seq2Seq  # noqa: E402
from core.tokenizer import PAD_ID, train_tokenizer  # noqa: E402
from core.training.train import make_adam, sequence_nll  # noqa: E402


def per_step_loop_nll(model: Seq2Seq, batch: Batch) -> torch.Tensor:
    """The tutorial approach: encode, then one decoder call per target position in a Python loop."""
    mem = model.encode(batch.src, batch.src_lens)
    state, losses = mem.state, []
    for t in range(batch.tgt_in.size(1)):
        logits, state, _ = model.decoder(batch.tgt_in[:, t : t + 1], state, mem)  # (B, 1, V)
        losses.append(F.cross_entropy(logits[:, 0], batch.tgt_out[:, t], ignore_index=PAD_ID, reduction="sum"))
    return torch.stack(losses).sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per method")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--encoder-merge", default="sum", choices=["sum", "concat"],
                    help="the model's encoder: H per direction summed (the shipped models) or H/2 concatenated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    split = split_conversations(load_corpus("chitchat"), seed=1234)
    tok = train_tokenizer([u for c in split.train[:1500] for u in c], vocab_size=args.vocab_size)
    data = encode_pairs(tok, make_pairs(split.train[:1500]))
    batches = [collate(b) for b in make_batches(data, batch_size=args.batch_size, seed=0, epoch=0)]
    batches = batches[: args.steps + args.warmup]
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, emb_dim=args.hidden, hidden=args.hidden,
                      encoder_merge=args.encoder_merge)
    models = {"project step": Seq2Seq(cfg), "per-timestep loop": Seq2Seq(cfg)}
    models["per-timestep loop"].load_state_dict(models["project step"].state_dict())
    opts = {"project step": make_adam(models["project step"].parameters(), 1e-3),  # the project's (fused) Adam
            "per-timestep loop": torch.optim.Adam(models["per-timestep loop"].parameters(), lr=1e-3)}
    tok_s: dict[str, list[float]] = {k: [] for k in models}

    for i, batch in enumerate(batches):
        for name, model in models.items():  # alternate methods step by step: same load for both
            t0 = time.perf_counter()
            if name == "project step":
                nll, n = sequence_nll(model, batch)
            else:
                nll, n = per_step_loop_nll(model, batch), batch.n_tokens
            opts[name].zero_grad()
            (nll / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            if i >= args.warmup:
                tok_s[name].append(n / (time.perf_counter() - t0))

    print(f"model H={args.hidden}, encoder {args.encoder_merge}, V={tok.vocab_size}, batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.steps} timed steps each")
    ref = statistics.median(tok_s["per-timestep loop"])
    for name, values in tok_s.items():
        med = statistics.median(values)
        print(f"{name:>18}: {med:8.0f} target tokens/s (median)   x{med / ref:.2f} vs per-timestep loop")
    parts = step_parts(models["project step"], opts["project step"], batches[args.warmup:])
    total = sum(parts.values())
    print("project step by part (median ms): " + ", ".join(
        f"{k} {v * 1000:.0f} ({v / total:.0%})" for k, v in parts.items()))


def step_parts(model: Seq2Seq, opt: torch.optim.Optimizer, batches: list[Batch]) -> dict[str, float]:
    """Median seconds of each part of a teacher-forced training step. Each part's backward is timed with it:
    the gradient flowing into a part is stood in for by a detached leaf, so parts do not overlap."""
    times: dict[str, list[float]] = {"encoder": [], "decoder rnn+attention": [], "output+softmax": [],
                                     "optimizer": []}
    for batch in batches:
        t0 = time.perf_counter()
        mem = model.encode(batch.src, batch.src_lens)
        enc_out = [mem.outputs, mem.state]
        leaves = [t.detach().requires_grad_() for t in enc_out]
        t1 = time.perf_counter()
        hidden, _, _ = model.decoder.features(batch.tgt_in, leaves[1], mem._replace(outputs=leaves[0]))
        hidden = model.decoder.drop(hidden)
        h_leaf = hidden.detach().requires_grad_()
        t2 = time.perf_counter()
        logits = model.decoder.out(h_leaf)  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                              reduction="sum") / batch.n_tokens
        opt.zero_grad()
        nll.backward()
        t3 = time.perf_counter()
        hidden.backward(h_leaf.grad)
        t4 = time.perf_counter()
        torch.autograd.backward(enc_out, [leaf.grad for leaf in leaves])
        t5 = time.perf_counter()
        opt.step()
        t6 = time.perf_counter()
        times["encoder"].append((t1 - t0) + (t5 - t4))
        times["decoder rnn+attention"].append((t2 - t1) + (t4 - t3))
        times["output+softmax"].append(t3 - t2)
        times["optimizer"].append(t6 - t5)
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
