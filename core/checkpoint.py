"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``tokenizer.json`` (+ training state), never pickles.

A checkpoint folder::

    model.safetensors       weights (tied weights stored once; fp16 or fp32)
    config.json             {"model": ModelConfig, "tokenizer_sha256": ..., "meta": {...}}
    tokenizer.json          the tokenizer the model was trained with
    train_state.safetensors optimizer tensors and RNG states      (training checkpoints only)
    train_state.json        step, epoch, best score, optimizer groups, python RNG  (training checkpoints only)

Writes are atomic: the folder is written beside the target and swapped in with renames, so a kill at any
moment leaves either the old or the new checkpoint, never a mix.

    >>> save_checkpoint("runs/mle/last", model, tokenizer, meta={"corpus": "chitchat"})
    >>> model, tokenizer, config = load_checkpoint("runs/mle/last")
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.model import LanguageModel, ModelConfig, Seq2Seq, build_model
from core.tokenizer import Tokenizer

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing a file or its parts disagree; the message says which."""


# ----------------------------------------------------------------------------- atomic folders


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` with renames only: target -> target.old, tmp -> target, drop old."""
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        os.replace(old, target)  # an earlier kill left only the old copy: make it the current one again
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """The folder to read: ``path``, or ``path.old`` if a kill landed between the two renames of a save."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        return old
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder entry itself to disk."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- weights


def _unique_state(model: nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor stored once (tied embeddings), optionally cast to ``dtype``."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen:
            continue
        seen[ptr] = name
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().clone()
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(
    path: str | Path,
    model: Seq2Seq | LanguageModel,
    tokenizer: Tokenizer,
    *,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint folder atomically. ``dtype=torch.float16`` halves the weight file for shipping."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tok_text = tokenizer.to_str()
    (tmp / "tokenizer.json").write_text(tok_text, encoding="utf-8")
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "tokenizer_sha256": sha256_text(tok_text),
        "meta": meta or {},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(_unique_state(model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if train_state is not None:
        tensors, info = train_state["tensors"], train_state["info"]
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "train_state.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    _fsync_dir(tmp)
    _swap_in(tmp, path)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = resolve(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json (is this a checkpoint folder?)")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}:{e.lineno}: invalid JSON ({e.msg})") from e


def load_checkpoint(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Seq2Seq | LanguageModel, Tokenizer, dict[str, Any]]:
    """Load and cross-check a checkpoint: config, tokenizer and weights must agree; the model is in eval mode."""
    path = resolve(path)
    config = read_config(path)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).exists():
            raise CheckpointError(f"{path}: missing {name}")
    try:
        cfg = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: bad model config: {e}") from e
    tok_text = (path / "tokenizer.json").read_text(encoding="utf-8")
    want = config.get("tokenizer_sha256")
    if want and want != sha256_text(tok_text):
        raise CheckpointError(f"{path}: tokenizer.json is not the tokenizer this model was trained with "
                              f"(sha256 differs from config.json)")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but config.json says "
                              f"vocab_size={cfg.vocab_size}")
    model = build_model(cfg)
    load_weights(model, path / "model.safetensors")
    model.to(device=device, dtype=dtype).eval()
    return model, tokenizer, config


def load_weights(model: nn.Module, file: Path) -> None:
    """Load safetensors weights into ``model``; a missing, unexpected or mis-shaped tensor is a CheckpointError."""
    state = load_file(str(file))
    expected = model.state_dict()
    stored = set(_unique_state(model, None))  # the names a save of this architecture writes
    missing = sorted(stored - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{file}: {k} has shape {tuple(v.shape)}, config.json implies "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)


# ----------------------------------------------------------------------------- training state


def pack_train_state(optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> dict[str, Any]:
    """Optimizer + RNG state as flat tensors and JSON (no pickle)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    py_state = random.getstate()
    info = dict(info, param_groups=sd["param_groups"], py_rng=[py_state[0], list(py_state[1]), py_state[2]])
    return {"tensors": tensors, "info": info}


def load_train_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNG states saved by :func:`pack_train_state`; returns the info dict."""
    path = resolve(path)
    tensors = load_file(str(path / "train_state.safetensors"))
    info = json.loads((path / "train_state.json").read_text(encoding="utf-8"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    device = next(iter(p for g in optimizer.param_groups for p in g["params"])).device
    state = {i: {k: (v if k == "step" else v.to(device)) for k, v in st.items()} for i, st in state.items()}
    groups = info["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    v, internal, gauss = info["py_rng"]
    random.setstate((v, tuple(internal), gauss))
    return info
