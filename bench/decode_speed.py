"""Decoding latency: greedy, beam K=10, beam K=10 + anti-LM, every other strategy of the registry (diverse beam,
contrastive, sampling with typical-p / min-p, delayed beam, beam with repetition and length penalties), beam with
the search trace on, and a beam search that loops over hypotheses.

    python bench/decode_speed.py                         # 1 thread, 20 tokens per reply, 30 timed rounds
    python bench/decode_speed.py --threads 2 --steps 30 --rounds 50 --device cpu

The model is ``checkpoints/mle`` (and ``checkpoints/lm``) when they exist, else a random-init model of the
shipped size: E = H = 256, 2 + 2 GRU layers, V = 8000. Every strategy decodes exactly ``--steps`` tokens
(min_len = max_len, so </s> never shortens one of them) for the same prompt, batch 1. The strategies run
round-robin, so background load hits them alike, and the table gives the median (p50) latency of one reply.
Targets: beam <= 2x greedy, anti-LM <= 1.4x beam; the per-hypothesis reference is reported as measured; each
other strategy is reported next to beam ("vs beam"), and trace on against trace off on the same beam search. Two
model-only rows (encoder + the same decoder steps on 1 and on K rows, no search; like the engine, the first step
runs on one row) give the floor of beam / greedy that the model itself sets on this machine: the ratio if the search
itself cost nothing. Conversations: greedy, beam and anti-LM answer the same message after a conversation that
fills the model's window (its context_turns earlier turns, at least 2, cut to its max_src_len tokens): target
<= 1.5x the same decoder's reply to the message alone (p50).
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bots import load_model  # noqa: E402
from core.checkpoint import read_config  # noqa: E402
from core.context import window_ids, window_of  # noqa: E402
from core.decoding import DecodeConfig, generate, tile_memory  # noqa: E402
from core.model import (  # noqa: E402
    LanguageModel,
    ModelConfig,
    Seq2Seq,
    pick_device,  # noqa: E402
)
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
PROMPT = "hey, how are you doing today? did you do anything fun this weekend?"
HISTORY = ["i went hiking in the mountains with my brother, it was cold but the views were amazing",
           "that sounds great! i stayed home and watched movies all weekend, i needed the rest",
           "what movies did you watch? i have been looking for something good to see lately",
           "mostly old comedies, nothing new. i love the ones from the nineties, they make me laugh every time"]


def build_models(device: torch.device, vocab: int) -> tuple[Seq2Seq, LanguageModel, list[int], list[int], str]:
    """(seq2seq, anti-LM, prompt ids, ids of the prompt after a conversation that fills the window,
    description): the shipped checkpoints if present, else random init."""
    if (CHECKPOINTS / "mle" / "config.json").exists():
        model, tok, _ = load_model(CHECKPOINTS / "mle", device)
        lm = load_model(CHECKPOINTS / "lm", device)[0] if (CHECKPOINTS / "lm" / "config.json").exists() else None
        win = window_of(read_config(CHECKPOINTS / "mle"))
        turns = [tok.encode(t) for t in [*HISTORY, PROMPT]]
        src = tok.encode(PROMPT)[-win["max_src_len"]:]
        full = window_ids(turns, context_turns=max(2, win["context_turns"]), max_src_len=max(80, win["max_src_len"]),
                          speaker_markers=win["speaker_markers"])
        what = f"checkpoints/mle (window: {win['context_turns']} earlier turns, {win['max_src_len']} tokens)"
    else:
        model, lm, src, full, what = None, None, None, None, "random init"
    cfg = model.cfg if model is not None else ModelConfig(vocab_size=vocab, emb_dim=256, hidden=256,
                                                         enc_layers=2, dec_layers=2)
    torch.manual_seed(0)
    if model is None:
        model = Seq2Seq(cfg).to(device).eval()
        src = torch.randint(4, cfg.vocab_size, (16,)).tolist()
        full = torch.randint(4, cfg.vocab_size, (80,)).tolist()
    if lm is None:
        lm = LanguageModel(ModelConfig(**{**cfg.to_dict(), "kind": "lm"})).to(device).eval()
    desc = (f"{what}: V={cfg.vocab_size}, E={cfg.emb_dim}, H={cfg.hidden}, {cfg.enc_layers}+{cfg.dec_layers} "
            f"{cfg.cell.upper()} layers, attention {cfg.attention}, prompt of {len(src)} tokens")
    return model, lm, src, full, desc


@torch.inference_mode()
def model_only(model: Seq2Seq, src: list[int], rows: int, steps: int) -> None:
    """What any decoder must spend: encode once, then ``steps`` decoder steps, the first on one row (all rows
    would feed <s>), the others on ``rows`` rows (no search)."""
    device = next(model.parameters()).device
    mem1 = model.encode(torch.tensor([src], device=device), torch.tensor([len(src)], device=device))
    memK = tile_memory(mem1, rows)
    tok, state = torch.full((1,), BOS_ID, device=device), mem1.state  # (1,), (L, 1, H)
    for t in range(steps):
        _, state, _ = model.decode_step(tok, state, mem1 if t == 0 else memK)
        if t == 0:
            tok, state = tok.repeat(rows), state.repeat(1, rows, 1)  # (rows,), (L, rows, H)


@torch.inference_mode()
def reference_beam(model: Seq2Seq, src: list[int], K: int, steps: int) -> list[int]:
    """Beam search that loops over hypotheses in Python: one batch-1 decoder step per hypothesis per time step.
    Fixed length (</s> blocked, as min_len = max_len does in the engine); returns the best token list."""
    device = next(model.parameters()).device
    mem = model.encode(torch.tensor([src], device=device), torch.tensor([len(src)], device=device))
    banned = torch.tensor([PAD_ID, BOS_ID, UNK_ID, EOS_ID], device=device)
    beams = [(0.0, [BOS_ID], mem.state)]  # (score, tokens, state after feeding tokens[:-1])
    for _ in range(steps):
        cands = []
        for score, toks, state in beams:
            logp, new_state, _ = model.decode_step(torch.tensor([toks[-1]], device=device), state, mem)  # (1, V)
            top, idx = logp[0].index_fill(0, banned, -math.inf).topk(K)  # this hypothesis' K best continuations
            cands += [(score + lp, toks + [w], new_state) for lp, w in zip(top.tolist(), idx.tolist())]
        beams = heapq.nlargest(K, cands, key=lambda c: c[0])
    return beams[0][1][1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (another job may share the CPU)")
    ap.add_argument("--steps", type=int, default=20, help="tokens decoded per reply, the same for every strategy")
    ap.add_argument("--rounds", type=int, default=30, help="timed round-robin rounds (after 3 warm-up rounds)")
    ap.add_argument("--beam", type=int, default=10, help="beam size K")
    ap.add_argument("--gamma", type=int, default=5, help="anti-LM gamma")
    ap.add_argument("--vocab", type=int, default=8000, help="vocabulary of the random-init model")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, lm, src, full, desc = build_models(device, args.vocab)
    fixed = dict(max_len=args.steps, min_len=args.steps)
    configs = {
        "greedy": DecodeConfig(strategy="greedy", **fixed),
        f"beam K={args.beam}": DecodeConfig(strategy="beam", beam_size=args.beam, nbest=1, **fixed),
        f"beam K={args.beam} + anti-LM": DecodeConfig(strategy="beam", beam_size=args.beam, nbest=1, antilm=0.5,
                                                      gamma=args.gamma, **fixed),
    }
    K = args.beam
    groups = 2 if K % 2 == 0 else 1
    others = {
        f"diverse beam K={K}, {groups} groups": DecodeConfig(strategy="diverse_beam", beam_size=K, nbest=1,
                                                             num_groups=groups, diversity_penalty=0.5, **fixed),
        "contrastive top-k=4 alpha=0.6": DecodeConfig(strategy="contrastive", top_k=4, penalty_alpha=0.6, **fixed),
        f"sample x{K} typical-p=0.9 min-p=0.05": DecodeConfig(strategy="sample", beam_size=K, nbest=1, typical_p=0.9,
                                                             min_p=0.05, seed=0, **fixed),
        f"delayed beam K={K}, first 2 sampled (top-k 10)": DecodeConfig(strategy="delayed_beam", beam_size=K, nbest=1,
                                                                        delay_tokens=2, top_k=10, seed=0, **fixed),
        f"beam K={K} + repetition 1.2, length penalty 0.6": DecodeConfig(strategy="beam", beam_size=K, nbest=1,
                                                                        repetition_penalty=1.2, length_penalty=0.6,
                                                                        **fixed),
    }
    runs = {name: (lambda c=c: generate(model, [src], c, lm=lm)[0].tokens) for name, c in configs.items()}
    runs[f"reference beam K={args.beam} (Python loop)"] = lambda: reference_beam(model, src, args.beam, args.steps)
    runs.update({name: (lambda c=c: generate(model, [src], c, lm=lm)[0].tokens) for name, c in others.items()})
    for name, c in configs.items():  # the same decoders after a conversation that fills the window
        runs[f"{name}, full window"] = lambda c=c: generate(model, [full], c, lm=lm)[0].tokens
    beam_cfg = configs[f"beam K={K}"]
    runs[f"beam K={K}, trace on"] = lambda: generate(model, [src], beam_cfg, lm=lm, trace=True)[0].tokens

    outputs = {name: run() for name, run in runs.items()}
    runs["model only, 1 row (floor of greedy)"] = lambda: model_only(model, src, 1, args.steps)
    runs[f"model only, {args.beam} rows (floor of beam)"] = lambda: model_only(model, src, args.beam, args.steps)
    lengths = {len(v) for v in outputs.values()}
    assert lengths == {args.steps}, f"strategies decoded different lengths: {lengths}"
    same = outputs[f"beam K={args.beam}"] == outputs[f"reference beam K={args.beam} (Python loop)"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds + 3):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            if r >= 3:
                times[name].append(time.perf_counter() - t0)

    p50 = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"model: {desc}")
    print(f"device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{args.steps} tokens per reply, {args.rounds} rounds")
    beam = p50[f"beam K={K}"]
    print(f"{'strategy':<50} {'p50 ms':>9} {'ms/token':>9} {'vs greedy':>10} {'vs beam':>8}")
    for name, t in p50.items():
        print(f"{name:<50} {t * 1e3:>9.2f} {t * 1e3 / args.steps:>9.3f} {t / p50['greedy']:>9.2f}x "
              f"{t / beam:>7.2f}x")
    names = list(runs)
    beam_greedy, antilm_beam = p50[names[1]] / p50[names[0]], p50[names[2]] / p50[names[1]]
    print(f"trace on / off      = {p50[f'beam K={K}, trace on'] / beam:.2f}x  (beam K={K}; trace off is the "
          "plain beam row: no tracer is built)")
    print(f"beam / greedy       = {beam_greedy:.2f}x  (target <= 2.0: {'ok' if beam_greedy <= 2.0 else 'MISSED'})")
    print(f"anti-LM / beam      = {antilm_beam:.2f}x  (target <= 1.4: {'ok' if antilm_beam <= 1.4 else 'MISSED'})")
    floor = p50[f"model only, {args.beam} rows (floor of beam)"] / p50["model only, 1 row (floor of greedy)"]
    print(f"model-only floor    = {floor:.2f}x  (encoder + {args.steps} decoder steps, the first on 1 row, the others "
          f"on {args.beam} rows vs 1 row; no search: beam / greedy if the search itself cost nothing)")
    print(f"reference / beam    = {p50[names[3]] / p50[names[1]]:.2f}x  (engine and reference agree on the reply: "
          f"{'yes' if same else 'NO'})")
    print(f"full window ({len(full)} source tokens vs {len(src)}) / message alone:")
    for name in configs:
        ratio = p50[f"{name}, full window"] / p50[name]
        print(f"  {name:<28} = {ratio:.2f}x  (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
