"""Calling Elixir functions from Python (README, "Python calling Elixir").

Elixir registers functions with ``Snakepit.register_function(:name, fun)`` or
``config :snakepit, functions: [...]``; any adapter method may call them::

    from snakepit_bridge import elixir

    user = elixir.call("fetch_user", 42, timeout=5.0)
    names = elixir.functions()

``call`` blocks the calling thread (with the GIL released) until the function, run in a fresh
Elixir process, answers. ``await elixir.acall(...)`` is the form for ``async def`` code: it
does not block the event loop.

Errors: the function raised, exited or threw, or no function has that name →
:class:`snakepit_bridge.ElixirError`; no answer within ``timeout`` seconds → ``TimeoutError``;
the Python call that made it was cancelled (its Elixir caller timed out or died) →
:class:`snakepit_bridge.Cancelled`; a result Python cannot represent (a reference, a fun) →
``ElixirError`` with ``kind == "conversion"``.

The function may call ``Snakepit.execute`` on the pool that called it, even when every other
thread of the pool is busy: the waiting thread serves the calls of its own call chain, up to
16 nested ``elixir.call`` waits per thread (deeper: ``ElixirError`` with ``kind == "depth"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from typing import Any, Callable, List, Optional, Tuple

from .errors import Cancelled, ElixirError

__all__ = ["acall", "call", "functions", "set_transport"]

#: ``transport(name, args, timeout) -> (status, payload)``: how calls reach Elixir. Inside the
#: BEAM it is the NIF's ``elixir_call``; an OS worker (``worker.py``) sets its own.
Transport = Callable[[str, Tuple[Any, ...], Optional[float]], Tuple[str, Any]]

_transport: Optional[Transport] = None
_executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
_executor_lock = threading.Lock()


def set_transport(transport: Optional[Transport]) -> None:
    """Sets how calls reach Elixir (used by the process profile's worker)."""
    global _transport
    _transport = transport


def _get_transport() -> Transport:
    if _transport is not None:
        return _transport
    try:
        from _snakepit_native import elixir_call  # registered by the NIF inside the BEAM
    except ImportError:
        raise RuntimeError("snakepit_bridge.elixir is only available inside a Snakepit worker")
    return elixir_call


def call(name: str, *args: Any, timeout: Optional[float] = 5.0) -> Any:
    """Calls the registered Elixir function ``name`` with ``args`` and returns its result.

    Args:
        name: the name the function was registered under (a string).
        *args: its arguments, converted to Elixir terms as command results are.
        timeout: seconds to wait for the answer; ``None`` waits as long as the call's job runs.

    Raises:
        ElixirError: the function raised, exited or threw; or ``name`` is not registered (the
            message lists the registered names); or the call chain is too deep.
        TimeoutError: no answer within ``timeout`` (the Elixir process is killed).
        Cancelled: the job that made the call was cancelled while it waited.
    """
    status, payload = _get_transport()(str(name), tuple(args), timeout)
    return _result(str(name), status, payload, timeout)


def _result(name: str, status: str, payload: Any, timeout: Optional[float]) -> Any:
    if status == "reply":
        tag, body = payload
        if tag == "ok":
            return body
        kind, message, stacktrace = body
        raise ElixirError(message, kind, stacktrace)
    if status == "timeout":
        raise TimeoutError(f"Elixir function {name!r} did not answer within {timeout} s")
    if status == "cancelled":
        raise Cancelled(f"cancelled while waiting for Elixir function {name!r}")
    if status == "depth":
        raise ElixirError(
            f"call chain too deep: {payload} nested elixir.call waits on one thread is the limit"
            f" (calling {name!r})",
            "depth",
        )
    if status == "unconvertible":
        raise ElixirError(str(payload), "conversion")
    raise ElixirError(str(payload), status)


def functions() -> List[str]:
    """The names of the Elixir functions registered for Python, sorted."""
    return list(call("__snakepit_functions__"))


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=64, thread_name_prefix="snakepit-acall"
            )
        return _executor


async def acall(name: str, *args: Any, timeout: Optional[float] = 5.0) -> Any:
    """``await elixir.acall(name, *args)``: :func:`call` without blocking the event loop.

    The wait runs on a helper thread (at most 64 at a time); the errors are those of
    :func:`call`. Cancelling the awaiting task stops waiting at once; the Elixir function
    is stopped when ``timeout`` runs out.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _pool(), functools.partial(call, name, *args, timeout=timeout)
    )
