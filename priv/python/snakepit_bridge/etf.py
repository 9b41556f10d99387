"""The Erlang external term format, with Snakepit's term mapping (the README's "Terms and
Python"; docs/architecture.md, Terms).

The ``:process`` worker profile talks to Elixir through this codec: Elixir encodes with
``:erlang.term_to_binary/1`` and decodes with ``:erlang.binary_to_term(bin, [:safe])``.
The mapping is the one of the ``:thread`` profile's NIF:

==============================  ===============================  ============================
Erlang                          Python (:func:`decode`)          back (:func:`encode`)
==============================  ===============================  ============================
``nil``, ``true``, ``false``    ``None``, ``True``, ``False``    the same atoms
other atoms                     ``str``                          binary
integers (any size)             ``int``                          integer
floats                          ``float``                        float; NaN, ±inf → atoms
                                                                 ``nan``, ``infinity``,
                                                                 ``neg_infinity``
binary, valid UTF-8             ``str``                          binary
binary, not UTF-8;              ``bytes``                        binary (``bytearray`` and
``{:bytes, bin}``                                                ``memoryview`` too)
list (charlists too)            ``list``                         list
tuple                           ``tuple``                        tuple
map                             ``dict`` (atom keys → ``str``)   map
``MapSet``                      ``set``                          ``set``, ``frozenset`` →
                                                                 ``MapSet``
pid                             :class:`snakepit_bridge.Pid`     the same pid
fun, port, reference,           :class:`ConversionError`         —
bitstring, improper list
==============================  ===============================  ============================

Python objects with a ``__snakepit__()`` method are encoded as its result, then objects with
``tolist()`` (NumPy arrays and scalars) as that; anything else raises :class:`ConversionError`
naming the type. :class:`Atom` (a ``str`` subclass) encodes as an atom. Values nested deeper
than :data:`MAX_DEPTH` levels raise :class:`ConversionError` in both directions.

A :class:`snakepit_bridge.Pid` holds the pid's complete encoding (``raw``, from the tag byte
on), so it encodes back to exactly the same pid. That is the stand-in ``Pid`` class of a Python
outside the BEAM (a worker process); inside the BEAM, ``snakepit_bridge.Pid`` is the NIF's and
this module is not used.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import zlib
from typing import Any, Dict, List, Tuple

from . import _shm
from ._dispatch import type_name

__all__ = [
    "Atom",
    "ConversionError",
    "MAX_DEPTH",
    "decode",
    "encode",
    "encode_into",
    "set_mapset_fields",
    "type_name",
]

#: How deep a nested value may be, in either direction (as in the ``:thread`` profile).
MAX_DEPTH = 2_000

VERSION = 131

# Tags of the external term format (erts/emulator/beam/external.h).
NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
COMPRESSED = 80
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
FUN_EXT = 117
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120
LOCAL_EXT = 121

_UNCONVERTIBLE = {
    NEW_FUN_EXT: "a function",
    FUN_EXT: "a function",
    EXPORT_EXT: "a function",
    NEW_PORT_EXT: "a port",
    PORT_EXT: "a port",
    V4_PORT_EXT: "a port",
    NEWER_REFERENCE_EXT: "a reference",
    NEW_REFERENCE_EXT: "a reference",
    REFERENCE_EXT: "a reference",
}

_ONLY = "only atoms, numbers, binaries, lists, tuples, maps, MapSets and pids cross"


class ConversionError(TypeError):
    """A value that cannot cross between Erlang and Python (``category: :conversion``)."""


class Atom(str):
    """A ``str`` that :func:`encode` writes as an Erlang atom (``Atom("ok")`` → ``:ok``).

    :func:`decode` never returns one: atoms other than ``nil``/``true``/``false`` decode to
    plain ``str``, as in the ``:thread`` profile.
    """

    __slots__ = ()


def _pid_class() -> type:
    # snakepit_bridge.Pid: the NIF's class inside the BEAM, else the stand-in holding ``raw``.
    # A worker process has no NIF, so it always gets the stand-in.
    from . import Pid

    return Pid


Pid = _pid_class()


def _too_deep() -> ConversionError:
    return ConversionError(f"value nested deeper than {MAX_DEPTH} levels cannot be converted")


def _ensure_recursion_limit() -> None:
    # Both directions recurse once per nesting level; MAX_DEPTH levels need room above it.
    needed = MAX_DEPTH * 2 + 1_000
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


# ---------------------------------------------------------------------------------------------
# Decoding: Erlang -> Python
# ---------------------------------------------------------------------------------------------

_u8 = struct.Struct(">B").unpack_from
_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_f64 = struct.Struct(">d").unpack_from
_pid_tail = {NEW_PID_EXT: 12, PID_EXT: 9}


def decode(data: Any) -> Any:
    """Decode one term from ``data`` (bytes-like, starting with the version byte 131).

    Raises:
        ConversionError: the data holds a term that cannot cross (a fun, port, reference,
            bitstring or improper list), nests deeper than :data:`MAX_DEPTH`, or is not a
            valid encoding.
    """
    buf = memoryview(data)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    if len(buf) < 2 or buf[0] != VERSION:
        raise ConversionError("not an Erlang external term (no version byte 131)")
    _ensure_recursion_limit()
    if buf[1] == COMPRESSED:
        if len(buf) < 6:
            raise ConversionError("truncated compressed term")
        size = _u32(buf, 2)[0]
        try:
            inflated = zlib.decompress(buf[6:])
        except zlib.error as exc:
            raise ConversionError(f"malformed compressed term: {exc}") from None
        if len(inflated) != size:
            raise ConversionError("compressed term has the wrong size")
        buf = memoryview(bytes([VERSION]) + inflated)
    try:
        value, pos = _decode(buf, 1, 0)
    except RecursionError:
        raise _too_deep() from None
    except (struct.error, IndexError, ValueError, zlib.error) as exc:
        raise ConversionError(f"malformed external term: {exc}") from None
    if pos != len(buf):
        raise ConversionError(f"{len(buf) - pos} trailing bytes after the term")
    return value


def _atom_text(buf: memoryview, pos: int) -> Tuple[str, int]:
    """Reads an atom at ``pos``; returns its text and the position after it."""
    tag = buf[pos]
    if tag == SMALL_ATOM_UTF8_EXT:
        n = buf[pos + 1]
        return str(buf[pos + 2 : pos + 2 + n], "utf-8"), pos + 2 + n
    if tag == ATOM_UTF8_EXT:
        n = _u16(buf, pos + 1)[0]
        return str(buf[pos + 3 : pos + 3 + n], "utf-8"), pos + 3 + n
    if tag == ATOM_EXT:
        n = _u16(buf, pos + 1)[0]
        return str(buf[pos + 3 : pos + 3 + n], "latin-1"), pos + 3 + n
    if tag == SMALL_ATOM_EXT:
        n = buf[pos + 1]
        return str(buf[pos + 2 : pos + 2 + n], "latin-1"), pos + 2 + n
    raise ConversionError(f"expected an atom, found tag {tag}")


_ATOM_TAGS = frozenset((SMALL_ATOM_UTF8_EXT, ATOM_UTF8_EXT, ATOM_EXT, SMALL_ATOM_EXT))
_SPECIAL_ATOMS = {"nil": None, "true": True, "false": False}


def _binary(buf: memoryview, start: int, end: int) -> Any:
    chunk = buf[start:end]
    try:
        return str(chunk, "utf-8")
    except UnicodeDecodeError:
        return bytes(chunk)


def _decode(buf: memoryview, pos: int, depth: int) -> Tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise _too_deep()
    tag = buf[pos]
    if tag == SMALL_INTEGER_EXT:
        return buf[pos + 1], pos + 2
    if tag == INTEGER_EXT:
        return _i32(buf, pos + 1)[0], pos + 5
    if tag == BINARY_EXT:
        n = _u32(buf, pos + 1)[0]
        start = pos + 5
        if start + n > len(buf):
            raise ConversionError("truncated binary")
        return _binary(buf, start, start + n), start + n
    if tag in _ATOM_TAGS:
        text, pos = _atom_text(buf, pos)
        return _SPECIAL_ATOMS.get(text, text), pos
    if tag == NIL_EXT:
        return [], pos + 1
    if tag == LIST_EXT:
        n = _u32(buf, pos + 1)[0]
        pos += 5
        items: List[Any] = []
        append = items.append
        child = depth + 1
        if child > MAX_DEPTH:
            raise _too_deep()
        if n >= _RUN_MIN:
            run = _decode_run(buf, pos, n)
            if run is not None:
                return run
        for _ in range(n):
            t = buf[pos]
            if t == SMALL_INTEGER_EXT:
                append(buf[pos + 1])
                pos += 2
            else:
                value, pos = _decode(buf, pos, child)
                append(value)
        if buf[pos] != NIL_EXT:
            raise ConversionError("improper lists cannot be converted")
        return items, pos + 1
    if tag == NEW_FLOAT_EXT:
        return _f64(buf, pos + 1)[0], pos + 9
    if tag == SMALL_TUPLE_EXT or tag == LARGE_TUPLE_EXT:
        if tag == SMALL_TUPLE_EXT:
            n = buf[pos + 1]
            pos += 2
        else:
            n = _u32(buf, pos + 1)[0]
            pos += 5
        # {:bytes, binary} is Python bytes.
        if n == 2 and buf[pos] in _ATOM_TAGS:
            text, after = _atom_text(buf, pos)
            if text == "bytes" and buf[after] == BINARY_EXT:
                size = _u32(buf, after + 1)[0]
                start = after + 5
                return bytes(buf[start : start + size]), start + size
            # {:buffer, binary} is a read-only memoryview of the frame (no copy).
            if text == "buffer" and buf[after] == BINARY_EXT:
                size = _u32(buf, after + 1)[0]
                start = after + 5
                return _readonly(buf[start : start + size]), start + size
            if (text == "bytes" or text == "buffer") and _is_shm(buf, after):
                view, end = _shm_view(buf, after)
                return (bytes(view) if text == "bytes" else view), end
        # A large binary in a shared-memory file (snakepit_bridge._shm): as a binary here.
        if n == 3 and tag == SMALL_TUPLE_EXT and _is_shm(buf, pos - 2):
            view, end = _shm_view(buf, pos - 2)
            return _binary(view, 0, len(view)), end
        elems = []
        for _ in range(n):
            value, pos = _decode(buf, pos, depth + 1)
            elems.append(value)
        return tuple(elems), pos
    if tag == MAP_EXT:
        return _decode_map(buf, pos, depth)
    if tag == SMALL_BIG_EXT or tag == LARGE_BIG_EXT:
        if tag == SMALL_BIG_EXT:
            n = buf[pos + 1]
            pos += 2
        else:
            n = _u32(buf, pos + 1)[0]
            pos += 5
        sign = buf[pos]
        value = int.from_bytes(buf[pos + 1 : pos + 1 + n], "little")
        return (-value if sign else value), pos + 1 + n
    if tag == STRING_EXT:
        n = _u16(buf, pos + 1)[0]
        return list(buf[pos + 3 : pos + 3 + n]), pos + 3 + n
    if tag == NEW_PID_EXT or tag == PID_EXT:
        _, after = _atom_text(buf, pos + 1)
        end = after + _pid_tail[tag]
        if end > len(buf):
            raise ConversionError("truncated pid")
        return Pid(bytes(buf[pos:end])), end
    if tag == FLOAT_EXT:
        text = bytes(buf[pos + 1 : pos + 32]).split(b"\0", 1)[0]
        return float(text), pos + 32
    if tag == BIT_BINARY_EXT:
        raise ConversionError(
            f"cannot convert a bitstring to Python: {_ONLY} (bitstrings that are not binaries "
            "cannot be converted)"
        )
    what = _UNCONVERTIBLE.get(tag)
    if what is not None:
        raise ConversionError(f"cannot convert {what} to Python: {_ONLY}")
    raise ConversionError(f"cannot convert this term (external tag {tag}) to Python: {_ONLY}")


# Lists of one scalar kind (numbers from NumPy, say) are converted in bulk: a list of at least
# _RUN_MIN small integers, 32-bit integers or floats is (un)packed with struct in one call.
_RUN_MIN = 8
_RUN_WIDTH = {SMALL_INTEGER_EXT: 2, INTEGER_EXT: 5, NEW_FLOAT_EXT: 9}
_RUN_CODE = {INTEGER_EXT: "i", NEW_FLOAT_EXT: "d"}


def _decode_run(buf: memoryview, pos: int, n: int) -> Any:
    """``(list, end)`` when the ``n`` elements at ``pos`` are all one scalar kind, else None."""
    tag = buf[pos]
    width = _RUN_WIDTH.get(tag)
    if width is None:
        return None
    end = pos + width * n
    if end >= len(buf) or buf[end] != NIL_EXT or buf[pos:end:width] != bytes((tag,)) * n:
        return None
    payload = bytearray(buf[pos:end])
    del payload[::width]  # drop the tag bytes
    if tag == SMALL_INTEGER_EXT:
        return list(payload), end + 1
    return list(struct.unpack(f">{n}{_RUN_CODE[tag]}", payload)), end + 1


_SHM_ATOM = "$snakepit_shm"
_ARENA_ATOM = "$snakepit_arena"


def _is_shm(buf: memoryview, pos: int) -> bool:
    """Whether ``{:"$snakepit_shm", path, size}`` (a large binary in a file) or
    ``{:"$snakepit_arena", offset, size}`` (in the pool's argument arena) is at ``pos``."""
    if buf[pos] != SMALL_TUPLE_EXT or buf[pos + 1] != 3 or buf[pos + 2] not in _ATOM_TAGS:
        return False
    return _atom_text(buf, pos + 2)[0] in (_SHM_ATOM, _ARENA_ATOM)


def _shm_view(buf: memoryview, pos: int) -> Tuple[memoryview, int]:
    """The read-only view of the file or arena region of the marker at ``pos``; the position
    after it."""
    atom, after = _atom_text(buf, pos + 2)
    where, after = _decode(buf, after, 1)
    size, after = _decode(buf, after, 1)
    arena = atom == _ARENA_ATOM
    if not isinstance(where, int if arena else str) or not isinstance(size, int):
        raise ConversionError("malformed shared-memory reference")
    try:
        if arena:
            return _shm.arena_view(where, size), after
        return _shm.open_view(where, size), after
    except ValueError as exc:
        raise ConversionError(str(exc)) from None


def _is_atom(buf: memoryview, pos: int, text: str) -> bool:
    if buf[pos] not in _ATOM_TAGS:
        return False
    return _atom_text(buf, pos)[0] == text


def _decode_map(buf: memoryview, pos: int, depth: int) -> Tuple[Any, int]:
    n = _u32(buf, pos + 1)[0]
    pos += 5
    result: Dict[Any, Any] = {}
    mapset = False
    ndarray = False
    tensor = False
    # A "data" binary read as a view before the map's __struct__ was seen: OTP 26 and later
    # encode a small map's atom keys in atom-table order, not alphabetically, so an NDArray's
    # data may come first. Made a str or bytes below if the map is no NDArray after all.
    viewed = False
    child = depth + 1
    try:
        for _ in range(n):
            key_pos = pos
            key, pos = _decode(buf, pos, child)
            value_pos = pos
            if key == "data" and buf[pos] == BINARY_EXT and not (mapset or tensor):
                # An NDArray's data: a view of the frame, for numpy.frombuffer (no copy).
                size = _u32(buf, pos + 1)[0]
                value, pos = _readonly(buf[pos + 5 : pos + 5 + size]), pos + 5 + size
                viewed = True
            elif key == "data" and not (mapset or tensor) and _is_shm(buf, pos):
                value, pos = _shm_view(buf, pos)
                viewed = True
            else:
                value, pos = _decode(buf, pos, child)
            if key == "__struct__" and _is_atom(buf, key_pos, "__struct__"):
                if value == "Elixir.MapSet" and _is_atom(buf, value_pos, "Elixir.MapSet"):
                    mapset = True
                elif value == _NDARRAY and _is_atom(buf, value_pos, _NDARRAY):
                    ndarray = True
                elif value == _NX_TENSOR and _is_atom(buf, value_pos, _NX_TENSOR):
                    tensor = True
            result[key] = value
    except TypeError as exc:
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"TypeError: {exc}") from None
    if mapset:
        inner = result.get("map")
        if not isinstance(inner, dict):
            raise ConversionError("malformed MapSet")
        return set(inner), pos
    if result.get("__struct__") == "Elixir.Snakepit.Ref":
        # The object itself (priv/python/snakepit_bridge/_refs.py).
        from ._refs import resolve

        try:
            return resolve(result), pos
        except LookupError as exc:
            raise ConversionError(str(exc)) from None
    if ndarray:
        return _ndarray_from(result), pos
    if viewed:
        view = result["data"]
        result["data"] = _binary(view, 0, len(view))
    if tensor:
        return _tensor_from(result), pos
    return result, pos


_NDARRAY = "Elixir.Snakepit.NDArray"
_NX_TENSOR = "Elixir.Nx.Tensor"


def _tensor_from(fields: Dict[Any, Any]) -> Any:
    """A NumPy array from a decoded ``%Nx.Tensor{}`` on ``Nx.BinaryBackend``."""
    data = fields.get("data")
    if not (isinstance(data, dict) and data.get("__struct__") == "Elixir.Nx.BinaryBackend"):
        raise ConversionError(
            "an %Nx.Tensor{} crosses from Nx.BinaryBackend only: "
            "Nx.backend_transfer(tensor, Nx.BinaryBackend) first"
        )
    return _ndarray_from(
        {"data": data.get("state"), "dtype": fields.get("type"), "shape": fields.get("shape")}
    )


def _readonly(view: memoryview) -> memoryview:
    return view if view.readonly else view.toreadonly()


def _ndarray_from(fields: Dict[Any, Any]) -> Any:
    """A NumPy array from a decoded ``%Snakepit.NDArray{}`` (snakepit_bridge._ndarray)."""
    from . import _ndarray

    data = fields.get("data")
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    dtype, shape = fields.get("dtype"), fields.get("shape")
    if not (isinstance(dtype, tuple) and len(dtype) == 2 and isinstance(shape, tuple)):
        raise ConversionError("malformed %Snakepit.NDArray{}: dtype {kind, bits}, shape a tuple")
    try:
        return _ndarray.from_parts(data, dtype, shape)
    except TypeError as exc:
        raise ConversionError(f"TypeError: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Encoding: Python -> Erlang
# ---------------------------------------------------------------------------------------------

_p_u32 = struct.Struct(">I").pack
_p_tag_u32 = struct.Struct(">BI").pack
_p_tag_i32 = struct.Struct(">Bi").pack
_p_float = struct.Struct(">Bd").pack

_NIL = bytes([SMALL_ATOM_UTF8_EXT, 3]) + b"nil"
_TRUE = bytes([SMALL_ATOM_UTF8_EXT, 4]) + b"true"
_FALSE = bytes([SMALL_ATOM_UTF8_EXT, 5]) + b"false"
_NAN = bytes([SMALL_ATOM_UTF8_EXT, 3]) + b"nan"
_INF = bytes([SMALL_ATOM_UTF8_EXT, 8]) + b"infinity"
_NEG_INF = bytes([SMALL_ATOM_UTF8_EXT, 12]) + b"neg_infinity"
# Set by set_mapset_fields() at import (below), from SNAKEPIT_MAPSET_FIELDS.
_MAPSET_HEAD = b""


# Key types whose distinct Python values always encode to distinct terms: a dict or set made
# of these needs no de-duplication of keys after conversion.
_DISTINCT_KEY_TYPES = frozenset((str, int, bool, type(None)))


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as an external term (with the version byte), for ``binary_to_term``.

    Raises:
        ConversionError: ``obj`` (or something inside it) has no Erlang counterpart, or it is
            nested deeper than :data:`MAX_DEPTH`.
    """
    out = bytearray((VERSION,))
    encode_into(out, obj)
    return bytes(out)


def encode_into(out: bytearray, obj: Any, depth: int = 0) -> None:
    """Append the encoding of ``obj`` (without the version byte) to ``out``.

    On error ``out`` may hold a partial encoding: discard it.
    """
    _ensure_recursion_limit()
    try:
        _encode(out, obj, depth)
    except RecursionError:
        raise _too_deep() from None


def _encode_str(out: bytearray, obj: str) -> None:
    try:
        data = obj.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: as Python's "surrogatepass" would write them.
        data = obj.encode("utf-8", "surrogatepass")
    out += _p_tag_u32(BINARY_EXT, len(data))
    out += data


_SHM_REF = bytes([SMALL_TUPLE_EXT, 2, SMALL_ATOM_UTF8_EXT, len(_SHM_ATOM)]) + _SHM_ATOM.encode()


def _encode_bytes(out: bytearray, obj: Any) -> None:
    if len(obj) >= _shm.MIN:
        # Into a shared-memory file when a reply is being built (snakepit_bridge._shm).
        index = _shm.export(obj)
        if index is not None:
            out += _SHM_REF
            _encode_int(out, index)
            return
    out += _p_tag_u32(BINARY_EXT, len(obj))
    out += obj


def _encode_int(out: bytearray, obj: int) -> None:
    if 0 <= obj < 256:
        out.append(SMALL_INTEGER_EXT)
        out.append(obj)
    elif -2147483648 <= obj <= 2147483647:
        out += _p_tag_i32(INTEGER_EXT, obj)
    else:
        magnitude = -obj if obj < 0 else obj
        n = (magnitude.bit_length() + 7) // 8
        if n < 256:
            out.append(SMALL_BIG_EXT)
            out.append(n)
        else:
            out += _p_tag_u32(LARGE_BIG_EXT, n)
        out.append(1 if obj < 0 else 0)
        out += magnitude.to_bytes(n, "little")


def _encode_float(out: bytearray, obj: float) -> None:
    if obj != obj:
        out += _NAN
    elif obj == math.inf:
        out += _INF
    elif obj == -math.inf:
        out += _NEG_INF
    else:
        out += _p_float(NEW_FLOAT_EXT, obj)


def _encode_atom(out: bytearray, obj: str) -> None:
    data = obj.encode("utf-8")
    if len(data) < 256:
        out.append(SMALL_ATOM_UTF8_EXT)
        out.append(len(data))
    else:
        out += struct.pack(">BH", ATOM_UTF8_EXT, len(data))
    out += data


def _encode_list(out: bytearray, obj: Any, depth: int) -> None:
    n = len(obj)
    if n == 0:
        out.append(NIL_EXT)
        return
    if depth + 1 > MAX_DEPTH:
        raise _too_deep()
    out += _p_tag_u32(LIST_EXT, n)
    if n >= _RUN_MIN and _encode_run(out, obj, n):
        out.append(NIL_EXT)
        return
    child = depth + 1
    for item in obj:
        t = type(item)
        if t is int and 0 <= item < 256:
            out.append(SMALL_INTEGER_EXT)
            out.append(item)
        elif t is str:
            _encode_str(out, item)
        else:
            _encode(out, item, child)
    out.append(NIL_EXT)


def _encode_run(out: bytearray, obj: list, n: int) -> bool:
    """Appends the elements of ``obj`` in bulk when they are all exact ints of 32 bits or all
    finite exact floats; returns False (having written nothing) otherwise."""
    kinds = set(map(type, obj))
    if kinds == _FLOAT_KIND:
        try:
            if not math.isfinite(math.fsum(obj)):  # NaN and infinities become atoms
                return False
        except (OverflowError, ValueError):
            return False
        tag, code = NEW_FLOAT_EXT, "d"
    elif kinds == _INT_KIND:
        low, high = min(obj), max(obj)
        if 0 <= low and high < 256:
            block = bytearray(2 * n)
            block[0::2] = bytes((SMALL_INTEGER_EXT,)) * n
            block[1::2] = bytes(obj)
            out += block
            return True
        if low < -2147483648 or high > 2147483647:
            return False
        tag, code = INTEGER_EXT, "i"
    else:
        return False
    if n <= 256:
        # One struct call with the tags interleaved: fastest for short rows.
        args = [tag] * (2 * n)
        args[1::2] = obj
        out += struct.pack(">" + ("B" + code) * n, *args)
        return True
    # Long lists: pack the numbers, then weave the tag bytes in with strided slices.
    packed = struct.pack(f">{n}{code}", *obj)
    size = 8 if code == "d" else 4
    width = size + 1
    block = bytearray(width * n)
    block[0::width] = bytes((tag,)) * n
    for k in range(size):
        block[k + 1 :: width] = packed[k::size]
    out += block
    return True


_FLOAT_KIND = {float}
_INT_KIND = {int}


def _encode_tuple(out: bytearray, obj: tuple, depth: int) -> None:
    n = len(obj)
    if n < 256:
        out.append(SMALL_TUPLE_EXT)
        out.append(n)
    else:
        out += _p_tag_u32(LARGE_TUPLE_EXT, n)
    for item in obj:
        _encode(out, item, depth + 1)


def _encode_pairs(out: bytearray, pairs: Any, size: int, keys_distinct: bool, depth: int) -> None:
    """MAP_EXT of ``(key, value)`` pairs; keys that encode alike keep the last value."""
    child = depth + 1
    if keys_distinct:
        out += _p_tag_u32(MAP_EXT, size)
        for key, value in pairs:
            _encode(out, key, child)
            _encode(out, value, child)
        return
    encoded: Dict[bytes, Tuple[bytes, bytes]] = {}
    for key, value in pairs:
        kbuf = bytearray()
        _encode(kbuf, key, child)
        vbuf = bytearray()
        _encode(vbuf, value, child)
        k = bytes(kbuf)
        encoded.pop(k, None)
        encoded[k] = (k, bytes(vbuf))
    out += _p_tag_u32(MAP_EXT, len(encoded))
    for k, v in encoded.values():
        out += k
        out += v


def _encode_dict(out: bytearray, obj: dict, depth: int) -> None:
    distinct = all(type(k) in _DISTINCT_KEY_TYPES for k in obj)
    _encode_pairs(out, obj.items(), len(obj), distinct, depth)


def _encode_set(out: bytearray, obj: Any, depth: int) -> None:
    out += _MAPSET_HEAD
    distinct = all(type(k) in _DISTINCT_KEY_TYPES for k in obj)
    _encode_pairs(out, ((item, []) for item in obj), len(obj), distinct, depth + 1)


def _encode_other(out: bytearray, obj: Any, depth: int) -> None:
    if isinstance(obj, Atom):
        _encode_atom(out, obj)
    elif isinstance(obj, bool):
        out += _TRUE if obj else _FALSE
    elif isinstance(obj, int):
        _encode_int(out, int(obj))
    elif isinstance(obj, float):
        _encode_float(out, float(obj))
    elif isinstance(obj, str):
        _encode_str(out, obj)
    elif isinstance(obj, bytes):
        _encode_bytes(out, obj)
    elif isinstance(obj, list):
        _encode_list(out, obj, depth)
    elif isinstance(obj, tuple):
        _encode_tuple(out, obj, depth)
    elif isinstance(obj, dict):
        _encode_dict(out, obj, depth)
    elif isinstance(obj, (set, frozenset)):
        _encode_set(out, obj, depth)
    elif isinstance(obj, Pid):
        out += obj.raw
    elif isinstance(obj, bytearray):
        _encode_bytes(out, obj)
    elif isinstance(obj, memoryview):
        if not obj.c_contiguous:
            obj = memoryview(obj.tobytes())
        _encode_bytes(out, obj.cast("B") if obj.format != "B" or obj.ndim != 1 else obj)
    else:
        # Objects that describe themselves, then anything with tolist() (NumPy).
        for method in ("__snakepit__", "tolist"):
            fn = getattr(obj, method, None)
            if fn is not None and callable(fn):
                try:
                    converted = fn()
                except Exception as exc:  # noqa: BLE001 - reported as a conversion error
                    raise ConversionError(f"{type_name(exc)}: {exc}") from exc
                if converted is obj:
                    break
                _encode(out, converted, depth + 1)
                return
        raise ConversionError(
            f"cannot convert Python object of type {type_name(obj)} to an Erlang term "
            "(give it a __snakepit__() or tolist() method, or return plain data)"
        )


def _encode(out: bytearray, obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep()
    t = type(obj)
    if t is str:
        _encode_str(out, obj)
    elif t is int:
        _encode_int(out, obj)
    elif obj is None:
        out += _NIL
    elif t is bool:
        out += _TRUE if obj else _FALSE
    elif t is float:
        _encode_float(out, obj)
    elif t is list:
        _encode_list(out, obj, depth)
    elif t is dict:
        _encode_dict(out, obj, depth)
    elif t is tuple:
        _encode_tuple(out, obj, depth)
    elif t is bytes:
        _encode_bytes(out, obj)
    elif t is Atom:
        _encode_atom(out, obj)
    else:
        _encode_other(out, obj, depth)



def set_mapset_fields(fields: List[Tuple[str, int]]) -> None:
    """Lays out encoded sets as the running Elixir's ``%MapSet{}``.

    ``fields`` are the struct's fields besides ``__struct__`` and ``map``: ``[("version", 2)]``
    on Elixir 1.14, none on 1.15 and later. A process pool passes them in the environment
    variable ``SNAKEPIT_MAPSET_FIELDS`` (``"version=2"``), read at import; without it sets are
    encoded the way Elixir 1.15 and later lay them out.
    """
    global _MAPSET_HEAD
    head = bytearray(_p_tag_u32(MAP_EXT, 2 + len(fields)))
    _encode_atom(head, "__struct__")
    _encode_atom(head, "Elixir.MapSet")
    for name, value in fields:
        _encode_atom(head, name)
        _encode_int(head, int(value))
    _encode_atom(head, "map")
    _MAPSET_HEAD = bytes(head)


def _fields_from_env(text: str) -> List[Tuple[str, int]]:
    pairs = (item.partition("=") for item in text.split(",") if item)
    return [(name, int(value)) for name, _, value in pairs]


set_mapset_fields(_fields_from_env(os.environ.get("SNAKEPIT_MAPSET_FIELDS", "")))
