"""Teacher-forced scoring: log p(reply | source) of given pairs in one batch, with the distribution the
decoders use. The RL rewards, tune, evaluate, the MMI-bidi rerank and the token view score with it; training
and evaluation share the teacher-forced NLL and perplexity.

    >>> sequence_logprobs(model, [src_ids], [reply_ids], mean=True)      # (1,) mean log p per token
    >>> perplexity(model, examples)                                      # exp(mean token NLL), fixed order
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.batching import Batch, Example, collate, make_batches
from core.model import LanguageModel, Seq2Seq, tile_memory
from core.tokenizer import EOS_ID, NEVER_GENERATED, PAD_ID


def tempered(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` as a softmax sees it, shifted by each row's largest finite logit first, so a
    temperature near 0 gives the row's argmax (never inf - inf = nan). logits (..., V); -inf stays -inf."""
    top = logits.amax(-1, keepdim=True)  # (N, 1)
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)  # a smaller one would read as 0 (0 / 0 = nan)
    return (logits - torch.where(torch.isfinite(top), top, 0.0)) / temperature


def sequence_logprobs(model: Seq2Seq, src: list[list[int]], tgt: list[list[int]], *, mean: bool = False,
                      min_len: int = 1, repeat: int = 1, temperature: float = 1.0,
                      eos: list[bool] | None = None) -> Tensor:
    """log p(tgt + </s> | src) per pair, (N,), teacher-forced in one batch; ``mean`` divides by the token count.

    The distribution is the one the decoders sample from (<pad> <s> <unk> excluded, no </s> before ``min_len``
    tokens), so a policy gradient on these log-probs cannot push probability into tokens that are never
    generated; ``temperature`` scales the logits as the sampler does. ``eos[i] = False`` leaves out the final
    </s> term of pair i (a sample cut at max_len never drew it). ``repeat=R`` scores every source against R
    targets (``tgt`` holds len(src) * R of them, R per source in order) with one encoder pass per source.
    Keeps the autograd graph; wrap in ``torch.no_grad`` to score only."""
    device = next(model.parameters()).device
    srcs = collate([(s or [PAD_ID], [PAD_ID]) for s in src]).to(device)
    mem = model.encode(srcs.src, srcs.src_lens)  # N sources
    if repeat > 1:
        mem = tile_memory(mem, repeat)  # [N, ...] -> [N*R, ...]
    tgts = collate([([PAD_ID], t) for t in tgt]).to(device)
    logits, _, _ = model.decoder(tgts.tgt_in, mem.state, mem)  # (N*R, T, V)
    logits = logits.float()
    logits[..., list(NEVER_GENERATED)] = float("-inf")  # the decoders never emit these: same distribution
    logits[:, :min_len, EOS_ID] = float("-inf")  # nor </s> before min_len tokens
    logits = tempered(logits, temperature)  # shifted by the largest allowed logit first: no nan near T = 0
    logp = torch.log_softmax(logits, -1).gather(2, tgts.tgt_out.unsqueeze(-1)).squeeze(-1)  # (N*R, T)
    mask = tgts.tgt_mask  # (N*R, T)
    if eos is not None:
        lengths = torch.tensor([len(t) for t in tgt], device=device)  # (N*R,) the </s> sits at index len(t)
        drop = ~torch.tensor(eos, device=device)
        mask = mask & ~(drop.unsqueeze(1) & (torch.arange(mask.size(1), device=device) == lengths.unsqueeze(1)))
    total = torch.where(mask, logp, 0.0).sum(1)  # (N*R,) padding may be -inf: select, never multiply
    return total / mask.sum(1) if mean else total


def teacher_forced_nll(model: nn.Module, batch: Batch, *, label_smoothing: float = 0.0) -> tuple[Tensor, int]:
    """Summed token NLL of ``batch`` under teacher forcing (one forward pass) and its token count; a seq2seq model
    (or its DistributedDataParallel wrapper) reads ``batch.src``, a language model only the targets."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    logits = model(batch.tgt_in) if isinstance(core, LanguageModel) else model(
        batch.src, batch.src_lens, batch.tgt_in)  # (B, T, V)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                          reduction="sum", label_smoothing=label_smoothing)
    return nll, batch.n_tokens


@torch.inference_mode()
def perplexity(model: nn.Module, data: list[Example], *, batch_size: int = 128, device: str | torch.device = "cpu",
               max_batches: int = 0) -> float:
    """exp(mean token NLL) of ``data`` (fixed order, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = make_batches(data, batch_size=batch_size, seed=0, epoch=0)
    batches = batches[:max_batches] if max_batches else batches
    for ex in batches:
        nll, n = teacher_forced_nll(model, collate(ex).to(device))
        total, count = total + float(nll), count + n
    model.train(was_training)
    return math.exp(total / max(count, 1))
