"""Export a training run's best checkpoint for shipping: fp16 weights, the training log and a model card.

    chatbot-arena export runs/mle checkpoints/mle
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_checkpoint, resolve, save_checkpoint
from core.model import encoder_layout

MAX_WEIGHT_BYTES = 25 * 1024 * 1024


def export_run(run_dir: str | Path, dest: str | Path, *, which: str = "best", notes: str = "") -> Path:
    """Write ``dest`` from ``run_dir/<which>``: fp16 ``model.safetensors``, config, tokenizer, ``train_log.csv``
    and ``MODEL_CARD.md``. Refuses to write a weight file over ``MAX_WEIGHT_BYTES`` (25 MB)."""
    run_dir, dest = Path(run_dir), Path(dest)
    src = resolve(run_dir / which)
    if not (src / "config.json").exists():
        other = "last" if which == "best" else "best"
        hint = f" (it has {other}/: --which {other})" if (resolve(run_dir / other) / "config.json").exists() else ""
        raise FileNotFoundError(f"{run_dir} has no {which}/ checkpoint{hint}; is it a training run folder?")
    model, tokenizer, config = load_checkpoint(src)
    meta = dict(config["meta"])
    state_file = resolve(run_dir / "last") / "train_state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        meta["train_seconds"] = round(state.get("train_seconds", 0.0), 1)
        meta["trained_steps"] = state.get("step")
    log_rows = _read_log(run_dir / "log.csv")
    extra = {"MODEL_CARD.md": model_card(dest.name, model.cfg.to_dict(), meta, log_rows, notes)}
    if log_rows:
        extra["train_log.csv"] = (run_dir / "log.csv").read_text()
    save_checkpoint(dest, model, tokenizer, meta=meta, dtype=torch.float16, extra_files=extra)
    size = (dest / "model.safetensors").stat().st_size
    if size > MAX_WEIGHT_BYTES:
        shutil.rmtree(dest)
        raise ValueError(f"{dest}/model.safetensors would be {size:,} bytes ({size / 2**20:.1f} MB); the limit is "
                         f"{MAX_WEIGHT_BYTES:,} bytes ({MAX_WEIGHT_BYTES / 2**20:.1f} MB)")
    return dest


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def model_card(name: str, model_cfg: dict[str, Any], meta: dict[str, Any], log_rows: list[dict[str, str]],
               notes: str = "") -> str:
    """A one-page Markdown card: data, split, config, training time, hardware, curve, known weaknesses."""
    train = meta.get("train", {})
    evals = [(int(r["step"]), float(r["valid_ppl"])) for r in log_rows if r.get("valid_ppl")]
    curve = "\n".join(f"| {s} | {p:.2f} |" for s, p in evals) or "| - | - |"
    hours = meta.get("train_seconds", 0) / 3600
    layout = encoder_layout(model_cfg)
    arch = ("GRU language model" if model_cfg["kind"] == "lm" else
            f"bidirectional {model_cfg['cell'].upper()} encoder{f' ({layout})' if layout else ''}"
            f" + {model_cfg['cell'].upper()} decoder with Luong "
            f"`{model_cfg['attention']}` attention")
    turns = int(train.get("context_turns") or 0) if model_cfg["kind"] == "seq2seq" else 0
    kind = {"seq2seq": (f"p(reply | message and up to {turns} earlier turns)" if turns else "p(reply | message)"),
            "backward": "p(message | reply), trained on swapped pairs",
            "lm": "p(reply), a language model for the anti-LM penalty"}.get(model_cfg["kind"], model_cfg["kind"])
    window = (f"the message with up to {turns} earlier turns of its conversation, joined by `</s>`"
              f"{' (the replier’s own turns marked by `<s>`)' if train.get('speaker_markers') else ''}"
              if turns else "the message alone")
    memory = (f"it reads the last {turns} earlier turns with each message and forgets what came before them."
              if turns else "it reads the message alone and forgets everything said before it.")
    if train.get("lr_schedule") in ("cosine", "linear"):
        schedule = (f"LR warmed up over {train.get('warmup_steps')} steps, then {train['lr_schedule']} decay to "
                    f"{train.get('lr_min', 0.0)} x lr at the last step")
    else:
        schedule = f"LR multiplied by {train.get('lr_decay')} after each validation without improvement"
    if train.get("init_from"):
        schedule += f"; started from the weights of `{train['init_from']}`"
    rl = meta.get("rl")
    rl_section = "" if not rl else f"""
## RL fine-tuning
Started from `{rl.get('policy')}` (validation perplexity {meta.get('start_valid_ppl', float('nan')):.2f} on the first
{rl.get('valid_max_batches')} validation batches, as in the table above) and
trained by self-play REINFORCE (`core/training/rl.py`): {rl.get('batch_size')} dialogues per step
({rl.get('group_size')} per opening message, leave-one-out group baseline), {rl.get('turns')} turns of at most
{rl.get('max_len')} tokens sampled at temperature {rl.get('temperature')}, reward 0.25 r1 + 0.25 r2 + 0.5 r3
({'each standardised over the step' if rl.get('standardize') else 'raw'}), KL coefficient {rl.get('kl_coef')},
MLE weight {rl.get('mle_weight')}, Adam lr {rl.get('lr')}, {rl.get('steps')} steps. Dull list D
({len(meta.get('dull_list', []))} replies): {', '.join(f'"{d}"' for d in meta.get('dull_list', []))}.
"""
    return f"""# Model card: `{name}`

**What it is.** {arch}; models {kind}. {meta.get('parameters', 0):,} parameters, weights stored in fp16.

## Data
- Corpus: `{meta.get('corpus')}` (Chit-Chat Challenge, from the `chitchat-dataset` wheel unless stated otherwise).
- Split by conversation with seed {train.get('split_seed')}: 90% train / 5% valid / 5% test.
- {meta.get('n_train_pairs', 0):,} training pairs after filtering (source: {window}, cut to its last
  {train.get('max_src_len')} tokens; replies longer than {train.get('max_tgt_len')} tokens dropped). Text is
  NFKC-normalised and lower-cased by the byte-level BPE tokenizer ({model_cfg['vocab_size']} tokens), trained on
  the training split only.

## Configuration
```json
{json.dumps(model_cfg, indent=2)}
```
Training: Adam lr {train.get('lr')}, batch {train.get('batch_size')}, dropout {model_cfg['dropout']}, gradient clip
{train.get('clip')}, teacher forcing {train.get('teacher_forcing')}, seed {train.get('seed')}; {schedule}.

## Training
- Steps: {meta.get('trained_steps', meta.get('step'))}; exported from step {meta.get('step')}
  (best validation perplexity {meta.get('valid_ppl', float('nan')):.2f}).
- Time: {hours:.2f} h on {meta.get('hardware', 'unrecorded hardware')}.

| step | validation perplexity |
|---:|---:|
{curve}
{rl_section}
## Known weaknesses
- Small model, short memory: {memory}
- Trained on crowd-sourced small talk: generic, often dull replies under beam search ("i don't know"); that is
  what the anti-LM and RL bots are for.
- English only; lower-cased output; no safety filtering beyond the corpus itself.
{notes}
"""
