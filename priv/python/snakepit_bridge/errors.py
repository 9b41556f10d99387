"""Exceptions shared by the Snakepit bridge.

``Cancelled`` derives from :class:`BaseException`, like :class:`KeyboardInterrupt`, so that
``except Exception:`` blocks in adapter code do not swallow a cancellation.
"""

from __future__ import annotations

__all__ = ["Cancelled", "ElixirError", "SnakepitError", "ThreadSafetyViolation"]


class Cancelled(BaseException):
    """The job was cancelled.

    Raised asynchronously into a pool thread (``PyThreadState_SetAsyncExc``) when the Elixir
    caller timed out or died while the adapter method was running. It is delivered between
    Python bytecodes, so C code (a NumPy kernel, a blocking read) finishes first.

    Adapter code may catch it to release resources, but should re-raise it: nobody is waiting
    for the result any more.
    """


class SnakepitError(Exception):
    """Base class of the errors raised by ``snakepit_bridge`` itself."""


class ThreadSafetyViolation(SnakepitError):
    """A thread-safety problem found by a :class:`ThreadSafetyChecker` in strict mode.

    The message is the text the checker would otherwise log as a warning, for example
    ``THREAD SAFETY: Method 'predict' accessed by 5 different threads concurrently.``
    """


class ElixirError(SnakepitError):
    """An Elixir function called with ``snakepit_bridge.elixir.call`` failed.

    Raised when the function raised, exited or threw (``kind`` is ``"error"``, ``"exit"`` or
    ``"throw"``; the message is Elixir's, and ``elixir_stacktrace`` its formatted stacktrace),
    when no function has the name (``kind`` ``"unknown"``; the message lists the registered
    names), or when a call chain is too deep (``kind`` ``"depth"``).
    """

    def __init__(self, message: str, kind: str = "error", elixir_stacktrace: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.elixir_stacktrace = elixir_stacktrace

    def __str__(self) -> str:
        text = super().__str__()
        if self.elixir_stacktrace:
            return f"{text}\n{self.elixir_stacktrace}"
        return text
