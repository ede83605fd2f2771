"""What every tab of the app is built from: the bots, the batching scheduler, the checkpoint folder, the arena.

One :class:`AppContext` is made at start-up by :func:`demo_app.app.build_app` and handed to each tab's
``build(ctx, shared)``; nothing in the app lives in module globals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.bots import Bot
from core.serving import BatchScheduler


@dataclass
class AppContext:
    bots: Mapping[str, Bot]  # the served bots, in bots.json order (any number of them)
    scheduler: BatchScheduler  # every decode (search) of the app and the APIs goes through it (not the Search
    # tab's token view: a teacher-forced pass over a known reply, in the web process; core.branching.token_view)
    checkpoint_dir: Path  # the folder of bots.json (model cards, report.csv)
    missing: Mapping[str, str] = field(default_factory=dict)  # bots of bots.json not served, and why
    arena: Any = None  # core.arena's battle service when the app keeps votes (None: no Arena tab)
    extra: dict[str, Any] = field(default_factory=dict)  # settings of optional parts (e.g. the API limits)

    def close(self) -> None:
        """Stop what the context started, in the order requests flow: the Messenger bridge's pool (its waiting
        messages are dropped), the scheduler (its workers and decode processes; queued requests fail with Busy),
        the vote store's connections. Safe to call more than once; the HTTP server calls it when it shuts down."""
        bridge = self.extra.get("messenger")
        if bridge is not None:
            bridge.close()
        self.scheduler.close()
        if self.arena is not None:
            self.arena.store.close()
