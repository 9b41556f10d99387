"""Adapters for test/snakepit/process_shm_test.exs: large data through shared memory."""

import os
import time

from snakepit_bridge import tool
from snakepit_data_adapters import DataAdapter


def _wait(gate, limit=60.0):
    """Waits until the file ``gate`` exists (the test creates it), at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


class _Blocker:
    """Encodes only once ``gate`` exists: a reply stuck half-way through its encoding."""

    def __init__(self, gate):
        self.gate = gate

    def __snakepit__(self):
        _wait(self.gate)
        return "released"


class ShmAdapter(DataAdapter):
    """Large arguments and results, and calls that block until a gate file exists."""

    __thread_safe__ = True

    @tool(description="What a value argument is: its type, its mapping's type, its length.")
    def kind_of(self, value):
        info = {"type": type(value).__name__}
        if isinstance(value, memoryview):
            info["base"] = type(value.obj).__name__
            info["readonly"] = value.readonly
        if hasattr(value, "dtype") and hasattr(value, "flags"):
            info["sum"] = float(value.sum())
            info["writeable"] = bool(value.flags.writeable)
        info["len"] = value.nbytes if hasattr(value, "nbytes") else len(value)
        return info

    @tool(description="Blocks until the file gate exists, then the buffer's length.")
    def blocked_len(self, buf, gate):
        _wait(gate)
        return len(buf)

    @tool(description="A reply whose first n bytes are exported, then whose encoding blocks.")
    def stuck_reply(self, n, gate):
        return {"a": b"\x01" * n, "b": _Blocker(gate)}

    @tool(description="Keeps a slice of the buffer after the call (a view of the arena).")
    def keep(self, buf):
        self._kept = buf[1:]
        return len(self._kept)

    @tool(description="The first 64 bytes of the kept slice, read now.")
    def kept_head(self):
        return bytes(self._kept[:64])

    @tool(description="Lets go of the kept slice.")
    def drop_kept(self):
        self._kept = None
        return True

    @tool(description="How many result-arena regions the BEAM still holds.")
    def result_regions(self):
        from snakepit_bridge import _shm

        arena = _shm._RESULTS
        with arena.lock:
            arena._reclaim()
            return len(arena.regions)

    @tool(description="Bytes of pages this worker's arenas hold (snakepit_bridge._shm).")
    def arena_pages(self):
        from snakepit_bridge import _shm

        return _shm.resident()
