"""MLE training for the seq2seq model, the backward model and the language model; resumable, DDP-ready.

    chatbot-arena train --out runs/mle                                  # seq2seq on chitchat
    chatbot-arena train --kind lm --tokenizer runs/mle/tokenizer.json --out runs/lm
    chatbot-arena train --kind backward --tokenizer runs/mle/tokenizer.json --out runs/backward
    chatbot-arena train --task reverse --out runs/reverse --max-minutes 1 # synthetic sanity task
    torchrun --nproc_per_node 2 -m core.cli train --out runs/ddp         # DistributedDataParallel

A run folder holds ``last/`` (full checkpoint with optimizer and RNG state, for resume), ``best/`` (best
validation perplexity), ``tokenizer.json`` and ``log.csv`` (see core.training.runs). Running the same command again
resumes from ``last/``. Whatever stops a run (its step or time budget, early stopping, Ctrl-C), its last step is
validated and ``best/`` written before it returns.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.batching import Batch, Example, encode_pairs, iterate_batches, make_batches
from core.checkpoint import load_weights, pack_train_state, read_config, resolve
from core.context import MAX_CONTEXT_TURNS, conversation_examples
from core.corpora import (
    CorpusError,
    Split,
    check_pairs,
    load_corpus,
    make_pairs,
    split_conversations,
    utterances,
)
from core.model import (
    LanguageModel,
    ModelConfig,
    SampledSoftmax,
    Seq2Seq,
    build_model,
    count_parameters,
    pick_device,
)
from core.scoring import perplexity, teacher_forced_nll
from core.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer
from core.training.loop import SavedState, Stop, StopKind, Throughput, budget_stop
from core.training.runs import RunFolder, StopRequest, TimeBudget, hardware_name, set_threads
from core.training.synthetic import TASKS, task_splits

LOG_FIELDS = ["step", "epoch", "loss", "valid_ppl", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]


MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name not in ("vocab_size", "kind"))


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in each checkpoint's config.json under ``meta.train``.

    The architecture is ``model`` (a :class:`~core.model.ModelConfig`); its ``kind`` and ``vocab_size`` follow
    ``kind`` and the tokenizer. On the command line its fields are flags of their own (``--hidden 128``)."""

    out: str = field(default="runs/mle", metadata={"help": "run folder (resumes if it has last/)"})
    kind: str = field(default="seq2seq", metadata={"help": "seq2seq, backward (swapped pairs) or lm"})
    task: str = field(default="chat", metadata={"help": "chat (a corpus), or a synthetic task: reverse, sort"})
    corpus: str = field(default="chitchat", metadata={"help": "corpus name or path"})
    corpus_format: str | None = field(default=None, metadata={"help": "chitchat, cornell, tsv, lines, reddit"})
    tokenizer: str | None = field(default=None, metadata={"help": "existing tokenizer.json to reuse"})
    vocab_size: int = field(default=8000, metadata={"help": "BPE vocabulary size when training a tokenizer"})
    lowercase: bool = field(default=True, metadata={"help": "the tokenizer lower-cases text (training and prompts)"})
    max_chars: int | None = field(default=None, metadata={"help": "drop utterances longer than N characters, "
                                                                   "cutting their conversation there"})
    split_seed: int = field(default=1234, metadata={"help": "seed of the train/valid/test conversation split"})
    max_src_len: int = field(default=40, metadata={"help": "keep the last N source tokens (of the window)"})
    context_turns: int = field(default=0, metadata={
        "help": "seq2seq: the source is the message plus up to N earlier turns of its conversation, joined by "
                "</s> and cut from the oldest side to max_src_len (0: the message only; see core.context)"})
    speaker_markers: bool = field(default=False, metadata={
        "help": "mark the replier's own earlier turns with <s> instead of </s> in the window"})
    max_tgt_len: int = field(default=40, metadata={"help": "drop pairs whose reply is longer than N tokens"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture"})
    # optimisation
    batch_size: int = field(default=64, metadata={"help": "pairs per batch (per process)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    decoder_lr_ratio: float = field(default=1.0, metadata={"help": "decoder LR = lr * ratio"})
    warmup_steps: int = field(default=200, metadata={"help": "linear LR warm-up steps"})
    lr_decay: float = field(default=0.5, metadata={"help": "LR factor after a validation plateau"})
    lr_schedule: str = field(default="plateau", metadata={
        "help": "plateau (multiply by lr_decay after a validation without improvement), cosine or linear (decay "
                "from lr after the warm-up to lr * lr_min at the last step, whatever validation says)"})
    lr_min: float = field(default=0.0, metadata={"help": "cosine/linear: the final LR as a fraction of lr"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "label smoothing of the training loss (validation perplexity is always the plain NLL)"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this checkpoint folder's weights and tokenizer (same architecture) instead of a random "
                "init: a fine-tune or annealing phase; a resume from last/ takes precedence"})
    clip: float = field(default=1.0, metadata={"help": "clip gradients to this global norm"})
    teacher_forcing: float = field(default=1.0, metadata={"help": "probability of feeding the gold token"})
    sampled_softmax: int = field(default=0, metadata={
        "help": "sampled softmax (Jean et al. 2015): negative classes sampled per batch; the training loss runs "
                "over the batch's targets plus these (logQ-corrected); 0: full softmax. Evaluation and decoding "
                "always use the exact softmax"})
    sampled_proposal: str = field(default="unigram", metadata={
        "help": "where sampled-softmax negatives come from: unigram (target-token frequencies of the training "
                "split) or uniform"})
    epochs: float = field(default=20.0, metadata={"help": "stop after this many epochs"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: no limit)"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop (and save) after this many minutes; 0: none"})
    eval_every: int = field(default=500, metadata={"help": "validate every N steps"})
    save_every: int = field(default=100, metadata={"help": "write last/ every N steps"})
    patience: int = field(default=4, metadata={"help": "stop after N validations without improvement"})
    valid_max_batches: int = field(default=0, metadata={"help": "cap validation batches (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and dropout"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cpu or cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: all cores)"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        self.model = replace(self.model, kind=self.kind, vocab_size=self.vocab_size)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The architecture for a tokenizer of ``vocab_size`` tokens."""
        return replace(self.model, vocab_size=vocab_size)

    def flat(self) -> dict[str, Any]:
        """The settings as one flat dict (the model's fields beside the others), as the command line has them."""
        d = asdict(self)
        model = d.pop("model")
        return {**d, **{k: model[k] for k in MODEL_FIELDS}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From ``meta.train`` of a checkpoint (nested ``model``, or the flat layout of older checkpoints) or
        from command-line flags; unknown keys are ignored."""
        d = dict(d)
        model = dict(d.pop("model", None) or {})
        model.update({k: d.pop(k) for k in MODEL_FIELDS if k in d})
        model.pop("vocab_size", None)
        model.pop("kind", None)
        names = {f.name for f in fields(cls)} - {"model"}
        return cls(**{k: v for k, v in d.items() if k in names}, model=ModelConfig(**model))


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    tokenizer: Tokenizer
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    test_pairs: list[tuple[str, str]]
    split: Split | None = None  # the conversations (chat task only): openings, dull replies, evaluation


def prepare_data(cfg: TrainConfig) -> Data:
    """Corpus (or synthetic task) -> split -> tokenizer (trained on train only, or reused) -> examples."""
    if cfg.task in TASKS:
        train_p, valid_p, test_p = task_splits(cfg.task, seed=cfg.split_seed)
        tok_kind, texts, split = "word", [t for p in train_p for t in p], None
    elif cfg.task == "chat":
        convs = load_corpus(cfg.corpus, fmt=cfg.corpus_format, max_chars=cfg.max_chars)
        check_pairs(convs, cfg.corpus, cfg.corpus_format, min_pairs=cfg.batch_size)
        split = split_conversations(convs, seed=cfg.split_seed)
        swap = cfg.kind == "backward"
        train_p, valid_p, test_p = (make_pairs(c, swap=swap) for c in (split.train, split.valid, split.test))
        tok_kind, texts = "bpe", utterances(split.train)
        if cfg.context_turns < 0 or cfg.context_turns > MAX_CONTEXT_TURNS:
            raise ValueError(f"context_turns must be between 0 and {MAX_CONTEXT_TURNS}, got {cfg.context_turns}")
    else:
        raise ValueError(f"unknown task {cfg.task!r}; use chat, {', '.join(TASKS)}")
    tok_path = Path(cfg.out) / "tokenizer.json"
    if cfg.tokenizer:
        tokenizer = Tokenizer.load(cfg.tokenizer)
    elif tok_path.exists():
        tokenizer = Tokenizer.load(tok_path)
    else:
        tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, kind=tok_kind, lowercase=cfg.lowercase)
        if _is_main():
            tok_path.parent.mkdir(parents=True, exist_ok=True)
            tokenizer.save(tok_path)
    enc = {"max_src_len": cfg.max_src_len, "max_tgt_len": cfg.max_tgt_len}
    if split is not None:  # examples built from the conversations: the window of each message, then its reply
        window = {**enc, **window_settings(cfg), "swap": cfg.kind == "backward"}
        parts = [conversation_examples(tokenizer, c, **window) for c in (split.train, split.valid, split.test)]
    else:
        parts = [encode_pairs(tokenizer, p, **enc) for p in (train_p, valid_p, test_p)]
    data = Data(tokenizer, *parts, test_p, split)
    if len(data.train) < cfg.batch_size:
        raise CorpusError(f"{cfg.corpus}: {len(data.train)} training pairs after the split and the length filter "
                          f"(replies of at most {cfg.max_tgt_len} tokens), fewer than one batch of {cfg.batch_size}; "
                          f"use a larger corpus or a smaller --batch-size")
    if not data.valid:
        raise CorpusError(f"{cfg.corpus}: the validation split has no usable pair; use a larger corpus")
    return data


def window_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The window a run's examples are built with: only a seq2seq model reads earlier turns (the backward model
    and the language model read one turn, so one of each serves every window)."""
    ctx = cfg.context_turns if cfg.kind == "seq2seq" else 0
    return {"context_turns": ctx, "speaker_markers": cfg.speaker_markers and ctx > 0}


# ----------------------------------------------------------------------------- loss


def sequence_nll(model: nn.Module, batch: Batch, teacher_forcing: float = 1.0, *,
                 sampled: SampledSoftmax | None = None, label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """Summed token NLL of ``batch`` and its token count. With ``teacher_forcing < 1`` each step feeds the
    model's own greedy token with probability ``1 - teacher_forcing`` (a per-step loop; 1.0 is one pass).
    ``sampled``: the sampled-softmax training loss instead of the full softmax (one process, teacher forcing).
    ``label_smoothing``: the smoothed cross-entropy (a training loss; perplexity uses 0)."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if sampled is not None:
        states = core.output_states(batch.tgt_in) if isinstance(core, LanguageModel) else core.output_states(
            batch.src, batch.src_lens, batch.tgt_in)  # (B, T, H)
        real = batch.tgt_out != PAD_ID  # (B, T)
        return sampled.nll(states[real], core.decoder.out, batch.tgt_out[real]), batch.n_tokens
    if teacher_forcing >= 1.0:
        return teacher_forced_nll(model, batch, label_smoothing=label_smoothing)
    logits = _scheduled_sampling_logits(core, batch, teacher_forcing)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                          reduction="sum", label_smoothing=label_smoothing)
    return nll, batch.n_tokens


def make_sampler(cfg: TrainConfig, data: Data, device: torch.device) -> SampledSoftmax:
    """The sampled softmax of ``cfg``: ``sampled_softmax`` negatives per batch, unigram (target-token counts of
    the training split, +1 so every class can be drawn) or uniform proposal; seeded by ``cfg.seed``."""
    proposal = None
    if cfg.sampled_proposal == "unigram":
        V = data.tokenizer.vocab_size
        tokens = torch.tensor([t for _, tgt in data.train for t in tgt] + [EOS_ID] * len(data.train))
        counts = torch.bincount(tokens, minlength=V)[:V].float() + 1  # (V,)
        proposal = counts / counts.sum()
    return SampledSoftmax(cfg.sampled_softmax, proposal, torch.Generator().manual_seed(cfg.seed))


def _scheduled_sampling_logits(model: Seq2Seq | LanguageModel, batch: Batch, ratio: float) -> torch.Tensor:
    B, T = batch.tgt_in.shape
    if isinstance(model, LanguageModel):
        state, mem = model.init_state(B, batch.tgt_in.device), None
    else:
        mem = model.encode(batch.src, batch.src_lens)
        state = mem.state
    tok, out = batch.tgt_in[:, 0], []
    for t in range(T):
        logits, state, _ = model.decoder(tok.unsqueeze(1), state, mem)  # (B, 1, V)
        out.append(logits)
        if t + 1 < T:
            use_gold = torch.rand(B, device=tok.device) < ratio
            tok = torch.where(use_gold, batch.tgt_in[:, t + 1], logits[:, 0].argmax(-1))
    return torch.cat(out, 1)  # (B, T, V)


# ----------------------------------------------------------------------------- distributed helpers


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


# ----------------------------------------------------------------------------- the state of a run


@dataclass
class TrainState(SavedState):
    """What an MLE run carries from one step to the next (and across a resume, in ``last/``)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being read
    batch_in_epoch: int = 0  # batches of that epoch already trained on (a resume skips them)
    best_ppl: float = math.inf  # the validation perplexity of best/
    bad_evals: int = 0  # validations in a row without improvement
    lr_scale: float = 1.0  # the plateau schedule's LR factor
    train_seconds: float = 0.0  # wall time over all invocations, at the last save
    early_stopped: bool = False  # patience ran out: the run stays stopped
    valid_step: int = 0  # the last validated step
    has_best: bool = False  # best/ is on disk (a run's first validation always writes it)


@dataclass
class MLERun:
    """What an MLE run holds fixed from its first step to its last."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int  # processes (DDP)
    folder: RunFolder
    data: Data
    model: Seq2Seq | LanguageModel
    ddp: nn.Module  # the model, wrapped in DistributedDataParallel with several processes
    optimizer: torch.optim.Optimizer
    sampler: SampledSoftmax | None
    meta: dict[str, Any]  # written into each checkpoint's config.json
    max_steps: int
    clock: TimeBudget


class StepStats(NamedTuple):
    """What one training step reports."""

    loss: float  # mean token loss of the batch
    grad_norm: float  # global gradient norm before clipping
    n_tokens: int  # target tokens of this process's batch


# ----------------------------------------------------------------------------- training loop




def make_adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel (all parameters in one kernel call: on this 2-core CPU the shipped model's
    optimizer step takes 8 ms instead of 45-55 ms), or the default implementation where this build or device has
    no fused kernel. The updates are Adam's either way; a run resumed from a checkpoint keeps the implementation
    its optimizer state was saved with."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _param_groups(model: Seq2Seq | LanguageModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Encoder (and shared embedding) at ``lr``; decoder-only parameters at ``lr * decoder_lr_ratio``."""
    if isinstance(model, LanguageModel):
        return [{"params": list(model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    dec = [p for p in model.decoder.parameters() if id(p) not in enc_ids]
    return [{"params": enc, "lr": cfg.lr, "base_lr": cfg.lr},
            {"params": dec, "lr": cfg.lr * cfg.decoder_lr_ratio, "base_lr": cfg.lr * cfg.decoder_lr_ratio}]




def _check_settings(cfg: TrainConfig, world: int) -> None:
    if world > 1 and cfg.teacher_forcing < 1.0:
        raise ValueError("teacher_forcing < 1 runs a per-step loop outside DistributedDataParallel; "
                         "use teacher_forcing 1.0 with several processes")
    if cfg.sampled_softmax and (world > 1 or cfg.teacher_forcing < 1.0):
        raise ValueError(f"sampled_softmax={cfg.sampled_softmax} needs one process and teacher_forcing 1.0; "
                         "set sampled_softmax 0 for DistributedDataParallel or scheduled sampling")
    if cfg.sampled_softmax < 0 or cfg.sampled_proposal not in ("unigram", "uniform"):
        raise ValueError(f"sampled_softmax={cfg.sampled_softmax} must be >= 0 and sampled_proposal="
                         f"{cfg.sampled_proposal!r} one of ('unigram', 'uniform')")
    _check_schedule(cfg)


def _prepare_data_on_ranks(cfg: TrainConfig, world: int) -> Data:
    """Rank 0 first: it may train and save the tokenizer the other ranks then load."""
    data = prepare_data(cfg) if _is_main() else None
    if world > 1:
        dist.barrier()
    return data if data is not None else prepare_data(cfg)


def setup_training(cfg: TrainConfig) -> tuple[MLERun, TrainState]:
    """Check the settings, load the data, build the model and optimizer, and resume from ``last/`` if there is
    one (else start from ``init_from`` or a seeded random init)."""
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    rank, world = _setup_distributed(device)
    _check_settings(cfg, world)
    if cfg.init_from and not cfg.tokenizer:  # the start checkpoint's tokenizer, so the weights fit
        cfg = replace(cfg, tokenizer=str(resolve(cfg.init_from) / "tokenizer.json"))
    folder = RunFolder(cfg.out, LOG_FIELDS, main=_is_main())
    if folder.has_last():  # before any work: a different run in the same folder is an error, not a resume
        _check_same_run(cfg, read_config(folder.out / "last")["meta"].get("train", {}))
    data = _prepare_data_on_ranks(cfg, world)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(data.tokenizer.vocab_size)).to(device)
    optimizer = make_adam(_param_groups(model, cfg), cfg.lr)
    sampler = make_sampler(cfg, data, device) if cfg.sampled_softmax else None
    resumed = folder.resume(model, optimizer)
    state = TrainState.from_info(resumed)
    if resumed is None and cfg.init_from:
        load_weights(model, resolve(cfg.init_from) / "model.safetensors")
        if _is_main():
            print(f"initialised from {cfg.init_from}", flush=True)
    state.has_best = folder.has_best()
    meta = {"train": asdict(cfg), "corpus": cfg.corpus if cfg.task == "chat" else f"synthetic:{cfg.task}",
            "corpus_format": cfg.corpus_format, "hardware": hardware_name(device, world),
            "n_train_pairs": len(data.train), "parameters": count_parameters(model)}
    if _is_main():
        print(f"{cfg.kind} model: {count_parameters(model):,} parameters, {len(data.train):,} training pairs, "
              f"device {device}, {world} process(es)", flush=True)
    n_batches = len(make_batches(data.train, batch_size=cfg.batch_size, seed=cfg.seed, epoch=0)) // world
    run = MLERun(cfg, device, rank, world, folder, data, model,
                 nn.parallel.DistributedDataParallel(model) if world > 1 else model, optimizer, sampler, meta,
                 max_steps=cfg.max_steps or int(cfg.epochs * n_batches),
                 clock=TimeBudget(cfg.max_minutes, state.train_seconds))
    return run, state


def train_step(run: MLERun, state: TrainState, batch: Batch) -> StepStats:
    """One optimizer step on ``batch`` (on the run's device): this step's LR (the warm-up, then the plateau scale
    or the schedule), forward/backward on the mean token loss, gradient clipping; advances ``state``."""
    cfg = run.cfg
    scale = lr_factor(cfg, state.step, run.max_steps) * state.lr_scale
    for g in run.optimizer.param_groups:
        g["lr"] = g["base_lr"] * scale
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
        nll, n_tok = sequence_nll(run.ddp, batch, cfg.teacher_forcing, sampled=run.sampler,
                                  label_smoothing=cfg.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    (nll / n_tok).backward()
    grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip))
    run.optimizer.step()
    state.step += 1
    state.batch_in_epoch += 1
    return StepStats(float(nll.detach()) / n_tok, grad_norm, n_tok)


def validate(run: MLERun, state: TrainState) -> float:
    """Validation perplexity now; keeps best/, decays the LR on a plateau, flags early stopping."""
    cfg = run.cfg
    ppl = perplexity(run.model, run.data.valid, device=run.device, max_batches=cfg.valid_max_batches)
    state.valid_step = state.step
    if ppl < state.best_ppl or not state.has_best:  # a run's first validation always makes best/
        state.best_ppl, state.bad_evals, state.has_best = ppl, 0, True
        run.folder.save("best", run.model, run.data.tokenizer, meta=dict(run.meta, step=state.step, valid_ppl=ppl))
    else:
        state.bad_evals += 1
        if cfg.lr_schedule == "plateau":
            state.lr_scale *= cfg.lr_decay
        state.early_stopped = state.bad_evals >= cfg.patience
    return ppl


def save_last(run: MLERun, state: TrainState) -> None:
    """The resume checkpoint: weights, optimizer and RNG states, and ``state``."""
    state.train_seconds = run.clock.total_s()
    run.folder.save("last", run.model, run.data.tokenizer, meta=dict(run.meta, step=state.step),
                    train_state=pack_train_state(run.optimizer, state.info()))


def _after_step(run: MLERun, state: TrainState, stats: StepStats, signals: StopRequest,
                meter: Throughput) -> Stop | None:
    """Stop conditions, validation (on schedule, and once more at the last step), the log row (every step that
    validates, and every 50 steps), ``last/`` (periodically, and always at the last step)."""
    cfg = run.cfg
    stop = budget_stop(state.step, run.max_steps, run.clock, signals, max_minutes=cfg.max_minutes,
                       agree=lambda flag: _any_rank(flag, run.device))
    valid_ppl = None
    if state.step % cfg.eval_every == 0 or stop:
        valid_ppl = validate(run, state)
        if state.early_stopped and not stop:
            stop = Stop(StopKind.EARLY_STOP, f"early stop: {cfg.patience} validations without improvement")
    if valid_ppl is not None or state.step % 50 == 0:
        run.folder.log({
            "step": state.step, "epoch": state.epoch, "loss": round(stats.loss, 4),
            "valid_ppl": "" if valid_ppl is None else round(valid_ppl, 3),
            "lr": f"{run.optimizer.param_groups[0]['lr']:.3g}", "grad_norm": round(stats.grad_norm, 3),
            "tokens_per_s": round(meter.read()), "elapsed_s": round(run.clock.total_s(), 1)})
    if stop or state.step % cfg.save_every == 0:
        save_last(run, state)
    return stop


def _train_epoch(run: MLERun, state: TrainState, signals: StopRequest, bar: tqdm, meter: Throughput) -> Stop | None:
    """The rest of the current epoch (a resume skips the batches already trained on); None if it ran through."""
    batches = iterate_batches(run.data.train, batch_size=run.cfg.batch_size, seed=run.cfg.seed, epoch=state.epoch,
                              rank=run.rank, world=run.world, skip=state.batch_in_epoch)
    for batch in batches:
        stats = train_step(run, state, batch.to(run.device))
        meter.add(stats.n_tokens * run.world)
        bar.update(1)
        bar.set_postfix(loss=f"{stats.loss:.3f}", epoch=state.epoch)
        stop = _after_step(run, state, stats, signals, meter)
        if stop:
            return stop
    state.epoch += 1
    state.batch_in_epoch = 0
    return None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) MLE training as configured; returns a summary (steps, best validation perplexity, why it
    stopped). Whatever stops it (step budget, time budget, early stopping, Ctrl-C), the last step is validated
    if it was not already, and ``best/`` and ``last/`` are on disk when it returns."""
    run, state = setup_training(cfg)
    if state.early_stopped or state.step >= run.max_steps:  # finished before: nothing to do
        if _is_main():
            print(f"{run.folder.out}: already finished at step {state.step} (nothing to do)", flush=True)
        return _summary(state, run, Stop(StopKind.NOTHING, "finished earlier (nothing to do)"))
    bar = tqdm(total=run.max_steps, initial=state.step, disable=not (run.cfg.progress and _is_main()),
               mininterval=5, dynamic_ncols=True)
    meter, stop = Throughput(), None
    run.ddp.train()
    with StopRequest() as signals:
        while stop is None:
            stop = _train_epoch(run, state, signals, bar, meter)
    bar.close()
    if _is_main():
        print(f"stopped at step {state.step}: {stop.text}; validated at step {state.valid_step}; "
              f"best/ has valid ppl {state.best_ppl:.2f}", flush=True)
    return _summary(state, run, stop)



LR_SCHEDULES = ("plateau", "cosine", "linear")


def _check_schedule(cfg: TrainConfig) -> None:
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if not 0.0 <= cfg.lr_min <= 1.0:
        raise ValueError(f"lr_min={cfg.lr_min} must be a fraction of lr in [0, 1]")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={cfg.label_smoothing} must be in [0, 1)")
    if cfg.init_from and not (resolve(cfg.init_from) / "model.safetensors").exists():
        raise ValueError(f"init_from={cfg.init_from!r} is not a checkpoint folder (no model.safetensors)")


def lr_factor(cfg: TrainConfig, step: int, max_steps: int) -> float:
    """The LR multiplier of optimizer step ``step`` (0-based): a linear warm-up over ``warmup_steps``, then 1
    (plateau: validations scale it apart from this) or a cosine/linear decay to ``lr_min`` at ``max_steps``.

    >>> cfg = TrainConfig(lr_schedule="cosine", warmup_steps=10, lr_min=0.1)
    >>> [round(lr_factor(cfg, s, 111), 3) for s in (0, 9, 60, 110)]
    [0.1, 1.0, 0.55, 0.1]"""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_schedule == "plateau" or step + 1 <= cfg.warmup_steps:
        return warm
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - 1 - cfg.warmup_steps))  # 1 at the last step
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return cfg.lr_min + (1 - cfg.lr_min) * shape


def _summary(state: TrainState, run: MLERun, stop: Stop) -> dict[str, Any]:
    return {"step": state.step, "epoch": state.epoch, "best_valid_ppl": state.best_ppl,
            "train_seconds": state.train_seconds, "parameters": count_parameters(run.model),
            "done": bool(state.early_stopped or state.step >= run.max_steps),
            "early_stopped": bool(state.early_stopped), "stopped": stop.text,
            "interrupted": stop.kind is StopKind.INTERRUPTED}



# Settings that may change between a run and its resume; any other difference means a different run.
RESUMABLE_CHANGES = {"out", "epochs", "max_steps", "max_minutes", "eval_every", "save_every", "patience",
                     "valid_max_batches", "device", "threads", "progress", "tokenizer"}


def _check_same_run(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    now = cfg.flat()
    saved = TrainConfig.from_dict(saved).flat() if saved else {}
    diff = {k: (saved[k], now[k]) for k in saved if k in now and k not in RESUMABLE_CHANGES and saved[k] != now[k]}
    if diff:
        pretty = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{cfg.out} holds a run with other settings ({pretty}); use another --out or the same "
                         f"settings to resume")
