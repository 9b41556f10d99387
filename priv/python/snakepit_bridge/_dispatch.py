"""Command dispatch and exception capture, written once for every profile. Not a user API.

The ``:thread`` profile's NIF (``native/snakepit/src/dispatch.rs``, ``error.rs``) and the
``:process`` worker (:mod:`snakepit_bridge.worker`) both look commands up in the dict
:func:`snakepit_bridge._runtime.commands` builds, and both call these functions when a call
fails: :func:`unknown_command` for the message of a command the adapter does not have,
:func:`exception_info` for the type, message and traceback of an exception, and
:func:`not_a_value` / :func:`not_an_iterator` when a command's result does not suit the call
(a generator given to ``execute``, a dict given to ``execute_stream``). So a Python error reads
the same in every profile.
"""

from __future__ import annotations

import collections.abc
import difflib
import json
import os
import traceback
from typing import Any, Iterable, Tuple

__all__ = [
    "UnknownCommand",
    "exception_info",
    "not_a_value",
    "not_an_iterator",
    "type_name",
    "unknown_command",
]

# Frames of these files at the head of a traceback are Snakepit's own dispatch, not the
# adapter's code: they are left out, so that a traceback starts where the user's code does.
_OWN_FILES = frozenset(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("worker.py", "_dispatch.py", "_builtins.py")
)


def type_name(obj: Any) -> str:
    """``module.QualName`` of the type of ``obj`` (an exception or any value), just
    ``QualName`` for builtins. The one definition: etf.py and _refs.py use it too."""
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins"):
        return qualname
    return f"{module}.{qualname}"


def exception_info(exc: BaseException, tb: Any = None) -> Tuple[str, str, str]:
    """``(python_type, message, traceback)`` of ``exc``, never raising itself.

    The traceback (``tb``, else ``exc.__traceback__``) is the full
    ``traceback.format_exception`` text, without Snakepit's own frames at its head.
    """
    python_type = type_name(exc)
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not hide the error
        message = "<exception str() failed>"
    if tb is None:
        tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _OWN_FILES:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # noqa: BLE001
        text = f"{python_type}: {message}\n"
    return python_type, message, text


class UnknownCommand(LookupError):
    """A command the adapter does not have, found after dispatch (``__snakepit_call__``): both
    profiles answer it as the ``:validation`` error of a plain unknown command, with the
    commands there are under ``available``."""

    def __init__(self, message: str, available: Iterable[str]) -> None:
        super().__init__(message)
        self.available = sorted(available)


def unknown_command(name: str, class_name: str, names: Iterable[str], adapter: Any = None) -> str:
    """The message for a command ``name`` that adapter class ``class_name`` does not have.

    It lists the commands there are, suggests the closest one, and says so when ``name`` is a
    method of the adapter that is not marked as a command.
    """
    names = sorted(names)
    shown = json.dumps(name, ensure_ascii=False)
    message = f"unknown command {shown} for adapter {class_name}"
    method = getattr(adapter, name, None) if adapter is not None and name.isidentifier() else None
    if callable(method) and not name.startswith("_"):
        message += (
            f"; the method {name} exists but is not a command: mark it with @tool "
            "(or @thread_safe_method)"
        )
    else:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {json.dumps(close[0], ensure_ascii=False)}?)"
    return f"{message}; available commands: {', '.join(names)}"



def not_a_value(command: str, result: Any) -> "str | None":
    """The message when ``execute`` got an iterator it cannot send as one value, else ``None``.

    Called only after the result failed to convert, so plain calls pay nothing for it.
    """
    if not isinstance(result, (collections.abc.Iterator, collections.abc.AsyncIterator)):
        return None
    what = "a generator" if isinstance(result, collections.abc.Generator) else (
        f"an iterator ({type_name(result)})"
    )
    return (
        f"command {json.dumps(command, ensure_ascii=False)} returned {what}: "
        "use Snakepit.execute_stream/4 to receive its items"
    )


def not_an_iterator(command: str, result: Any) -> str:
    """The message when ``execute_stream`` got a result that is not an iterator.

    A stream reads an iterator (a generator, or what ``iter(...)`` returns); anything else is an
    error rather than being iterated, so a dict does not silently stream its keys.
    """
    message = (
        "execute_stream needs a command that returns an iterator or generator (yield the "
        f"items, or return iter(...)); command {json.dumps(command, ensure_ascii=False)} "
        f"returned {type_name(result)}"
    )
    if isinstance(result, collections.abc.Mapping):
        message += " (iterating it would give only its keys: return iter(d.items()) for pairs)"
    elif isinstance(result, collections.abc.Iterable) and not isinstance(
        result, (str, bytes, bytearray)
    ):
        message += " (return iter(...) of it to stream its items, or use Snakepit.execute/4)"
    else:
        message += ": use Snakepit.execute/4 for a single value"
    return message
