"""``snakepit_bridge.elixir`` inside a ``:process`` worker (``worker.py``): calls to Elixir
functions travel as frames over the worker's port.

Re-entrancy: while a thread waits, a ``Snakepit.execute`` on this pool from the function's
process comes as kind 9, ``<<call_id::32>>`` then an ordinary call or stream frame; the
waiting thread runs it (so a chain never needs a second thread; at most 16 nested waits per
thread). A job for a call no longer waiting goes to the worker's queue.

Worker → Elixir: kind 7, ``{call_id, name, args, job_id | nil}`` (a call; ``job_id`` is the job
whose thread makes it), kind 8, ``<<call_id::32>>`` (the call was abandoned: timeout or
cancellation; Elixir stops the function's process). Elixir → worker: kind 7,
``<<call_id::32>>`` then ``term_to_binary({:ok, value} | {:error, {kind, message, stack}})``.
"""

from __future__ import annotations

import itertools
import queue
import struct
import threading
import time
from typing import Any, Dict, Optional, Tuple

from . import etf

ELIXIR_CALL, ELIXIR_CANCEL = 7, 8
ELIXIR_REPLY = 7
NESTED = 9
#: How many elixir.call waits may be nested on one thread (as in the thread profile).
MAX_DEPTH = 16
_u32 = struct.Struct(">I")
# How often a waiting thread checks its job's cancellation and its timeout.
_POLL = 0.02


class ElixirCalls:
    """The calls to Elixir of one worker, waiting for their replies."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        self._waits: Dict[int, "queue.SimpleQueue[Any]"] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._local = threading.local()

    def call(self, name: str, args: Tuple[Any, ...], timeout: Optional[float]) -> Tuple[str, Any]:
        """The transport of :mod:`snakepit_bridge.elixir`: ``(status, payload)``."""
        depth = getattr(self._local, "depth", 0)
        if depth >= MAX_DEPTH:
            return ("depth", MAX_DEPTH)
        self._local.depth = depth + 1
        try:
            return self._call(name, args, timeout)
        finally:
            self._local.depth = depth

    def _call(self, name: str, args: Tuple[Any, ...], timeout: Optional[float]) -> Tuple[str, Any]:
        call_id = next(self._ids) & 0xFFFFFFFF
        replies: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        with self._lock:
            self._waits[call_id] = replies
        job = self._worker._running.get(threading.get_ident())
        job_id = job.id if job is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._worker.write_term(ELIXIR_CALL, (call_id, name, list(args), job_id))
            while True:
                try:
                    kind, item = replies.get(timeout=_POLL)
                    if kind == "reply":
                        return ("reply", item)
                    if kind == "unconvertible":
                        message = f"the result of Elixir function {name!r} cannot be converted: {item}"
                        return ("unconvertible", message)
                    self._run_nested(item, job)
                    continue
                except queue.Empty:
                    pass
                if job is not None and job.cancelled:
                    self._abandon(call_id)
                    return ("cancelled", None)
                if deadline is not None and time.monotonic() >= deadline:
                    self._abandon(call_id)
                    return ("timeout", None)
        except BaseException:
            self._abandon(call_id)  # Cancelled raised into this thread
            raise
        finally:
            with self._lock:
                self._waits.pop(call_id, None)
            # Jobs of this chain that came too late run as any other job.
            while True:
                try:
                    kind, item = replies.get_nowait()
                except queue.Empty:
                    break
                if kind == "job":
                    self._worker._queue.put(item)

    def nested(self, call_id: int, job: Any) -> bool:
        """Hands ``job`` to the thread waiting for call ``call_id``; False if none waits."""
        with self._lock:
            replies = self._waits.get(call_id)
            if replies is None:
                return False
            replies.put(("job", job))
            return True

    def _run_nested(self, job: Any, outer: Any) -> None:
        """Runs a nested job on this (waiting) thread, as the worker's threads run jobs; the
        waiting job is not interruptible meanwhile (its cancellation is seen after)."""
        worker = self._worker
        ident = threading.get_ident()
        interruptible = False
        if outer is not None:
            with outer.lock:
                interruptible, outer.interruptible = outer.interruptible, False
        try:
            worker._run_guarded(job)
        finally:
            if outer is not None:
                with outer.lock:
                    outer.interruptible = interruptible
                    worker._running[ident] = outer

    def _abandon(self, call_id: int) -> None:
        self._worker._write(bytearray(_u32.pack(5) + bytes((ELIXIR_CANCEL,)) + _u32.pack(call_id)))

    def reply(self, frame: bytes) -> None:
        """An Elixir → worker reply frame (read by the worker's reader thread)."""
        (call_id,) = _u32.unpack_from(frame, 1)
        with self._lock:
            replies = self._waits.get(call_id)
        if replies is None:
            return
        try:
            replies.put(("reply", etf.decode(memoryview(frame)[5:])))
        except etf.ConversionError as exc:
            replies.put(("unconvertible", str(exc)))
