"""Adapters written as in threaded_workers_guide.md, used by the tests and the check CLI test."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import numpy as np

from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool


class EchoModel:
    """A stand-in for a pre-trained model: counts its calls (under its own lock)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def predict(self, input_data: str) -> str:
        with self._lock:
            self.calls += 1
        return f"pred:{input_data}"


def load_pretrained_model() -> EchoModel:
    return EchoModel()


def expensive_function(key: int) -> int:
    return sum(i * key for i in range(100))


class MyAdapter(ThreadSafeAdapter):
    """The guide's MyAdapter, with every pattern of the guide in one class."""

    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        # Pattern 1: shared read-only
        self.model = load_pretrained_model()
        self.config = {"timeout": 30, "batch_size": 10}
        self.weights = np.eye(3)
        # Pattern 3: shared mutable (will need locking)
        self.request_count = 0
        self.results: List[Any] = []
        self.prediction_log: List[Dict[str, Any]] = []
        self.total_predictions = 0
        self.counter = 0
        self.computed = 0

    @thread_safe_method
    @tool(description="Thread-safe prediction")
    def predict(self, input_data: str) -> dict:
        # Pattern 2: each thread has its own cache
        cache = self.get_thread_local("cache", {})
        if input_data in cache:
            return cache[input_data]
        result = {"prediction": self.model.predict(input_data)}
        with self.acquire_lock():
            self.request_count += 1
        cache[input_data] = result
        self.set_thread_local("cache", cache)
        return result

    @thread_safe_method
    def log_prediction(self, prediction: Any) -> None:
        # Pattern 3: protected by lock
        with self.acquire_lock():
            self.prediction_log.append({"prediction": prediction, "timestamp": time.time()})
            self.total_predictions += 1

    @thread_safe_method
    def increment(self) -> None:
        # Pitfall 1, the correct version
        with self.acquire_lock():
            self.counter += 1

    @thread_safe_method
    def matrix_multiply(self, data: list) -> list:
        # Performance 1: NumPy releases the GIL
        arr = np.array(data)
        result = np.dot(arr, self.weights)
        return result.tolist()

    @thread_safe_method
    def compute(self, key: int) -> int:
        # Performance 4: thread-local caching, no lock
        cache = self.get_thread_local("cache", {})
        if key in cache:
            return cache[key]
        result = expensive_function(key)
        cache[key] = result
        self.set_thread_local("cache", cache)
        with self.acquire_lock():
            self.computed += 1
        return result

    @thread_safe_method
    def get_stats(self) -> dict:
        # Step 4: read shared mutable state safely
        with self.acquire_lock():
            return {"request_count": self.request_count, "results_count": len(self.results)}


class UndeclaredAdapter(ThreadSafeAdapter):
    """Pitfall 4: __thread_safe__ not declared."""

    @thread_safe_method
    def ping(self, message: str = "pong") -> str:
        return message


class FlakyAdapter(ThreadSafeAdapter):
    """Declared thread-safe; fails every call whose n is divisible by 7 (for the CLI test)."""

    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @thread_safe_method
    @tool(description="Fail on every 7th call")
    def work(self) -> int:
        with self.acquire_lock():
            self.calls += 1
            n = self.calls
        if n % 7 == 0:
            raise ValueError(f"call {n} failed")
        return n


class BrokenInitAdapter:
    """Raises from __init__ (create_adapter must let the exception through)."""

    def __init__(self) -> None:
        raise ValueError("model file missing")


NOT_A_CLASS = 42
