"""Thread-safe adapters: one instance, many pool threads.

In a ``worker_profile: :thread`` pool, ``threads_per_worker`` native threads call the methods
of ONE adapter instance at the same time. On a free-threaded CPython (3.14t) they really run
in parallel; on a GIL build Python bytecode is serialised but code that releases the GIL
(NumPy, I/O, ``time.sleep``) overlaps. Either way the adapter must be written for it::

    from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool

    class MyAdapter(ThreadSafeAdapter):
        __thread_safe__ = True  # required declaration

        def __init__(self):
            super().__init__()
            self.config = {"timeout": 30}  # pattern 1: shared, read-only after __init__
            self.request_count = 0         # pattern 3: shared and mutable -> lock it

        @thread_safe_method
        @tool(description="Thread-safe prediction")
        def predict(self, input_data: str) -> dict:
            cache = self.get_thread_local("cache", {})  # pattern 2: per-thread state
            if input_data not in cache:
                cache[input_data] = input_data.upper()
                self.set_thread_local("cache", cache)
            with self.acquire_lock():
                self.request_count += 1
            return {"prediction": cache[input_data]}

``@thread_safe_method`` marks a method as a command and tracks it: ``get_stats()`` reports
the total and active requests and, per thread, the requests served and the time spent.
Tracking a call costs well under a microsecond: each thread updates its own record (no lock
on the call path) and ``get_stats()`` sums the records.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, ContextManager, Dict, List, Optional, TypeVar

from . import thread_safety_checker as _tsc
from ._tooling import COMMAND_ATTR, tool
from .base_adapter import BaseAdapter

__all__ = ["ThreadSafeAdapter", "thread_safe_method", "tool", "collect_stats"]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute marking a function wrapped by ``@thread_safe_method``.
THREAD_SAFE_ATTR = "__snakepit_thread_safe__"

_perf = time.perf_counter
_STATE_LOCK = threading.Lock()


class _ThreadRecord:
    """Per-thread, per-adapter counters. Only the owning thread writes them."""

    __slots__ = ("thread", "requests", "busy", "depth")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.requests = 0  # outermost tracked calls started by this thread
        self.busy = 0.0  # seconds spent in finished outermost calls
        self.depth = 0  # tracked calls currently on this thread's stack


def _init_state(obj: Any) -> bool:
    """Give ``obj`` its tracking state (idempotent, thread-safe). False if it cannot hold it.

    ``ThreadSafeAdapter.__init__`` calls it; it also runs lazily for a subclass that forgot
    ``super().__init__()`` and for plain classes that use ``@thread_safe_method``.
    """
    attrs = getattr(obj, "__dict__", None)
    if attrs is None:
        return False
    if "_snakepit_lock" in attrs:
        return True
    with _STATE_LOCK:
        if "_snakepit_lock" not in attrs:
            try:
                obj._snakepit_tls = threading.local()  # holds this thread's _ThreadRecord
                obj._snakepit_local = threading.local()  # get/set_thread_local values
                obj._snakepit_records = []  # every _ThreadRecord, appended under the lock
                obj._snakepit_started = _perf()
                obj._snakepit_lock = threading.RLock()  # set last: marks the state complete
            except (AttributeError, TypeError):
                return False
    return True


def _thread_record(obj: Any) -> Optional[_ThreadRecord]:
    """Create and register the calling thread's record for ``obj`` (once per thread)."""
    if not _init_state(obj):
        return None
    rec = _ThreadRecord(threading.current_thread())
    with obj._snakepit_lock:
        obj._snakepit_records.append(rec)
    obj._snakepit_tls.rec = rec
    return rec


def collect_stats(obj: Any) -> Dict[str, Any]:
    """Request statistics of an adapter tracked by ``@thread_safe_method``.

    Works for any object (zeros when nothing was tracked). See
    :meth:`ThreadSafeAdapter.get_stats` for the keys.
    """
    lock = getattr(obj, "__dict__", {}).get("_snakepit_lock")
    records: List[_ThreadRecord] = []
    if lock is not None:
        with lock:
            records = list(obj._snakepit_records)
    now = _perf()
    elapsed = max(now - getattr(obj, "_snakepit_started", now), 1e-9)
    total = 0
    active = 0
    utilization: Dict[str, Dict[str, Any]] = {}
    for rec in records:
        requests = rec.requests
        total += requests
        if rec.depth:
            active += 1
        name = rec.thread.name
        entry = utilization.get(name)
        if entry is None:
            entry = utilization[name] = {"requests": 0, "busy_seconds": 0.0, "busy_share": 0.0}
        entry["requests"] += requests
        entry["busy_seconds"] += rec.busy
    for entry in utilization.values():
        entry["busy_share"] = round(entry["busy_seconds"] / elapsed, 6)
        entry["busy_seconds"] = round(entry["busy_seconds"], 6)
    return {
        "adapter": type(obj).__name__,
        "thread_safe": _tsc.declares_thread_safety(type(obj)),
        "total_requests": total,
        "active_requests": active,
        "max_workers": getattr(obj, "max_workers", 1),
        "uptime_seconds": round(elapsed, 6),
        "thread_utilization": utilization,
    }


def thread_safe_method(fn: F) -> F:
    """Mark a method as a thread-safe command and track its calls.

    The wrapper (``functools.wraps``) counts each call in the adapter's statistics
    (``get_stats()``: total and active requests, per-thread requests and busy time) and, when
    a :class:`~snakepit_bridge.thread_safety_checker.ThreadSafetyChecker` is active, reports
    entry and exit to it. ``@tool`` metadata is kept whichever order the two decorators are
    stacked in. A tracked method called from another tracked method of the same adapter on
    the same thread counts once (the outer call).

    The decorator does not lock anything: protect shared mutable state with
    ``with self.acquire_lock():``. For a generator method, the tracked call is the creation
    of the generator, not its iteration.
    """
    if getattr(fn, THREAD_SAFE_ATTR, False) is True:
        return fn
    method_name = getattr(fn, "__name__", "method")

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            rec = self._snakepit_tls.rec
        except AttributeError:
            rec = _thread_record(self)
            if rec is None:  # an object without __dict__: nothing to track
                return fn(self, *args, **kwargs)
        checker = _tsc._active_checker
        if checker is not None:
            checker._enter(self, method_name)  # strict mode may refuse the call here
        start = _perf()
        # From here to the `try`, no call that could deliver an async exception (Cancelled),
        # and the `finally` restores the depth first: the statistics stay consistent.
        depth = rec.depth
        rec.depth = depth + 1
        if not depth:  # a tracked call made from a tracked call is not a new request
            rec.requests += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            rec.depth = depth
            if not depth:
                rec.busy += _perf() - start
            if checker is not None:
                checker._exit(method_name)

    setattr(wrapper, THREAD_SAFE_ATTR, True)
    setattr(wrapper, COMMAND_ATTR, True)
    return wrapper  # type: ignore[return-value]


class ThreadSafeAdapter(BaseAdapter):
    """Base class for adapters whose methods run on several pool threads at once.

    Subclasses declare ``__thread_safe__ = True`` (this base class leaves it False, so an
    adapter that forgets is reported: ``Adapter MyAdapter does not declare thread safety.``)
    and follow three patterns for their state:

    1. shared read-only: set in ``__init__``/``initialize()``, never modified afterwards;
    2. thread-local: :meth:`get_thread_local` / :meth:`set_thread_local`;
    3. shared mutable: modified only inside ``with self.acquire_lock():``.

    Attributes:
        max_workers: the number of pool threads calling this instance (set by the runtime
            from the pool's ``threads_per_worker``; 1 by default).
    """

    __thread_safe__: bool = False
    max_workers: int = 1

    def __init__(self) -> None:
        """Set up the lock, the thread-local storage and the request statistics."""
        super().__init__()
        _init_state(self)

    def acquire_lock(self) -> ContextManager[Any]:
        """Return the adapter's lock, for ``with self.acquire_lock(): ...``.

        One re-entrant lock (``threading.RLock``) per instance: a thread holding it may take
        it again, for example from a helper method. Hold it only around the update of shared
        state, never around long computations (NumPy, I/O): that would serialise the pool.
        """
        try:
            return self._snakepit_lock
        except AttributeError:
            _init_state(self)
            return self._snakepit_lock

    def _thread_locals(self) -> Dict[Any, Any]:
        try:
            local = self._snakepit_local
        except AttributeError:
            _init_state(self)
            local = self._snakepit_local
        return local.__dict__  # this thread's dictionary

    def get_thread_local(self, key: Any, default: Any = None) -> Any:
        """Return the calling thread's value for ``key``, or ``default`` when it has none.

        Thread-local values are private to one OS thread (and to this adapter instance):
        caches, scratch buffers, per-thread connections.
        """
        return self._thread_locals().get(key, default)

    def set_thread_local(self, key: Any, value: Any) -> None:
        """Set the calling thread's value for ``key``; other threads do not see it."""
        self._thread_locals()[key] = value

    def clear_thread_local(self, key: Any = None) -> None:
        """Remove the calling thread's value for ``key``, or all its values when key is None."""
        values = self._thread_locals()
        if key is None:
            values.clear()
        else:
            values.pop(key, None)

    def get_stats(self) -> Dict[str, Any]:
        """Request statistics of this adapter instance.

        Returns a dict with:

        - ``total_requests``: calls of ``@thread_safe_method`` methods started so far;
        - ``active_requests``: threads currently inside such a call;
        - ``max_workers``: the pool threads serving this instance;
        - ``thread_utilization``: ``{thread name: {"requests", "busy_seconds", "busy_share"}}``
          where ``busy_share`` is the busy time over the time since the adapter was created;
        - ``adapter``, ``thread_safe``, ``uptime_seconds``.

        The counts are exact once the calls have returned, on free-threaded builds too. A
        tracked method that itself returns ``get_stats()`` sees its own call as active.
        """
        return collect_stats(self)
