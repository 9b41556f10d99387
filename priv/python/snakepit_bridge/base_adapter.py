"""Base class for single-threaded adapters.

An adapter is a plain Python object; its commands are the methods marked ``@tool`` (or
``@thread_safe_method``). One instance lives as long as its worker, so state set in
``__init__`` or ``initialize()`` is kept between calls::

    from snakepit_bridge.base_adapter import BaseAdapter, tool

    class EchoAdapter(BaseAdapter):
        def initialize(self) -> None:
            self.greeting = "hello"

        @tool(description="Greet someone")
        def greet(self, name: str) -> str:
            return f"{self.greeting}, {name}"

For adapters called by several pool threads at once, subclass
:class:`snakepit_bridge.base_adapter_threaded.ThreadSafeAdapter` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

from ._tooling import tool
from .errors import SnakepitError

__all__ = ["BaseAdapter", "tool"]


class BaseAdapter:
    """Base class for adapters; every hook is optional.

    Lifecycle: the runtime constructs the class with no arguments, calls :meth:`initialize`
    once, routes calls to the marked methods, and calls :meth:`cleanup` when the worker stops
    or is recycled.
    """

    def __init__(self) -> None:
        """Construct the adapter. Subclasses that override it call ``super().__init__()``."""
        self._snakepit_commands: Optional[Dict[str, Callable[..., Any]]] = None

    def initialize(self) -> None:
        """Hook called once after construction, before the first call. No-op by default."""

    def cleanup(self) -> None:
        """Hook called when the worker stops or is recycled. No-op by default."""

    def execute_tool(
        self, name: str, arguments: Optional[Mapping[str, Any]], context: Any = None
    ) -> Any:
        """Run the command ``name`` with ``arguments`` as keyword arguments.

        The default looks the command up among the adapter's commands (see :meth:`get_tools`)
        and calls it with ``**arguments``. Override it to add routing, auditing or argument
        rewriting; the pool itself calls the command methods directly.

        Args:
            name: the command name.
            arguments: keyword arguments for the command (None means none).
            context: caller context, unused by the default implementation.

        Raises:
            SnakepitError: ``name`` is not a command; the message lists the commands.
        """
        commands = self._snakepit_commands_dict()
        try:
            fn = commands[name]
        except KeyError:
            available = ", ".join(sorted(commands))
            raise SnakepitError(
                f"unknown command {name!r} for {type(self).__name__}; available: {available}"
            ) from None
        return fn(**dict(arguments or {}))

    def get_tools(self) -> List[Dict[str, Any]]:
        """Describe the commands: ``[{"name", "description", "parameters"}, ...]`` by name."""
        from . import _runtime

        return _runtime.tools(self)

    def _snakepit_commands_dict(self) -> Dict[str, Callable[..., Any]]:
        commands = getattr(self, "_snakepit_commands", None)
        if commands is None:
            from . import _runtime

            # Benign race: two threads may both build the same dict; either result is right.
            commands = _runtime.commands(self)
            self._snakepit_commands = commands
        return commands
