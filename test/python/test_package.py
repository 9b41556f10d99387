"""The package surface: exports, version, Pid and send outside the BEAM, errors."""

from __future__ import annotations

import pickle

import pytest

import snakepit_bridge
from snakepit_bridge import Pid, send


def test_exports():
    for name in (
        "ThreadSafeAdapter",
        "thread_safe_method",
        "tool",
        "BaseAdapter",
        "ThreadSafetyChecker",
        "Cancelled",
        "Pid",
        "__version__",
    ):
        assert hasattr(snakepit_bridge, name), name
        assert name in snakepit_bridge.__all__
    assert snakepit_bridge.__version__ == "0.6.0"
    namespace: dict = {}
    exec("from snakepit_bridge import *", namespace)
    assert "ThreadSafeAdapter" in namespace and "Pid" in namespace


def test_guide_module_paths():
    from snakepit_bridge.adapters.threaded_showcase import ThreadedShowcaseAdapter
    from snakepit_bridge.base_adapter import BaseAdapter
    from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool
    from snakepit_bridge.errors import Cancelled, SnakepitError
    from snakepit_bridge.thread_safety_checker import ThreadSafetyChecker, ThreadSafetyViolation

    assert issubclass(ThreadedShowcaseAdapter, ThreadSafeAdapter)
    assert issubclass(ThreadSafeAdapter, BaseAdapter)
    assert issubclass(ThreadSafetyViolation, SnakepitError)
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)
    assert callable(thread_safe_method) and callable(tool) and callable(ThreadSafetyChecker)


def test_pid_fallback_outside_the_beam():
    a, b, c = Pid(b"\x83X\x01"), Pid(b"\x83X\x01"), Pid(b"\x83X\x02")
    assert a.raw == b"\x83X\x01"
    assert a == b and a != c
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2
    assert repr(a) == "Pid<835801>"
    assert pickle.loads(pickle.dumps(a)) == a
    with pytest.raises(AttributeError):
        a.raw = b"other"
    with pytest.raises(TypeError):
        Pid("not bytes")


def test_send_outside_the_beam():
    with pytest.raises(RuntimeError, match="^send is only available inside the BEAM$"):
        send(Pid(b"x"), {"hello": "world"})
