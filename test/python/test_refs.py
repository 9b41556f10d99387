"""Object refs and eval on the Python side (snakepit_bridge._refs, snakepit_bridge._builtins)."""

from __future__ import annotations

import linecache
import os
import sys
import threading
import traceback

import pytest

from snakepit_bridge import _builtins, _refs, _runtime, etf, ref
from snakepit_bridge.etf import Atom, ConversionError


class Thing:
    def __init__(self, value):
        self.value = value

    def double(self, factor=2):
        return self.value * factor

    def __repr__(self):
        return f"Thing({self.value!r})"


class BrokenRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


@pytest.fixture
def home():
    """Pretend to be worker 3 of pool "p" (a :process worker), with a fresh table."""
    saved_home, saved_table = _refs._HOME, _refs.TABLE
    _refs.TABLE = _refs.ObjectTable()
    _refs.set_home("p", 3)
    yield _refs.TABLE
    _refs._HOME, _refs.TABLE = saved_home, saved_table


def test_describe_arrays_by_shape_and_dtype():
    numpy = pytest.importorskip("numpy")
    assert _refs.describe(numpy.zeros((3, 3))) == ("numpy.ndarray", "(3, 3) float64")


def test_describe_is_short_one_line_and_never_raises():
    name, short = _refs.describe("x" * 1000)
    assert name == "str" and len(short) <= 48
    assert "\n" not in _refs.describe(Thing("a\nb"))[1]
    assert _refs.describe(list(range(1000)))[1].startswith("[0, 1, 2, 3, ...")
    name, short = _refs.describe(BrokenRepr())  # a failing __repr__ does not fail the call
    assert name == f"{__name__}.BrokenRepr" and "BrokenRepr" in short
    assert _refs.describe(Thing(1)) == (f"{__name__}.Thing", "Thing(1)")


def test_ref_marks_once():
    thing = Thing(1)
    marked = ref(thing)
    assert marked.obj is thing and ref(marked) is marked
    assert _refs.Ref(marked).obj is thing


def test_object_table_is_thread_safe():
    table = _refs.ObjectTable()
    ids = []
    lock = threading.Lock()

    def work():
        mine = [table.put(object()) for _ in range(1000)]
        with lock:
            ids.extend(mine)
        for oid in mine[:500]:
            assert table.drop(oid)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8000 and len(table) == 4000
    assert not table.drop(-1)
    with pytest.raises(LookupError, match="released"):
        table.get(-1)


def test_a_ref_crosses_the_etf_codec_as_its_id(home):
    thing = Thing(5)
    encoded = etf.encode({"x": ref(thing)})
    decoded = etf.decode(encoded)
    # Decoding the struct gives the object itself.
    assert decoded["x"] is thing
    assert len(home) == 1


def test_the_struct_names_its_worker(home):
    struct = ref(Thing(1)).__snakepit__()
    assert struct[Atom("__struct__")] == "Elixir.Snakepit.Ref"
    assert struct[Atom("worker")] == (3, os.getpid())
    assert struct[Atom("pool")] == "p" and struct[Atom("repr")] == "Thing(1)"


def test_a_ref_of_another_process_or_released_is_refused(home):
    struct = ref(Thing(1)).__snakepit__()
    other = dict(struct)
    other[Atom("worker")] = (3, os.getpid() + 1)
    with pytest.raises(ConversionError, match="lost with its worker"):
        etf.decode(etf.encode(other))
    home.drop(struct[Atom("id")])
    with pytest.raises(ConversionError, match="released"):
        etf.decode(etf.encode(struct))
    thread_ref = dict(struct)
    thread_ref[Atom("worker")] = None
    with pytest.raises(ConversionError, match=":thread pool"):
        etf.decode(etf.encode(thread_ref))


def test_eval_returns_the_last_expression():
    assert _builtins.run_eval("1 + 1") == 2
    assert _builtins.run_eval("a = 2\nb = a * n\nb + 1", {"n": 10}) == 21
    assert _builtins.run_eval("x = 1") is None
    assert _builtins.run_eval("") is None
    assert _builtins.run_eval("def f():\n    return 3\nf()") == 3


def test_eval_globals_persist_in_a_namespace():
    ns = {}
    assert _builtins.run_eval("total = 1", {}, {"globals": ns}) is None
    assert _builtins.run_eval("total += k\ntotal", {"k": 4}, {"globals": ns}) == 5
    assert ns["total"] == 5
    with pytest.raises(TypeError, match="globals"):
        _builtins.run_eval("1", {}, {"globals": [1]})


def test_eval_errors_point_at_the_snippet_line():
    with pytest.raises(ZeroDivisionError) as info:
        _builtins.run_eval("a = 1\nb = 0\na / b\n")
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "line 3" in text and "a / b" in text
    tb = info.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    assert filename.startswith("<snakepit-eval-") and filename in linecache.cache
    with pytest.raises(SyntaxError) as syntax:
        _builtins.run_eval("x = 1\nif x\n")
    assert syntax.value.lineno == 2


def test_eval_keeps_only_recent_failed_sources():
    before = len(linecache.cache)
    for _ in range(200):
        with pytest.raises(NameError):
            _builtins.run_eval("undefined_name")
    assert len(linecache.cache) - before <= _builtins._KEEP
    _builtins.run_eval("1")  # a successful eval leaves nothing behind
    assert not any(k.startswith("<snakepit-eval-") and k not in _builtins._kept_sources
                   for k in linecache.cache)


def test_return_ref_option():
    marked = _builtins.apply_options([1], {"return": "ref"})
    assert isinstance(marked, _refs.Ref) and marked.obj == [1]
    assert _builtins.apply_options([1], {}) == [1]
    assert isinstance(_builtins.run_eval("[1]", {}, {"return": "ref"}), _refs.Ref)


def test_builtins_call_methods_and_attributes():
    table = {"make": lambda value=0: Thing(value)}
    cmds = _builtins.builtin_commands(table)
    made = cmds["__snakepit_call__"]("make", {"value": 4}, {"return": "ref"})
    assert isinstance(made, _refs.Ref) and made.obj.value == 4
    thing = made.obj
    assert cmds["__snakepit_call_method__"](thing, "double", [3], {}) == 12
    assert cmds["__snakepit_call_method__"](thing, "double", {"factor": 5}, {}) == 20
    assert cmds["__snakepit_call_method__"](thing, "double", None, {}) == 8
    assert cmds["__snakepit_get_attr__"](thing, "value", {}) == 4
    assert cmds["__snakepit_decode__"](thing, {}) is thing
    with pytest.raises(LookupError):
        cmds["__snakepit_call__"]("missing", None, {})
    with pytest.raises(LookupError):
        cmds["__snakepit_call__"]("__snakepit_call__", None, {})
    with pytest.raises(TypeError, match="arguments must be"):
        cmds["__snakepit_call_method__"](thing, "double", 5, {})


def test_builtins_are_in_the_table_but_not_listed():
    from snakepit_bridge.adapters.threaded_showcase import ThreadedShowcaseAdapter

    adapter = ThreadedShowcaseAdapter()
    commands = _runtime.command_table(adapter)
    assert "__snakepit_eval__" in commands and "__snakepit_call__" in commands
    assert set(commands) - set(_runtime.commands(adapter)) == {
        "__snakepit_call__",
        "__snakepit_eval__",
        "__snakepit_call_method__",
        "__snakepit_get_attr__",
        "__snakepit_decode__",
        "__snakepit_dependencies__",
    }
    names = [tool["name"] for tool in _runtime.tools(adapter)]
    assert not any(_builtins.is_builtin(n) for n in names) and "ping" in names


def test_package_exports_ref():
    import snakepit_bridge

    assert snakepit_bridge.ref is _refs.ref and "ref" in snakepit_bridge.__all__
    assert sys.modules["snakepit_bridge._refs"] is _refs
