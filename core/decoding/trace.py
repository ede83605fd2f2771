"""The search trace (``generate(..., trace=True)``): every candidate of every step with its parent, token,
step log p, cumulative score and parts, and whether it was kept, pruned or finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from core.decoding.config import DecodeConfig
from core.decoding.modifiers import _repetition_delta
from core.decoding.registry import NEG_INF
from core.decoding.results import ranker, zero_parts
from core.tokenizer import EOS_ID


class _Tracer:
    """Collects the rows of Reply.trace (made only with ``generate(..., trace=True)``)."""

    def __init__(self, B: int, cfg: DecodeConfig, piece: Callable[[int], str]) -> None:
        self.cfg, self.piece, self.rank = cfg, piece, ranker(cfg)
        self.rows: list[list[dict[str, Any]]] = [[] for _ in range(B)]
        self.row_ids: list[list[int | None]] = [[0] for _ in range(B)]  # trace id of each live row of a prompt
        self.next_id = [1] * B
        self.paths: list[dict[int, tuple[list[int], dict[str, float]]]] = [{0: ([], zero_parts())} for _ in range(B)]

    def step(self, t: int, cand: dict[str, Tensor | None], kept: Tensor, ends: Tensor | None, K: int,
             done_before: list[bool], done_after: list[bool], last: bool) -> None:
        """Record every candidate (B, C) of step t: ``kept`` (B, K) their positions that became rows, ``ends``
        (B, C) the ones finished by </s>; ``last``: the kept rows finish at max_len."""
        cfg, theta = self.cfg, self.cfg.repetition_penalty
        B, C = cand["scores"].shape
        lists = {k: v.tolist() if v is not None else [[0.0] * C for _ in range(B)] for k, v in cand.items()}
        kept_l = kept.tolist()
        ends_l = ends.tolist() if ends is not None else [[False] * C for _ in range(B)]
        for b in range(B):
            if done_before[b]:
                continue
            row_of = {pos: k for k, pos in enumerate(kept_l[b])}
            new_ids: list[int | None] = [None] * K
            for c in range(C):
                score = lists["scores"][b][c]
                if score == NEG_INF:
                    continue
                parent = self.row_ids[b][lists["beams"][b][c]]
                ptoks, pparts = self.paths[b][parent]
                tok, lp = lists["tokens"][b][c], lists["logp"][b][c]
                parts = dict(pparts)
                parts["logp"] += lp
                parts["antilm"] += lists["antilm"][b][c]
                parts["diversity"] += lists["extra"][b][c]
                parts["bonus"] += cfg.n_bonus if tok != EOS_ID else 0.0
                if theta != 1.0 and tok in ptoks:
                    parts["repetition"] += _repetition_delta(lp, theta)
                cid = self.next_id[b]
                self.next_id[b] += 1
                is_row = c in row_of and tok != EOS_ID
                shown = score
                if ends_l[b][c] or (last and is_row):
                    status = "finished"
                    shown = self.rank(score, t + 1) if self.rank else score
                    parts["bonus"] += shown - score
                elif is_row and not done_after[b]:
                    status = "kept"
                    new_ids[row_of[c]] = cid
                    self.paths[b][cid] = (ptoks + [tok], parts)
                else:
                    status = "pruned"
                self.rows[b].append({"step": t, "id": cid, "parent": parent, "token": tok, "text": self.piece(tok),
                                     "logp": lp, "score": shown, "parts": parts, "status": status})
            self.row_ids[b] = new_ids

