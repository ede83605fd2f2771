"""What the Models tab shows for each checkpoint folder: config, corpus, size, training curves, evaluation.

Every file is optional: a folder without ``train_log.csv`` gets no curve, a missing ``report.csv`` a note.

    >>> for info in checkpoint_infos(Path("checkpoints")):
    ...     print(info.name, info.used_by, info.loss_curve is not None)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.bots import read_bots_json
from core.checkpoint import resolve
from core.model import encoder_layout

ROLES = {"checkpoint": "model", "lm": "anti-LM language model", "backward": "backward model for MMI"}
LOSS_COLUMNS = ("loss", "mle_loss", "pg_loss", "reward")  # supervised and RL logs name them differently
PPL_COLUMN = "valid_ppl"


@dataclass
class CheckpointInfo:
    name: str
    used_by: list[str]  # "Greedy (model)", ...
    summary: str  # Markdown table
    config: dict[str, Any] | None
    loss_curve: pd.DataFrame | None  # long format: step, series, value
    ppl_curve: pd.DataFrame | None  # step, valid_ppl
    card: str | None  # MODEL_CARD.md
    problems: list[str] = field(default_factory=list)


def checkpoint_infos(checkpoint_dir: str | Path) -> list[CheckpointInfo]:
    """One entry per folder that bots.json names, in order of first use."""
    root = Path(checkpoint_dir)
    used: dict[str, list[str]] = {}
    for spec in read_bots_json(root / "bots.json"):
        for role, what in ROLES.items():
            folder = getattr(spec, role)
            if folder:
                used.setdefault(folder, []).append(f"{spec.label} ({what})")
    return [checkpoint_info(root / name, used_by) for name, used_by in used.items()]


def checkpoint_info(path: Path, used_by: list[str]) -> CheckpointInfo:
    folder = resolve(path)
    problems = []
    config = _read_json(folder / "config.json", problems)
    loss, ppl = training_curves(folder / "train_log.csv")
    if loss is None and ppl is None:
        problems.append("no train_log.csv: no training curve")
    card_file = folder / "MODEL_CARD.md"
    card = card_file.read_text(encoding="utf-8", errors="replace") if card_file.exists() else None
    summary = summary_table(path.name, used_by, config, folder / "model.safetensors")
    return CheckpointInfo(path.name, used_by, summary, config, loss, ppl, card, problems)


def _read_json(file: Path, problems: list[str]) -> dict[str, Any] | None:
    if not file.exists():
        problems.append(f"no {file.name}")
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        problems.append(f"{file.name} is not valid JSON ({e})")
        return None


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def summary_table(name: str, used_by: list[str], config: dict[str, Any] | None, weights: Path) -> str:
    """Markdown table: role, architecture, corpus, size, training step and validation perplexity."""
    model = (config or {}).get("model", {})
    meta = (config or {}).get("meta", {})
    train = meta.get("train", {})
    rows: list[tuple[str, Any]] = [("used by", ", ".join(used_by))]
    if model:
        layers = f"{model.get('enc_layers', '?')}+{model.get('dec_layers', '?')}"
        if model.get("kind") == "lm":
            layers = str(model.get("dec_layers", "?"))
        layout = encoder_layout(model)
        encoder = f" (encoder: {layout})" if layout else ""
        rows += [("kind", model.get("kind")),
                 ("architecture", f"{str(model.get('cell', '?')).upper()}, {layers} layers, "
                                  f"emb {model.get('emb_dim')}, hidden {model.get('hidden')}{encoder}, "
                                  f"attention {model.get('attention')}, vocab {model.get('vocab_size')}")]
    rows.append(("corpus", meta.get("corpus") or train.get("corpus") or "unknown"))
    if meta.get("parameters"):
        rows.append(("parameters", f"{int(meta['parameters']):,}"))
    if weights.exists():
        rows.append(("weights", f"{weights.stat().st_size / 2**20:.1f} MB ({weights.name})"))
    for key, label in (("step", "training steps"), ("valid_ppl", "validation perplexity"),
                       ("train_seconds", "training time (s)"), ("hardware", "trained on")):
        if meta.get(key) is not None:
            value = meta[key]
            rows.append((label, f"{value:.2f}" if isinstance(value, float) else value))
    if not config:
        rows.append(("config", "config.json missing"))
    lines = [f"| {name} | |", "|---|---|", *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)]
    return "\n".join(lines)


def training_curves(log_csv: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(loss-like columns vs step in long format, validation perplexity vs step) from a training log CSV."""
    if not log_csv.exists():
        return None, None
    try:
        log = pd.read_csv(log_csv)
    except (ValueError, pd.errors.ParserError):
        return None, None
    if "step" not in log:
        return None, None
    log = log.apply(pd.to_numeric, errors="coerce").dropna(subset=["step"])
    present = [c for c in LOSS_COLUMNS if c in log and log[c].notna().any()]
    loss = None
    if present:
        loss = log.melt(id_vars="step", value_vars=present, var_name="series", value_name="value").dropna()
    ppl = None
    if PPL_COLUMN in log and log[PPL_COLUMN].notna().any():
        ppl = log[["step", PPL_COLUMN]].dropna().reset_index(drop=True)
    return loss, ppl


def read_report(checkpoint_dir: str | Path) -> pd.DataFrame | None:
    """``report.csv`` (evaluation metrics per bot) if present and readable."""
    file = Path(checkpoint_dir) / "report.csv"
    if not file.exists():
        return None
    try:
        return pd.read_csv(file)
    except (ValueError, pd.errors.ParserError):
        return None
