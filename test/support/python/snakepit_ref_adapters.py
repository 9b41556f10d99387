"""An adapter for the object-ref and eval conformance cases (test/support/conformance_refs_case.ex)."""

import gc
import os
import threading
import weakref

import time

from snakepit_bridge import ThreadSafeAdapter, ref, send, tool

# Weak references to the Box objects made so far (per Python process), to see them freed.
_LIVE = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class Box:
    """A plain object that is not convertible to a term; tracked while alive."""

    def __init__(self, value, tag=None):
        self.value = value
        self.tag = tag
        self.items = []
        with _LIVE_LOCK:
            _LIVE.add(self)

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def get(self):
        return self.value

    def __repr__(self):
        return f"Box({self.value!r})"


class RefAdapter(ThreadSafeAdapter):
    """Makes objects that stay in Python, and inspects what comes back."""

    __thread_safe__ = True

    @tool(description="A Box of value (converted unless return: :ref).")
    def make_box(self, value=None, tag=None):
        return Box(value, tag)

    @tool(description="A Box, always as a ref (snakepit_bridge.ref); anchor: a ref that pins the call.")
    def make_ref(self, value=None, tag=None, anchor=None):
        return ref(Box(value, tag))

    @tool(description="A list of n Box refs.")
    def make_refs(self, n: int = 1, anchor=None):
        return [ref(Box(i)) for i in range(n)]

    @tool(description="A NumPy array of zeros of the shape.")
    def zeros(self, rows: int = 3, cols: int = 3):
        import numpy

        return numpy.zeros((rows, cols))

    @tool(description="Plain data.")
    def data(self):
        return {"a": [1, 2, 3]}

    @tool(description="Boxes received (nested anywhere): their values, in order found.")
    def unbox(self, value=None):
        out = []

        def walk(v):
            if isinstance(v, Box):
                out.append(v.value)
            elif isinstance(v, dict):
                for k in sorted(v, key=str):
                    walk(v[k])
            elif isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)
            elif isinstance(v, (set, frozenset)):
                for x in sorted(v, key=repr):
                    walk(x)

        walk(value)
        return out

    @tool(description="id() of the object received, and whether it is a Box.")
    def identity(self, value=None):
        return {"id": id(value), "box": isinstance(value, Box)}

    @tool(description="How many Box objects are alive (after a gc.collect()) with the tag.")
    def live(self, tag=None, anchor=None):
        gc.collect()
        with _LIVE_LOCK:
            boxes = list(_LIVE)
        return sum(1 for b in boxes if tag is None or b.tag == tag)

    @tool(description="Send (tag, os pid) to pid, then wait until the file at path exists.")
    def hold(self, pid=None, tag=None, path=None, anchor=None):
        send(pid, (tag, os.getpid()))
        while not os.path.exists(path):
            time.sleep(0.01)
        return os.getpid()

    @tool(description="Send 'holding' to pid, then read one byte of the FIFO at path in C, attached.")
    def hold_attached(self, pid=None, path=None):
        """Blocks in a libc read() called through ctypes.PyDLL, which keeps the thread attached
        to Python (it holds the GIL on a GIL build) until Elixir writes to the FIFO."""
        import ctypes

        fd = os.open(path, os.O_RDWR)
        try:
            send(pid, "holding")
            buf = ctypes.create_string_buffer(1)
            ctypes.PyDLL(None).read(fd, buf, 1)
        finally:
            os.close(fd)
        return True

    @tool(description="id() of this adapter instance (changes when the worker is recycled).")
    def instance_id(self):
        return id(self)

    @tool(description="The OS pid of the worker.")
    def os_pid(self, anchor=None):
        return os.getpid()

    @tool(description="A dict with a ref inside and plain data.")
    def mixed(self):
        return {"plain": [1, 2], "box": ref(Box("inner")), "boxes": (ref(Box(1)), ref(Box(2)))}
