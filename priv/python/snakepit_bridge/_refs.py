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
import os
import reprlib
import threading
from typing import Any, Dict, Tuple

from ._dispatch import type_name

__all__ = ["TABLE", "ObjectTable", "Ref", "describe", "ref", "resolve", "set_home"]

_SHORT = 48
_reprs = reprlib.Repr()
_reprs.maxstring = 30
_reprs.maxother = 30
_reprs.maxlist = _reprs.maxtuple = _reprs.maxdict = _reprs.maxset = 4
_reprs.maxlevel = 2


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

    def __snakepit__(self) -> Dict[Any, Any]:
        """The ``%Snakepit.Ref{}`` of a ``:process`` worker: the object goes into the worker's
        :data:`TABLE` and the struct carries its id and the worker's identity. (The
        ``:thread`` profile's NIF turns a :class:`Ref` into a resource before this is asked.)
        """
        from .etf import Atom, ConversionError

        if _HOME is None:
            raise ConversionError("snakepit_bridge.ref(...) can only cross to Elixir from a pool")
        pool, index, os_pid = _HOME
        oid = TABLE.put(self.obj)
        return {
            Atom("__struct__"): Atom("Elixir.Snakepit.Ref"),
            Atom("resource"): None,
            Atom("pool"): Atom(pool),
            Atom("type"): self.type,
            Atom("repr"): self.repr,
            Atom("worker"): (index, os_pid),
            Atom("id"): oid,
        }


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
                    f"the Snakepit.Ref was released (Snakepit.release/1): its Python object is gone "
                    f"(object {oid} of this worker)"
                ) from None

    def drop(self, oid: int) -> bool:
        """Forget ``oid`` (the last Elixir ref is gone); false if it was not there."""
        with self._lock:
            return self._objects.pop(oid, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


#: The objects of this ``:process`` worker that Elixir holds refs to.
TABLE = ObjectTable()
# (pool name, worker index, OS pid) of this worker process; None outside a :process worker.
_HOME: "Tuple[str, int, int] | None" = None


def set_home(pool: str, index: int) -> None:
    """Called by the ``:process`` worker at start: refs it makes name this worker."""
    global _HOME
    _HOME = (str(pool), int(index), os.getpid())


def resolve(struct: Dict[Any, Any]) -> Any:
    """The object of a decoded ``%Snakepit.Ref{}`` (a dict) in this worker.

    Raises:
        LookupError: the ref is not this worker's (its object was lost with another worker
            process), or it was released.
    """
    worker = struct.get("worker")
    if worker is None:
        raise LookupError(
            "this Snakepit.Ref holds an object of a :thread pool (the BEAM's interpreter); "
            "it cannot be passed to a :process pool"
        )
    if _HOME is None or tuple(worker)[1] != _HOME[2]:
        raise LookupError("the object was lost with its worker (that OS process is gone)")
    return TABLE.get(int(struct.get("id") or 0))
