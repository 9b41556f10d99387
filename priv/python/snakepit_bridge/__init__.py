"""Python side of Snakepit: write adapters that Elixir calls through a native thread pool.

The names of the threaded workers guide are importable as written there::

    from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool
    from snakepit_bridge.thread_safety_checker import ThreadSafetyChecker

and are also exported here, with:

- :class:`BaseAdapter`: base class for single-threaded adapters;
- :func:`ref`: return ``ref(obj)`` from a method to hand Elixir a ``%Snakepit.Ref{}`` to the
  object instead of a converted copy;
- :class:`Cancelled`: raised into a pool thread when the Elixir caller timed out or died;
- :mod:`snakepit_bridge.elixir` and :class:`ElixirError`: calling Elixir functions from Python;
- :class:`Pid` and :func:`send`: an Erlang pid received as an argument, and a way to send it
  a message from Python. They come from the ``_snakepit_native`` module that the NIF
  registers; outside the BEAM a stand-in ``Pid`` is provided and ``send`` raises
  ``RuntimeError``.
"""

from __future__ import annotations

from typing import Any

from ._refs import ref
from .base_adapter import BaseAdapter
from .base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool
from .errors import Cancelled, ElixirError, SnakepitError, ThreadSafetyViolation
from .thread_safety_checker import ThreadSafetyChecker

__version__ = "0.6.0"

__all__ = [
    "BaseAdapter",
    "Cancelled",
    "ElixirError",
    "Pid",
    "SnakepitError",
    "ThreadSafeAdapter",
    "ThreadSafetyChecker",
    "ThreadSafetyViolation",
    "__version__",
    "ref",
    "send",
    "thread_safe_method",
    "tool",
]

try:
    from _snakepit_native import Pid, send  # registered by the NIF inside the BEAM
except ImportError:

    class Pid:  # type: ignore[no-redef]
        """An Erlang process identifier, opaque to Python (stand-in outside the BEAM).

        Holds the pid's encoded form in ``raw`` (bytes). Pids compare and hash by that
        encoding, so they can be dict keys and set members.
        """

        __slots__ = ("raw",)

        def __init__(self, raw: bytes) -> None:
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise TypeError(f"Pid expects bytes, got {type(raw).__name__}")
            object.__setattr__(self, "raw", bytes(raw))

        def __setattr__(self, name: str, value: Any) -> None:
            raise AttributeError("Pid is immutable")

        def __eq__(self, other: object) -> bool:
            if not isinstance(other, Pid):
                return NotImplemented
            return self.raw == other.raw

        def __hash__(self) -> int:
            return hash((Pid, self.raw))

        def __repr__(self) -> str:
            return f"Pid<{self.raw.hex()}>"

        def __reduce__(self) -> Any:
            return (Pid, (self.raw,))

    def send(pid: Pid, term: Any) -> None:  # type: ignore[no-redef]
        """Send ``term`` to the Erlang process ``pid`` (only inside the BEAM).

        Raises:
            RuntimeError: always, outside the BEAM.
        """
        raise RuntimeError("send is only available inside the BEAM")
