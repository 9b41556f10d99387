"""Adapters for the :subinterpreter profile's own tests (test/snakepit/subinterpreter_test.exs)."""

import mmap
import os
import sys
import time

from snakepit_bridge import ThreadSafeAdapter, tool


class ProbeAdapter(ThreadSafeAdapter):
    """Detects whether two calls run Python at the same time, each holding its GIL."""

    __thread_safe__ = True

    @tool(description="Spin in pure Python until the other caller's counter moved `rounds` times.")
    def together(self, path: str, me: int, rounds: int = 200, max_spins: int = 20_000_000):
        # Two slots of 8 bytes in a shared file mapping (byte 0: a counter, byte 1: started, byte 2: done);
        # once both started, each call bumps its own counter and watches the other's. The switch interval is raised so that this thread never hands
        # its GIL over while it spins: if the other call needs that same GIL it cannot move,
        # and the loop ends after max_spins without seeing it (returns False). Nothing in the
        # loop releases the GIL (no I/O, no sleep).
        old_interval = sys.getswitchinterval()
        fd = os.open(path, os.O_RDWR)
        try:
            m = mmap.mmap(fd, 16)
        finally:
            os.close(fd)
        other = 1 - me
        # First both calls say they started and wait for each other, letting the GIL go
        # (time.sleep): on a shared GIL the other call can start too. The wait is bounded only
        # so that a lost call fails the test instead of hanging it.
        m[me * 8 + 1] = 1
        for _ in range(1_000_000):
            if m[other * 8 + 1]:
                break
            time.sleep(0.001)
        else:
            return False
        seen = 0
        last = m[other * 8]
        mine = 0
        sys.setswitchinterval(1_000.0)
        try:
            for _ in range(max_spins):
                mine = (mine + 1) % 251
                m[me * 8] = mine
                now = m[other * 8]
                if now != last:
                    last = now
                    seen += 1
                    if seen >= rounds:
                        m[me * 8 + 2] = 1  # done: keep moving until the other is done too
                if seen >= rounds and m[other * 8 + 2]:
                    return True
            return seen >= rounds and bool(m[other * 8 + 2])
        finally:
            sys.setswitchinterval(old_interval)
            m.close()

    @tool(description="Pure-Python CPU work (for the benchmarks).")
    def cpu(self, n: int = 200_000):
        total = 0
        for i in range(n):
            total += i * i % 7
        return total


class DataAdapter(ThreadSafeAdapter):
    """What crosses a subinterpreter worker: buffers, large bytes, refs (refused)."""

    __thread_safe__ = True

    @tool(description="The type and length of a value, and the bytes back.")
    def describe(self, value=None):
        return {"type": type(value).__name__, "len": len(value), "bytes": bytes(value)}

    @tool(description="n bytes of b'x'.")
    def blob(self, n: int = 1 << 20):
        return b"x" * n

    @tool(description="A memoryview over n bytes.")
    def view(self, n: int = 1 << 20):
        return memoryview(b"y" * n)

    @tool(description="An object, for return: :ref.")
    def obj(self):
        return {"k": 1}


class NumpyAdapter(ThreadSafeAdapter):
    """Imports NumPy, which refuses to load in a subinterpreter."""

    __thread_safe__ = True

    def __init__(self):
        super().__init__()
        import numpy  # noqa: F401

    @tool(description="ping")
    def ping(self):
        return "pong"
