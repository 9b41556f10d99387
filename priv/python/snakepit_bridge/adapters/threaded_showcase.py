"""The default adapter: a copyable example of a thread-safe adapter.

It shows the three patterns of the threaded workers guide:

1. shared read-only state: ``self.config`` and ``self.weights`` (a read-only NumPy array),
   set in ``__init__`` and never modified;
2. thread-local state: none needed here; see ``get_thread_local`` in
   :class:`~snakepit_bridge.base_adapter_threaded.ThreadSafeAdapter`;
3. shared mutable state under the lock: ``self.request_count``, incremented inside
   ``with self.acquire_lock():`` by ``compute_intensive``.

From Elixir::

    {:ok, %{"sum" => 6, "squares" => [1, 4, 9]}} =
      Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})

NumPy is optional: without it every command but ``matrix_multiply`` works.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where NumPy is missing
    np = None  # type: ignore[assignment]

__all__ = ["ThreadedShowcaseAdapter"]

#: Size of the identity weights built in ``__init__`` (larger inputs get a fresh identity).
WEIGHTS_SIZE = 64

_OPERATIONS: Dict[str, Callable[[Any], Any]] = {
    "square": lambda x: x * x,
    "double": lambda x: x * 2,
    "negate": lambda x: -x,
    "upper": lambda s: s.upper(),
}


def _check_numbers(values: List[Any], what: str) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be numbers, got {type(value).__name__}: {value!r}")


class ThreadedShowcaseAdapter(ThreadSafeAdapter):
    """Example thread-safe adapter: ping, pure-Python CPU work, NumPy, batches, statistics."""

    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        # Pattern 1: shared read-only state, safe to read from every thread without a lock.
        self.config: Dict[str, Any] = {"weights_size": WEIGHTS_SIZE}
        self.weights: Any = None
        if np is not None:
            weights = np.eye(WEIGHTS_SIZE)
            weights.setflags(write=False)
            self.weights = weights
        # Pattern 3: shared mutable state, only touched under self.acquire_lock().
        self.request_count = 0

    @thread_safe_method
    @tool(description="Echo a message (latency check)", inline=True)
    def ping(self, message: str = "pong") -> str:
        """Return ``message`` unchanged.

        Declared short (``inline=True``): it returns at once and never blocks, so a
        ``:thread`` pool may run it on the calling BEAM scheduler.
        """
        return message

    @thread_safe_method
    @tool(description="Pure-Python CPU work: sum and squares of the data, repeated")
    def compute_intensive(self, data: list, iterations: int = 1) -> Dict[str, Any]:
        """Compute the sum and the squares of ``data``, ``iterations`` times over.

        Returns ``{"input_size", "sum", "squares", "iterations", "thread"}``.
        """
        if not isinstance(data, (list, tuple)):
            raise TypeError(f"data must be a list of numbers, got {type(data).__name__}")
        _check_numbers(list(data), "data")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        total: Any = 0
        squares: List[Any] = []
        for _ in range(iterations):
            total = 0
            squares = []
            for x in data:
                total += x
                squares.append(x * x)
        with self.acquire_lock():
            self.request_count += 1
        return {
            "input_size": len(data),
            "sum": total,
            "squares": squares,
            "iterations": iterations,
            "thread": threading.current_thread().name,
        }

    @thread_safe_method
    @tool(description="Matrix product with NumPy (releases the GIL); b defaults to identity")
    def matrix_multiply(
        self, a: List[List[float]], b: Optional[List[List[float]]] = None
    ) -> Dict[str, Any]:
        """Multiply the matrices ``a`` and ``b`` (lists of rows).

        Without ``b``, ``a`` is multiplied by the shared read-only identity weights, so the
        result equals ``a``. Returns ``{"result", "shape", "thread"}``.
        """
        if np is None:
            raise RuntimeError("matrix_multiply needs NumPy: pip install numpy")
        left = _as_matrix(a, "a")
        if b is None:
            cols = left.shape[1]
            right = self.weights[:cols, :cols] if cols <= WEIGHTS_SIZE else np.eye(cols)
        else:
            right = _as_matrix(b, "b")
        if left.shape[1] != right.shape[0]:
            raise ValueError(
                f"cannot multiply a {left.shape[0]}x{left.shape[1]} matrix by a "
                f"{right.shape[0]}x{right.shape[1]} matrix"
            )
        product = np.dot(left, right)  # releases the GIL: other threads keep running
        return {
            "result": product.tolist(),
            "shape": [int(product.shape[0]), int(product.shape[1])],
            "thread": threading.current_thread().name,
        }

    @thread_safe_method
    @tool(description="Apply an operation to every item: square, double, negate or upper")
    def batch_process(self, items: list, operation: str = "square") -> Dict[str, Any]:
        """Apply ``operation`` to each item; returns ``{"results", "count", "operation"}``.

        ``square``, ``double`` and ``negate`` take numbers, ``upper`` takes strings.
        """
        func = _OPERATIONS.get(operation)
        if func is None:
            valid = ", ".join(sorted(_OPERATIONS))
            raise ValueError(f"unknown operation {operation!r}; valid operations: {valid}")
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"items must be a list, got {type(items).__name__}")
        if operation == "upper":
            for item in items:
                if not isinstance(item, str):
                    raise TypeError(
                        f"operation 'upper' needs strings, got {type(item).__name__}: {item!r}"
                    )
        else:
            _check_numbers(list(items), f"items for operation {operation!r}")
        results = [func(item) for item in items]
        return {"results": results, "count": len(results), "operation": operation}

    @thread_safe_method
    @tool(description="Pure-Python loop of the given length (holds the GIL on GIL builds)")
    def stress_test(self, iterations: int = 1000) -> Dict[str, Any]:
        """Run a deterministic integer loop; returns ``{"iterations", "result", "thread",
        "elapsed_ms"}``. ``result`` is ``sum(i * i % 7 for i in range(iterations))``."""
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
        start = time.perf_counter()
        acc = 0
        for i in range(iterations):
            acc += i * i % 7
        return {
            "iterations": iterations,
            "result": acc,
            "thread": threading.current_thread().name,
            "elapsed_ms": (time.perf_counter() - start) * 1000.0,
        }

    @thread_safe_method
    @tool(description="Request statistics per thread (this call counts as active)")
    def get_thread_stats(self) -> Dict[str, Any]:
        """Return :meth:`get_stats`."""
        return self.get_stats()

    def get_stats(self) -> Dict[str, Any]:
        """The base statistics plus ``request_count`` (compute_intensive calls)."""
        stats = super().get_stats()
        with self.acquire_lock():
            stats["request_count"] = self.request_count
        return stats


def _as_matrix(value: Any, name: str) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list of rows")
    try:
        matrix = np.asarray(value, dtype=None)
    except ValueError as exc:  # ragged rows
        raise ValueError(f"{name} must be a rectangular list of rows: {exc}") from None
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional (a list of rows), got {matrix.ndim} dims")
    if matrix.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got {matrix.dtype}")
    return matrix
