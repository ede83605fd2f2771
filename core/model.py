"""Seq2seq model: bidirectional GRU/LSTM encoder, GRU/LSTM decoder with Luong attention; and a language model.

Shape legend: B batch, K beam, S source length, T target length, H hidden, E embedding, V vocab, L layers.

The decoder runs its RNN over the embedded target prefix only (Luong attention without input feeding), so a
teacher-forced pass is one ``nn.GRU`` call over all T steps plus one batched attention, and it equals, step for
step, what :meth:`Seq2Seq.decode_step` computes one token at a time.

    >>> cfg = ModelConfig(vocab_size=8000)
    >>> model = Seq2Seq(cfg)
    >>> logits = model(src, src_lens, tgt_in)           # (B, T, V)
    >>> mem = model.encode(src, src_lens)
    >>> logp, state, attn = model.decode_step(tok, mem.state, mem)   # one step: (B, V), state, (B, S)

Without autograd and in eval mode (decoding), ``decode_step`` takes an inference path, :meth:`Decoder.step`: the
same computation, with the recurrent cells called directly and, on CPU, the output projection read from a copy
of its weight packed once for oneDNN's GEMM (rebuilt whenever the weight changes). Training never takes it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.weak import WeakIdKeyDictionary

from core.tokenizer import PAD_ID

State = Tensor | tuple[Tensor, Tensor]  # GRU: h (L, B, H); LSTM: (h, c) each (L, B, H)


@dataclass
class ModelConfig:
    """Architecture of a seq2seq model or of a language model (``kind="lm"``)."""

    vocab_size: int = field(default=8000, metadata={"help": "size of the tokenizer vocabulary V"})
    kind: str = field(
        default="seq2seq", metadata={"help": "seq2seq (p(T|S)), backward (p(S|T), swapped pairs) or lm (p(T))"}
    )
    cell: str = field(default="gru", metadata={"help": "recurrent cell: gru or lstm"})
    emb_dim: int = field(default=256, metadata={"help": "embedding size E"})
    hidden: int = field(default=256, metadata={"help": "hidden size H of the encoder's output and of the decoder"})
    enc_layers: int = field(default=2, metadata={"help": "encoder layers (bidirectional)"})
    dec_layers: int = field(default=2, metadata={"help": "decoder layers"})
    encoder_merge: str = field(default="sum", metadata={
        "help": "how the encoder's two directions make its H-wide output: sum (H units per direction, summed) or "
                "concat (H/2 per direction, concatenated: about half the encoder's training cost)"})
    attention: str = field(default="dot", metadata={"help": "Luong score: dot, general, concat (ignored for lm)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between layers and on embeddings"})
    share_embeddings: bool = field(
        default=False, metadata={"help": "encoder and decoder share one embedding table"}
    )
    tie_output: bool = field(
        default=False, metadata={"help": "output projection shares the decoder embedding (needs E == H)"}
    )

    def __post_init__(self) -> None:
        checks = {
            "kind": (self.kind, ("seq2seq", "backward", "lm")),
            "cell": (self.cell, ("gru", "lstm")),
            "attention": (self.attention, ("dot", "general", "concat")),
            "encoder_merge": (self.encoder_merge, ("sum", "concat")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"ModelConfig.{name}={value!r}; choose one of {allowed}")
        if self.encoder_merge == "concat" and self.hidden % 2:
            raise ValueError(f"encoder_merge=concat splits hidden across two directions: it must be even, "
                             f"got {self.hidden}")
        if self.tie_output and self.emb_dim != self.hidden:
            raise ValueError(f"tie_output needs emb_dim == hidden (got {self.emb_dim} and {self.hidden})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def encoder_layout(model: dict[str, Any]) -> str:
    """How a config's (dict's) encoder merges its two directions, for model cards and the Models tab: "" for the
    summed encoder (the default, and configs written before the option) and for a language model."""
    if model.get("kind") == "lm" or model.get("encoder_merge", "sum") == "sum":
        return ""
    return "two directions of hidden/2, concatenated"


class Memory(NamedTuple):
    """What the encoder hands the decoder."""

    outputs: Tensor  # (B, S, H) encoder states (directions summed or concatenated)
    mask: Tensor  # (B, S) True at real source tokens
    state: State  # decoder initial state, (L, B, H) or a pair of them


# ----------------------------------------------------------------------------- state helpers


def map_state(state: State, fn: Callable[[Tensor], Tensor]) -> State:
    """Apply ``fn`` to the tensor(s) of a recurrent state."""
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


# beam reshapes: B prompts x K rows per prompt = N rows


def tile(x: Tensor, K: int, dim: int = 0) -> Tensor:
    """[B, ...] -> [B*K, ...] along ``dim``: row b repeated K times as rows b*K .. b*K+K-1."""
    return x.repeat_interleave(K, dim=dim)


def fold(x: Tensor, K: int) -> Tensor:
    """[B*K, ...] -> [B, K, ...]"""
    return x.view(-1, K, *x.shape[1:])


def tile_memory(mem: Memory, K: int) -> Memory:
    """Memory of B prompts -> Memory of B*K rows (outputs [B, S, H] -> [B*K, S, H], state [L, B, H] -> [L, B*K, H])."""
    return Memory(tile(mem.outputs, K), tile(mem.mask, K), map_state(mem.state, lambda h: tile(h, K, dim=1)))


def select_memory(mem: Memory, rows: Tensor) -> Memory:
    """Memory of N rows -> Memory of len(rows) rows: row i of the result is row ``rows[i]``."""
    return Memory(mem.outputs.index_select(0, rows), mem.mask.index_select(0, rows), select_rows(mem.state, rows))


def select_rows(state: State, rows: Tensor) -> State:
    """[L, N, H] -> [L, N, H]: row i of the result is row ``rows[i]`` of ``state``."""
    return map_state(state, lambda h: h.index_select(1, rows))


def inference_path(module: nn.Module) -> bool:
    """True where a step may take the inference path: eval mode (no dropout) and no autograd."""
    return not module.training and not torch.is_grad_enabled()


# weight -> ((version, data pointer), packed copy); keyed by the Parameter itself, so a state_dict, a deepcopy
# or a checkpoint never sees the packed copy, and an in-place update (optimizer step, load_state_dict) is noticed
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()
PACK_MIN_ROWS = 2  # the packed GEMM costs ~20 us more per call than F.linear: it pays off from 2 rows ...
PACK_MIN_NUMEL = 1 << 20  # ... on weights of a million entries or more (measured, 1 AVX2 thread)


def _has_packed_ops() -> bool:
    """oneDNN's packed-linear ops are internal to PyTorch: use them only where this build has them."""
    try:
        return bool(torch.ops.mkldnn._reorder_linear_weight and torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


_PACKED_OPS = _has_packed_ops()


def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) -> (N, out): F.linear for inference, through a oneDNN-packed copy of ``weight`` where that is
    faster: CPU, float32, no autograd, at least PACK_MIN_ROWS rows and a weight of PACK_MIN_NUMEL entries; else
    F.linear itself. MKL's GEMM is slow for a few rows times a wide weight (10 rows by an 8000 x 256 weight:
    1.0-1.4 ms, packed 0.65-0.9 ms, one AVX2 core); the results differ from F.linear by float rounding (~1e-6)."""
    if (x.size(0) < PACK_MIN_ROWS or weight.numel() < PACK_MIN_NUMEL or x.device.type != "cpu"
            or x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_grad_enabled()
            or not (_PACKED_OPS and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)):
        return F.linear(x, weight, bias)
    key = (weight._version, weight.data_ptr())
    cached = _PACKED.get(weight)
    if cached is None or cached[0] != key:
        cached = _PACKED[weight] = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], bias, "none", [], "")  # (N, out)


def _rnn(cell: str, inp: int, hidden: int, layers: int, dropout: float, bidirectional: bool = False) -> nn.RNNBase:
    cls = nn.GRU if cell == "gru" else nn.LSTM
    return cls(inp, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0,
               bidirectional=bidirectional)


# ----------------------------------------------------------------------------- modules


class Encoder(nn.Module):
    """Bidirectional multi-layer RNN over packed source sequences. Its output is H wide either way: with
    ``encoder_merge="sum"`` each direction has H units and the two are summed, with ``"concat"`` each has H/2 and
    the two are concatenated (the usual bidirectional encoder; its recurrent matrices are a quarter the size)."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.dir_hidden = cfg.hidden if cfg.encoder_merge == "sum" else cfg.hidden // 2
        self.rnn = _rnn(cfg.cell, cfg.emb_dim, self.dir_hidden, cfg.enc_layers, cfg.dropout, bidirectional=True)
        self.bridge = nn.Linear(cfg.hidden, cfg.hidden)  # encoder final state -> decoder initial state

    def forward(self, src: Tensor, src_lens: Tensor) -> Memory:
        B, S = src.shape
        emb = self.drop(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_lens.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, 2 Hd), Hd per direction
        H, Hd, concat = self.cfg.hidden, self.dir_hidden, self.cfg.encoder_merge == "concat"
        if not concat:
            out = out[..., :H] + out[..., H:]  # (B, S, H) directions summed
        mask = src != PAD_ID  # (B, S)
        # final: (2*Le, B, Hd) per tensor -> merge the directions of the top dec_layers encoder layers
        def to_dec(h: Tensor) -> Tensor:
            h = h.view(self.cfg.enc_layers, 2, B, Hd)  # (Le, 2, B, Hd)
            h = torch.cat([h[:, 0], h[:, 1]], -1) if concat else h.sum(1)  # (Le, B, H)
            h = h[-self.cfg.dec_layers :] if self.cfg.enc_layers >= self.cfg.dec_layers else torch.cat(
                [h, h[-1:].expand(self.cfg.dec_layers - self.cfg.enc_layers, B, H)], 0)
            return torch.tanh(self.bridge(h))  # (L, B, H)

        return Memory(out, mask, map_state(final, to_dec))


class Attention(nn.Module):
    """Luong global attention: score(h_t, h_s) by ``dot``, ``general`` or ``concat``."""

    def __init__(self, method: str, hidden: int) -> None:
        super().__init__()
        self.method = method
        if method == "general":
            self.W = nn.Linear(hidden, hidden, bias=False)
        elif method == "concat":
            self.W = nn.Linear(2 * hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, H), keys (B, S, H), mask (B, S) -> context (B, T, H), weights (B, T, S)."""
        if self.method == "dot":
            scores = query @ keys.transpose(1, 2)  # (B, T, S)
        elif self.method == "general":
            scores = query @ self.W(keys).transpose(1, 2)  # (B, T, S)
        else:
            T, S = query.size(1), keys.size(1)
            pair = torch.cat([query.unsqueeze(2).expand(-1, T, S, -1), keys.unsqueeze(1).expand(-1, T, S, -1)], -1)
            scores = self.v(torch.tanh(self.W(pair))).squeeze(-1)  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)  # (B, T, S)
        return weights @ keys, weights  # (B, T, H), (B, T, S)


class Decoder(nn.Module):
    """RNN decoder; with ``attention`` it is the seq2seq decoder, without it a language model."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding, use_attention: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = _rnn(cfg.cell, cfg.emb_dim, cfg.hidden, cfg.dec_layers, cfg.dropout)
        self.attn = Attention(cfg.attention, cfg.hidden) if use_attention else None
        self.combine = nn.Linear(2 * cfg.hidden, cfg.hidden) if use_attention else None
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        if cfg.tie_output:
            self.out.weight = embedding.weight

    def forward(self, tgt_in: Tensor, state: State, memory: Memory | None) -> tuple[Tensor, State, Tensor | None]:
        """tgt_in (B, T) -> logits (B, T, V), final state, attention (B, T, S) or None."""
        hidden, state, weights = self.features(tgt_in, state, memory)  # (B, T, H)
        return self.out(self.drop(hidden)), state, weights  # (B, T, V)

    def features(self, tgt_in: Tensor, state: State, memory: Memory | None) -> tuple[Tensor, State, Tensor | None]:
        """tgt_in (B, T) -> output hidden states (B, T, H) (what the output projection reads), final state,
        attention (B, T, S) or None."""
        emb = self.drop(self.embedding(tgt_in))  # (B, T, E)
        rnn_out, state = self.rnn(emb, state)  # (B, T, H)
        weights = None
        if self.attn is not None:
            context, weights = self.attn(rnn_out, memory.outputs, memory.mask)  # (B, T, H), (B, T, S)
            rnn_out = torch.tanh(self.combine(torch.cat([rnn_out, context], -1)))  # (B, T, H)
        return rnn_out, state, weights

    def step(self, tok: Tensor, state: State, memory: Memory | None, *, return_hidden: bool = False
             ) -> tuple[Tensor, State, Tensor | None] | tuple[Tensor, State, Tensor | None, Tensor]:
        """Inference path of one step (see :func:`inference_path`): tok (B,) -> logits (B, V), new state,
        attention (B, S) or None, and with ``return_hidden`` the output hidden state (B, H) too. It computes what
        forward() does on a (B, 1) prefix, up to float rounding: the cells are called per layer without the
        nn.GRU / nn.LSTM wrapper, and the output projection is :func:`packed_linear`. Only for eval mode without
        autograd: it has no dropout."""
        x = self.embedding(tok)  # (B, E)
        hs, cs = [], []
        for layer, params in enumerate(self.rnn.all_weights):  # w_ih, w_hh, b_ih, b_hh of each layer
            if self.cfg.cell == "gru":
                x = torch.gru_cell(x, state[layer], *params)  # (B, H)
            else:
                x, c = torch.lstm_cell(x, (state[0][layer], state[1][layer]), *params)  # (B, H) each
                cs.append(c)
            hs.append(x)
        state = torch.stack(hs) if self.cfg.cell == "gru" else (torch.stack(hs), torch.stack(cs))  # (L, B, H)
        weights = None
        if self.attn is not None:
            context, weights = self.attn(x.unsqueeze(1), memory.outputs, memory.mask)  # (B, 1, H), (B, 1, S)
            x = torch.tanh(self.combine(torch.cat([x, context[:, 0]], -1)))  # (B, H)
            weights = weights[:, 0]  # (B, S)
        logits = packed_linear(x, self.out.weight, self.out.bias)  # (B, V)
        return (logits, state, weights, x) if return_hidden else (logits, state, weights)


class Seq2Seq(nn.Module):
    """Encoder-decoder p(T | S). A backward model p(S | T) is the same class trained on swapped pairs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        dec_emb = emb if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.encoder = Encoder(cfg, emb)
        self.decoder = Decoder(cfg, dec_emb, use_attention=True)

    def encode(self, src: Tensor, src_lens: Tensor) -> Memory:
        """src (B, S) padded, src_lens (B,) -> Memory."""
        return self.encoder(src, src_lens)

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced pass: src (B, S), tgt_in (B, T) starting with <s> -> logits (B, T, V)."""
        mem = self.encode(src, src_lens)
        logits, _, _ = self.decoder(tgt_in, mem.state, mem)
        return logits

    def output_states(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        """What forward() feeds the output projection (after dropout): (B, T, H). Sampled softmax reads these."""
        mem = self.encode(src, src_lens)
        hidden, _, _ = self.decoder.features(tgt_in, mem.state, mem)  # (B, T, H)
        return self.decoder.drop(hidden)

    def decode_step(self, tok: Tensor, state: State, memory: Memory, *, return_hidden: bool = False
                    ) -> tuple[Tensor, State, Tensor] | tuple[Tensor, State, Tensor, Tensor]:
        """One step: tok (B,) -> log-probs (B, V), new state, attention (B, S); with ``return_hidden`` also the
        decoder's output hidden state (B, H) after ``tok`` (contrastive search compares these)."""
        if inference_path(self.decoder):
            out = self.decoder.step(tok, state, memory, return_hidden=return_hidden)  # (B, V), state, (B, S)[, (B, H)]
            return (torch.log_softmax(out[0].float(), -1), *out[1:])
        hidden, state, weights = self.decoder.features(tok.unsqueeze(1), state, memory)  # (B, 1, H)
        logp = torch.log_softmax(self.decoder.out(self.decoder.drop(hidden))[:, 0].float(), -1)  # (B, V)
        return (logp, state, weights[:, 0], hidden[:, 0]) if return_hidden else (logp, state, weights[:, 0])


class LanguageModel(nn.Module):
    """Decoder without encoder: p(T), the anti-LM of Li et al. (2016)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg, nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=PAD_ID), False)

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """Zero state for ``batch`` sequences: (L, B, H) or a pair of them."""
        h = torch.zeros(self.cfg.dec_layers, batch, self.cfg.hidden, device=device)
        return (h, h.clone()) if self.cfg.cell == "lstm" else h

    def forward(self, tgt_in: Tensor) -> Tensor:
        """tgt_in (B, T) starting with <s> -> logits (B, T, V)."""
        logits, _, _ = self.decoder(tgt_in, self.init_state(tgt_in.size(0), tgt_in.device), None)
        return logits

    def output_states(self, tgt_in: Tensor) -> Tensor:
        """What forward() feeds the output projection (after dropout): (B, T, H)."""
        hidden, _, _ = self.decoder.features(tgt_in, self.init_state(tgt_in.size(0), tgt_in.device), None)
        return self.decoder.drop(hidden)  # (B, T, H)

    def decode_step(self, tok: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: tok (B,) -> log-probs (B, V), new state."""
        if inference_path(self.decoder):
            logits, state, _ = self.decoder.step(tok, state, None)  # (B, V)
            return torch.log_softmax(logits.float(), -1), state
        logits, state, _ = self.decoder(tok.unsqueeze(1), state, None)  # (B, 1, V)
        return torch.log_softmax(logits[:, 0].float(), -1), state


def build_model(cfg: ModelConfig) -> Seq2Seq | LanguageModel:
    """The module for ``cfg.kind``: Seq2Seq for seq2seq/backward, LanguageModel for lm."""
    return LanguageModel(cfg) if cfg.kind == "lm" else Seq2Seq(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present (the local rank's GPU under torchrun), else CPU; or the device named."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# ----------------------------------------------------------------------------- sampled softmax (training only)


@dataclass
class SampledSoftmax:
    """Sampled softmax (Jean et al. 2015) for training with a large vocabulary: the softmax of each target runs
    over the batch's candidate set C = the batch's targets + ``n`` sampled negative classes (shared by the batch)
    instead of all V classes, so the output layer costs (M, |C|) instead of (M, V). Evaluation and decoding keep
    the exact softmax.

    Negatives are drawn from the classes that are not targets of the batch: ``proposal=None`` draws n of them
    uniformly without replacement (inclusion probability pi = n / #non-targets, the same for all); a proposal
    (V,) (e.g. unigram frequencies) draws n times with replacement from it, renormalised over the non-targets
    (pi_j = 1 - (1 - q_j)^n). A sampled logit is corrected by - log pi_j (the logQ correction), so
    sum_{j in C} exp(s_j - log pi_j) estimates the full partition function without bias, and when the sample
    covers every class (n >= #non-targets) the loss equals the full-softmax loss.

        >>> loss = SampledSoftmax(2048).nll(states, model.decoder.out, targets)   # states (M, H), targets (M,)
    """

    n: int
    proposal: Tensor | None = None  # (V,) nonnegative weights, or None for uniform
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampled softmax needs at least 1 negative class per batch, got {self.n}")

    def candidates(self, targets: Tensor, V: int) -> tuple[Tensor, Tensor]:
        """targets (M,) -> (candidate classes (C,), their log pi (C,)): the batch's distinct targets first
        (pi = 1), then the sampled negatives."""
        device = targets.device
        is_target = torch.zeros(V, dtype=torch.bool, device=device)
        is_target[targets] = True
        others = (~is_target).nonzero().squeeze(1)  # (V - |T|,)
        tgt = is_target.nonzero().squeeze(1)  # (|T|,) sorted
        n_other = others.numel()
        if n_other == 0:
            return tgt, torch.zeros(tgt.numel(), device=device)
        if self.n >= n_other:  # the sample covers the vocabulary: every class, pi = 1
            neg, log_pi = others, torch.zeros(n_other, device=device)
        elif self.proposal is None:
            pick = torch.randperm(n_other, generator=self.generator, device="cpu")[: self.n].to(device)
            neg = others[pick]
            log_pi = torch.full((self.n,), math.log(self.n / n_other), device=device)
        else:
            q = self.proposal.to(device=device, dtype=torch.float32)[others].clamp(min=0)  # (V - |T|,)
            q = q / q.sum()
            draws = torch.multinomial(q.cpu(), self.n, replacement=True, generator=self.generator).to(device)
            pick = draws.unique()
            neg = others[pick]
            log_pi = torch.log(-torch.expm1(self.n * torch.log1p(-q[pick].clamp(max=1 - 1e-7))))  # log(1-(1-q)^n)
        return torch.cat([tgt, neg]), torch.cat([torch.zeros(tgt.numel(), device=device), log_pi])

    def nll(self, states: Tensor, out: nn.Linear, targets: Tensor) -> Tensor:
        """Summed NLL of ``targets`` (M,) given output states (M, H) over the candidate set (a scalar)."""
        cand, log_pi = self.candidates(targets, out.weight.size(0))  # (C,), (C,) the |T| targets first
        w = out.weight.index_select(0, cand)  # (C, H)
        b = out.bias.index_select(0, cand) if out.bias is not None else None
        logits = F.linear(states, w, b).float() - log_pi  # (M, C)
        n_tgt = int(torch.unique(targets).numel())
        pos = torch.searchsorted(cand[:n_tgt], targets)  # (M,) each target's column: the targets lead, sorted
        return (torch.logsumexp(logits, -1) - logits.gather(1, pos.unsqueeze(1)).squeeze(1)).sum()
