"""Adapters the ExUnit suite drives through real pools."""

import os
import sys
import threading
import time

from snakepit_bridge import ThreadSafeAdapter, send, thread_safe_method, tool


# tracked_busy outcomes by tag, and named barriers (per Python process).
TRACKED = {}
BARRIERS = {}
BARRIERS_LOCK = threading.Lock()
# async_sleep's counters by key: in flight now, most at once, finished.
ASYNC_STATE = {}
ASYNC_LOCK = threading.Lock()


class TestAdapter(ThreadSafeAdapter):
    """Echo, failures, blocking and busy work, for the core tests."""

    __thread_safe__ = True

    def __init__(self):
        super().__init__()
        self.counter = 0
        self.instance_id = id(self)
        self.spin_log = []

    @tool(description="Return the value unchanged.")
    def echo(self, value=None):
        return value

    @tool(description="Return the value unchanged; declared short.", inline=True)
    def echo_inline(self, value=None):
        return value

    @tool(description="Raise ValueError; declared short.", inline=True)
    def fail_inline(self, message="inline failure"):
        raise ValueError(message)

    def not_a_command(self):
        """A public method without @tool: not callable from Elixir."""
        return "unreachable"

    @tool(description="base ** exp, computed in Python.")
    def power(self, base: int = 2, exp: int = 10):
        return base**exp

    @tool(description="Return the Python type name and repr of the value.")
    def inspect(self, value=None):
        return {"type": type(value).__name__, "repr": repr(value)}

    @tool(description="Return the positional arguments as a list.")
    def positional(self, *args):
        return list(args)

    @tool(description="Sleep in C (time.sleep), then return the thread name.")
    def sleep(self, seconds: float = 0.1):
        time.sleep(seconds)
        return threading.current_thread().name

    @tool(description="A pure-Python busy loop that runs until interrupted or seconds pass.")
    def busy(self, seconds: float = 10.0):
        deadline = time.monotonic() + seconds
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
        except BaseException as exc:
            self.last_interrupt = type(exc).__name__
            raise
        return n

    @tool(description="The guide's pattern: spin under the adapter lock in try/finally; tell pid.")
    def locked_spin(self, pid, seconds: float = 30.0):
        deadline = time.monotonic() + seconds
        with self.acquire_lock():
            try:
                send(pid, "entered")
                while time.monotonic() < deadline:
                    pass
            except BaseException as exc:
                self.spin_log.append(["except", type(exc).__name__])
                raise
            finally:
                self.spin_log.append(["finally"])
                send(pid, "finally")

    @tool(description="What the except and finally blocks of locked_spin recorded.")
    def spin_log_entries(self):
        return list(self.spin_log)

    @tool(description="Tell pid the call runs, then spin in pure Python for seconds.")
    def notify_busy(self, pid, seconds: float = 0.001):
        send(pid, "running")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    @tool(description="What interrupted the last busy loop.")
    def last_interrupt_name(self):
        return getattr(self, "last_interrupt", None)

    @tool(description="Raise ValueError with the message.")
    def fail(self, message: str = "boom"):
        def inner():
            raise ValueError(message)

        inner()

    @tool(description="Raise SystemExit.")
    def exit(self, code: int = 3):
        sys.exit(code)

    @tool(description="Raise KeyboardInterrupt.")
    def interrupt(self):
        raise KeyboardInterrupt("from adapter")

    @tool(description="Return an object that cannot be converted.")
    def unconvertible(self):
        return object()

    @tool(description="Return a list nested depth levels deep.")
    def nested(self, depth: int = 10):
        value = []
        for _ in range(depth):
            value = [value]
        return value

    @tool(description="Return special floats.")
    def floats(self):
        return [float("nan"), float("inf"), float("-inf"), 1.5]

    @tool(description="Return a Python set, frozenset, tuple and bytes.")
    def collections(self):
        return {
            "set": {1, 2, 3},
            "frozenset": frozenset(["a"]),
            "tuple": (1, "two", 3.0),
            "bytes": b"\x00\xff",
            "bytearray": bytearray(b"ab"),
            "int_keys": {1: "one"},
        }

    @tool(description="Return a NumPy array and scalar.")
    def numpy_values(self):
        import numpy as np

        return {"array": np.arange(6).reshape(2, 3), "scalar": np.float64(2.5), "int": np.int64(7)}

    @tool(description="Return an object with __snakepit__.")
    def custom(self):
        class Point:
            def __snakepit__(self):
                return {"x": 1, "y": 2}

        return Point()

    @tool(description="Send a message to a pid from Python, then return it.")
    def send_to(self, pid, message):
        send(pid, message)
        return pid

    @tool(description="Run a subprocess and return its output.")
    def run_subprocess(self):
        import subprocess

        return subprocess.run(
            [sys.executable, "-c", "print('child ok')"], capture_output=True, text=True, check=True
        ).stdout.strip()

    @tool(description="The value of an environment variable.")
    def getenv(self, name: str):
        return os.environ.get(name)

    @thread_safe_method
    def increment(self, times: int = 1):
        for _ in range(times):
            with self.acquire_lock():
                self.counter += 1
        return self.counter

    @tool(description="The counter and this instance's id.")
    def state(self):
        with self.acquire_lock():
            return {"counter": self.counter, "instance": self.instance_id}

    @tool(description="Log a message through Python logging.")
    def log(self, message: str, level: str = "info"):
        import logging

        getattr(logging.getLogger("snakepit_test_adapters"), level)(message)
        return threading.current_thread().name

    @tool(description="Count calls per pool thread in thread-local storage.")
    def thread_local_count(self, seconds: float = 0.0):
        count = self.get_thread_local("count", 0) + 1
        time.sleep(seconds)  # releases the GIL: other pool threads take the next calls
        self.set_thread_local("count", count)
        return [threading.current_thread().name, count]

    @thread_safe_method
    @tool(description="A tracked method that sleeps (overlaps across threads).")
    def tracked_sleep(self, seconds: float = 0.05):
        time.sleep(seconds)
        return threading.current_thread().name

    @tool(description="Yield 0..limit-1, counting what was produced; fail at fail_at.")
    def count_up(self, limit: int = 10, fail_at: int = -1, delay: float = 0.0):
        self.produced = 0
        self.closed = False
        try:
            for i in range(limit):
                if i == fail_at:
                    raise ValueError(f"failed at {i}")
                if delay:
                    time.sleep(delay)
                self.produced += 1
                yield {"i": i}
        finally:
            self.closed = True

    @tool(description="An iterator over the value (not a generator).")
    def iterate(self, value=()):
        return iter(value)

    @tool(description="How many items count_up produced, and whether it was closed.")
    def stream_state(self):
        return {"produced": getattr(self, "produced", 0), "closed": getattr(self, "closed", None)}

    @tool(description="Whether Python's cyclic GC is enabled, and the size of the argument.")
    def gc_state(self, value=None):
        import gc

        return {"enabled": gc.isenabled(), "size": len(value) if value is not None else 0}

    @tool(description="The current thread's name.")
    def thread_name(self):
        return threading.current_thread().name

    # Synchronisation for tests that must order events (never sleeps): the call tells the test
    # process it runs (`send(pid, (tag, os_pid, thread_name))`), then blocks until the test
    # releases it, or reports how it ended.

    @tool(
        description="Send (tag, os pid, thread name) to pid, then sleep in C (time.sleep): "
        "also when cancelled before the sleep began (it is in a finally block)."
    )
    def started_sleep(self, pid, tag, seconds: float = 0.1):
        try:
            send(pid, (tag, os.getpid(), threading.current_thread().name))
        finally:
            # Stuck in C once the message is sent, however a cancellation (an exception
            # raised into this thread) and the sleep are ordered.
            time.sleep(seconds)
        return threading.current_thread().name

    @tool(
        description="Send (tag, os pid, thread name) to pid, then wait until the file at path "
        "exists (polling: interruptible); return the os pid and thread name."
    )
    def started_hold(self, pid, tag, path: str, timeout: float = 120.0):
        send(pid, (tag, os.getpid(), threading.current_thread().name))
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout} s")
            time.sleep(0.005)
        return {"os_pid": os.getpid(), "thread": threading.current_thread().name}

    @tool(
        description="Connect to 127.0.0.1:port and block in C (socket recv) until the peer "
        "sends a byte or closes; return what was received."
    )
    def blocked_recv(self, port: int):
        import socket

        with socket.create_connection(("127.0.0.1", port)) as sock:
            return sock.recv(1)

    @tool(
        description="A busy loop like busy that records under tag that it started and what ended "
        "it (tracked_outcome); first sends (tag, os pid, thread name) to pid when given."
    )
    def tracked_busy(self, tag, seconds: float = 10.0, pid=None):
        deadline = time.monotonic() + seconds
        n = 0
        try:
            # Inside the try: an interrupt that lands after this point is recorded.
            TRACKED[tag] = "running"
            if pid is not None:
                send(pid, (tag, os.getpid(), threading.current_thread().name))
            while time.monotonic() < deadline:
                n += 1
            # Not the loop's backward jump last in the try body: CPython may place that jump
            # outside the try's exception-table range (gh-130279), skipping the except block.
            TRACKED[tag] = "finished"
        except BaseException as exc:
            TRACKED[tag] = type(exc).__name__
            self.last_interrupt = type(exc).__name__
            raise
        return n

    @tool(
        description="How the tracked_busy call with tag went in this process: None (its loop "
        "never started), 'running', 'finished' or the name of the exception that ended it."
    )
    def tracked_outcome(self, tag):
        return TRACKED.get(tag)

    @tool(
        description="Wait at the barrier key until parties calls are all inside it (so they "
        "run at the same time); return the thread name."
    )
    def barrier(self, key, parties: int, timeout: float = 60.0):
        with BARRIERS_LOCK:
            barrier = BARRIERS.setdefault(key, threading.Barrier(parties))
        barrier.wait(timeout)
        return threading.current_thread().name

    # Python calling Elixir (snakepit_bridge.elixir), and async def commands.

    @tool(description="Call the Elixir function name with args; return its result.")
    def call_elixir(self, name, args=None, timeout: float = 10.0):
        from snakepit_bridge import elixir

        return elixir.call(name, *(args or []), timeout=timeout)

    @tool(description="Call Elixir; return the ElixirError's kind, message and stacktrace.")
    def elixir_error(self, name, args=None, timeout: float = 10.0):
        from snakepit_bridge import ElixirError, elixir

        try:
            elixir.call(name, *(args or []), timeout=timeout)
        except ElixirError as e:
            return {"kind": e.kind, "message": e.args[0], "stacktrace": e.elixir_stacktrace}
        return None

    @tool(description="elixir.functions()")
    def elixir_functions(self):
        from snakepit_bridge import elixir

        return elixir.functions()

    @tool(
        description="Record under tag how an elixir.call ends (tracked_outcome; also sent to "
        "pid as (tag, 'outcome', name)), after telling pid (tag, os pid, thread name) that "
        "it is about to wait."
    )
    def tracked_elixir_call(self, tag, pid, name, args=None, timeout: float = 60.0):
        from snakepit_bridge import elixir

        TRACKED[tag] = "running"
        send(pid, (tag, os.getpid(), threading.current_thread().name))
        try:
            result = elixir.call(name, *(args or []), timeout=timeout)
            TRACKED[tag] = "finished"
            return result
        except BaseException as exc:
            TRACKED[tag] = type(exc).__name__
            raise
        finally:
            send(pid, (tag, "outcome", TRACKED[tag]))

    @tool(
        description="Python -> Elixir -> Python ping-pong: at depth > 0 call the Elixir "
        "function name (which calls ping_pong again with depth - 1); return the thread names."
    )
    def ping_pong(self, name, depth: int):
        from snakepit_bridge import elixir

        here = threading.current_thread().name
        if depth <= 0:
            return [here]
        return [here] + list(elixir.call(name, depth, timeout=60.0))

    @tool(
        description="await asyncio.sleep(seconds), counting the coroutines in flight (per "
        "key); report=True returns [value, most in flight at once so far in this process]."
    )
    async def async_sleep(self, seconds: float = 0.01, value=None, key="default", report=False):
        import asyncio

        with ASYNC_LOCK:
            state = ASYNC_STATE.setdefault(key, {"in_flight": 0, "max_in_flight": 0, "done": 0})
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            await asyncio.sleep(seconds)
        finally:
            with ASYNC_LOCK:
                peak = state["max_in_flight"]
                state["in_flight"] -= 1
                state["done"] += 1
        # report: also the most calls of key in flight at once in this process so far.
        return [value, peak] if report else value

    @tool(description="The async_sleep counters of key.")
    def async_stats(self, key="default"):
        with ASYNC_LOCK:
            return dict(ASYNC_STATE.get(key, {"in_flight": 0, "max_in_flight": 0, "done": 0}))

    @tool(description="An async def command that raises ValueError(message).")
    async def async_fail(self, message: str = "async boom"):
        import asyncio

        await asyncio.sleep(0)
        raise ValueError(message)

    @tool(
        description="Send (tag, os pid, thread name) to pid, then await asyncio.sleep(seconds); "
        "tracked_outcome(tag) says how it ended ('CancelledError' when cancelled) and "
        "tracked_outcome(tag + ':finally') whether its finally ran; the finally sends "
        "(tag, 'finally', outcome) to pid."
    )
    async def async_tracked_sleep(self, tag, pid, seconds: float = 60.0):
        import asyncio

        TRACKED[tag] = "running"
        try:
            send(pid, (tag, os.getpid(), threading.current_thread().name))
            await asyncio.sleep(seconds)
            TRACKED[tag] = "finished"
        except BaseException as exc:
            TRACKED[tag] = type(exc).__name__
            raise
        finally:
            TRACKED[tag + ":finally"] = True
            send(pid, (tag, "finally", TRACKED[tag]))
        return threading.current_thread().name

    @tool(
        description="An async generator of 0..limit-1 (await asyncio.sleep(delay) before "
        "each); tracked_outcome(tag) says how it ended, tag + ':n' how many it yielded; "
        "its finally sends (tag, 'finally', outcome, n) to pid when given."
    )
    async def async_count(self, tag, limit: int = 10, delay: float = 0.0, pid=None):
        import asyncio

        TRACKED[tag] = "running"
        TRACKED[tag + ":n"] = 0
        try:
            for i in range(limit):
                await asyncio.sleep(delay)
                TRACKED[tag + ":n"] = i + 1
                yield i
            TRACKED[tag] = "finished"
        except BaseException as exc:
            TRACKED[tag] = type(exc).__name__
            raise
        finally:
            TRACKED[tag + ":finally"] = True
            if pid is not None:
                send(pid, (tag, "finally", TRACKED[tag], TRACKED[tag + ":n"]))

    @tool(description="await elixir.acall(name, *args) from an async def command.")
    async def async_call_elixir(self, name, args=None, timeout: float = 10.0):
        from snakepit_bridge import elixir

        return await elixir.acall(name, *(args or []), timeout=timeout)


class BrokenInit(ThreadSafeAdapter):
    __thread_safe__ = True

    def __init__(self):
        super().__init__()
        raise RuntimeError("cannot load the model")


class Undeclared(ThreadSafeAdapter):
    """Forgets __thread_safe__ = True (the guide's pitfall 4)."""

    @tool(description="Nothing.")
    def noop(self):
        return None


class UsesSqlite(ThreadSafeAdapter):
    """Imports a thread-unsafe library (the guide's pitfall 3)."""

    __thread_safe__ = True

    def __init__(self):
        super().__init__()
        import sqlite3  # noqa: F401

    @tool(description="Nothing.")
    def noop(self):
        return None


class CheckedAdapter(TestAdapter):
    """A method only the thread-safety-check test calls (the checker reports each
    (method, thread count) once per VM)."""

    @thread_safe_method
    @tool(description="Sleep, tracked.")
    def checked_sleep(self, seconds: float = 0.05):
        time.sleep(seconds)
        return threading.current_thread().name

    @thread_safe_method
    @tool(description="Wait, tracked, until parties calls are inside at once (TestAdapter.barrier).")
    def checked_barrier(self, key, parties: int, timeout: float = 60.0):
        return TestAdapter.barrier(self, key, parties, timeout)


# Instances whose cleanup() ran, by id (recycling tests).
CLEANED = []


class RecycledAdapter(TestAdapter):
    """Records its cleanup, and says which instance served a call."""

    @tool(description="The id of the instance serving this call.")
    def whoami(self):
        return id(self)

    @tool(description="Ids of the instances cleaned up so far.")
    def cleaned(self):
        return list(CLEANED)

    def cleanup(self):
        CLEANED.append(id(self))


class FailsOnRecycle(TestAdapter):
    """The first instance builds; every later construction fails (a recycle that fails)."""

    built = 0

    def __init__(self):
        type(self).built += 1
        if type(self).built > 1:
            raise RuntimeError("model store unavailable")
        super().__init__()

    @tool(description="The id of the instance serving this call.")
    def whoami(self):
        return id(self)


# Where StopReporter instances report their cleanup() (the pid of the test that asked).
CLEANUP_REPORT = []


class StopReporter(TestAdapter):
    """Calls that outlive a pool's stop; reports each instance's cleanup() to a pid."""

    @tool(description="Report cleanup() to pid from now on; return this instance's id.")
    def report_cleanup_to(self, pid):
        CLEANUP_REPORT[:] = [pid]
        return id(self)

    @tool(description="Tell pid which instance runs the call, then spin in pure Python forever.")
    def spin_forever(self, pid):
        send(pid, ["spinning", id(self)])
        while True:
            pass

    @tool(description="Tell pid which instance runs the call, then sleep in C (time.sleep).")
    def sleep_in_c(self, pid, seconds: float = 10.0):
        send(pid, ["sleeping", id(self)])
        time.sleep(seconds)

    def cleanup(self):
        for pid in CLEANUP_REPORT:
            try:
                send(pid, ["cleanup", id(self)])
            except RuntimeError:
                pass  # the test that asked is over
