"""The functions the Snakepit NIF calls. Not a user API.

The Rust side calls, in order: :func:`set_thread_name` on each pool thread as it starts,
:func:`create_adapter` once per worker (and again when the worker is recycled),
:func:`command_table` once per adapter instance (the dict it dispatches jobs through: the
adapter's :func:`commands` plus the built-in ones; the args map becomes keyword arguments),
:func:`tools` for ``Snakepit.tools/1``, and :func:`cleanup` when the worker stops or is
recycled. Errors are ordinary Python exceptions; the NIF turns them
into ``%Snakepit.Error{}`` values.

Which methods are commands:

- the methods marked ``@tool`` or ``@thread_safe_method`` (under the ``@tool`` name when it
  gives one), inherited ones included; a marked method stays a command when a subclass
  overrides it without the decorator;
- for a class that is not a ``BaseAdapter`` and marks nothing: every public method (name not
  starting with ``_``), except the ``initialize``/``cleanup`` hooks;
- the base tools ``ping``, ``get_stats`` and ``get_thread_stats``, unless the adapter has
  commands of those names.

An adapter that overrides ``BaseAdapter.execute_tool`` still gets its commands from its
marked methods: the pool calls them directly, not through ``execute_tool``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional

from . import _ndarray
from ._builtins import builtin_commands, is_builtin  # noqa: F401 - is_builtin re-exported
from ._tooling import TOOL_ATTR, describe_callable, is_command, tool
from .base_adapter import BaseAdapter
from .base_adapter_threaded import ThreadSafeAdapter, collect_stats
from .thread_safety_checker import (
    WARNING_PREFIX,
    ThreadSafetyChecker,
    declares_thread_safety,
    get_active_checker,
    undeclared_adapter_message,
)

__all__ = ["create_adapter", "commands", "command_table", "tools", "cleanup", "set_thread_name"]

logger = logging.getLogger("snakepit_bridge")

_HOOKS = frozenset({"initialize", "cleanup"})
_warned_classes: "set[type]" = set()
_warned_lock = threading.Lock()


def _load_class(class_path: str) -> Any:
    if not isinstance(class_path, str) or "." not in class_path.strip("."):
        raise ImportError(
            f"invalid adapter class path {class_path!r}: expected 'package.module.Class'"
        )
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            # Not found: importlib's frames would only repeat it.
            message = _not_on_path_message(class_path, module_name, missing)
            raise ImportError(message, name=module_name) from None
        message = (
            f"cannot load adapter {class_path!r}: importing module {module_name!r} "
            f"failed: {exc}"
        )
        raise ImportError(message, name=module_name) from exc
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ImportError(
            f"cannot load adapter {class_path!r}: module {module_name!r} has no "
            f"attribute {class_name!r}",
            name=module_name,
            path=getattr(module, "__file__", None),
        ) from None
    if not callable(cls):
        raise TypeError(f"adapter {class_path!r} is a {type(cls).__name__}, not a class")
    return cls


def _not_on_path_message(class_path: str, module_name: str, missing: str) -> str:
    """The adapter's module, or a package above it, was not found: say where Python looked and
    how to add the directory that holds it."""
    head = f"cannot load adapter {class_path!r}: no module named {module_name!r}"
    parent, _, leaf = missing.rpartition(".")
    package = sys.modules.get(parent) if parent else None
    if package is not None:
        where = ", ".join(getattr(package, "__path__", None) or []) or "?"
        return f"{head}: package {parent!r} ({where}) has no module {leaf!r}"
    looked = "\n".join(f"  {entry or '(current directory)'}" for entry in sys.path)
    return (
        f"{head}. Python looked for {missing!r} (a {missing}/ package or {missing}.py) "
        f"in sys.path:\n{looked}\n"
        f"Put the directory that holds it on python_path, for instance "
        f'config :snakepit, python_path: [{{:my_app, "priv/python"}}] for '
        f"my_app/priv/python/{missing}/ (PYTHONPATH works too)."
    )


def create_adapter(
    class_path: str, pool_name: str, worker_index: int, options: Optional[Mapping[str, Any]]
) -> object:
    """Import ``package.module.Class``, instantiate it with no arguments and initialise it.

    Args:
        class_path: the adapter class, for example
            ``"snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"``.
        pool_name: the pool the worker belongs to (for log messages).
        worker_index: the worker's index in the pool (for log messages).
        options: ``"threaded"`` (bool, several threads call the instance), ``"max_workers"``
            (int, threads per worker; set as ``adapter.max_workers`` on a
            ``ThreadSafeAdapter``), ``"thread_safety_check"`` (bool, run a
            ``ThreadSafetyChecker``), ``"pool_name"`` (str).

    Returns:
        The adapter instance, after its ``initialize()`` (when it has one) returned.

    Raises:
        ImportError: the module or the class is missing (the message names the class path).
        TypeError: the path names something that is not callable.
        Exception: whatever the class's ``__init__`` or ``initialize()`` raised, unchanged.
    """
    opts = dict(options or {})
    ndarray_mode = str(opts.get("ndarray") or "list")
    if ndarray_mode not in _ndarray.MODES:
        raise ValueError(f"unknown ndarray mode {ndarray_mode!r}; expected one of: list, struct")
    threaded = bool(opts.get("threaded", False))
    max_workers = int(opts.get("max_workers", 1) or 1)
    pool = opts.get("pool_name", pool_name)
    cls = _load_class(class_path)

    try:
        adapter = cls()
    except BaseException as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(f"while constructing adapter {class_path} (pool {pool})")
        raise
    if isinstance(adapter, ThreadSafeAdapter):
        adapter.max_workers = max_workers
    initialize = getattr(adapter, "initialize", None)
    if callable(initialize):
        initialize()

    adapter_cls = type(adapter)
    checker: Optional[ThreadSafetyChecker] = None
    if opts.get("thread_safety_check", False):
        checker = get_active_checker()
        if checker is None or not checker.enabled:
            checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    if threaded and not declares_thread_safety(adapter_cls):
        with _warned_lock:
            first = adapter_cls not in _warned_classes
            _warned_classes.add(adapter_cls)
        if first and checker is None:
            name = adapter_cls.__name__
            logger.warning(
                "%s%s The pool calls it from several threads anyway: add __thread_safe__ = True "
                "to class %s once its methods are thread-safe (or set threads_per_worker: 1).",
                WARNING_PREFIX,
                undeclared_adapter_message(name),
                name,
            )
    if checker is not None:
        checker.check_adapter(adapter, threaded=threaded)
        checker.check_imports()
    if ndarray_mode != "list":
        _ADAPTER_NDARRAY[id(adapter)] = ndarray_mode
    logger.debug(
        "created adapter %s for pool %s worker %s (threaded=%s, max_workers=%s)",
        class_path,
        pool,
        worker_index,
        threaded,
        max_workers,
    )
    # What a later Snakepit.reload/1 compares the files with (snakepit_bridge._reload).
    from . import _reload

    _reload.track()
    return adapter


def _marked_methods(cls: type) -> Dict[str, str]:
    """``{command name: attribute name}`` for the marked methods of ``cls`` and its bases."""
    marked: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if is_command(func):
                spec = getattr(func, TOOL_ATTR, None)
                name = spec["name"] if isinstance(spec, dict) else attr
                for existing in [k for k, v in marked.items() if v == attr]:
                    del marked[existing]  # a subclass redefinition replaces the base one
                marked[name] = attr
    return marked


def _public_methods(cls: type) -> Dict[str, str]:
    names: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in _HOOKS:
                continue
            if isinstance(value, (staticmethod, classmethod)) or inspect.isfunction(value):
                names[attr] = attr
            else:
                names.pop(attr, None)  # shadowed by a non-method
    return names


def _base_tools(adapter: Any) -> Dict[str, Callable[..., Any]]:
    @tool(description="Liveness check: returns the message (\"pong\" by default)")
    def ping(message: str = "pong") -> str:
        return message

    @tool(description="Adapter statistics (requests, active requests, threads)")
    def get_stats() -> Dict[str, Any]:
        method = getattr(adapter, "get_stats", None)
        if callable(method):
            return method()
        return collect_stats(adapter)

    @tool(description="Per-thread request statistics of the adapter")
    def get_thread_stats() -> Dict[str, Any]:
        if isinstance(adapter, ThreadSafeAdapter):
            return ThreadSafeAdapter.get_stats(adapter)
        return get_stats()

    return {"ping": ping, "get_stats": get_stats, "get_thread_stats": get_thread_stats}


def commands(adapter: Any) -> Dict[str, Callable[..., Any]]:
    """Return ``{command name: callable}`` for an adapter instance (bound methods).

    See the module documentation for which methods count; the base tools ``ping``,
    ``get_stats`` and ``get_thread_stats`` are added unless the adapter defines them.
    """
    cls = type(adapter)
    names = _marked_methods(cls)
    if not names and not isinstance(adapter, BaseAdapter):
        names = _public_methods(cls)
    result: Dict[str, Callable[..., Any]] = {}
    for name, attr in names.items():
        bound = getattr(adapter, attr, None)
        if callable(bound):
            result[name] = bound
    for name, fn in _base_tools(adapter).items():
        result.setdefault(name, fn)
    return result


# The pool's `ndarray:` option of each adapter instance that has one ("list" is not stored),
# by id() (adapters need not be hashable or weak-referenceable); dropped by cleanup().
_ADAPTER_NDARRAY: Dict[int, str] = {}


def _with_ndarray(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        return _ndarray.wrap(fn(*args, **kwargs), mode)

    return command


def command_table(adapter: Any) -> Dict[str, Callable[..., Any]]:
    """What the pools dispatch through: :func:`commands` (their NumPy results wrapped when the
    pool's ``ndarray:`` is not ``"list"``) plus the built-in ``__snakepit_<name>__`` commands
    (call with options, refs, eval; :mod:`snakepit_bridge._builtins`), which are left out of
    the command listings, and ``__snakepit_dependencies__(roots)``: the source files the
    adapter's module depends on (:func:`snakepit_bridge._reload.dependencies`), for
    ``reload: :auto``.
    """
    from . import _reload

    table = commands(adapter)
    mode = _ADAPTER_NDARRAY.get(id(adapter), "list")
    builtins = builtin_commands(dict(table), type(adapter).__qualname__, mode)
    if mode != "list":
        table = {name: _with_ndarray(fn, mode) for name, fn in table.items()}
    table.update(builtins)
    module = type(adapter).__module__

    def dependencies(roots: Optional[List[str]] = None) -> List[str]:
        return _reload.dependencies(module, roots or ())

    table["__snakepit_dependencies__"] = dependencies
    return table


def tools(adapter: Any) -> List[Dict[str, Any]]:
    """Describe every command: ``[{"name", "description", "parameters"}, ...]`` sorted by name.

    Each parameter is ``{"name", "type", "required", "default"}``, with the type as a string
    such as ``"str"`` or ``"list[float]"``.
    """
    described = [
        describe_callable(fn, name)
        for name, fn in commands(adapter).items()
        if not is_builtin(name)
    ]
    return sorted(described, key=lambda item: item["name"])


def cleanup(adapter: Any) -> None:
    """Call the adapter's ``cleanup()`` hook when it has one. Exceptions propagate."""
    _ADAPTER_NDARRAY.pop(id(adapter), None)
    try:
        hook = getattr(adapter, "cleanup", None)
        if callable(hook):
            hook()
    finally:
        from . import _async  # the worker's event loop, if it started one

        _async.close(adapter)


def set_thread_name(name: str, pool: Optional[str] = None) -> None:
    """Name the calling thread, as seen by ``threading.current_thread().name`` and logging.

    Called by each native pool thread when it starts (for example
    ``"snakepit-hpc_pool-w0-t3"``), with the pool's name for log metadata.
    """
    threading.current_thread().name = str(name)
    if pool is not None:
        from ._logging import set_pool

        set_pool(str(pool))


# Environment variables read once by a library when it is first imported: setting them later
# has no effect on that library in this process.
_READ_AT_IMPORT = {
    "OPENBLAS_NUM_THREADS": ("numpy", "scipy", "torch", "sklearn"),
    "OMP_NUM_THREADS": ("numpy", "scipy", "torch", "sklearn", "tensorflow"),
    "MKL_NUM_THREADS": ("numpy", "scipy", "torch", "sklearn"),
    "VECLIB_MAXIMUM_THREADS": ("numpy", "scipy"),
    "NUMEXPR_NUM_THREADS": ("numexpr", "pandas"),
    "CUDA_VISIBLE_DEVICES": ("torch", "tensorflow", "jax"),
    "TF_NUM_INTRAOP_THREADS": ("tensorflow",),
    "TF_NUM_INTEROP_THREADS": ("tensorflow",),
}


def apply_env(env: "list[tuple[str, str]]") -> "list[str]":
    """Set the pool's ``adapter_env`` in ``os.environ`` before the adapter is imported.

    The interpreter is shared by every pool of the BEAM node, so a variable that a library
    reads once at import time cannot take effect for a library that is already imported with a
    different value. Each such case is logged as a warning (and returned).
    """
    import os
    import sys

    warnings: "list[str]" = []
    for name, value in env:
        previous = os.environ.get(name)
        if previous != value:
            loaded = [m for m in _READ_AT_IMPORT.get(name, ()) if m in sys.modules]
            if loaded:
                message = (
                    f"adapter_env {name}={value} cannot take effect for {', '.join(loaded)}: "
                    f"already imported in this BEAM's Python "
                    f"(with {name}={previous if previous is not None else '<unset>'}). "
                    "Set it before the first pool starts (e.g. in the first pool's adapter_env "
                    "or the OS environment), or use the :process profile."
                )
                logger.warning(message)
                warnings.append(message)
        os.environ[name] = value
    return warnings
