"""snakepit_bridge._runtime: the functions the NIF calls."""

from __future__ import annotations

import _thread
import logging
import sys
import textwrap
import threading

import pytest

from snakepit_bridge import _runtime
from snakepit_bridge import thread_safety_checker as tsc
from snakepit_bridge.base_adapter import BaseAdapter
from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method, tool
from snakepit_bridge.errors import SnakepitError

SHOWCASE = "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"


def test_create_adapter_showcase_threaded():
    adapter = _runtime.create_adapter(
        SHOWCASE, "hpc_pool", 0, {"threaded": True, "max_workers": 16, "pool_name": "hpc_pool"}
    )
    assert type(adapter).__name__ == "ThreadedShowcaseAdapter"
    assert adapter.max_workers == 16
    assert adapter.get_stats()["max_workers"] == 16


def test_create_adapter_defaults_max_workers_to_1():
    adapter = _runtime.create_adapter(SHOWCASE, "p", 0, {})
    assert adapter.max_workers == 1
    assert _runtime.create_adapter(SHOWCASE, "p", 0, None).max_workers == 1


def test_create_adapter_missing_module():
    with pytest.raises(ImportError) as info:
        _runtime.create_adapter("no_such_pkg.adapters.Missing", "p", 0, {})
    message = str(info.value)
    assert "no_such_pkg.adapters.Missing" in message
    assert "no module named 'no_such_pkg.adapters'" in message
    # Where Python looked, and the fix.
    assert "Python looked for 'no_such_pkg'" in message
    for entry in sys.path:
        assert f"\n  {entry or '(current directory)'}\n" in message
    assert 'python_path: [{:my_app, "priv/python"}]' in message


def test_create_adapter_missing_module_in_a_found_package():
    with pytest.raises(ImportError) as info:
        _runtime.create_adapter("snakepit_bridge.no_such_module.Adapter", "p", 0, {})
    message = str(info.value)
    assert "no module named 'snakepit_bridge.no_such_module'" in message
    assert "package 'snakepit_bridge' (" in message
    assert "has no module 'no_such_module'" in message
    assert "sys.path" not in message


def test_create_adapter_missing_class():
    with pytest.raises(ImportError) as info:
        _runtime.create_adapter("guide_adapters.NoSuchAdapter", "p", 0, {})
    message = str(info.value)
    assert "guide_adapters.NoSuchAdapter" in message
    assert "has no attribute 'NoSuchAdapter'" in message


def test_create_adapter_module_with_a_missing_dependency(tmp_path, monkeypatch):
    (tmp_path / "needs_dep_adapter.py").write_text(
        "import definitely_not_installed_dep_xyz\n\nclass A:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        _runtime.create_adapter("needs_dep_adapter.A", "p", 0, {})
    message = str(info.value)
    assert "needs_dep_adapter.A" in message
    assert "definitely_not_installed_dep_xyz" in message
    sys.modules.pop("needs_dep_adapter", None)


def test_create_adapter_invalid_path():
    with pytest.raises(ImportError, match="expected 'package.module.Class'"):
        _runtime.create_adapter("NoDots", "p", 0, {})


def test_create_adapter_not_a_class():
    with pytest.raises(TypeError, match="guide_adapters.NOT_A_CLASS"):
        _runtime.create_adapter("guide_adapters.NOT_A_CLASS", "p", 0, {})


def test_create_adapter_exception_in_init_propagates_unchanged():
    with pytest.raises(ValueError, match="model file missing") as info:
        _runtime.create_adapter("guide_adapters.BrokenInitAdapter", "p", 0, {})
    if sys.version_info >= (3, 11):
        assert any("guide_adapters.BrokenInitAdapter" in n for n in info.value.__notes__)


def test_create_adapter_calls_initialize_once(tmp_path, monkeypatch):
    (tmp_path / "init_adapter.py").write_text(
        textwrap.dedent(
            """
            from snakepit_bridge import BaseAdapter

            class WithInit(BaseAdapter):
                initialized = 0

                def initialize(self):
                    type(self).initialized += 1
                    self.ready = True

            class FailingInit(BaseAdapter):
                def initialize(self):
                    raise RuntimeError("cannot connect")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = _runtime.create_adapter("init_adapter.WithInit", "p", 0, {})
    assert adapter.ready is True
    assert type(adapter).initialized == 1
    with pytest.raises(RuntimeError, match="cannot connect"):
        _runtime.create_adapter("init_adapter.FailingInit", "p", 0, {})
    sys.modules.pop("init_adapter", None)


def test_undeclared_threaded_adapter_warns_once_per_class(caplog, tmp_path, monkeypatch):
    (tmp_path / "undeclared_adapter.py").write_text(
        "from snakepit_bridge import ThreadSafeAdapter\n\nclass Undeclared(ThreadSafeAdapter):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.WARNING, logger="snakepit_bridge")
    _runtime.create_adapter("undeclared_adapter.Undeclared", "p", 0, {"threaded": True})
    _runtime.create_adapter("undeclared_adapter.Undeclared", "p", 1, {"threaded": True})
    records = [r for r in caplog.records if "does not declare thread safety" in r.getMessage()]
    assert len(records) == 1
    assert records[0].name == "snakepit_bridge"
    assert records[0].getMessage() == (
        "⚠️  Adapter Undeclared does not declare thread safety. The pool calls it from several "
        "threads anyway: add __thread_safe__ = True to class Undeclared once its methods are "
        "thread-safe (or set threads_per_worker: 1)."
    )
    assert records[0].levelno == logging.WARNING
    sys.modules.pop("undeclared_adapter", None)


def test_no_warning_when_declared_or_not_threaded(caplog):
    caplog.set_level(logging.WARNING, logger="snakepit_bridge")
    _runtime.create_adapter(SHOWCASE, "p", 0, {"threaded": True})
    _runtime.create_adapter("guide_adapters.UndeclaredAdapter", "p", 0, {"threaded": False})
    assert "does not declare thread safety" not in caplog.text


def test_thread_safety_check_option_enables_a_checker():
    assert tsc.get_active_checker() is None
    adapter = _runtime.create_adapter(
        "guide_adapters.UndeclaredAdapter",
        "p",
        0,
        {"threaded": True, "max_workers": 4, "thread_safety_check": True},
    )
    checker = tsc.get_active_checker()
    assert checker is not None and checker.enabled
    assert "Adapter UndeclaredAdapter does not declare thread safety." in (
        checker.get_report()["warnings"]
    )
    adapter.ping()
    assert checker.get_report()["methods"]["ping"]["calls"] == 1
    # A second adapter reuses the active checker.
    _runtime.create_adapter(SHOWCASE, "p", 1, {"threaded": True, "thread_safety_check": True})
    assert tsc.get_active_checker() is checker


class Marked(BaseAdapter):
    @tool(description="Add two numbers")
    def add(self, a: int, b: int = 1) -> int:
        return a + b

    @thread_safe_method
    def tracked(self) -> str:
        """A tracked command without @tool."""
        return "tracked"

    @tool(description="Renamed", name="renamed_command")
    def original_name(self) -> str:
        return "renamed"

    def helper(self) -> str:  # not marked: not a command
        return "helper"

    def execute_tool(self, name, arguments, context=None):  # overridden: still marked only
        return "routed"


def test_commands_marked_methods_plus_base_tools():
    adapter = Marked()
    cmds = _runtime.commands(adapter)
    # The dispatch table adds the built-ins every adapter has (__snakepit_<name>__, hidden
    # from tools()).
    assert "__snakepit_call__" in _runtime.command_table(adapter)
    assert "__snakepit_call__" not in cmds
    assert {n for n in cmds if not _runtime.is_builtin(n)} == {
        "add", "tracked", "renamed_command", "ping", "get_stats", "get_thread_stats"
    }
    assert cmds["add"](a=2, b=3) == 5
    assert cmds["tracked"]() == "tracked"
    assert cmds["renamed_command"]() == "renamed"
    assert cmds["ping"]() == "pong"
    assert cmds["ping"](message="hi") == "hi"
    stats = cmds["get_stats"]()
    assert stats["total_requests"] == 1  # the tracked() call
    assert cmds["get_thread_stats"]()["active_requests"] == 0


def test_commands_keep_inherited_and_unmarked_overrides():
    class Child(Marked):
        def add(self, a: int, b: int = 1) -> int:  # override without the decorator
            return 100 + a + b

        @tool(description="New in the child")
        def extra(self) -> str:
            return "extra"

    cmds = _runtime.commands(Child())
    assert cmds["add"](a=1) == 102
    assert cmds["extra"]() == "extra"
    assert "helper" not in cmds


def test_commands_of_a_plain_class():
    class Plain:
        def __init__(self):
            self.cleaned = False

        def greet(self, name: str) -> str:
            return f"hello {name}"

        @staticmethod
        def version() -> str:
            return "1.0"

        def initialize(self):
            pass

        def cleanup(self):
            self.cleaned = True

        def _private(self):
            pass

        @property
        def prop(self):
            return 1

    adapter = Plain()
    cmds = _runtime.commands(adapter)
    assert {n for n in cmds if not _runtime.is_builtin(n)} == {
        "greet", "version", "ping", "get_stats", "get_thread_stats"
    }
    assert cmds["greet"](name="bob") == "hello bob"
    assert cmds["version"]() == "1.0"
    stats = cmds["get_stats"]()
    assert stats["total_requests"] == 0 and stats["active_requests"] == 0
    _runtime.cleanup(adapter)
    assert adapter.cleaned is True


def test_adapter_commands_shadow_base_tools():
    class OwnPing(BaseAdapter):
        @tool(description="Custom ping")
        def ping(self) -> str:
            return "custom"

        @tool(description="Custom stats")
        def get_stats(self) -> dict:
            return {"custom": True}

    cmds = _runtime.commands(OwnPing())
    assert cmds["ping"]() == "custom"
    assert cmds["get_stats"]() == {"custom": True}
    assert cmds["get_thread_stats"]() == {"custom": True}


def test_tools_sorted_with_parameters():
    described = _runtime.tools(Marked())
    names = [t["name"] for t in described]
    assert names == sorted(names)
    by_name = {t["name"]: t for t in described}
    assert by_name["add"] == {
        "name": "add",
        "description": "Add two numbers",
        "parameters": [
            {"name": "a", "type": "int", "required": True, "default": None},
            {"name": "b", "type": "int", "required": False, "default": 1},
        ],
    }
    assert by_name["tracked"]["description"] == "A tracked command without @tool."
    assert by_name["renamed_command"]["description"] == "Renamed"
    assert by_name["ping"]["parameters"] == [
        {"name": "message", "type": "str", "required": False, "default": "pong"}
    ]
    assert by_name["get_stats"]["parameters"] == []
    for entry in described:
        for param in entry["parameters"]:
            assert set(param) == {"name", "type", "required", "default"}


def test_tools_include_extra_metadata():
    class Streaming(BaseAdapter):
        @tool(description="Streams", supports_streaming=True)
        def stream(self):
            yield 1

    entry = {t["name"]: t for t in _runtime.tools(Streaming())}["stream"]
    assert entry["supports_streaming"] is True


def test_base_adapter_execute_tool_and_get_tools():
    class Calc(BaseAdapter):
        @tool(description="Multiply")
        def mul(self, a: int, b: int) -> int:
            return a * b

    adapter = Calc()
    assert adapter.execute_tool("mul", {"a": 6, "b": 7}, None) == 42
    assert adapter.execute_tool("ping", None) == "pong"
    with pytest.raises(SnakepitError, match=r"unknown command 'nope'.*get_stats.*mul.*ping"):
        adapter.execute_tool("nope", {}, None)
    names = [t["name"] for t in adapter.get_tools()]
    assert names == ["get_stats", "get_thread_stats", "mul", "ping"]
    adapter.initialize()
    adapter.cleanup()


def test_cleanup_hook_and_missing_hook():
    class WithCleanup(ThreadSafeAdapter):
        __thread_safe__ = True

        def __init__(self):
            super().__init__()
            self.closed = 0

        def cleanup(self):
            self.closed += 1

    adapter = WithCleanup()
    _runtime.cleanup(adapter)
    assert adapter.closed == 1
    _runtime.cleanup(object())  # no hook: nothing happens

    class Raising:
        def cleanup(self):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        _runtime.cleanup(Raising())


def test_set_thread_name_on_a_native_thread(caplog):
    """A thread started outside `threading` (like the NIF's Rust threads) gets its name in
    threading.current_thread() and in log records."""
    caplog.set_level(logging.INFO, logger="snakepit_bridge.test")
    done = threading.Event()
    seen = {}

    def native() -> None:
        try:
            _runtime.set_thread_name("hpc_pool-w0-t3")
            seen["name"] = threading.current_thread().name
            logging.getLogger("snakepit_bridge.test").info("Request #1 starting")
        finally:
            done.set()

    _thread.start_new_thread(native, ())
    assert done.wait(5)
    assert seen["name"] == "hpc_pool-w0-t3"
    record = [r for r in caplog.records if r.getMessage() == "Request #1 starting"][0]
    assert record.threadName == "hpc_pool-w0-t3"


def test_set_thread_name_names_stats_entries():
    class Named(ThreadSafeAdapter):
        __thread_safe__ = True

        @thread_safe_method
        def ping(self) -> str:
            return "pong"

    adapter = Named()
    done = threading.Event()

    def native() -> None:
        try:
            _runtime.set_thread_name("pool-w1-t0")
            adapter.ping()
            adapter.ping()
        finally:
            done.set()

    _thread.start_new_thread(native, ())
    assert done.wait(5)
    assert adapter.get_stats()["thread_utilization"]["pool-w1-t0"]["requests"] == 2
