"""ThreadSafeAdapter, thread_safe_method and tool."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Dict, List, Optional

import pytest

from snakepit_bridge import Cancelled
from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool


def run_threads(count: int, target, *args) -> List[threading.Thread]:
    threads = [
        threading.Thread(target=target, args=(i, *args), name=f"t{i}") for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return threads


class Counter(ThreadSafeAdapter):
    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0

    @thread_safe_method
    def increment(self) -> None:
        with self.acquire_lock():
            self.counter += 1

    @thread_safe_method
    def ping(self) -> str:
        return "pong"

    @thread_safe_method
    def nested(self) -> str:
        return self.ping()

    @thread_safe_method
    def wait_for(self, event: threading.Event) -> bool:
        return event.wait(5)

    @thread_safe_method
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_base_class_does_not_declare_thread_safety():
    assert ThreadSafeAdapter.__thread_safe__ is False
    assert Counter.__thread_safe__ is True
    assert ThreadSafeAdapter().max_workers == 1


def test_locked_counter_is_exact_with_20_threads():
    adapter = Counter()

    def work(_i: int) -> None:
        for _ in range(1000):
            adapter.increment()

    run_threads(20, work)
    assert adapter.counter == 20 * 1000


def test_acquire_lock_is_one_reentrant_lock_per_instance():
    a, b = Counter(), Counter()
    assert a.acquire_lock() is a.acquire_lock()
    assert a.acquire_lock() is not b.acquire_lock()
    with a.acquire_lock():
        with a.acquire_lock():  # re-entrant: no deadlock
            pass
    # Held by another thread: not available here.
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with a.acquire_lock():
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    assert a.acquire_lock().acquire(blocking=False) is False
    release.set()
    t.join()
    assert a.acquire_lock().acquire(blocking=False) is True
    a.acquire_lock().release()


def test_thread_local_values_are_per_thread():
    adapter = ThreadSafeAdapter()
    adapter.set_thread_local("who", "main")
    barrier = threading.Barrier(8)
    seen: Dict[int, object] = {}

    def work(i: int) -> None:
        before = adapter.get_thread_local("who", "unset")
        adapter.set_thread_local("who", i)
        barrier.wait(5)  # all threads alive and set at the same time
        seen[i] = (before, adapter.get_thread_local("who"))

    run_threads(8, work)
    assert seen == {i: ("unset", i) for i in range(8)}
    assert adapter.get_thread_local("who") == "main"


def test_thread_local_values_are_per_instance():
    a, b = ThreadSafeAdapter(), ThreadSafeAdapter()
    a.set_thread_local("k", 1)
    assert b.get_thread_local("k") is None
    assert a.get_thread_local("k") == 1


def test_clear_thread_local_one_key_or_all():
    adapter = ThreadSafeAdapter()
    adapter.set_thread_local("a", 1)
    adapter.set_thread_local("b", 2)
    adapter.set_thread_local(("tuple", "key"), 3)
    adapter.clear_thread_local("a")
    assert adapter.get_thread_local("a", "gone") == "gone"
    assert adapter.get_thread_local("b") == 2
    adapter.clear_thread_local("missing")  # no error
    adapter.clear_thread_local()
    assert adapter.get_thread_local("b") is None
    assert adapter.get_thread_local(("tuple", "key")) is None


def test_get_stats_exact_after_known_load():
    adapter = Counter()
    adapter.max_workers = 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait(5)
        for _ in range(100 + i):
            adapter.ping()

    run_threads(8, work)
    stats = adapter.get_stats()
    expected = sum(100 + i for i in range(8))
    assert stats["total_requests"] == expected
    assert stats["active_requests"] == 0
    assert stats["max_workers"] == 8
    util = stats["thread_utilization"]
    assert {name: entry["requests"] for name, entry in util.items()} == {
        f"t{i}": 100 + i for i in range(8)
    }
    assert sum(entry["requests"] for entry in util.values()) == stats["total_requests"]
    for entry in util.values():
        assert entry["busy_seconds"] >= 0.0
        assert 0.0 <= entry["busy_share"] <= 1.0


def test_get_stats_counts_active_requests():
    adapter = Counter()
    release = threading.Event()
    threads = [threading.Thread(target=adapter.wait_for, args=(release,)) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while adapter.get_stats()["active_requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert adapter.get_stats()["active_requests"] == 3
    release.set()
    for t in threads:
        t.join()
    stats = adapter.get_stats()
    assert stats["active_requests"] == 0
    assert stats["total_requests"] == 3


def test_busy_time_and_share():
    adapter = Counter()
    adapter.sleep(0.05)
    entry = adapter.get_stats()["thread_utilization"][threading.current_thread().name]
    assert entry["requests"] == 1
    assert entry["busy_seconds"] >= 0.045
    assert 0.3 < entry["busy_share"] <= 1.0


def test_nested_tracked_calls_count_once():
    adapter = Counter()
    assert adapter.nested() == "pong"
    stats = adapter.get_stats()
    assert stats["total_requests"] == 1
    assert stats["active_requests"] == 0


def test_exceptions_are_tracked_and_propagate():
    class Failing(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def boom(self) -> None:
            raise KeyError("boom")

    adapter = Failing()
    with pytest.raises(KeyError):
        adapter.boom()
    stats = adapter.get_stats()
    assert stats["total_requests"] == 1
    assert stats["active_requests"] == 0


def test_stats_survive_an_async_cancellation():
    """Cancelled raised into a running method (as the NIF does on timeout) leaves the
    statistics consistent: active back to 0, the thread's next call counted normally."""
    stop = threading.Event()
    entered = threading.Event()

    class Spinner(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def spin(self) -> None:
            entered.set()
            while not stop.is_set():
                pass

        @thread_safe_method
        def ping(self) -> str:
            return "pong"

    adapter = Spinner()
    outcome: Dict[str, object] = {}

    def worker() -> None:
        try:
            adapter.spin()
            outcome["spin"] = "returned"
        except Cancelled:
            outcome["spin"] = "cancelled"
        outcome["ping"] = adapter.ping()

    t = threading.Thread(target=worker)
    t.start()
    assert entered.wait(5)
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(t.ident), ctypes.py_object(Cancelled)
    )
    assert hit == 1
    t.join(5)
    stop.set()
    assert outcome == {"spin": "cancelled", "ping": "pong"}
    stats = adapter.get_stats()
    assert stats["total_requests"] == 2
    assert stats["active_requests"] == 0


def test_cancelled_is_not_an_exception():
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)


def test_subclass_that_forgets_super_init_still_works():
    class Forgetful(ThreadSafeAdapter):
        __thread_safe__ = True

        def __init__(self) -> None:  # no super().__init__()
            self.value = 1

        @thread_safe_method
        def ping(self) -> str:
            return "pong"

    adapter = Forgetful()
    assert adapter.ping() == "pong"
    with adapter.acquire_lock():
        adapter.set_thread_local("x", 1)
    assert adapter.get_thread_local("x") == 1
    assert adapter.get_stats()["total_requests"] == 1


def test_thread_safe_method_on_a_plain_class():
    class Plain:
        @thread_safe_method
        def ping(self) -> str:
            return "pong"

    assert Plain().ping() == "pong"


def test_thread_safe_method_keeps_name_doc_and_marks_command():
    def predict(self, input_data: str) -> dict:
        """Predict things."""
        return {}

    wrapped = thread_safe_method(predict)
    assert wrapped.__name__ == "predict"
    assert wrapped.__doc__ == "Predict things."
    assert wrapped.__wrapped__ is predict
    assert wrapped.__snakepit_command__ is True
    assert thread_safe_method(wrapped) is wrapped  # no double tracking


EXPECTED_PREDICT_SPEC = {
    "name": "predict",
    "description": "Thread-safe prediction",
    "parameters": [{"name": "input_data", "type": "str", "required": True, "default": None}],
    "extra": {},
}


def test_tool_metadata_kept_with_thread_safe_method_outside():
    class A(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        @tool(description="Thread-safe prediction")
        def predict(self, input_data: str) -> dict:
            return {"prediction": input_data}

    assert A.predict.__snakepit_tool__ == EXPECTED_PREDICT_SPEC
    assert A.predict.__snakepit_command__ is True
    adapter = A()
    assert adapter.predict("x") == {"prediction": "x"}
    assert adapter.get_stats()["total_requests"] == 1


def test_tool_metadata_kept_with_tool_outside():
    class B(ThreadSafeAdapter):
        __thread_safe__ = True

        @tool(description="Thread-safe prediction")
        @thread_safe_method
        def predict(self, input_data: str) -> dict:
            return {"prediction": input_data}

    assert B.predict.__snakepit_tool__ == EXPECTED_PREDICT_SPEC
    assert B.predict.__snakepit_command__ is True
    adapter = B()
    assert adapter.predict("x") == {"prediction": "x"}
    assert adapter.get_stats()["total_requests"] == 1


def test_tool_inline_marks_short_commands_and_keeps_the_mark_through_wrappers():
    class A(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        @tool(description="Short", inline=True)
        def short(self, x: int) -> int:
            return x

        @tool(inline=True)
        @thread_safe_method
        def short_too(self) -> int:
            return 1

        @tool(inline=False)
        def not_short(self) -> int:
            return 2

        @tool
        def plain(self) -> int:
            return 3

    assert A.short.__snakepit_inline__ is True
    assert A.short.__snakepit_tool__["extra"] == {"inline": True}
    assert A().short_too.__snakepit_inline__ is True
    assert not hasattr(A.not_short, "__snakepit_inline__")
    assert not hasattr(A.plain, "__snakepit_inline__")
    assert A().short(5) == 5


@pytest.mark.parametrize("kind", ["async", "generator", "async generator"])
def test_tool_inline_refuses_work_that_outlives_the_call(kind):
    async def coro(self):
        return 1

    def gen(self):
        yield 1

    async def agen(self):
        yield 1

    fn = {"async": coro, "generator": gen, "async generator": agen}[kind]
    with pytest.raises(TypeError, match=r"@tool\(inline=True\) needs a plain function"):
        tool(inline=True)(fn)


def test_tool_parameters_types_required_defaults():
    @tool(description="Fit a model", name="fit_model", supports_streaming=False)
    def fit(
        self,
        data: List[float],
        labels: list[int],
        weights: Optional[Dict[str, float]] = None,
        epochs: int = 10,
        rate=0.5,
        tag="x",
        anything=None,
        mode: "str | None" = "fast",
        *args,
        **kwargs,
    ) -> dict:
        return {}

    spec = fit.__snakepit_tool__
    assert spec["name"] == "fit_model"
    assert spec["description"] == "Fit a model"
    assert spec["extra"] == {"supports_streaming": False}
    assert spec["parameters"] == [
        {"name": "data", "type": "list[float]", "required": True, "default": None},
        {"name": "labels", "type": "list[int]", "required": True, "default": None},
        {"name": "weights", "type": "dict[str, float] | None", "required": False, "default": None},
        {"name": "epochs", "type": "int", "required": False, "default": 10},
        {"name": "rate", "type": "float", "required": False, "default": 0.5},
        {"name": "tag", "type": "str", "required": False, "default": "x"},
        {"name": "anything", "type": "any", "required": False, "default": None},
        {"name": "mode", "type": "str | None", "required": False, "default": "fast"},
    ]
    assert fit.__snakepit_command__ is True


def test_bare_tool_uses_docstring():
    @tool
    def greet(self, name: str, punctuation: str = "!") -> str:
        """Greet someone by name.

        Longer text that is not the description.
        """
        return f"hello {name}{punctuation}"

    spec = greet.__snakepit_tool__
    assert spec["name"] == "greet"
    assert spec["description"] == "Greet someone by name."
    assert [p["name"] for p in spec["parameters"]] == ["name", "punctuation"]
    assert greet(None, "bob") == "hello bob!"


def test_tool_with_unresolvable_forward_reference():
    @tool(description="d")
    def f(self, x: "NotDefinedAnywhere", y: int = 1) -> None:  # noqa: F821
        pass

    params = f.__snakepit_tool__["parameters"]
    assert params[0] == {
        "name": "x", "type": "NotDefinedAnywhere", "required": True, "default": None
    }


def test_tool_default_that_is_not_plain_data_is_rendered():
    sentinel = object()

    @tool(description="d")
    def f(self, x=sentinel) -> None:
        pass

    assert f.__snakepit_tool__["parameters"][0]["default"] == repr(sentinel)
