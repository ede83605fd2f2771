"""Moved: each tab's callbacks live with the tab (:mod:`demo_app.tabs.side_by_side`, :mod:`demo_app.tabs.attention`,
:mod:`demo_app.tabs.batch`), the bubbles and tables in :mod:`demo_app.render`, the decoder controls and the
strategy-switching policy in :mod:`demo_app.controls`.

This module only keeps the names another module still imports from here (the Self-chat tab's); new code imports
:mod:`demo_app.render`.
"""

from demo_app.render import META_START, escape_text

__all__ = ["META_START", "escape_text"]
