"""Adapters for test/snakepit/inline_test.exs: commands declared ``@tool(inline=True)``, which
a :thread pool may run on the calling BEAM scheduler (native/snakepit/src/inline.rs)."""

import asyncio
import threading
import time

from snakepit_bridge import ThreadSafeAdapter, send, thread_safe_method, tool

EVENTS = {}
EVENTS_LOCK = threading.Lock()


def _event(key):
    with EVENTS_LOCK:
        return EVENTS.setdefault(key, threading.Event())


class InlineAdapter(ThreadSafeAdapter):
    """Short commands, and blocking ones to keep a pool thread busy."""

    __thread_safe__ = True

    @tool(inline=True)
    def echo(self, value=None):
        """Return the value unchanged."""
        return value

    @thread_safe_method
    @tool(description="The name of the thread that ran this call.", inline=True)
    def where(self):
        return threading.current_thread().name

    @tool(inline=True)
    def boom(self, message="boom"):
        """Raise ValueError."""
        raise ValueError(message)

    @tool(inline=True)
    def unconvertible(self):
        """Return an object no term can hold."""
        return object()

    @tool(inline=True)
    def nap(self, seconds=0.005):
        """Wrongly declared short: sleeps."""
        time.sleep(seconds)
        return threading.current_thread().name

    @tool(inline=True)
    def call_elixir(self, name="anything"):
        """elixir.call, which an inline call must refuse."""
        from snakepit_bridge import elixir

        return elixir.call(name)

    @tool
    def hold(self, pid, key):
        """Not short: tells ``pid`` it holds, then waits until ``release(key)``."""
        send(pid, "holding")
        _event(key).wait(60)
        return "released"

    @tool(inline=True)
    def release(self, key):
        _event(key).set()
        return True

    @tool
    async def hold_async(self, pid, key):
        """An ``async def`` call in flight until ``release(key)``."""
        send(pid, "holding_async")
        while not _event(key).is_set():
            await asyncio.sleep(0.005)
        return "released"
