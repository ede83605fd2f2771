"""Seq2Seq Chatbot Arena core: models, data, training, decoding and the bot registry (never imports gradio).

    >>> from core import load_bots
    >>> load_bots()["beam"].respond("how are you?").text
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Bot", "DecodeConfig", "Reply", "generate", "load_bots"]

_EXPORTS = {"Bot": "core.bots", "load_bots": "core.bots", "DecodeConfig": "core.decoding",
            "Reply": "core.decoding", "generate": "core.decoding"}

if TYPE_CHECKING:
    from core.bots import Bot, load_bots
    from core.decoding import DecodeConfig, Reply, generate


def __getattr__(name: str) -> Any:
    """Import on first use, so ``import core.tokenizer`` does not pull in torch models and the bot registry."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
