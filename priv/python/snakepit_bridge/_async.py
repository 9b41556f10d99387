"""The worker's asyncio event loop: ``async def`` commands and async generators.

Each adapter instance (a worker) gets one event loop, run by its own thread ("snakepit-loop")
started at its first async command. A command that returns a coroutine is scheduled there with
:func:`schedule` and the pool thread is free at once; the reply is sent from the future's done
callback (``native/snakepit/src/aio.rs``; the process profile: ``worker.py``). Cancelling the
future cancels the task: the coroutine sees ``asyncio.CancelledError`` and its ``finally``
blocks run. An async generator given to ``execute_stream`` is driven item by item from the
thread serving the stream (:func:`iterate`). :func:`close` stops a worker's loop (its
``cleanup``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import types
from typing import Any, AsyncIterator, Callable, Dict, Iterator, Tuple

__all__ = [
    "close",
    "detach",
    "is_coroutine",
    "iterate",
    "loop_for",
    "run",
    "schedule",
    "stream_source",
]

# id(adapter) -> (adapter, loop, thread)
_loops: Dict[int, Tuple[Any, asyncio.AbstractEventLoop, threading.Thread]] = {}
_lock = threading.Lock()
_numbers = itertools.count(1)
# How often a thread waiting for a step of an async generator lets a cancellation land.
_POLL = 0.05


def loop_for(adapter: Any) -> asyncio.AbstractEventLoop:
    """The event loop of ``adapter``'s worker, started on first use."""
    entry = _loops.get(id(adapter))
    if entry is not None and entry[0] is adapter:
        return entry[1]
    with _lock:
        entry = _loops.get(id(adapter))
        if entry is not None and entry[0] is adapter:
            return entry[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(
            target=_run, args=(loop, ready), name=f"snakepit-loop-{next(_numbers)}", daemon=True
        )
        thread.start()
        ready.wait()
        _loops[id(adapter)] = (adapter, loop, thread)
        return loop


def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()


def schedule(
    adapter: Any, coro: Any, done: Callable[[concurrent.futures.Future], Any]
) -> concurrent.futures.Future:
    """Runs ``coro`` on ``adapter``'s loop; ``done(future)`` is called when it is over."""
    fut = asyncio.run_coroutine_threadsafe(coro, loop_for(adapter))
    fut.add_done_callback(done)
    return fut


def is_coroutine(obj: Any) -> bool:
    """Whether a command's result is a coroutine to await (``async def``)."""
    return type(obj) is types.CoroutineType


def run(adapter: Any, coro: Any) -> Any:
    """Awaits ``coro`` on ``adapter``'s loop from this thread (the process profile): returns
    its result or raises its exception; a ``Cancelled`` raised into this thread while it
    waits cancels the task."""
    return _wait(asyncio.run_coroutine_threadsafe(coro, loop_for(adapter)))


#: The ``:process`` worker's frame: ``<<10, id::32>>``, call ``id`` left its thread.
DETACHED = 10


def detach(worker: Any, job: Any, coro: Any) -> None:
    """The ``:process`` worker's ``async def`` call: tell Elixir the job's thread is free
    (frame 10), run ``coro`` on the worker's loop, and reply from its done callback. The
    worker's ``cancel`` cancels ``job.future`` (the coroutine sees ``CancelledError``); a
    cancelled call still ends with its terminal frame, as every job does (``worker.py``)."""
    import struct

    worker._write(bytearray(struct.pack(">IBI", 5, DETACHED, job.id)))

    def done(fut: concurrent.futures.Future) -> None:
        if fut.cancelled():
            worker.reply_error(job.id, _worker_module(worker).cancelled_error())
            return
        exc = fut.exception()
        if exc is not None:
            worker.reply_error(job.id, _worker_module(worker).python_error(exc))
        else:
            worker.reply_ok(job.id, fut.result())

    with job.lock:
        job.future = asyncio.run_coroutine_threadsafe(coro, loop_for(worker.adapter))
        cancelled = job.cancelled
    if cancelled:
        job.future.cancel()
    job.future.add_done_callback(done)


def _worker_module(worker: Any) -> Any:
    # worker.py runs as __main__ (python -m): its helpers are found through its class.
    import sys

    return sys.modules[type(worker).__module__]


def stream_source(adapter: Any, obj: Any) -> Any:
    """What a stream iterates: :func:`iterate` for an async generator, else ``obj``."""
    if type(obj) is types.AsyncGeneratorType:
        return iterate(adapter, obj)
    return obj


def _wait(fut: concurrent.futures.Future, limit: float = float("inf")) -> Any:
    """``fut.result()``, waiting in slices so that a ``Cancelled`` raised into this thread
    lands; that cancels ``fut``."""
    waited = 0.0
    try:
        while True:
            try:
                return fut.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                if fut.done():
                    return fut.result()  # the coroutine's own TimeoutError
                waited += _POLL
                if waited >= limit:
                    raise
    except BaseException:
        fut.cancel()
        raise


async def _next(agen: Any) -> Any:
    # A coroutine (run_coroutine_threadsafe wants one; __anext__ returns an awaitable).
    return await agen.__anext__()


async def _close(agen: Any) -> None:
    # A cancelled step may still be unwinding on the loop: retry until the generator is free.
    for _ in range(200):
        try:
            await agen.aclose()
            return
        except RuntimeError:
            await asyncio.sleep(0.005)


def iterate(adapter: Any, agen: AsyncIterator[Any]) -> Iterator[Any]:
    """A generator over the items of the async generator ``agen``, each computed on
    ``adapter``'s loop. Closing it (a halted stream) closes ``agen`` there."""
    loop = loop_for(adapter)
    try:
        while True:
            step = asyncio.run_coroutine_threadsafe(_next(agen), loop)
            try:
                item = _wait(step)
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            _wait(asyncio.run_coroutine_threadsafe(_close(agen), loop), limit=5.0)
        except BaseException:
            pass


def close(adapter: Any) -> None:
    """Stops ``adapter``'s loop, if it has one: its tasks are cancelled (up to 5 s)."""
    with _lock:
        entry = _loops.get(id(adapter))
        if entry is None or entry[0] is not adapter:
            return
        del _loops[id(adapter)]
    _, loop, thread = entry

    async def shutdown() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loop.shutdown_asyncgens()

    try:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
    except BaseException:
        pass
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
