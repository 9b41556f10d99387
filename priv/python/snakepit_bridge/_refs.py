"""Object references: Python values that stay in Python while Elixir holds a ``%Snakepit.Ref{}``.

An adapter method returns :func:`ref` (``snakepit_bridge.ref(obj)``) to hand back a reference
whatever the caller asked; ``Snakepit.execute(..., return: :ref)`` does the same for any
result. Each marker carries a short description of the object, computed here, once, so that
``inspect(ref)`` in Elixir never needs Python: ``#Snakepit.Ref<numpy.ndarray (3, 3) float64>``.

In the ``:thread`` profile the NIF turns a :class:`Ref` into a NIF resource that owns the object
(``native/snakepit/src/refs.rs``); in the ``:process`` profile the worker keeps the object in
its :class:`ObjectTable` and the ref carries its id (README, "Python objects and eval").
"""

from __future__ import annotations

import itertools
import reprlib
import threading
from typing import Any, Dict, Tuple

__all__ = ["ObjectTable", "Ref", "describe", "ref"]

_SHORT = 48
_reprs = reprlib.Repr()
_reprs.maxstring = 30
_reprs.maxother = 30
_reprs.maxlist = _reprs.maxtuple = _reprs.maxdict = _reprs.maxset = 4
_reprs.maxlevel = 2


def type_name(obj: Any) -> str:
    """``module.QualName`` of ``type(obj)``, only ``QualName`` for builtins."""
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins"):
        return name
    return f"{module}.{name}"


def describe(obj: Any) -> Tuple[str, str]:
    """``(type name, short description)`` of ``obj``, never raising.

    Arrays and frames (anything with a ``shape``) are described by their shape and dtype, as
    ``"(3, 3) float64"``; other objects by a short ``repr`` (at most 48 characters, one line).
    """
    name = type_name(obj)
    try:
        shape = getattr(obj, "shape", None)
        if isinstance(shape, tuple):
            dtype = getattr(obj, "dtype", None)
            short = str(shape) if dtype is None else f"{shape} {dtype}"
        else:
            short = _reprs.repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not fail the call
        short = "?"
    short = " ".join(short.split())
    if len(short) > _SHORT:
        short = short[: _SHORT - 3] + "..."
    return name, short


class Ref:
    """A value that crosses to Elixir as a ``%Snakepit.Ref{}`` instead of being converted.

    Attributes:
        obj: the object itself.
        type: its type name, e.g. ``"numpy.ndarray"``.
        repr: a short description, e.g. ``"(3, 3) float64"``.
    """

    __slots__ = ("obj", "type", "repr")

    def __init__(self, obj: Any) -> None:
        if isinstance(obj, Ref):
            obj = obj.obj
        self.obj = obj
        self.type, self.repr = describe(obj)

    def __repr__(self) -> str:
        return f"<snakepit_bridge.ref {self.type} {self.repr}>"


def ref(obj: Any) -> Ref:
    """Mark ``obj`` to be returned to Elixir as a reference (``%Snakepit.Ref{}``), not a copy.

    It can be the result of an adapter method or sit anywhere inside it (in a list or dict).
    Passing the ref back in a later call's arguments gives the method the object itself.
    """
    return obj if isinstance(obj, Ref) else Ref(obj)


class ObjectTable:
    """The objects of one ``:process`` worker that Elixir holds refs to, by integer id.

    Thread-safe (a lock; the worker serves calls from several threads, also on free-threaded
    builds).
    """

    def __init__(self) -> None:
        self._objects: Dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def put(self, obj: Any) -> int:
        """Store ``obj``; returns its new id."""
        with self._lock:
            oid = next(self._ids)
            self._objects[oid] = obj
        return oid

    def get(self, oid: int) -> Any:
        """The object of ``oid``.

        Raises:
            LookupError: no such id (it was released).
        """
        with self._lock:
            try:
                return self._objects[oid]
            except KeyError:
                raise LookupError(
                    f"object {oid} is not in this worker's table: the Snakepit.Ref was released"
                ) from None

    def drop(self, oid: int) -> bool:
        """Forget ``oid`` (the last Elixir ref is gone); false if it was not there."""
        with self._lock:
            return self._objects.pop(oid, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
