"""One run folder's plumbing, shared by MLE training (core.training.train) and RL fine-tuning (core.training.rl).

A run folder holds::

    last/      the full checkpoint to resume from (weights + optimizer and RNG state), written every few steps
    best/      the checkpoint to ship (best validation score), always present once a run has stopped
    log.csv    one row per logged step; rows after the step ``last/`` holds are dropped on resume

Both folders are written atomically (core.checkpoint), and only then reported: the line
``saved <out>/last at step N`` on stdout means that step is on disk. A run stops at its step budget, its time
budget, by early stopping, or at the first Ctrl-C (SIGINT) or SIGTERM, which is honoured between two steps so the
weights and the optimizer state always agree; a second Ctrl-C interrupts at once.

    >>> run = RunFolder("runs/mle", LOG_FIELDS)
    >>> info = run.resume(model, optimizer) or fresh_info     # loads last/ when there is one
    >>> clock = TimeBudget(max_minutes=5, spent_s=info["train_seconds"])
    >>> with StopRequest() as stop:
    ...     while not (stop.requested or clock.up()): ...
"""

from __future__ import annotations

import csv
import os
import platform
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from core.checkpoint import load_train_state, load_weights, resolve, save_checkpoint
from core.tokenizer import Tokenizer


def set_threads(threads: int) -> None:
    """Size torch's CPU thread pool: ``threads`` > 0 sets it, 0 leaves torch's default (all cores)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: all cores), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def hardware_name(device: torch.device, processes: int = 1) -> str:
    """What a run trained on, for its model card: the GPU's name, or the CPU architecture and thread count."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)")
    return f"{name}, {processes} process(es)"


# ----------------------------------------------------------------------------- the log


def truncate_log(path: Path, step: int, fieldnames: list[str]) -> None:
    """Drop log rows written after ``step`` (the checkpoint a run resumes from writes them again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def append_log(path: Path, row: dict[str, Any], fieldnames: list[str]) -> None:
    """Append one row to a CSV log, writing the header first if the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        if new:
            w.writeheader()
        w.writerow(row)


# ----------------------------------------------------------------------------- the folder


class RunFolder:
    """``last/``, ``best/`` and ``log.csv`` of one run. ``main=False`` (other DDP ranks): read, never write."""

    def __init__(self, out: str | Path, log_fields: list[str], *, main: bool = True) -> None:
        self.out = Path(out)
        self.log_fields = log_fields
        self.main = main
        self.log_file = self.out / "log.csv"
        if main:
            self.out.mkdir(parents=True, exist_ok=True)

    def has_last(self) -> bool:
        return (resolve(self.out / "last") / "train_state.json").exists()

    def has_best(self) -> bool:
        return (resolve(self.out / "best") / "config.json").exists()

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Load ``last/`` into ``model`` and ``optimizer`` (and the RNGs) and return its saved info, dropping log
        rows after its step; None (and an emptied log) when there is nothing to resume."""
        if not self.has_last():
            if self.main:
                truncate_log(self.log_file, 0, self.log_fields)  # a run killed before its first save starts again
            return None
        load_weights(model, resolve(self.out / "last") / "model.safetensors")
        info = load_train_state(self.out / "last", optimizer)
        if self.main:
            truncate_log(self.log_file, info["step"], self.log_fields)
            print(f"resumed from {self.out / 'last'} at step {info['step']}", flush=True)
        return info

    def save(self, name: str, model: nn.Module, tokenizer: Tokenizer, *, meta: dict[str, Any],
             train_state: dict[str, Any] | None = None) -> None:
        """Write ``<out>/<name>`` atomically, then say so on stdout (``saved <path> at step N``)."""
        if not self.main:
            return
        save_checkpoint(self.out / name, model, tokenizer, meta=meta, train_state=train_state)
        print(f"saved {self.out / name} at step {meta.get('step')}", flush=True)

    def log(self, row: dict[str, Any]) -> None:
        if self.main:
            append_log(self.log_file, row, self.log_fields)


# ----------------------------------------------------------------------------- when to stop


class TimeBudget:
    """Wall time of a run across its resumes: ``spent_s`` carried over from earlier invocations, plus this one.
    ``max_minutes`` (0: none) limits this invocation."""

    def __init__(self, max_minutes: float = 0.0, spent_s: float = 0.0) -> None:
        self.max_s = max_minutes * 60
        self.spent_s = spent_s
        self.t0 = time.time()

    def now_s(self) -> float:
        """Seconds this invocation has run."""
        return time.time() - self.t0

    def total_s(self) -> float:
        """Seconds of training over all invocations of the run."""
        return self.spent_s + self.now_s()

    def up(self) -> bool:
        return bool(self.max_s) and self.now_s() > self.max_s


class StopRequest:
    """Turns the first SIGINT (Ctrl-C) or SIGTERM into ``requested = True``, for the loop to honour between two
    steps; a second signal raises KeyboardInterrupt at once. Outside the main thread it only exists (signals
    cannot be caught there), and ``requested`` stays False."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after this step (press Ctrl-C again to stop at once)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
