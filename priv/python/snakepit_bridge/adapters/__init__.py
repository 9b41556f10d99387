"""Adapters shipped with Snakepit.

- :class:`~snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter`: the default
  adapter of a pool, and a copyable example of a thread-safe adapter.

The class is imported on demand (``snakepit_bridge.adapters.threaded_showcase``) so that
importing this package stays cheap.
"""

__all__ = ["threaded_showcase"]
