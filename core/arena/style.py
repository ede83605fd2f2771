"""Style of the judged replies, and the covariates of style control (Chatbot Arena, "Controlling for Style").

    >>> reply_style(["hi there", "what do you do?"])                 # (mean words per reply, share ending "?")
    (2.5, 0.5)
    >>> judged_replies("per_turn", conversation_a, conversation_b)    # the replies a vote judged, per side
    >>> style_covariates(frame)                                        # (n, 2) standardised, names

Features f per side of a vote, over the replies the vote judged: ``length`` (mean words per reply) and
``question`` (share of replies ending with "?"). Which replies a vote judged depends on its battle kind:
    single    every assistant reply of the side's conversation
    per_turn  the last reply only (the earlier turns are the shared conversation, the same on both sides)
    dialogue  every turn after the opening of the side's self-chat (both speakers are that bot)
Mean words (not FastChat's total tokens): a longer dialogue must not count as longer replies.

Covariate k of a vote: d_k = (f_k(A) - f_k(B)) / (f_k(A) + f_k(B)) (0 when both are 0), standardised over the
votes of the fit, z_k = (d_k - mean) / std, as FastChat's ``preprocess_for_style`` does. A covariate that does not
vary (std 0: e.g. no reply ever ends with "?") is left out of the fit and reported as 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

FEATURES = {"length": "words", "question": "question"}  # feature -> the frame's column stem (words_a, words_b)
LABELS = {"length": "reply length (words)", "question": "replies ending with a question"}
STYLE_COLUMNS = [f"{stem}_{side}" for stem in FEATURES.values() for side in ("a", "b")]
_WORD = re.compile(r"[\w']+")


def reply_style(replies: Sequence[str]) -> tuple[float, float]:
    """(mean words per reply, share of replies ending with '?'); (0, 0) for no replies."""
    if not replies:
        return 0.0, 0.0
    words = sum(len(_WORD.findall(r)) for r in replies) / len(replies)
    questions = sum(r.rstrip().rstrip("\"')»”’").endswith("?") for r in replies) / len(replies)
    return float(words), float(questions)


def judged_replies(kind: str, conversation_a: Sequence[dict[str, Any]],
                   conversation_b: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The replies of each side that a vote of battle ``kind`` judged (see the module docstring)."""
    def side(conv: Sequence[dict[str, Any]]) -> list[str]:
        texts = [m.get("content") or "" for m in conv if m.get("role") != "system"]
        if kind == "dialogue":
            return texts[1:]
        replies = [m.get("content") or "" for m in conv if m.get("role") == "assistant"]
        return replies[-1:] if kind == "per_turn" else replies

    return side(conversation_a), side(conversation_b)


def style_columns(kind: str, conversation_a: Sequence[dict[str, Any]],
                  conversation_b: Sequence[dict[str, Any]]) -> dict[str, float]:
    """words_a, words_b, question_a, question_b of one vote."""
    replies_a, replies_b = judged_replies(kind, conversation_a, conversation_b)
    (wa, qa), (wb, qb) = reply_style(replies_a), reply_style(replies_b)
    return {"words_a": wa, "words_b": wb, "question_a": qa, "question_b": qb}


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where a + b == 0."""
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total != 0, (a - b) / np.where(total != 0, total, 1), 0.0)


def style_covariates(votes: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """(z (n, k) standardised covariates of the features that vary, their names, the names left out)."""
    missing = [c for c in STYLE_COLUMNS if c not in votes.columns]
    if missing:
        raise ValueError(f"style control needs the replies' style ({', '.join(missing)} missing): read the votes "
                         "with their conversations (the store, or a clean-battle file with conversation_a/b)")
    used, dropped, cols = [], [], []
    for name, stem in FEATURES.items():
        a = pd.to_numeric(votes[f"{stem}_a"], errors="coerce").fillna(0).to_numpy(dtype=float)
        b = pd.to_numeric(votes[f"{stem}_b"], errors="coerce").fillna(0).to_numpy(dtype=float)
        d = normalised_difference(a, b)  # (n,)
        std = d.std()
        if len(d) < 2 or std < 1e-12:
            dropped.append(name)
            continue
        used.append(name)
        cols.append((d - d.mean()) / std)
    z = np.stack(cols, axis=1) if cols else np.zeros((len(votes), 0))
    return z, used, dropped
