"""Python ``logging`` records of adapters, forwarded to Elixir's ``Logger``.

Inside the BEAM the NIF installs :class:`ElixirHandler` on the root logger. Each record goes,
without blocking the calling thread, to the ``Snakepit.PythonLogger`` process, which logs it
with the Python thread name (``[snakepit-hpc_pool-w0-t3]``), the logger name and the pool in
the metadata.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

__all__ = ["ElixirHandler", "install", "current_pool"]

_local = threading.local()


def set_pool(pool: Optional[str]) -> None:
    """Record the pool the calling thread serves (called when a pool thread starts)."""
    _local.pool = pool


def current_pool() -> Optional[str]:
    """The pool the calling thread serves, or None outside pool threads."""
    return getattr(_local, "pool", None)


class ElixirHandler(logging.Handler):
    """Sends each record to Elixir's Logger through the NIF."""

    def __init__(self, sink, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._sink(record.levelno, record.name, message, record.threadName or "", current_pool())
        except Exception:  # never let logging break the adapter
            self.handleError(record)


def install(level: int = logging.INFO) -> ElixirHandler:
    """Install the handler on the root logger (once) and set the root level."""
    from _snakepit_native import log  # registered by the NIF

    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, ElixirHandler):
            return handler
    handler = ElixirHandler(log)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
