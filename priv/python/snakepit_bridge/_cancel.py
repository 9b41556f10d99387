"""Raises a cancellation into a pool thread at an instruction that its ``try`` blocks cover.

The NIF cancels a running call by raising :class:`snakepit_bridge.Cancelled` in its thread.
``PyThreadState_SetAsyncExc`` raises it at the thread's next eval-breaker check, and on
CPython 3.13 that check is often an instruction that the code object's exception table leaves
outside the enclosing ``try``: the backward jump closing a ``while cond:`` loop that ends the
``try`` body (CPython issue gh-130279; 3.11 and 3.12 have a relative for one-line loops,
gh-108214). The exception then leaves the frame without running its ``except``, ``finally``
or ``with`` exits: a lock taken with ``with self.acquire_lock():`` stays held.

So, on CPython >= 3.12, the NIF marks the cancellation as pending and calls :func:`arm` for
the thread: ``sys.monitoring`` INSTRUCTION events are switched on for the code objects on
that thread's stack, and the callback, running in that thread, raises ``Cancelled`` at the
first safe instruction (:func:`safe_offsets`): where CPython would check for an async
exception itself (after a call, on entry), with the same exception-table entry as that check,
or at the target of a backward jump instead of the jump itself. The pending
flag lives in the NIF and is taken once (``take``): the exception is raised at most once per
cancellation. Events are switched off again (:func:`disarm`) once it is raised or the call
ended; while they are on, other threads running the same code objects pay one callback per
instruction. If no armed frame runs within a short while (a long C call that calls back into
other Python functions), the NIF falls back to ``PyThreadState_SetAsyncExc``.
"""

from __future__ import annotations

import dis
import sys
import threading
import weakref
from typing import Any, Callable, Dict, FrozenSet, List, Optional

from .errors import Cancelled

__all__ = ["install", "arm", "disarm", "safe_offsets"]

_TOOL_NAME = "snakepit-cancel"
_tool: Optional[int] = None
_take: Optional[Callable[[], bool]] = None
_lock = threading.Lock()
# Thread ident -> the code objects armed for it.
_armed: Dict[int, List[Any]] = {}
# id() of a code object (kept alive by _armed) -> number of threads it is armed for.
_uses: Dict[int, int] = {}
# Code object -> offsets where the callback may raise.
_safe: "weakref.WeakKeyDictionary[Any, FrozenSet[int]]" = weakref.WeakKeyDictionary()
_get_ident = threading.get_ident
# Frames deeper than this on the cancelled thread are not armed (the fallback covers them).
_MAX_FRAMES = 256


def install(take: Callable[[], bool]) -> bool:
    """Registers the INSTRUCTION callback; ``take()`` says (once) whether the calling thread
    has a cancellation to raise. False when ``sys.monitoring`` is missing (CPython < 3.12) or
    no tool id is free: cancellations then use ``PyThreadState_SetAsyncExc`` alone."""
    global _tool, _take
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return False
    if _tool is not None:
        _take = take
        return True
    for tool_id in (4, 3):  # ids PEP 669 leaves unassigned (0-2 and 5 are named)
        try:
            monitoring.use_tool_id(tool_id, _TOOL_NAME)
        except ValueError:
            continue
        _take = take
        monitoring.register_callback(tool_id, monitoring.events.INSTRUCTION, _on_instruction)
        _tool = tool_id
        return True
    return False


def _read_varint(it: Any) -> int:
    b = next(it)
    value = b & 63
    while b & 64:
        b = next(it)
        value = (value << 6) | (b & 63)
    return value


def _handler_ranges(code: Any) -> List[tuple]:
    """``co_exceptiontable`` as ``(start, end, target, depth_lasti)`` in byte offsets. The table
    is a sequence of entries of four varints (start, size and target in code units, then depth
    and lasti); a varint is 6-bit groups, most significant first, bit 6 set on all but the last.
    """
    out = []
    it = iter(code.co_exceptiontable)
    while True:
        try:
            start = _read_varint(it) * 2
        except StopIteration:
            return out
        size = _read_varint(it) * 2
        target = _read_varint(it) * 2
        depth_lasti = _read_varint(it)
        out.append((start, start + size, target, depth_lasti))


# Instructions after which CPython itself checks for an async exception (its eval breaker):
# calls, and function entry or re-entry (RESUME). Backward jumps are the third kind: there the
# exception is raised at the jump's target instead.
_CHECKED_AFTER = frozenset({"CALL", "CALL_KW", "CALL_FUNCTION_EX", "RESUME"})
_BACKWARD_JUMP = "JUMP_BACKWARD"  # not JUMP_BACKWARD_NO_INTERRUPT: CPython does not check there


def safe_offsets(code: Any) -> FrozenSet[int]:
    """Offsets where the callback may raise: where CPython would raise an async exception too
    (after a call, on entry, at the start of a loop iteration), so code that relies on it
    (``snakepit_bridge.base_adapter_threaded.thread_safe_method`` keeps its statistics
    consistent that way) sees no new positions; and never at a backward jump, nor after a call
    or an entry whose exception-table entry differs from the next instruction's."""
    cached = _safe.get(code)
    if cached is not None:
        return cached
    ranges = _handler_ranges(code)

    def handler(offset: int) -> Optional[tuple]:
        for start, end, target, depth_lasti in ranges:
            if start <= offset < end:
                return (target, depth_lasti)
        return None

    instructions = list(dis.get_instructions(code))
    backward = {i.offset for i in instructions if i.opname == _BACKWARD_JUMP}
    safe = {
        i.argval
        for i in instructions
        if i.offset in backward and isinstance(i.argval, int) and i.argval not in backward
    }
    for prev, cur in zip(instructions, instructions[1:]):
        if (
            prev.opname in _CHECKED_AFTER
            and cur.offset not in backward
            and handler(prev.offset) == handler(cur.offset)
        ):
            safe.add(cur.offset)
    frozen = frozenset(safe)
    _safe[code] = frozen
    return frozen


_LOOK_UP = object()


def arm(ident: int, still_pending: Callable[[], bool], frame: Any = _LOOK_UP) -> bool:
    """Switches the callback on for the code objects on thread ``ident``'s stack. False when the
    thread runs no Python frame (nothing to arm) or ``still_pending()`` says the cancellation
    is over (checked under the lock :func:`disarm` takes, so nothing stays armed).

    ``frame`` is the thread's current frame (None: it runs none); without it the frame is
    looked up with ``sys._current_frames()``. The NIF passes it: on GIL builds that function
    walks the threads of every interpreter in the process and makes frame objects for them
    with the calling interpreter's allocator, which corrupts the heap of a ``:subinterpreter``
    worker running at the time (docs/architecture.md, "Subinterpreter workers")."""
    if _tool is None:
        return False
    if frame is _LOOK_UP:
        frame = sys._current_frames().get(ident)
    codes: List[Any] = []
    seen = set()
    while frame is not None and len(codes) < _MAX_FRAMES:
        code = frame.f_code
        if id(code) not in seen:
            seen.add(id(code))
            codes.append(code)
        frame = frame.f_back
    if not codes:
        return False
    for code in codes:
        safe_offsets(code)
    events = sys.monitoring.events.INSTRUCTION
    with _lock:
        if ident in _armed:
            return True
        if not still_pending():
            return False
        _armed[ident] = codes
        for code in codes:
            uses = _uses.get(id(code), 0)
            _uses[id(code)] = uses + 1
            if uses == 0:
                sys.monitoring.set_local_events(_tool, code, events)
    return True


def disarm(ident: int) -> None:
    """Switches the callback off for what :func:`arm` switched on for ``ident``."""
    with _lock:
        codes = _armed.pop(ident, None)
        if not codes:
            return
        for code in codes:
            uses = _uses.pop(id(code), 1) - 1
            if uses > 0:
                _uses[id(code)] = uses
            else:
                sys.monitoring.set_local_events(_tool, code, 0)


def _on_instruction(code: Any, offset: int) -> None:
    ident = _get_ident()
    if ident not in _armed:
        return
    safe = _safe.get(code)
    if safe is None or offset not in safe:
        return
    take = _take
    if take is not None and take():
        disarm(ident)
        raise Cancelled()
