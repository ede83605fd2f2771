"""The app's tabs, one module each: ``TITLE``, ``ID`` and ``build(ctx, shared, tab)`` (components and events).

Adding a tab is one module here (its builder and callbacks) plus one entry in :data:`demo_app.app.TABS`.
``shared`` is how tabs see each other's components: a tab publishes what others may read (the side-by-side tab
publishes ``records``, the last turn's full reply records, which the attention tab draws).
"""
