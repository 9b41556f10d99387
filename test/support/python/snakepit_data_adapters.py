"""Adapters for the large-data conformance tests (test/support/conformance_data_case.ex)."""

import hashlib
import threading

from snakepit_bridge import tool
from snakepit_test_adapters import TestAdapter

HELD = {}
HELD_LOCK = threading.Lock()


def _digest(data):
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


class DataAdapter(TestAdapter):
    """Buffers, bytes and NumPy arrays."""

    __thread_safe__ = True

    @tool(description="What a buffer argument is in Python.")
    def describe_buffer(self, buf):
        info = {"type": type(buf).__name__, "len": len(buf), "sha256": _digest(buf)}
        if isinstance(buf, memoryview):
            info["readonly"] = buf.readonly
            info["base"] = type(buf.obj).__name__
            try:
                buf[0:1] = b"x"
                info["writable"] = True
            except TypeError:
                info["writable"] = False
        return info

    @tool(description="Keep a reference to the buffer under key.")
    def hold(self, key, buf):
        with HELD_LOCK:
            HELD[key] = buf
        return len(buf)

    @tool(description="Digest of a held buffer, then forget it.")
    def release_held(self, key):
        with HELD_LOCK:
            buf = HELD.pop(key)
        return _digest(buf)

    @tool(description="n bytes: i % 251 for i in range(n), as bytes, bytearray or memoryview.")
    def make_bytes(self, n, kind="bytes"):
        data = bytes(i % 251 for i in range(min(n, 251))) * (n // 251 + 1)
        data = data[:n]
        if kind == "bytearray":
            return bytearray(data)
        if kind == "memoryview":
            return memoryview(data)
        return data

    @tool(description="A writable result of n bytes, all equal to byte: a bytearray or a NumPy array.")
    def filled(self, n, byte, kind="bytearray"):
        if kind == "ndarray":
            import numpy

            return numpy.full(n, byte, dtype=numpy.uint8)
        return bytearray([byte]) * n

    @tool(description="Stream the list's length, then its first item.")
    def stream_len(self, items):
        yield len(items)
        yield items[0]

    @tool(description="How many items the list has.")
    def count(self, items):
        return len(items)

    @tool(description="The buffer argument returned as it came (a memoryview).")
    def same(self, buf):
        return buf

    @tool(description="An NDArray argument: its type, dtype, shape, flags and sum.")
    def ndarray_info(self, a):
        return {
            "type": type(a).__name__,
            "dtype": str(a.dtype),
            "shape": list(a.shape),
            "writeable": bool(a.flags.writeable),
            "sum": float(a.sum()),
        }

    @tool(description="numpy.arange(n, dtype=dtype).reshape(shape), and more arrays in a dict.")
    def arange(self, n, dtype="float64", shape=None):
        import numpy as np

        a = np.arange(n, dtype=dtype)
        return a.reshape(shape) if shape else a

    @tool(description="A dict holding an array and its transpose (not C-contiguous).")
    def arrays(self, rows, cols):
        import numpy as np

        a = np.arange(rows * cols, dtype="int32").reshape(rows, cols)
        return {"a": a, "t": a.T, "n": 1}

    @tool(description="The array times two.")
    def double(self, a):
        return a * 2

    @tool(description="The array as it came (read-only, over the Erlang binary).")
    def identity(self, a):
        return a

    @tool(description="Stream count arrays numpy.arange(i, i + 3) in containers; finally sets a flag.")
    def stream_arrays(self, count, key=None):
        import numpy as np

        try:
            for i in range(count):
                yield {"i": i, "a": np.arange(i, i + 3, dtype="int64")}
        finally:
            if key is not None:
                with HELD_LOCK:
                    HELD[key] = "closed"

    @tool(description="Stream count arrays from an async generator.")
    async def astream_arrays(self, count):
        import numpy as np

        for i in range(count):
            yield np.full(2, i, dtype="float64")

    @tool(description="numpy.arange(n) from an async def command.")
    async def aarange(self, n):
        import numpy as np

        return np.arange(n, dtype="int32")

    @tool(description="What a stream's finally block left under key (None if not run yet).")
    def flag(self, key):
        with HELD_LOCK:
            return HELD.pop(key, None)
