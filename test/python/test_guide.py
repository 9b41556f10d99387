"""The examples of threaded_workers_guide.md, run as written there."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np

from guide_adapters import MyAdapter, expensive_function
from snakepit_bridge import _runtime
from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool
from snakepit_bridge.thread_safety_checker import ThreadSafetyChecker


def test_guide_imports():
    import snakepit_bridge

    assert snakepit_bridge.ThreadSafeAdapter is ThreadSafeAdapter
    assert snakepit_bridge.thread_safe_method is thread_safe_method
    assert snakepit_bridge.tool is tool
    assert snakepit_bridge.ThreadSafetyChecker is ThreadSafetyChecker


def test_pattern_1_shared_read_only_state_is_shared():
    adapter = MyAdapter()
    seen = []
    lock = threading.Lock()

    def read(_: int) -> None:
        with lock:
            seen.append((id(adapter.model), id(adapter.config), adapter.config["timeout"]))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) == {(id(adapter.model), id(adapter.config), 30)}


def test_pattern_2_thread_local_cache_is_per_thread():
    adapter = MyAdapter()
    barrier = threading.Barrier(8)
    results = {}

    def work(i: int) -> None:
        barrier.wait(5)
        first = adapter.predict("same input")
        second = adapter.predict("same input")  # hit in this thread's cache
        results[i] = (first, second, sorted(adapter.get_thread_local("cache", {})))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {"prediction": "pred:same input"}
    assert results == {i: (expected, expected, ["same input"]) for i in range(8)}
    # One model call per thread: each thread filled its own cache once.
    assert adapter.model.calls == 8
    assert adapter.request_count == 8
    # The main thread never called predict: its cache is empty.
    assert adapter.get_thread_local("cache") is None


def test_pattern_3_locked_shared_state():
    adapter = MyAdapter()

    def work(i: int) -> None:
        for j in range(250):
            adapter.log_prediction((i, j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert adapter.total_predictions == 20 * 250
    assert len(adapter.prediction_log) == 20 * 250
    assert {entry["prediction"] for entry in adapter.prediction_log} == {
        (i, j) for i in range(20) for j in range(250)
    }


def test_step_3_decorated_predict_and_step_4_get_stats_override():
    adapter = MyAdapter()
    assert adapter.predict("abc") == {"prediction": "pred:abc"}
    assert adapter.get_stats() == {"request_count": 1, "results_count": 0}
    # The pool's get_thread_stats base tool still reports the thread statistics.
    stats = _runtime.commands(adapter)["get_thread_stats"]()
    assert stats["total_requests"] == 2  # predict and the tracked get_stats override
    assert stats["active_requests"] == 0


def test_method_1_thread_safety_checker():
    # Enable checking
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)

    # Run your tests
    def run_concurrent_access():
        adapter = MyAdapter()

        def make_request(i):
            adapter.predict(f"input_{i}")

        threads = [threading.Thread(target=make_request, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        # Get report
        report = checker.get_report()
        print(report)
        return adapter, report

    adapter, report = run_concurrent_access()
    assert report["methods"]["predict"]["calls"] == 100
    assert report["methods"]["predict"]["threads"] == 100
    assert adapter.request_count == 100
    assert "Adapter MyAdapter does not declare thread safety." not in report["warnings"]


def test_method_2_stress_test():
    def stress_test_adapter():
        adapter = MyAdapter()

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as executor:
            futures = [executor.submit(adapter.predict, f"input_{i}") for i in range(1000)]
            results = [f.result() for f in futures]

        assert len(results) == 1000
        print("Stress test passed!")
        return adapter, results

    adapter, results = stress_test_adapter()
    assert results == [{"prediction": f"pred:input_{i}"} for i in range(1000)]
    stats = _runtime.commands(adapter)["get_thread_stats"]()
    assert stats["total_requests"] == 1000
    assert stats["active_requests"] == 0
    assert sum(e["requests"] for e in stats["thread_utilization"].values()) == 1000
    assert len(stats["thread_utilization"]) <= 20


def test_method_3_race_condition_detection_with_locking():
    adapter = MyAdapter()

    def increment():
        for _ in range(1000):
            adapter.increment()  # the locked increment of Pitfall 1

    threads = [threading.Thread(target=increment) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    print(f"Counter: {adapter.counter} (expected: 10000)")
    assert adapter.counter == 10000, "Race condition detected!"


def test_method_3_detects_a_race_without_locking():
    """The same method finds a real lost update: an unlocked read-modify-write that lets
    other threads run between the read and the write (as a free-threaded build always may)."""

    class Racy(ThreadSafeAdapter):
        __thread_safe__ = True

        def __init__(self) -> None:
            super().__init__()
            self.counter = 0

        @thread_safe_method
        def increment(self) -> None:
            value = self.counter  # ❌ WRONG: no lock
            time.sleep(0)  # another thread runs here
            self.counter = value + 1

    adapter = Racy()
    barrier = threading.Barrier(10)

    def increment():
        barrier.wait(5)
        for _ in range(200):
            adapter.increment()

    threads = [threading.Thread(target=increment) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert adapter.counter < 2000
    assert adapter.get_stats()["total_requests"] == 2000


def test_performance_1_numpy_matrix_multiply_from_threads():
    adapter = MyAdapter()
    rng = np.random.default_rng(0)
    inputs = [rng.random((4, 3)).tolist() for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(adapter.matrix_multiply, inputs))
    for data, result in zip(inputs, results):
        assert np.allclose(result, np.dot(np.array(data), np.eye(3)))


def test_performance_4_thread_local_caching():
    adapter = MyAdapter()
    barrier = threading.Barrier(4)

    def work(_: int) -> None:
        barrier.wait(5)
        for key in range(10):
            assert adapter.compute(key) == expensive_function(key)
        for key in range(10):
            assert adapter.compute(key) == expensive_function(key)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert adapter.computed == 4 * 10  # each thread computed each key once


def test_pitfall_4_missing_declaration_is_reported(caplog):
    class MyAdapter(ThreadSafeAdapter):
        # __thread_safe__ not declared!
        pass

    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    checker.check_adapter(MyAdapter())
    assert "Adapter MyAdapter does not declare thread safety." in checker.get_report()["warnings"]
    assert "⚠️  Adapter MyAdapter does not declare thread safety." in caplog.text


def test_monitoring_thread_utilization_keys():
    class Monitored(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def get_thread_stats(self):
            return self.get_stats()

    stats = Monitored().get_thread_stats()
    assert {"total_requests", "active_requests", "max_workers", "thread_utilization"} <= set(stats)
    assert stats["total_requests"] == 1
    assert stats["active_requests"] == 1  # the call reporting the statistics is in flight
