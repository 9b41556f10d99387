"""The adapter of bench/suite.exs: fixed units of work and payloads, nothing else.

Put on ``sys.path`` by the suite (``config :snakepit, python_path``); the class path is
``bench_adapter.BenchAdapter``. Every command returns something the suite can check:

* ``ping(message)`` — returns ``message``;
* ``cpu(iterations)`` — pure-Python integer loop, holds the GIL on a GIL build; returns
  ``sum(i * i % 7 for i in range(iterations))``;
* ``numpy_dot(reps)`` — ``reps`` products of two fixed 300x300 float64 matrices with ``np.dot``
  (OpenBLAS releases the GIL inside each product); returns the trace of the last product;
* ``sleep(ms)`` — ``time.sleep(ms / 1000)`` (releases the GIL); returns ``ms``;
* ``echo(value)`` — returns ``value`` unchanged;
* ``sink(value)`` — returns ``len(value)`` (bytes, items of a list, keys of a dict);
* ``source(kind, count)`` — returns a value built by ``make_value`` (``"binary"``, ``"floats"`` or
  ``"map"``), cached per ``(kind, count)`` so that only its conversion and transfer are timed
  (``prepare(kind, count)`` fills the cache without returning the value);
* ``blas_info()`` — the BLAS NumPy uses and its current thread count;
* ``elixir_loop(name, n, arg)`` — calls the Elixir function ``name`` ``n`` times from inside the
  command; returns the median ns per call (timed in Python) and the last result;
* ``asleep(ms)`` — an ``async def`` command: ``await asyncio.sleep(ms / 1000)``; returns ``ms``;
* ``settle()`` — ``gc.collect()`` and glibc's ``malloc_trim(0)``, so that a reading of RSS that
  follows shows live memory rather than garbage or free heap not yet returned to the OS.

When NumPy is imported (here, or earlier by another pool of the same BEAM), the adapter sets
OpenBLAS's thread count to ``BENCH_BLAS_THREADS`` (default 1) through the library's own
``*_set_num_threads`` entry point, since an ``OPENBLAS_NUM_THREADS`` set after the import has no
effect: BLAS threads would otherwise blur the scaling measured with pool threads.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any, Dict, Optional, Tuple

from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool

try:
    import numpy as np
except ImportError:  # pragma: no cover - the suite reports NumPy as missing
    np = None  # type: ignore[assignment]

__all__ = ["BenchAdapter", "make_value", "cpu_work"]

MATRIX_SIZE = 300


def cpu_work(iterations: int) -> int:
    """The unit of pure-Python CPU work (also used by bench/python/cpu_loop.py)."""
    acc = 0
    for i in range(iterations):
        acc += i * i % 7
    return acc


def make_record(i: int) -> Dict[str, Any]:
    """One record of the ``map`` payload."""
    return {"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "pos": {"x": i, "y": -i}}


#: Keys per map level of the ``map`` payload. Kept at or under 128: returning a map of more than
#: 128 keys from a :thread pool crashed the BEAM on OTP 25 when this suite was written (see
#: bench/README.md), and a tree of small maps is what nested data usually looks like anyway.
FANOUT = 100


def make_tree(count: int) -> Dict[str, Any]:
    """``count`` records in a tree of maps with at most ``FANOUT`` keys each.

    Leaves map ``"k<i>"`` to record ``i``; inner maps map ``"n<j>"`` to subtrees of
    ``span / FANOUT`` records, where ``span`` is the smallest power of ``FANOUT`` >= ``count``.
    """
    span = FANOUT
    while span < count:
        span *= FANOUT
    return _tree(0, count, span)


def _tree(lo: int, hi: int, span: int) -> Dict[str, Any]:
    if span == FANOUT:
        return {f"k{i}": make_record(i) for i in range(lo, min(lo + FANOUT, hi))}
    sub = span // FANOUT
    return {f"n{j}": _tree(lo + j * sub, hi, sub) for j in range(FANOUT) if lo + j * sub < hi}


def make_value(kind: str, count: int) -> Any:
    """The payloads of the data section; the suite builds the same values in Elixir.

    * ``binary``: ``count`` bytes of 0xAB (not UTF-8, so it stays ``bytes``);
    * ``floats``: ``[i * 0.5 + 0.25 for i in range(count)]``;
    * ``map``: ``count`` records (``make_record``) in a tree of maps (``make_tree``).
    """
    if kind == "binary":
        return b"\xab" * count
    if kind == "floats":
        return [i * 0.5 + 0.25 for i in range(count)]
    if kind == "map":
        return make_tree(count)
    raise ValueError(f"unknown kind {kind!r}: expected binary, floats or map")


# ---------------------------------------------------------------------------------------------
# OpenBLAS thread count, through the library NumPy loaded (numpy.libs/libscipy_openblas*.so or a
# system libopenblas).

_BLAS: Optional[Tuple[str, Any, Any]] = None
_BLAS_LOCK = threading.Lock()


def _find_blas() -> Optional[Tuple[str, Any, Any]]:
    global _BLAS
    with _BLAS_LOCK:
        if _BLAS is not None:
            return _BLAS
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        except OSError:
            return None
        for path in sorted(paths):
            if not os.path.exists(path):
                continue
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        get.restype = ctypes.c_int
                        set_.argtypes = [ctypes.c_int]
                        _BLAS = (os.path.basename(path), get, set_)
                        return _BLAS
        return None


def blas_threads(wanted: Optional[int] = None) -> Dict[str, Any]:
    """Set (when ``wanted``) and report the OpenBLAS thread count."""
    found = _find_blas() if np is not None else None
    if found is None:
        return {"lib": None, "threads": None}
    name, get, set_ = found
    if wanted is not None:
        set_(int(wanted))
    return {"lib": name, "threads": int(get())}


class BenchAdapter(ThreadSafeAdapter):
    """Units of work and payloads for bench/suite.exs."""

    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        self._cache: Dict[Tuple[str, int], Any] = {}
        self.a: Any = None
        self.b: Any = None
        self.blas: Dict[str, Any] = {"lib": None, "threads": None}
        if np is not None:
            self.blas = blas_threads(int(os.environ.get("BENCH_BLAS_THREADS", "1")))

    def _matrices(self) -> Tuple[Any, Any]:
        # Built on first use, so that an instance that never multiplies stays small (the
        # memory section measures pools of this adapter).
        if self.a is None:
            with self.acquire_lock():
                if self.a is None:
                    rng = np.random.default_rng(0)
                    a = rng.random((MATRIX_SIZE, MATRIX_SIZE))
                    b = rng.random((MATRIX_SIZE, MATRIX_SIZE))
                    a.setflags(write=False)
                    b.setflags(write=False)
                    self.b = b
                    self.a = a
        return self.a, self.b

    @thread_safe_method
    @tool(description="Return message (latency check)")
    def ping(self, message: str = "pong") -> str:
        return message

    @thread_safe_method
    @tool(description="Pure-Python integer loop of the given length")
    def cpu(self, iterations: int) -> int:
        return cpu_work(iterations)

    @thread_safe_method
    @tool(description="reps products of two fixed 300x300 matrices; trace of the last")
    def numpy_dot(self, reps: int) -> float:
        if np is None:
            raise RuntimeError("numpy_dot needs NumPy")
        a, b = self._matrices()
        product = None
        for _ in range(reps):
            product = np.dot(a, b)
        return float(np.trace(product))

    @thread_safe_method
    @tool(description="time.sleep(ms / 1000)")
    def sleep(self, ms: float) -> float:
        time.sleep(ms / 1000.0)
        return ms

    @thread_safe_method
    @tool(description="Return the argument unchanged")
    def echo(self, value: Any) -> Any:
        return value

    @thread_safe_method
    @tool(description="Return the argument unchanged; short, may run inline", inline=True)
    def echo_inline(self, value: Any) -> Any:
        return value

    @thread_safe_method
    @tool(description="Take the argument, return its length")
    def sink(self, value: Any) -> int:
        return len(value)

    @thread_safe_method
    @tool(description="Return a payload of the given kind and count (cached)")
    def source(self, kind: str, count: int) -> Any:
        key = (kind, count)
        value = self._cache.get(key)
        if value is None:
            value = make_value(kind, count)
            with self.acquire_lock():
                # Keep only the latest few payloads: 64 MB ones add up.
                if len(self._cache) >= 3:
                    self._cache.clear()
                self._cache[key] = value
        return value

    @thread_safe_method
    @tool(description="Build and cache the payload of source without returning it")
    def prepare(self, kind: str, count: int) -> bool:
        self.source(kind, count)
        return True

    @thread_safe_method
    @tool(description="Drop the cached payloads of source")
    def clear_cache(self) -> bool:
        with self.acquire_lock():
            self._cache.clear()
        return True

    @tool(description="Bytes of pages the :process profile's arenas hold (snakepit_bridge._shm).")
    def arena_pages(self) -> int:
        from snakepit_bridge import _shm

        return _shm.resident()

    @thread_safe_method
    @tool(description="gc.collect() and malloc_trim(0): let RSS show live memory only")
    def settle(self) -> bool:
        gc.collect()
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
        return True

    @thread_safe_method
    # Section 6 (Python calling Elixir, async commands).

    @tool(description="Call an Elixir function n times from inside the command; median ns")
    def elixir_loop(self, name: str, n: int, arg: Any = 1) -> Dict[str, Any]:
        from snakepit_bridge import elixir

        samples = []
        result = None
        for _ in range(n):
            t0 = time.perf_counter_ns()
            result = elixir.call(name, arg, timeout=30.0)
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        return {"median_ns": samples[len(samples) // 2], "last": result}

    @tool(description="An async def command: await asyncio.sleep(ms / 1000); returns ms")
    async def asleep(self, ms: float = 0.0) -> float:
        import asyncio

        await asyncio.sleep(ms / 1000)
        return ms

    @tool(description="The BLAS library NumPy uses and its thread count")
    def blas_info(self) -> Dict[str, Any]:
        info = blas_threads()
        info["numpy"] = getattr(np, "__version__", None)
        info["env_openblas"] = os.environ.get("OPENBLAS_NUM_THREADS")
        info["env_omp"] = os.environ.get("OMP_NUM_THREADS")
        info["pid"] = os.getpid()
        return info

    # Large data (bench/lib/large_data.exs).

    @thread_safe_method
    @tool(description="Length of a buffer or NDArray argument, without reading its bytes")
    def buffer_len(self, buf: Any) -> int:
        return memoryview(buf).nbytes

    @thread_safe_method
    @tool(description="Cached bytes (or a float64 array) of n bytes, built before timing")
    def big_source(self, kind: str, n: int) -> Any:
        key = ("big", kind, n)
        value = self._cache.get(key)
        if value is None:
            if kind == "bytes":
                value = b"\xab" * n
            else:
                value = np.arange(n // 8, dtype="float64")
            with self.acquire_lock():
                if len(self._cache) >= 3:
                    self._cache.clear()
                self._cache[key] = value
        return value

    @thread_safe_method
    @tool(description="A NumPy array argument times k (a new array)")
    def scale(self, value: Any, k: float) -> Any:
        return value * k
