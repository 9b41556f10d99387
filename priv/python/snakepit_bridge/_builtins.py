"""Commands every adapter has, for every profile: ``__snakepit_<name>__``. Not a user API.

``snakepit_bridge._runtime.command_table`` adds them to each adapter's commands (so the
``:thread`` NIF and the ``:process`` worker reach them through the ordinary call path); they
are hidden from ``tools/1`` and from the unknown-command message. ``Snakepit.Caller`` and
``Snakepit.Ref`` / ``Snakepit.Eval`` submit them (README, "Python objects and eval"):

- ``__snakepit_call__(command, args, options)``: runs ``command`` and applies per-call result
  options (``{"return": "ref"}``);
- ``__snakepit_eval__(code, bindings, options)``: runs Python source, returns the value of its
  last expression (``options["globals"]``: a dict to run in, kept across evals);
- ``__snakepit_call_method__(obj, name, args, options)``, ``__snakepit_get_attr__(obj, name,
  options)``, ``__snakepit_decode__(obj, options)``: work on the object of a ref.

``args`` follow the command convention: a dict is keyword arguments, a list or tuple
positional ones, ``None`` none.
"""

from __future__ import annotations

import ast
import builtins
import collections
import itertools
import linecache
import threading
from typing import Any, Callable, Dict, Mapping, Optional

from . import _ndarray
from ._refs import Ref

__all__ = ["PREFIX", "builtin_commands", "is_builtin", "run_eval"]

PREFIX = "__snakepit_"


def is_builtin(name: str) -> bool:
    """True for the name of a built-in command (hidden from the command list)."""
    return name.startswith(PREFIX) and name.endswith("__")


def _call(func: Callable[..., Any], args: Any) -> Any:
    if args is None:
        return func()
    if isinstance(args, Mapping):
        return func(**{str(k): v for k, v in args.items()})
    if isinstance(args, (list, tuple)):
        return func(*args)
    raise TypeError(
        "arguments must be a map (keyword arguments), a list (positional) or nil, "
        f"got {type(args).__name__}"
    )


#: The per-call result options ``Snakepit.CallOptions`` sends.
OPTIONS = ("return", "ndarray", "globals")


def apply_options(
    value: Any, options: Optional[Mapping[str, Any]], pool_ndarray: str = "list"
) -> Any:
    """Apply per-call result options to a command's result: ``"return": "ref"`` keeps it in
    Python (a ref); ``"ndarray": "list" | "struct"`` (else the pool's ``ndarray:``) says how
    NumPy arrays in it cross (:func:`snakepit_bridge._ndarray.wrap`)."""
    if options:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown call options {unknown}; known: {', '.join(OPTIONS)}")
        if options.get("return") == "ref":
            return value if isinstance(value, Ref) else Ref(value)
    mode = str((options or {}).get("ndarray") or pool_ndarray)
    return value if mode == "list" else _ndarray.wrap(value, mode)


_counter = itertools.count(1)
_kept_sources: "collections.deque[str]" = collections.deque()
_kept_lock = threading.Lock()
_KEEP = 64


def _keep_source(filename: str) -> None:
    """Keep a failed snippet's source in ``linecache`` (for its traceback), the last 64 only."""
    with _kept_lock:
        _kept_sources.append(filename)
        while len(_kept_sources) > _KEEP:
            linecache.cache.pop(_kept_sources.popleft(), None)


def run_eval(code: str, bindings: Optional[Mapping[str, Any]] = None, options: Any = None) -> Any:
    """Run ``code`` with ``bindings`` as globals; the value of its last expression, else None.

    ``options["globals"]`` (a dict) is the namespace to run in; bindings are set in it, and
    what the code defines stays there for the next eval. Errors propagate, with tracebacks that
    name the snippet's lines (``File "<snakepit-eval-N>", line 2``) and show their source.
    """
    options = options or {}
    if not isinstance(code, str):
        raise TypeError(f"eval code must be a string, got {type(code).__name__}")
    namespace = options.get("globals")
    if namespace is None:
        namespace = {"__name__": "__snakepit_eval__", "__builtins__": builtins}
    elif not isinstance(namespace, dict):
        raise TypeError(f"globals: must be a ref to a dict, got {type(namespace).__name__}")
    if bindings:
        for key, value in bindings.items():
            namespace[str(key)] = value
    with _kept_lock:  # unique names, also on free-threaded builds
        filename = f"<snakepit-eval-{next(_counter)}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    failed = True
    try:
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), namespace)  # noqa: S102 - this is eval
        value = eval(compile(last, filename, "eval"), namespace) if last else None  # noqa: S307
        failed = False
        return apply_options(value, options)
    finally:
        if failed:
            _keep_source(filename)
        else:
            linecache.cache.pop(filename, None)


def builtin_commands(
    table: Mapping[str, Callable[..., Any]],
    class_name: str = "the adapter",
    pool_ndarray: str = "list",
) -> Dict[str, Callable[..., Any]]:
    """The built-in commands for an adapter (class ``class_name``) whose command table is
    ``table``, in a pool whose ``ndarray:`` option is ``pool_ndarray``."""

    def finish(value: Any, options: Any) -> Any:
        return apply_options(value, options, pool_ndarray)

    def call(command: str, args: Any = None, options: Any = None) -> Any:
        func = table.get(command)
        if func is None or is_builtin(command):
            from ._dispatch import UnknownCommand, unknown_command

            names = [n for n in table if not is_builtin(n)]
            raise UnknownCommand(unknown_command(str(command), class_name, names), names)
        return finish(_call(func, args), options)

    def call_method(obj: Any, name: str, args: Any = None, options: Any = None) -> Any:
        method = getattr(obj, str(name))
        return finish(_call(method, args), options)

    def get_attr(obj: Any, name: str, options: Any = None) -> Any:
        return finish(getattr(obj, str(name)), options)

    def decode(obj: Any, options: Any = None) -> Any:
        return finish(obj, options)

    return {
        "__snakepit_call__": call,
        "__snakepit_eval__": run_eval,
        "__snakepit_call_method__": call_method,
        "__snakepit_get_attr__": get_attr,
        "__snakepit_decode__": decode,
    }
