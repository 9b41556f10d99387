"""``%Snakepit.NDArray{}`` <-> NumPy, and the ``ndarray:`` result option.

README, "Large data"; docs/architecture.md, "Large data".

Erlang -> Python: an NDArray argument arrives as a read-only NumPy array made by
:func:`from_parts` over a memoryview of the Erlang binary (no copy). Call ``.copy()`` to get a
writable one.

Python -> Erlang: with ``ndarray: :struct`` (per pool or per call), :func:`wrap` replaces every
``numpy.ndarray`` in a result (inside lists, tuples and dict values too) with an
:class:`NDArrayResult`, which both profiles encode as ``%Snakepit.NDArray{}``. Without the
option arrays still cross as (nested) lists, through ``tolist()``.

NumPy is imported only when an array crosses: it is not a dependency of the bridge.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Dict, Optional, Tuple

# Nx's type names -> NumPy's (native byte order, as Nx stores binaries).
_TO_NUMPY: Dict[Tuple[str, int], str] = {
    ("f", 16): "=f2",
    ("f", 32): "=f4",
    ("f", 64): "=f8",
    ("s", 8): "=i1",
    ("s", 16): "=i2",
    ("s", 32): "=i4",
    ("s", 64): "=i8",
    ("u", 8): "=u1",
    ("u", 16): "=u2",
    ("u", 32): "=u4",
    ("u", 64): "=u8",
    ("c", 64): "=c8",
    ("c", 128): "=c16",
}
_FROM_NUMPY: Dict[Tuple[str, int], Tuple[str, int]] = {
    ("f", 2): ("f", 16),
    ("f", 4): ("f", 32),
    ("f", 8): ("f", 64),
    ("i", 1): ("s", 8),
    ("i", 2): ("s", 16),
    ("i", 4): ("s", 32),
    ("i", 8): ("s", 64),
    ("u", 1): ("u", 8),
    ("u", 2): ("u", 16),
    ("u", 4): ("u", 32),
    ("u", 8): ("u", 64),
    ("b", 1): ("u", 8),
    ("c", 8): ("c", 64),
    ("c", 16): ("c", 128),
}

MODES = ("list", "struct")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise TypeError(
            "%Snakepit.NDArray{} needs NumPy in the worker's Python (pip install numpy)"
        ) from None
    return numpy


def supported_dtypes() -> "list[Tuple[str, int]]":
    """The ``{kind, bits}`` dtypes that cross (Nx's names)."""
    return sorted(_TO_NUMPY)


def from_parts(data: Any, dtype: Tuple[str, int], shape: Tuple[int, ...]) -> Any:
    """A NumPy array over ``data`` (bytes-like, not copied) with Nx dtype ``dtype``.

    Raises:
        TypeError: NumPy is missing, the dtype is unknown, or the size of ``data`` does not
            match ``shape`` and ``dtype``.
    """
    np = _numpy()
    kind, bits = dtype
    kind = str(kind)
    name = _TO_NUMPY.get((kind, int(bits)))
    if name is None:
        known = ", ".join(f"{{:{k}, {b}}}" for k, b in supported_dtypes())
        raise TypeError(f"unsupported NDArray dtype {{:{kind}, {bits}}}; supported: {known}")
    dt = np.dtype(name)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise TypeError(f"NDArray shape {shape} has a negative size")
    count = 1
    for s in shape:
        count *= s
    nbytes = len(memoryview(data).cast("B")) if not isinstance(data, (bytes, bytearray)) else len(data)
    if count * dt.itemsize != nbytes:
        raise TypeError(
            f"NDArray data has {nbytes} bytes but shape {shape} of {{:{kind}, {bits}}} "
            f"needs {count * dt.itemsize}"
        )
    return np.frombuffer(data, dtype=dt, count=count).reshape(shape)


def _frozen_base(arr: Any) -> bool:
    """Whether nothing in Python can change ``arr``'s bytes: it is read-only and its memory
    belongs, in the end, to a ``bytes`` object or an Erlang binary."""
    if arr.flags.writeable:
        return False
    base = arr
    while getattr(base, "base", None) is not None and type(base).__module__ == "numpy":
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj if base.readonly else None
    return isinstance(base, bytes) or type(base).__name__ == "ErlBuffer"


class NDArrayResult:
    """A NumPy array on its way out as ``%Snakepit.NDArray{}``."""

    __slots__ = ("data", "dtype", "shape", "owner")

    def __init__(self, arr: Any) -> None:
        np = _numpy()
        key = (arr.dtype.kind, arr.dtype.itemsize)
        dtype = _FROM_NUMPY.get(key)
        if dtype is None:
            raise TypeError(f"NumPy dtype {arr.dtype} has no NDArray counterpart")
        if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != (
            "<" if sys.byteorder == "little" else ">"
        ):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        self.dtype = dtype
        self.shape = tuple(int(s) for s in arr.shape)
        # A 1-d byte view of the array's memory (a view of a 0-d or empty array works too).
        self.data = arr.reshape(-1).view(np.uint8) if arr.size else b""
        # Held by the Erlang binary instead of copying, when nobody can change the bytes.
        self.owner: Optional[Any] = self.data if _frozen_base(arr) and arr.size else None

    def __snakepit__(self) -> Dict[Any, Any]:
        """The struct for the ETF encoder (process profile)."""
        from .etf import Atom

        data = self.data if isinstance(self.data, bytes) else memoryview(self.data)
        return {
            Atom("__struct__"): Atom("Elixir.Snakepit.NDArray"),
            Atom("data"): data,
            Atom("dtype"): (Atom(self.dtype[0]), self.dtype[1]),
            Atom("shape"): self.shape,
        }


def wrap(result: Any, mode: str) -> Any:
    """``result`` with its NumPy arrays made ready to cross as ``mode`` says (``"list"`` or
    ``"struct"``). An iterator (a stream's result) or async generator gives its items wrapped
    one by one, a coroutine (``async def``) its value."""
    if mode == "list":
        return result
    if mode != "struct":
        raise ValueError(f"unknown ndarray mode {mode!r}; expected one of: {', '.join(MODES)}")
    kind = type(result)
    if kind is types.GeneratorType or (
        kind not in _CONTAINERS and hasattr(kind, "__next__") and hasattr(kind, "__iter__")
    ):
        return _wrap_items(result)  # a stream's items (execute_stream)
    if kind is types.AsyncGeneratorType:
        return _wrap_async_items(result)
    if kind is types.CoroutineType:
        return _wrap_awaited(result)  # an ``async def`` command's value
    np = sys.modules.get("numpy")
    if np is None:
        return result  # no NumPy loaded: no arrays in the result
    return _wrap(result, np.ndarray)


_CONTAINERS = (list, tuple, dict)


def _wrap_one(item: Any) -> Any:
    # NumPy may be imported by the generator itself, after its first items.
    np = sys.modules.get("numpy")
    return item if np is None else _wrap(item, np.ndarray)


def _wrap_items(iterator: Any) -> Any:
    """The items of ``iterator`` wrapped one by one; closing it (a halted stream) closes
    ``iterator`` too, so its ``finally`` blocks run at once."""
    try:
        for item in iterator:
            yield _wrap_one(item)
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()


async def _wrap_async_items(agen: Any) -> Any:
    try:
        async for item in agen:
            yield _wrap_one(item)
    finally:
        await agen.aclose()


async def _wrap_awaited(coro: Any) -> Any:
    return _wrap_one(await coro)


def _wrap(value: Any, ndarray: type) -> Any:
    if isinstance(value, ndarray):
        return NDArrayResult(value)
    if type(value) is list:
        return [_wrap(v, ndarray) for v in value]
    if type(value) is tuple:
        return tuple(_wrap(v, ndarray) for v in value)
    if type(value) is dict:
        return {k: _wrap(v, ndarray) for k, v in value.items()}
    return value
