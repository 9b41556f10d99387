"""snakepit_bridge.elixir (with a fake transport), snakepit_bridge._async (the worker's event
loop) and snakepit_bridge._worker_elixir (the process profile's transport), outside the BEAM."""

from __future__ import annotations

import asyncio
import queue
import struct
import threading
import time

import pytest

from snakepit_bridge import Cancelled, ElixirError, _async, _worker_elixir, elixir
from snakepit_bridge.etf import encode


@pytest.fixture
def transport():
    calls = []
    answers = {}

    def fake(name, args, timeout):
        calls.append((name, args, timeout))
        return answers[name](*args) if callable(answers.get(name)) else answers[name]

    elixir.set_transport(fake)
    yield calls, answers
    elixir.set_transport(None)


def test_call_returns_the_reply(transport):
    calls, answers = transport
    answers["add"] = lambda a, b: ("reply", ("ok", a + b))
    assert elixir.call("add", 1, 2, timeout=3.0) == 3
    assert calls == [("add", (1, 2), 3.0)]


def test_errors_map_to_exceptions(transport):
    _, answers = transport
    answers["boom"] = ("reply", ("error", ("error", "** (RuntimeError) x", "  stack")))
    answers["slow"] = ("timeout", None)
    answers["gone"] = ("cancelled", None)
    answers["deep"] = ("depth", 16)
    with pytest.raises(ElixirError) as info:
        elixir.call("boom")
    assert info.value.kind == "error"
    assert info.value.elixir_stacktrace == "  stack"
    assert "RuntimeError" in str(info.value) and "stack" in str(info.value)
    with pytest.raises(TimeoutError):
        elixir.call("slow", timeout=0.1)
    with pytest.raises(Cancelled):
        elixir.call("gone")
    with pytest.raises(ElixirError, match="too deep: 16"):
        elixir.call("deep")


def test_functions_and_acall(transport):
    _, answers = transport
    answers["__snakepit_functions__"] = ("reply", ("ok", ["a", "b"]))
    answers["echo"] = lambda x: ("reply", ("ok", x))
    assert elixir.functions() == ["a", "b"]
    assert asyncio.run(elixir.acall("echo", 5)) == 5


def test_outside_the_beam_call_says_so():
    elixir.set_transport(None)
    with pytest.raises(RuntimeError, match="only available inside"):
        elixir.call("x")


class Adapter:
    pass


def test_schedule_runs_on_one_loop_per_adapter():
    a, b = Adapter(), Adapter()
    done = queue.SimpleQueue()

    async def where():
        await asyncio.sleep(0)
        return threading.current_thread().name

    try:
        _async.schedule(a, where(), done.put)
        _async.schedule(b, where(), done.put)
        names = {done.get(timeout=10).result() for _ in range(2)}
        assert len(names) == 2 and all(n.startswith("snakepit-loop-") for n in names)
        assert _async.loop_for(a) is _async.loop_for(a)
    finally:
        _async.close(a)
        _async.close(b)


def test_many_coroutines_overlap():
    a = Adapter()
    state = {"now": 0, "max": 0}

    async def sleeper():
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.2)
        state["now"] -= 1

    try:
        futures = [_async.schedule(a, sleeper(), lambda f: None) for _ in range(500)]
        for f in futures:
            f.result(timeout=30)
        assert state["max"] == 500
    finally:
        _async.close(a)


def test_cancelling_the_future_cancels_the_task():
    a = Adapter()
    seen = queue.SimpleQueue()
    started = threading.Event()

    async def long():
        try:
            started.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.put("cancelled")
            raise
        finally:
            seen.put("finally")

    try:
        fut = _async.schedule(a, long(), lambda f: None)
        assert started.wait(10)
        fut.cancel()
        assert seen.get(timeout=10) == "cancelled"
        assert seen.get(timeout=10) == "finally"
    finally:
        _async.close(a)


def test_run_returns_or_raises():
    a = Adapter()

    async def ok():
        return 7

    async def bad():
        raise TimeoutError("own timeout")

    try:
        assert _async.run(a, ok()) == 7
        with pytest.raises(TimeoutError, match="own timeout"):
            _async.run(a, bad())
        assert _async.is_coroutine(ok.__code__) is False
        coro = ok()
        assert _async.is_coroutine(coro)
        coro.close()
    finally:
        _async.close(a)


def test_iterate_streams_and_closing_closes_the_generator():
    a = Adapter()
    log = []

    async def agen(n):
        try:
            for i in range(n):
                await asyncio.sleep(0)
                yield i
        finally:
            log.append("closed")

    try:
        assert list(_async.stream_source(a, agen(4))) == [0, 1, 2, 3]
        assert log == ["closed"]
        it = _async.iterate(a, agen(100))
        assert [next(it), next(it)] == [0, 1]
        it.close()
        assert log == ["closed", "closed"]
        assert _async.stream_source(a, [1]) == [1]
    finally:
        _async.close(a)


def test_close_cancels_pending_tasks():
    a = Adapter()
    seen = queue.SimpleQueue()

    async def forever():
        try:
            await asyncio.sleep(60)
        finally:
            seen.put("finally")

    _async.schedule(a, forever(), lambda f: None)
    time.sleep(0.05)
    _async.close(a)
    assert seen.get(timeout=10) == "finally"


class FakeWorker:
    """What _worker_elixir needs of worker.Worker: frames out, the running jobs, its queue."""

    def __init__(self):
        self.frames = queue.SimpleQueue()
        self._running = {}
        self._queue = queue.SimpleQueue()

    def write_term(self, kind, term, job_id=None):
        self.frames.put((kind, term))

    def _write(self, data):
        self.frames.put(("raw", bytes(data)))


def test_worker_transport_reply_and_timeout():
    worker = FakeWorker()
    calls = _worker_elixir.ElixirCalls(worker)
    result = queue.SimpleQueue()
    t = threading.Thread(target=lambda: result.put(calls.call("f", (1, 2), 10.0)))
    t.start()
    kind, (call_id, name, args, job) = worker.frames.get(timeout=10)
    assert (kind, name, args, job) == (_worker_elixir.ELIXIR_CALL, "f", [1, 2], None)
    calls.reply(bytes([7]) + struct.pack(">I", call_id) + encode(("ok", 3)))
    t.join(10)
    status, payload = result.get(timeout=1)
    assert status == "reply" and payload[1] == 3

    assert calls.call("f", (), 0.05) == ("timeout", None)
    worker.frames.get(timeout=1)  # the call frame
    kind, raw = worker.frames.get(timeout=1)
    assert kind == "raw" and raw[4] == _worker_elixir.ELIXIR_CANCEL
