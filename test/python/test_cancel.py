"""snakepit_bridge._cancel: raising a cancellation at an instruction its try blocks cover."""

from __future__ import annotations

import dis
import sys
import threading
import time

import pytest

from snakepit_bridge import _cancel
from snakepit_bridge.errors import Cancelled

needs_monitoring = pytest.mark.skipif(
    not hasattr(sys, "monitoring"), reason="sys.monitoring needs CPython >= 3.12"
)


def _guide_pattern(lock, log, started, stop):
    """The guide's pattern, ending its try block with a `while cond:` loop."""
    with lock:
        try:
            started.set()
            while not stop.is_set():
                pass
        except BaseException as exc:
            log.append(("except", type(exc).__name__))
            raise
        finally:
            log.append(("finally",))


def _handler(code, offset):
    for start, end, target, depth_lasti in _cancel._handler_ranges(code):
        if start <= offset < end:
            return (target, depth_lasti)
    return None


def _line(code, text):
    import inspect

    lines, first = inspect.getsourcelines(code)
    return first + next(n for n, line in enumerate(lines) if text in line)


def _next(instructions, instruction):
    return instructions[instructions.index(instruction) + 1]


def test_handler_ranges_match_dis():
    parse = getattr(dis, "_parse_exception_table", None)
    if parse is None:
        pytest.skip("dis has no exception-table parser on this version")
    for code in (_guide_pattern.__code__, _cancel.arm.__code__, dis.dis.__code__):
        expected = [(e.start, e.end, e.target, e.depth * 2 + int(e.lasti)) for e in parse(code)]
        assert _cancel._handler_ranges(code) == expected


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception tables start with CPython 3.11")
def test_safe_offsets_are_where_cpython_checks_with_its_handler():
    code = _guide_pattern.__code__
    instructions = list(dis.get_instructions(code))
    by_offset = {i.offset: i for i in instructions}
    safe = _cancel.safe_offsets(code)
    assert _cancel.safe_offsets(code) is safe  # cached
    jump_targets = {i.argval for i in instructions if i.opname == "JUMP_BACKWARD"}
    for prev, cur in zip(instructions, instructions[1:]):
        if cur.offset in safe:
            assert cur.opname != "JUMP_BACKWARD"
            assert cur.offset in jump_targets or (
                prev.opname in ("CALL", "CALL_KW", "CALL_FUNCTION_EX", "RESUME")
                and _handler(code, prev.offset) == _handler(code, cur.offset)
            )
    # The loop, inside the try, has a safe offset: after `stop.is_set()` returns.
    loop_line = _line(code, "while not stop.is_set()")
    calls = [i for i in instructions if i.opname == "CALL" and i.positions.lineno == loop_line]
    assert calls and all(_next(instructions, c).offset in safe for c in calls)
    assert all(by_offset[o].opname != "JUMP_BACKWARD" for o in safe)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception tables start with CPython 3.11")
def test_no_safe_offset_between_the_tracking_wrappers_bookkeeping_and_its_try():
    from snakepit_bridge.base_adapter_threaded import thread_safe_method

    code = thread_safe_method(lambda self: None).__code__
    instructions = list(dis.get_instructions(code))
    safe = _cancel.safe_offsets(code)
    start = next(
        i.offset for i in instructions if i.opname == "STORE_FAST" and i.argval == "depth"
    )
    body = next(i.offset for i in instructions if i.offset > start and _handler(code, i.offset))
    assert not [o for o in safe if start < o < body]


@needs_monitoring
def test_an_armed_thread_runs_its_except_and_finally_blocks_and_releases_its_lock():
    pending = {}

    def take():
        return pending.pop(threading.get_ident(), False)

    assert _cancel.install(take)
    lock = threading.RLock()
    log = []
    started = threading.Event()
    stop = threading.Event()
    outcome = []

    def target():
        try:
            _guide_pattern(lock, log, started, stop)
        except BaseException as exc:
            outcome.append(type(exc))

    thread = threading.Thread(target=target)
    thread.start()
    started.wait()
    pending[thread.ident] = True
    try:
        assert _cancel.arm(thread.ident, lambda: thread.ident in pending)
        thread.join(10)
    finally:
        stop.set()
        thread.join()
    assert outcome == [Cancelled]
    assert log == [("except", "Cancelled"), ("finally",)]
    assert lock.acquire(blocking=False)
    lock.release()
    assert thread.ident not in _cancel._armed  # disarmed once raised
    assert not _cancel._uses


@needs_monitoring
def test_arm_does_nothing_once_the_cancellation_is_over():
    assert _cancel.install(lambda: False)
    started = threading.Event()
    stop = threading.Event()

    def target():
        started.set()
        while not stop.is_set():
            time.sleep(0.001)

    thread = threading.Thread(target=target)
    thread.start()
    started.wait()
    try:
        assert not _cancel.arm(thread.ident, lambda: False)
        assert thread.ident not in _cancel._armed
        assert _cancel.arm(thread.ident, lambda: True)
        assert thread.ident in _cancel._armed
        _cancel.disarm(thread.ident)
        assert thread.ident not in _cancel._armed
        assert not _cancel._uses
    finally:
        stop.set()
        thread.join()


@needs_monitoring
def test_other_threads_running_armed_code_are_not_cancelled():
    pending = {}

    def take():
        return pending.pop(threading.get_ident(), False)

    assert _cancel.install(take)
    lock = threading.RLock()
    logs = ([], [])
    started = (threading.Event(), threading.Event())
    stop = threading.Event()
    outcomes = ([], [])

    def target(i):
        try:
            _guide_pattern(threading.RLock() if i else lock, logs[i], started[i], stop)
        except BaseException as exc:
            outcomes[i].append(type(exc))
        else:
            outcomes[i].append(None)

    threads = [threading.Thread(target=target, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for e in started:
        e.wait()
    pending[threads[0].ident] = True
    try:
        assert _cancel.arm(threads[0].ident, lambda: threads[0].ident in pending)
        threads[0].join(10)
        assert outcomes[0] == [Cancelled]
        assert threads[1].is_alive()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert outcomes[1] == [None]
    assert logs[1] == [("finally",)]


def test_install_without_monitoring_says_so(monkeypatch):
    monkeypatch.delattr(sys, "monitoring", raising=False)
    assert _cancel.install(lambda: False) is False
