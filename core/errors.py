"""Typed errors of the core: a bad input names its field (and its allowed range) as data, so a caller such as the
JSON API maps it to its error answer without parsing the message. Imports nothing of the project.

    >>> try:
    ...     DecodeConfig(beam_size=99)
    ... except SettingError as e:
    ...     e.field, e.range                      # ('beam_size', (1, 50))
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["SettingError"]


class SettingError(ValueError):
    """A bad value of one named input: a decoder setting (``field`` is a DecodeConfig field name such as
    ``"beam_size"``) or a field of a request the core checks (``"prompt"``, ``"history"``, ``"history[3]"``).

    ``range`` is the allowed ``(lo, hi)`` of a numeric setting, read from the DecodeConfig field metadata (a bound
    naming another field resolved to that field's value; whether ``lo`` itself is allowed the message says);
    None for any other input. A ValueError, so ``except ValueError`` still catches it."""

    def __init__(self, message: str, *, field: str, range: tuple[Any, Any] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.range = range

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only arguments: pickle (e.g. across processes) rebuilds it through a partial
        return functools.partial(type(self), field=self.field, range=self.range), (str(self),)
