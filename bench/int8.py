"""int8 dynamic quantisation for CPU serving: is it faster, and do the replies stay the same?

    python bench/int8.py                                  # shipped checkpoints/, 50 validation prompts, 1 thread
    python bench/int8.py --prompts 20 --checkpoints runs/compare --json int8.json

Every model a bot uses (seq2seq, anti-LM, backward) gets a copy made by
``torch.ao.quantization.quantize_dynamic`` over nn.Linear and nn.GRU (int8 weights, activations quantised per call,
float32 in between). The float inference path of the decoder (:meth:`core.model.Decoder.step`) reads the float
weights of the GRU cells and the output projection directly, so the quantised copies step through the module
calls instead (``Decoder.forward`` on a one-token prefix, the same computation). For each bot and each validation
prompt the float32 and the int8 reply are decoded alone (batch 1, as one visitor), alternating, and once more as one
batch of all the prompts (as a crowd). Reported: p50 latency of one reply, the time of the batch, and the share of
prompts whose int8 reply text is identical to the float32 one. Decision rule (issue 11): int8 ships on by default
only if >= 95% of the replies are identical and it is measurably faster.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bots import Bot, load_bots  # noqa: E402
from core.corpora import make_pairs  # noqa: E402
from core.evaluation.evaluate import load_split_for  # noqa: E402
from core.model import Decoder  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


def quantize(model: nn.Module) -> nn.Module:
    """An int8 dynamic-quantised copy of ``model`` (nn.Linear and nn.GRU); its decoders step through modules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear, nn.GRU}, dtype=torch.qint8)
    for module in q.modules():
        if isinstance(module, Decoder):
            module.step = _module_step(module)
    return q


def _module_step(decoder: Decoder) -> Any:
    def step(tok: torch.Tensor, state: torch.Tensor, memory: Any, *, return_hidden: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if return_hidden:  # contrastive search: not among the shipped bots' decoders
            raise NotImplementedError("the int8 bench steps through forward(), which returns no hidden state")
        logits, state, weights = decoder(tok.unsqueeze(1), state, memory)  # (B, 1, V), state, (B, 1, S)
        return logits[:, 0], state, None if weights is None else weights[:, 0]  # (B, V), state, (B, S)

    return step


def quantized_bots(bots: dict[str, Bot]) -> dict[str, Bot]:
    """The same bots over int8 copies of their models (each shared model quantised once)."""
    copies: dict[int, nn.Module] = {}

    def q(model: nn.Module | None) -> nn.Module | None:
        if model is None:
            return None
        if id(model) not in copies:
            copies[id(model)] = quantize(model)
        return copies[id(model)]

    return {name: dataclasses.replace(b, model=q(b.model), lm=q(b.lm), backward=q(b.backward))
            for name, b in bots.items()}


def validation_prompts(bot: Bot, n: int) -> list[str]:
    """The first ``n`` answerable queries of the validation split the bot's checkpoint was trained with."""
    out = []
    for query, _ in make_pairs(load_split_for(bot).valid):
        try:
            bot.encode_prompt(query)
        except ValueError:
            continue
        out.append(query)
        if len(out) == n:
            break
    return out


def measure(fp32: Bot, int8: Bot, prompts: list[str]) -> dict[str, Any]:
    """Alternating single-prompt timings, one batch each, and the share of identical replies."""
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    same = 0
    for p in prompts:
        replies = {}
        for kind, bot in (("fp32", fp32), ("int8", int8)):
            t0 = time.perf_counter()
            replies[kind] = bot.respond(p)
            times[kind].append(time.perf_counter() - t0)
        same += replies["fp32"].text == replies["int8"].text
    batch = {}
    for kind, bot in (("fp32", fp32), ("int8", int8)):
        t0 = time.perf_counter()
        bot.respond_batch(prompts)
        batch[kind] = time.perf_counter() - t0
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {"bot": fp32.name, "prompts": len(prompts), "fp32_p50_ms": 1000 * p50["fp32"],
            "int8_p50_ms": 1000 * p50["int8"], "speedup_p50": p50["fp32"] / p50["int8"],
            "fp32_batch_s": batch["fp32"], "int8_batch_s": batch["int8"],
            "speedup_batch": batch["fp32"] / batch["int8"], "identical": same / len(prompts)}


def weight_bytes(models: list[nn.Module]) -> int:
    """Bytes of the state dicts (int8 packed weights included) of the distinct ``models``."""
    total = 0
    for m in {id(m): m for m in models}.values():
        for v in m.state_dict().values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, tuple):  # packed params of quantised modules: (weight, bias)
                total += sum(t.numel() * t.element_size() for t in v if isinstance(t, torch.Tensor))
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help="folder with bots.json")
    ap.add_argument("--prompts", type=int, default=50, help="validation prompts per bot (default 50)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.prompts < 1 or args.threads < 1:
        ap.error("--prompts and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    bots = load_bots(args.checkpoints, device="cpu")
    int8 = quantized_bots(bots)
    prompts = validation_prompts(next(iter(bots.values())), args.prompts)
    for b in (*bots.values(), *int8.values()):  # warm up: first calls pack weights and allocate
        b.respond_batch(prompts[:2])
    rows = [measure(bots[name], int8[name], prompts) for name in bots]
    models = [m for b in bots.values() for m in (b.model, b.lm, b.backward) if m is not None]
    qmodels = [m for b in int8.values() for m in (b.model, b.lm, b.backward) if m is not None]
    print(f"int8 dynamic quantisation (Linear + GRU), {len(prompts)} validation prompts, {args.threads} thread(s), "
          f"torch {torch.__version__}; weights {weight_bytes(models) / 2**20:.1f} MB fp32 -> "
          f"{weight_bytes(qmodels) / 2**20:.1f} MB int8\n")
    print("| bot | fp32 p50 (ms) | int8 p50 (ms) | speed-up | fp32 batch (s) | int8 batch (s) | speed-up | identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['bot']} | {r['fp32_p50_ms']:.1f} | {r['int8_p50_ms']:.1f} | {r['speedup_p50']:.2f}x | "
              f"{r['fp32_batch_s']:.2f} | {r['int8_batch_s']:.2f} | {r['speedup_batch']:.2f}x | "
              f"{r['identical']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
