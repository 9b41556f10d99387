"""Re-importing edited Python code for ``Snakepit.reload/1`` (docs/architecture.md, "Reload").
Not a user API.

The ``:thread`` profile's NIF (``native/snakepit/src/reload.rs``) calls
:func:`reload_modules` before it builds fresh adapter instances, and :func:`track` after it
built instances, so that the next reload knows which files changed since. The ``:process``
profile needs none of it: a fresh worker process imports everything anew. Both profiles answer
the built-in command ``__snakepit_dependencies__`` with :func:`dependencies`, which
``reload: :auto`` (``Snakepit.Reloader``) uses to pick the pools a changed file concerns.

A module counts as changed when the ``(mtime_ns, size)`` of its source file differs from what
:func:`track` recorded; a module never recorded (imported lazily, inside a call) counts as
changed. The adapter's own module is always reloaded. Modules are reloaded in the order they
finished importing (``sys.modules`` order), so a module is reloaded after the modules it
imports, and ``from dep import name`` picks up the new ``name``. Snakepit's own package and
installed packages are never reloaded.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from typing import Dict, Iterable, List, Optional, Tuple

__all__ = ["dependencies", "drop_bytecode", "reload_modules", "track"]

_lock = threading.RLock()
#: module name -> (file, mtime_ns, size) of its source when last imported or reloaded.
_stamps: Dict[str, Tuple[str, int, int]] = {}

_OWN_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


#: Where the interpreter and installed packages live: never re-imported.
_INSTALLED = tuple(
    os.path.abspath(p) + os.sep
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    if p
)


def _source(module: types.ModuleType) -> Optional[str]:
    """The ``.py`` file a module was loaded from, or None (built-in, extension, namespace)."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    return os.path.abspath(path)


def _stat(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _reloadable(path: Optional[str]) -> bool:
    return bool(path) and not path.startswith(_OWN_PACKAGE) and not path.startswith(_INSTALLED)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path.startswith(os.path.abspath(root) + os.sep) for root in roots)


def track() -> None:
    """Record the source stamps of every loaded module that a reload could re-import.

    Called after adapter instances are built; modules recorded before keep their stamps (a
    file edited since must still count as changed).
    """
    with _lock:
        for name, module in list(sys.modules.items()):
            if name in _stamps or not isinstance(module, types.ModuleType):
                continue
            path = _source(module)
            if _reloadable(path):
                stamp = _stat(path)
                if stamp is not None:
                    _stamps[name] = (path, *stamp)


def _changed(roots: List[str]) -> List[str]:
    changed = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        path = _source(module)
        if not _reloadable(path) or not _under(path, roots):
            continue
        stamp = _stat(path)
        if stamp is None:  # deleted: nothing to import
            continue
        if _stamps.get(name) != (path, *stamp):
            changed.append(name)
    return changed


def _fresh_bytecode(module: types.ModuleType) -> None:
    # A .pyc is trusted when the source's mtime (whole seconds) and size match: an edit within
    # the same second that keeps the size would load the old code. Drop it first.
    cached = getattr(module, "__cached__", None)
    if isinstance(cached, str):
        try:
            os.remove(cached)
        except OSError:
            pass


def reload_modules(class_path: str, roots: Iterable[str]) -> List[str]:
    """Re-import the adapter's module and the changed modules under ``roots``.

    Args:
        class_path: the adapter class, ``"package.module.Class"``.
        roots: the directories of ``python_path``; only modules loaded from below them are
            candidates (besides the adapter's module).

    Returns:
        The names of the modules re-imported, in order.

    Raises:
        Exception: whatever importing raised (a ``SyntaxError``, an exception at module level).
        The modules re-imported before it stay re-imported; instances built before keep their
        classes, so the pool's current instances go on serving.
    """
    roots = [os.path.abspath(r) for r in roots]
    adapter_module = class_path.rpartition(".")[0]
    with _lock:
        importlib.invalidate_caches()
        names = [n for n in _changed(roots) if n != adapter_module]
        if adapter_module in sys.modules:
            names.append(adapter_module)
        done = []
        for name in names:
            module = sys.modules.get(name)
            if module is None:
                continue
            _fresh_bytecode(module)
            module = importlib.reload(module)
            path = _source(module)
            stamp = _stat(path) if path else None
            if path and stamp is not None:
                _stamps[name] = (path, *stamp)
            done.append(name)
        if adapter_module not in sys.modules:
            importlib.import_module(adapter_module)
            done.append(adapter_module)
        return done


def dependencies(adapter_module: str, roots: Iterable[str] = ()) -> List[str]:
    """The source files the adapter's module depends on: itself, and the modules (under
    ``roots``, or anywhere outside installed packages when ``roots`` is empty) that it or its
    dependencies reference — imported modules, and the modules of imported functions and
    classes. Sorted."""
    roots = [os.path.abspath(r) for r in roots]
    seen = set()
    files = set()
    pending = [adapter_module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name)
        if not isinstance(module, types.ModuleType):
            continue
        path = _source(module)
        if name != adapter_module and (
            not _reloadable(path) or (roots and not _under(path, roots))
        ):
            continue
        if path:
            files.add(path)
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                pending.append(value.__name__)
            else:
                try:
                    owner = getattr(value, "__module__", None)
                except Exception:  # noqa: BLE001 - a proxy object that refuses attributes
                    owner = None
                if isinstance(owner, str):
                    pending.append(owner)
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)
    return sorted(files)


def drop_bytecode(root: str) -> int:
    """Remove the ``.pyc`` files of ``__pycache__`` directories under ``root`` (the ``:process``
    profile's reload probe does it before it imports the new code: a ``.pyc`` is trusted when
    the source's whole-second mtime and size match, so a quick edit that keeps the size would
    load the old code). Returns how many were removed; errors are ignored."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        for name in filenames:
            if name.endswith(".pyc"):
                try:
                    os.remove(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed
