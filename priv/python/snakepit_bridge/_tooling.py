"""The ``@tool`` decorator and the helpers that describe a command to Elixir.

Private module: the public names are re-exported by :mod:`snakepit_bridge.base_adapter_threaded`,
:mod:`snakepit_bridge.base_adapter` and :mod:`snakepit_bridge`.

A command is a method marked with ``__snakepit_command__ = True`` (set by ``@tool`` and by
``@thread_safe_method``). ``@tool`` also stores a description in ``__snakepit_tool__``::

    {"name": "predict", "description": "Thread-safe prediction",
     "parameters": [{"name": "input_data", "type": "str", "required": True, "default": None}],
     "extra": {}}
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union, overload

__all__ = ["tool", "describe_callable", "describe_parameters", "type_name", "is_command"]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute holding the ``@tool`` description of a function.
TOOL_ATTR = "__snakepit_tool__"
#: Attribute marking a function as a command.
COMMAND_ATTR = "__snakepit_command__"
#: Attribute marking a command short enough to run on the calling BEAM scheduler.
INLINE_ATTR = "__snakepit_inline__"

_UNION_TYPES: tuple = (typing.Union,)
if sys.version_info >= (3, 10):
    _UNION_TYPES = (typing.Union, types.UnionType)


def is_command(obj: Any) -> bool:
    """Return True when ``obj`` is marked as a command by ``@tool`` or ``@thread_safe_method``."""
    return getattr(obj, COMMAND_ATTR, False) is True


def type_name(tp: Any) -> str:
    """Render a type annotation as a short string: ``str``, ``list[float]``, ``int | None``.

    A missing annotation and ``typing.Any`` give ``"any"``; an annotation that could not be
    resolved (a forward reference) is returned as written.
    """
    if tp is inspect.Parameter.empty or tp is typing.Any:
        return "any"
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return tp
    if isinstance(tp, typing.ForwardRef):
        return tp.__forward_arg__
    if isinstance(tp, (list, tuple)):
        return "[" + ", ".join(type_name(t) for t in tp) + "]"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is not None:
        base = getattr(origin, "__name__", None) or repr(origin).replace("typing.", "")
        if args:
            return base + "[" + ", ".join(type_name(a) for a in args) + "]"
        return base
    if isinstance(tp, type):
        if tp.__module__ == "builtins":
            return tp.__name__
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _plain_default(value: Any) -> Any:
    """A default value as a term Elixir can receive: plain data as is, anything else as repr."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain_default(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_default(v) for k, v in value.items()}
    return repr(value)


def _type_hints(fn: Callable[..., Any]) -> Dict[str, Any]:
    target = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # an unresolvable forward reference: resolve what can be, one by one
        pass
    namespace = getattr(target, "__globals__", {})
    hints: Dict[str, Any] = {}
    for key, annotation in dict(getattr(target, "__annotations__", {}) or {}).items():
        for _ in range(2):  # a quoted annotation under `from __future__ import annotations`
            if not isinstance(annotation, str):
                break
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the function's own text
            except Exception:
                annotation = annotation.strip().strip("'\"")
                break
        hints[key] = annotation
    return hints


def describe_parameters(fn: Callable[..., Any]) -> List[Dict[str, Any]]:
    """Describe the parameters of ``fn`` (``self`` and ``*args``/``**kwargs`` left out).

    Each parameter is ``{"name", "type", "required", "default"}``; ``default`` is None for a
    required parameter. Without an annotation the type is taken from the default value when
    there is one, else ``"any"``.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    hints = _type_hints(fn)
    params: List[Dict[str, Any]] = []
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if index == 0 and param.name in ("self", "cls"):
            continue
        required = param.default is inspect.Parameter.empty
        if param.name in hints:
            tname = type_name(hints[param.name])
        elif not required and param.default is not None:
            tname = type_name(type(param.default))
        else:
            tname = "any"
        params.append(
            {
                "name": param.name,
                "type": tname,
                "required": required,
                "default": None if required else _plain_default(param.default),
            }
        )
    return params


def _first_doc_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe_callable(fn: Callable[..., Any], name: Optional[str] = None) -> Dict[str, Any]:
    """Describe a command for ``tools()``: ``{"name", "description", "parameters"}``.

    Uses the ``@tool`` metadata when present, else the first docstring line and the signature.
    Extra ``@tool`` keyword arguments are added as further keys (they never replace the three).
    """
    spec = getattr(fn, TOOL_ATTR, None)
    if isinstance(spec, dict):
        out: Dict[str, Any] = {
            "name": name or spec["name"],
            "description": spec["description"],
            "parameters": [dict(p) for p in spec["parameters"]],
        }
        for key, value in spec.get("extra", {}).items():
            out.setdefault(key, _plain_default(value))
        return out
    return {
        "name": name or getattr(fn, "__name__", "command"),
        "description": _first_doc_line(fn),
        "parameters": describe_parameters(fn),
    }


@overload
def tool(fn: F) -> F: ...


@overload
def tool(
    description: Optional[str] = None, name: Optional[str] = None, **extra: Any
) -> Callable[[F], F]: ...


def tool(
    description: Union[str, Callable[..., Any], None] = None,
    name: Optional[str] = None,
    **extra: Any,
) -> Any:
    """Mark a method as a command and record its description for ``Snakepit.tools/1``.

    Usable bare (``@tool``) or with arguments (``@tool(description="...")``), above or below
    ``@thread_safe_method``::

        @thread_safe_method
        @tool(description="Thread-safe prediction")
        def predict(self, input_data: str) -> dict: ...

    Args:
        description: what the command does; defaults to the first line of the docstring.
        name: the command name seen from Elixir; defaults to the method name.
        **extra: further metadata (for example ``supports_streaming=True``), listed by
            ``tools()`` beside the name, description and parameters. ``inline=True`` also
            declares the command *short*: a plain function that returns within microseconds
            and never blocks (no sleep, I/O, locks or ``elixir.call``). In a ``:thread`` pool
            such a call may run on the calling BEAM scheduler instead of being handed to a
            pool thread, which is several times faster on a busy machine. Snakepit times
            each inline call and stops running them inline in that pool for a while
            (``inline_backoffs`` in ``Snakepit.stats/1``) when two in a row took over 1 ms.
            Other profiles ignore it. ``async def`` and generator functions cannot be inline
            (``TypeError``).

    The parameters (name, type as a string such as ``"list[float]"``, required, default) are
    derived from the signature and type hints when the decorator runs. The decorated function
    is returned unchanged apart from the attributes ``__snakepit_tool__`` and
    ``__snakepit_command__``.
    """
    if callable(description) and name is None and not extra:
        return _apply_tool(description, None, None, {})

    def decorate(fn: F) -> F:
        return _apply_tool(fn, description, name, extra)  # type: ignore[arg-type]

    return decorate


def _apply_tool(fn: F, description: Optional[str], name: Optional[str], extra: Dict[str, Any]) -> F:
    if not callable(fn):
        raise TypeError(f"@tool decorates functions, got {type(fn).__name__}")
    if description is not None and not isinstance(description, str):
        raise TypeError("@tool description must be a string")
    spec = {
        "name": name or fn.__name__,
        "description": description if description is not None else _first_doc_line(fn),
        "parameters": describe_parameters(fn),
        "extra": dict(extra),
    }
    if extra.get("inline", False) is True:
        if (
            inspect.iscoroutinefunction(fn)
            or inspect.isgeneratorfunction(fn)
            or inspect.isasyncgenfunction(fn)
        ):
            raise TypeError(
                f"@tool(inline=True) needs a plain function: {fn.__name__} is async or a "
                "generator, whose work does not end when it returns; drop inline=True"
            )
        setattr(fn, INLINE_ATTR, True)
    setattr(fn, TOOL_ATTR, spec)
    setattr(fn, COMMAND_ATTR, True)
    return fn
