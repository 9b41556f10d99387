"""ThreadSafetyChecker: warnings, strict mode, library detection, report."""

from __future__ import annotations

import logging
import sys
import threading
import types
from typing import List

import pytest

from snakepit_bridge import SnakepitError, ThreadSafetyViolation
from snakepit_bridge import thread_safety_checker as tsc
from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method
from snakepit_bridge.thread_safety_checker import LIBRARY_MATRIX, ThreadSafetyChecker

LOGGER = "snakepit_bridge.thread_safety"


class Gate(ThreadSafeAdapter):
    """predict() waits until `parties` threads are inside it at the same time."""

    __thread_safe__ = True

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties)

    @thread_safe_method
    def predict(self, input_data: str) -> str:
        self.barrier.wait(5)
        return input_data


class MyAdapter(ThreadSafeAdapter):
    """Pitfall 4: no __thread_safe__ declaration."""

    @thread_safe_method
    def predict(self, input_data: str) -> str:
        return input_data


def run_concurrently(count: int, fn) -> List[BaseException]:
    errors: List[BaseException] = []

    def target(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def messages(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_enabled_checker_becomes_the_active_checker():
    assert tsc.get_active_checker() is None
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    assert tsc.get_active_checker() is checker and checker.active
    other = ThreadSafetyChecker()
    assert tsc.get_active_checker() is other and not checker.active
    other.deactivate()
    assert tsc.get_active_checker() is None
    disabled = ThreadSafetyChecker(enabled=False)
    assert tsc.get_active_checker() is None
    disabled.enable()
    assert tsc.get_active_checker() is disabled
    disabled.disable()
    assert tsc.get_active_checker() is None


def test_context_manager_deactivates():
    with ThreadSafetyChecker() as checker:
        assert tsc.get_active_checker() is checker
    assert tsc.get_active_checker() is None


def test_concurrent_access_warning_exact_text_once(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    adapter = Gate(5)
    assert run_concurrently(5, lambda i: adapter.predict(f"input_{i}")) == []

    expected = "THREAD SAFETY: Method 'predict' accessed by 5 different threads concurrently."
    report = checker.get_report()
    assert expected in report["warnings"]
    assert report["methods"]["predict"] == {"calls": 5, "threads": 5, "max_concurrency": 5}
    assert "⚠️  " + expected in messages(caplog)
    concurrency = [w for w in report["warnings"] if w.startswith("THREAD SAFETY: Method")]
    assert concurrency == [
        f"THREAD SAFETY: Method 'predict' accessed by {n} different threads concurrently."
        for n in range(2, 6)
    ]

    # The same situation again: no new warning, no new log line.
    caplog.clear()
    assert run_concurrently(5, lambda i: adapter.predict(f"again_{i}")) == []
    assert checker.get_report()["warnings"] == report["warnings"]
    assert messages(caplog) == []
    assert checker.get_report()["methods"]["predict"]["calls"] == 10


def test_sequential_calls_from_many_threads_are_not_concurrent():
    checker = ThreadSafetyChecker()

    class Declared(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def predict(self, x: int) -> int:
            return x

    adapter = Declared()
    for i in range(4):
        t = threading.Thread(target=adapter.predict, args=(i,))
        t.start()
        t.join()
    report = checker.get_report()
    assert report["methods"]["predict"] == {"calls": 4, "threads": 4, "max_concurrency": 1}
    assert not [w for w in report["warnings"] if "Method" in w or "Adapter" in w]


def test_undeclared_adapter_used_threaded(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    adapter = MyAdapter()
    adapter.predict("main thread: fine")
    undeclared = "Adapter MyAdapter does not declare thread safety."
    assert undeclared not in checker.get_report()["warnings"]
    t = threading.Thread(target=adapter.predict, args=("second thread",))
    t.start()
    t.join()
    assert "Adapter MyAdapter does not declare thread safety." in checker.get_report()["warnings"]
    assert "⚠️  Adapter MyAdapter does not declare thread safety." in messages(caplog)
    assert checker.get_report()["adapters"] == {"MyAdapter": False}


def test_check_adapter():
    checker = ThreadSafetyChecker()
    assert checker.check_adapter(MyAdapter) == ["Adapter MyAdapter does not declare thread safety."]
    assert checker.check_adapter(MyAdapter(), threaded=False) == []
    assert checker.check_adapter(Gate(1)) == []
    assert checker.get_report()["warnings"].count(
        "Adapter MyAdapter does not declare thread safety."
    ) == 1
    assert checker.get_report()["adapters"] == {"MyAdapter": False, "Gate": True}


def test_unsafe_library_detected_sqlite3(caplog):
    import sqlite3  # noqa: F401 - the import is what the checker detects

    caplog.set_level(logging.WARNING, logger=LOGGER)
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    found = checker.check_imports()
    assert "THREAD SAFETY: Unsafe library 'sqlite3' detected" in found
    report = checker.get_report()
    assert "THREAD SAFETY: Unsafe library 'sqlite3' detected" in report["warnings"]
    assert report["unsafe_libraries"]["sqlite3"] == "Connection per thread"
    assert "⚠️  THREAD SAFETY: Unsafe library 'sqlite3' detected" in messages(caplog)


def test_unsafe_library_detected_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    checker = ThreadSafetyChecker()
    assert "THREAD SAFETY: Unsafe library 'pandas' detected" in checker.check_imports()
    assert "THREAD SAFETY: Unsafe library 'pandas' detected" in checker.get_report()["warnings"]


def test_safe_and_conditional_libraries_are_not_warned(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    import numpy  # noqa: F401

    checker = ThreadSafetyChecker()
    assert not [w for w in checker.check_imports() if "'numpy'" in w or "'torch'" in w]


def test_library_matrix_follows_the_guide():
    statuses = {name: info["status"] for name, info in LIBRARY_MATRIX.items()}
    assert statuses["pandas"] == statuses["matplotlib"] == statuses["sqlite3"] == "unsafe"
    assert statuses["numpy"] == statuses["scipy"] == "safe"
    for name in ("torch", "tensorflow", "sklearn", "requests", "httpx"):
        assert statuses[name] in ("safe", "conditional")
    assert LIBRARY_MATRIX["matplotlib"]["notes"] == "Use `threading.local()` for figures"
    assert LIBRARY_MATRIX["pandas"]["notes"] == "Use locking or process mode"
    assert LIBRARY_MATRIX["torch"]["notes"] == "Configure with `torch.set_num_threads()`"
    for info in LIBRARY_MATRIX.values():
        assert set(info) == {"name", "status", "notes"}
        assert info["status"] in ("safe", "conditional", "unsafe")


def test_strict_mode_raises_on_concurrent_access():
    ThreadSafetyChecker(enabled=True, strict_mode=True)
    inside, release = threading.Event(), threading.Event()

    class Slow(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def predict(self) -> str:
            inside.set()
            release.wait(5)
            return "done"

    adapter = Slow()
    first: List[str] = []
    t = threading.Thread(target=lambda: first.append(adapter.predict()))
    t.start()
    assert inside.wait(5)
    errors = run_concurrently(1, lambda i: adapter.predict())
    release.set()
    t.join()
    assert first == ["done"]
    assert len(errors) == 1 and isinstance(errors[0], ThreadSafetyViolation)
    assert str(errors[0]) == (
        "THREAD SAFETY: Method 'predict' accessed by 2 different threads concurrently."
    )
    assert isinstance(errors[0], SnakepitError)
    # The refused call never ran and is not left "inside" the method.
    assert adapter.predict() == "done"
    assert adapter.get_stats()["active_requests"] == 0


def test_strict_mode_raises_for_undeclared_adapter_and_unsafe_library(monkeypatch):
    checker = ThreadSafetyChecker(enabled=True, strict_mode=True)
    undeclared = r"^Adapter MyAdapter does not declare thread safety\.$"
    with pytest.raises(ThreadSafetyViolation, match=undeclared):
        checker.check_adapter(MyAdapter)
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    with pytest.raises(ThreadSafetyViolation, match="Unsafe library 'matplotlib' detected"):
        checker.check_imports()
    adapter = MyAdapter()
    adapter.predict("main")
    errors = run_concurrently(1, lambda i: adapter.predict("other thread"))
    assert [str(e) for e in errors] == ["Adapter MyAdapter does not declare thread safety."]


def test_disabled_checker_records_nothing():
    checker = ThreadSafetyChecker(enabled=False)
    checker.enable()
    checker.disable()
    adapter = Gate(1)
    adapter.predict("x")
    report = checker.get_report()
    assert report["methods"] == {}
    assert report["enabled"] is False


def test_report_shape_and_printing(capsys):
    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    adapter = Gate(3)
    run_concurrently(3, lambda i: adapter.predict(str(i)))
    report = checker.get_report()
    assert isinstance(report, dict)
    assert {"enabled", "strict_mode", "methods", "warnings"} <= set(report)
    assert report["enabled"] is True and report["strict_mode"] is False
    print(report)
    printed = capsys.readouterr().out
    assert printed.strip() == checker.format_report()
    assert "predict  calls=3  threads=3  max_concurrency=3" in printed
    assert (
        "⚠️  THREAD SAFETY: Method 'predict' accessed by 3 different threads concurrently."
        in printed
    )


def test_reset_forgets_everything():
    checker = ThreadSafetyChecker()
    checker.check_adapter(MyAdapter)
    Gate(1).predict("x")
    checker.reset()
    report = checker.get_report()
    assert report["methods"] == {}
    assert "Adapter MyAdapter does not declare thread safety." not in report["warnings"]


def test_clean_report_says_so():
    checker = ThreadSafetyChecker(enabled=False)
    assert "No thread safety issues detected." in checker.format_report()
