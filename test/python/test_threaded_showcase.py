"""The default adapter, ThreadedShowcaseAdapter."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest

from snakepit_bridge import _runtime
from snakepit_bridge.adapters.threaded_showcase import ThreadedShowcaseAdapter


@pytest.fixture
def adapter() -> ThreadedShowcaseAdapter:
    return ThreadedShowcaseAdapter()


def test_declares_thread_safety_and_lists_its_commands(adapter):
    assert ThreadedShowcaseAdapter.__thread_safe__ is True
    assert {n for n in _runtime.commands(adapter) if not _runtime.is_builtin(n)} == {
        "ping",
        "compute_intensive",
        "matrix_multiply",
        "batch_process",
        "stress_test",
        "get_thread_stats",
        "get_stats",
    }
    for entry in _runtime.tools(adapter):
        assert entry["description"], entry["name"]


def test_ping(adapter):
    assert adapter.ping() == "pong"
    assert adapter.ping("hello") == "hello"
    assert adapter.ping(message="x") == "x"


def test_compute_intensive(adapter):
    result = adapter.compute_intensive(data=[1, 2, 3])
    assert result == {
        "input_size": 3,
        "sum": 6,
        "squares": [1, 4, 9],
        "iterations": 1,
        "thread": threading.current_thread().name,
    }
    assert adapter.compute_intensive([1.5, -2], iterations=3)["squares"] == [2.25, 4]
    assert adapter.compute_intensive([])["sum"] == 0
    with pytest.raises(TypeError, match="data must be numbers"):
        adapter.compute_intensive(["a"])
    with pytest.raises(ValueError, match="iterations"):
        adapter.compute_intensive([1], iterations=0)


def test_compute_intensive_request_count_exact_under_20_threads(adapter):
    def work(i: int) -> dict:
        return adapter.compute_intensive(data=[i, i + 1], iterations=2)

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as executor:
        results = list(executor.map(work, range(1000)))
    assert [r["sum"] for r in results] == [2 * i + 1 for i in range(1000)]
    assert adapter.request_count == 1000
    stats = adapter.get_stats()
    assert stats["request_count"] == 1000
    assert stats["total_requests"] == 1000
    assert stats["active_requests"] == 0


def test_matrix_multiply_with_numpy(adapter):
    a = [[1, 2], [3, 4]]
    b = [[5, 6], [7, 8]]
    result = adapter.matrix_multiply(a, b)
    assert result["result"] == [[19, 22], [43, 50]]
    assert result["shape"] == [2, 2]
    assert result["thread"] == threading.current_thread().name


def test_matrix_multiply_defaults_to_shared_identity(adapter):
    a = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert adapter.matrix_multiply(a)["result"] == a
    assert adapter.matrix_multiply(a)["shape"] == [2, 3]
    wide = [[float(i) for i in range(70)]]  # wider than the preloaded weights
    assert adapter.matrix_multiply(wide)["result"] == wide
    assert adapter.weights.flags.writeable is False


def test_matrix_multiply_errors(adapter):
    with pytest.raises(ValueError, match="cannot multiply a 2x2 matrix by a 3x1 matrix"):
        adapter.matrix_multiply([[1, 2], [3, 4]], [[1], [2], [3]])
    with pytest.raises(ValueError, match="rectangular"):
        adapter.matrix_multiply([[1, 2], [3]])
    with pytest.raises(ValueError, match="2-dimensional"):
        adapter.matrix_multiply([1, 2, 3])
    with pytest.raises(TypeError, match="must hold numbers"):
        adapter.matrix_multiply([["a", "b"]])


def test_matrix_multiply_in_parallel(adapter):
    rng = np.random.default_rng(1)
    pairs = [(rng.random((8, 5)).tolist(), rng.random((5, 3)).tolist()) for _ in range(64)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(lambda p: adapter.matrix_multiply(*p), pairs))
    for (a, b), result in zip(pairs, results):
        assert np.allclose(result["result"], np.dot(np.array(a), np.array(b)))
        assert result["shape"] == [8, 3]


def test_batch_process(adapter):
    assert adapter.batch_process([1, 2, 3]) == {
        "results": [1, 4, 9],
        "count": 3,
        "operation": "square",
    }
    assert adapter.batch_process([1, 2.5], "double")["results"] == [2, 5.0]
    assert adapter.batch_process([1, -2], operation="negate")["results"] == [-1, 2]
    assert adapter.batch_process(["ab", "Cd"], "upper")["results"] == ["AB", "CD"]
    assert adapter.batch_process([], "upper") == {"results": [], "count": 0, "operation": "upper"}


def test_batch_process_errors(adapter):
    with pytest.raises(ValueError) as info:
        adapter.batch_process([1], "cube")
    assert str(info.value) == (
        "unknown operation 'cube'; valid operations: double, negate, square, upper"
    )
    with pytest.raises(TypeError, match="operation 'upper' needs strings"):
        adapter.batch_process([1], "upper")
    with pytest.raises(TypeError, match="must be numbers"):
        adapter.batch_process(["a"], "square")


def test_stress_test(adapter):
    result = adapter.stress_test(iterations=5000)
    assert result["iterations"] == 5000
    assert result["result"] == sum(i * i % 7 for i in range(5000))
    assert result["thread"] == threading.current_thread().name
    assert result["elapsed_ms"] >= 0.0
    assert adapter.stress_test()["iterations"] == 1000
    with pytest.raises(ValueError):
        adapter.stress_test(-1)


def test_get_thread_stats(adapter):
    adapter.ping()
    adapter.compute_intensive([1])
    stats = adapter.get_thread_stats()
    assert stats["total_requests"] == 3
    assert stats["active_requests"] == 1  # itself
    assert stats["max_workers"] == 1
    assert stats["request_count"] == 1
    entry = stats["thread_utilization"][threading.current_thread().name]
    assert entry["requests"] == 3
    assert set(entry) == {"requests", "busy_seconds", "busy_share"}
