"""snakepit_bridge._reload: which modules a reload re-imports, and what an adapter depends on."""

from __future__ import annotations

import itertools
import os
import sys

import pytest

from snakepit_bridge import _reload, _runtime

_names = itertools.count()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A directory on sys.path, and unique module names in it (removed from sys.modules after)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    n = next(_names)
    names = {"adapter": f"rl_adapter_{os.getpid()}_{n}", "helper": f"rl_helper_{os.getpid()}_{n}",
             "other": f"rl_other_{os.getpid()}_{n}"}
    yield tmp_path, names
    for name in names.values():
        sys.modules.pop(name, None)


def write(path, text):
    path.write_text(text)


def adapter_source(helper, version):
    return (
        f"import {helper}\n"
        f"from {helper} import VALUE\n"
        "class Adapter:\n"
        f"    VERSION = {version}\n"
        "    def version(self):\n"
        f"        return (self.VERSION, VALUE, {helper}.VALUE)\n"
    )


def test_reload_reimports_the_adapter_and_changed_modules_only(tree):
    root, names = tree
    write(root / f"{names['helper']}.py", "VALUE = 1\n")
    write(root / f"{names['other']}.py", "LOADS = 1\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 1))
    adapter = _runtime.create_adapter(f"{names['adapter']}.Adapter", "p", 0, {})
    other = __import__(names["other"])
    _reload.track()
    assert adapter.version() == (1, 1, 1)

    write(root / f"{names['helper']}.py", "VALUE = 22\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 2))
    done = _reload.reload_modules(f"{names['adapter']}.Adapter", [str(root)])
    assert done == [names["helper"], names["adapter"]]
    fresh = _runtime.create_adapter(f"{names['adapter']}.Adapter", "p", 0, {})
    assert fresh.version() == (2, 22, 22)
    # The old instance keeps its class; the unchanged module was not re-imported.
    assert type(adapter).VERSION == 1
    assert sys.modules[names["other"]] is other

    # Nothing changed since: only the adapter's module is re-imported.
    assert _reload.reload_modules(f"{names['adapter']}.Adapter", [str(root)]) == [names["adapter"]]


def test_a_syntax_error_raises_and_leaves_the_module_as_it_was(tree):
    root, names = tree
    write(root / f"{names['helper']}.py", "VALUE = 1\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 1))
    _runtime.create_adapter(f"{names['adapter']}.Adapter", "p", 0, {})
    write(root / f"{names['helper']}.py", "VALUE = (\n")
    with pytest.raises(SyntaxError):
        _reload.reload_modules(f"{names['adapter']}.Adapter", [str(root)])
    assert sys.modules[names["helper"]].VALUE == 1


def test_modules_outside_the_roots_are_not_reloaded(tree, tmp_path_factory):
    root, names = tree
    write(root / f"{names['helper']}.py", "VALUE = 1\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 1))
    _runtime.create_adapter(f"{names['adapter']}.Adapter", "p", 0, {})
    write(root / f"{names['helper']}.py", "VALUE = 2\n")
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    assert _reload.reload_modules(f"{names['adapter']}.Adapter", [elsewhere]) == [names["adapter"]]


def test_dependencies_follow_imports_and_imported_names(tree):
    root, names = tree
    write(root / f"{names['other']}.py", "def f():\n    return 1\n")
    write(root / f"{names['helper']}.py", f"from {names['other']} import f\nVALUE = 1\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 1))
    __import__(names["adapter"])
    deps = _reload.dependencies(names["adapter"], [str(root)])
    assert deps == sorted(str(root / f"{names[k]}.py") for k in ("adapter", "helper", "other"))
    # Snakepit's own package and the standard library are never dependencies.
    assert all(str(root) in d for d in _reload.dependencies(names["adapter"], []))


def test_the_builtin_dependencies_command_is_dispatchable_but_not_listed(tree):
    root, names = tree
    write(root / f"{names['helper']}.py", "VALUE = 1\n")
    write(root / f"{names['adapter']}.py", adapter_source(names["helper"], 1))
    adapter = _runtime.create_adapter(f"{names['adapter']}.Adapter", "p", 0, {})
    table = _runtime.command_table(adapter)
    assert "__snakepit_dependencies__" in table
    assert "__snakepit_dependencies__" not in _runtime.commands(adapter)
    assert all(t["name"] != "__snakepit_dependencies__" for t in _runtime.tools(adapter))
    assert str(root / f"{names['helper']}.py") in table["__snakepit_dependencies__"]([str(root)])


def test_drop_bytecode_removes_the_cached_pyc_under_a_root(tree):
    import importlib.util
    import py_compile

    root, names = tree
    source = root / "pkg" / f"{names['helper']}.py"
    source.parent.mkdir()
    write(source, "VALUE = 1\n")
    cached = py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
    assert os.path.exists(cached)
    assert _reload.drop_bytecode(str(root)) == 1
    assert not os.path.exists(cached) and source.exists()
