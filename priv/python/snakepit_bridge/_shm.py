"""Large binaries of the ``:process`` profile through shared-memory files, not the port
(docs/architecture.md, "Large data"; Elixir side: lib/snakepit/pool/process/shm.ex).

Arguments: a large binary crosses as ``{:"$snakepit_shm", path, size}``; :func:`open_view`
maps the file read-only and unlinks it at once, so a ``{:buffer, _}`` or NDArray data is a
read-only ``memoryview`` over the mapping (no copy).

Results: while :func:`capture` builds a reply frame, :func:`export` writes each large
``bytes``/buffer into a fresh file (one copy) and the term holds ``{:"$snakepit_shm", i}``;
the frame becomes kind :data:`REPLY_SHM` with the file list, and the pool process maps the
files (and unlinks them). If building the frame fails, the files are removed here.

Arenas (native/snakepit/src/arena.rs): when the pool gives ``SNAKEPIT_ARENA``
(``args_path|results_path|retain``), the same binaries go through two memfds mapped for good
instead of fresh files, so that their pages are allocated and mapped once, not per call:

- the pool's argument arena: a large argument crosses as ``{:"$snakepit_arena", offset,
  size}`` and :func:`arena_view` gives a read-only view of it in place. When a job ends,
  :func:`settle` says which of its views Python still holds; the pool keeps those regions
  until :func:`released` reports them let go of.
- this worker's result arena: :func:`export` copies a large result into a region of it, and
  the reply lists ``@offset:size``; the BEAM's binary over the region clears the region's
  byte of the page table at the arena's start when it is freed, and the region is reused.

Configured from ``SNAKEPIT_SHM`` (``dir|prefix|min_bytes``, set by the pool); without it
everything goes through the port.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import struct
import sys
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

#: Frame kind of a reply whose large binaries are in files: ``<<11, id::32, n::32,
#: paths (NUL-separated)::n, term>>``.
REPLY_SHM = 11

#: Binaries from this size up go through files (no limit: off).
MIN = 1 << 62
_DIR = ""
_PREFIX = ""
_local = threading.local()
_counter = itertools.count()
_counter_lock = threading.Lock()
_u32 = struct.Struct(">I")


def configure(spec: Optional[str]) -> None:
    """Reads ``dir|prefix|min_bytes`` (``SNAKEPIT_SHM``); an empty or bad value turns it off."""
    global MIN, _DIR, _PREFIX
    MIN, _DIR, _PREFIX = 1 << 62, "", ""
    if not spec:
        return
    try:
        directory, prefix, minimum = spec.split("|")
        size = int(minimum)
    except ValueError:
        return
    if size > 0 and os.path.isdir(directory) and prefix:
        MIN, _DIR, _PREFIX = size, directory, prefix


def open_view(path: str, size: int) -> memoryview:
    """A read-only memoryview over the file at ``path`` (``size`` bytes), unlinked here.

    Raises:
        ValueError: the path is not one of this pool's files, or it cannot be mapped.
    """
    if not _DIR or os.path.dirname(path) != _DIR or not os.path.basename(path).startswith(_PREFIX):
        raise ValueError(f"not a shared-memory file of this pool: {path!r}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"cannot open the shared-memory file {path!r}: {exc}") from None
    try:
        os.unlink(path)
        if size == 0:
            return memoryview(b"")
        if os.fstat(fd).st_size != size:
            raise ValueError(f"the shared-memory file {path!r} does not hold {size} bytes")
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ValueError(f"cannot map the shared-memory file {path!r}: {exc}") from None
    finally:
        os.close(fd)
    return memoryview(mapping)


def export(data: Any) -> Optional[int]:
    """Writes ``data`` (bytes-like, 1-D bytes) into the result arena, or else a fresh file, for
    the reply being built on this thread; its index in the reply's list, or None (no reply
    being built here, or nowhere to write it: the bytes then go through the port)."""
    paths: Optional[List[str]] = getattr(_local, "paths", None)
    if paths is None:
        return None
    within = _argument_region(data)
    if within is not None:
        # A view of an argument (an NDArray returned as it came): the BEAM makes its binary
        # over the argument's region, no copy.
        paths.append(within)
        return len(paths) - 1
    if _RESULTS is not None:
        region = _RESULTS.put(data)
        if region is not None:
            paths.append(region)
            return len(paths) - 1
    with _counter_lock:  # next() of a count is not atomic on a free-threaded build
        n = next(_counter)
    path = f"{_DIR}/{_PREFIX}w{os.getpid()}-{n}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.close(fd)
        _remove([path])
        return None
    os.close(fd)
    paths.append(path)
    return len(paths) - 1


def capture(build: Callable[[], bytearray]) -> bytearray:
    """Builds a reply frame (``build()``: ``<<len::32, kind, id::32, term>>``) with large
    binaries exported; the frame as :data:`REPLY_SHM` when any was."""
    if not _DIR:
        return build()
    outer = getattr(_local, "paths", None)
    paths: List[str] = []
    _local.paths = paths
    try:
        frame = build()
    except BaseException:
        _remove(paths)
        raise
    finally:
        _local.paths = outer
    if not paths:
        return frame
    header = "\0".join(paths).encode()
    out = bytearray(13)
    out[4] = REPLY_SHM
    out[5:9] = frame[5:9]
    _u32.pack_into(out, 9, len(header))
    out += header
    out += memoryview(frame)[9:]
    _u32.pack_into(out, 0, len(out) - 4)
    return out


def _remove(paths: List[str]) -> None:
    for path in paths:
        if path.startswith("@"):
            if _RESULTS is not None:
                _RESULTS.free(int(path[1:].split(":")[0]))
            continue
        try:
            os.unlink(path)
        except OSError:
            pass


# -- arenas ----------------------------------------------------------------------------------

PAGE = 4096
_ARGS: Optional[mmap.mmap] = None
_RESULTS: Optional["_ResultArena"] = None
#: Argument-arena offsets whose views Python let go of after their job ended (finalizers).
_released: List[int] = []
_released_lock = threading.Lock()


def _open(path: str) -> Optional[mmap.mmap]:
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def configure_arena(spec: Optional[str]) -> None:
    """Reads ``args_path|results_path|retain`` (``SNAKEPIT_ARENA``); a path that is empty or
    cannot be opened leaves that arena off (files are used instead)."""
    global _ARGS, _RESULTS, _ARGS_BASE, _PATHS
    _ARGS, _RESULTS, _ARGS_BASE, _PATHS = None, None, None, []
    if not spec:
        return
    try:
        args_path, results_path, retain = spec.split("|")
        retain_bytes = int(retain)
    except ValueError:
        return
    if args_path:
        _ARGS = _open(args_path)
        if _ARGS is not None:
            _ARGS_BASE = ctypes.c_char.from_buffer(_ARGS)
            _PATHS.append(args_path)
    if results_path:
        mapping = _open(results_path)
        if mapping is not None:
            _RESULTS = _ResultArena(mapping, retain_bytes)
            _PATHS.append(results_path)


def trim() -> None:
    """The pool has moved no large data for a while: the result arena's free pages go back to
    the kernel (the argument arena is the pool's to trim)."""
    if _RESULTS is not None:
        _RESULTS.trim()


def tidy() -> None:
    """A job ended: reclaim the result regions the BEAM freed, and give the pages above the
    retained size back."""
    if _RESULTS is not None:
        _RESULTS.tidy()


def resident() -> int:
    """Bytes of memory the arenas this worker maps hold (allocated pages, in use or kept for
    the next large call)."""
    total = 0
    for path in _PATHS:
        try:
            total += os.stat(path).st_blocks * 512
        except OSError:
            pass
    return total


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (the stable buffer ABI)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
#: The argument arena's address (a ctypes object over it, kept while the mapping lives).
_ARGS_BASE: Any = None
#: Where the arenas were opened (for :func:`resident`).
_PATHS: List[str] = []


def _argument_region(data: Any) -> Optional[str]:
    """``"&position:size"`` when ``data`` is a read-only contiguous buffer inside the argument
    arena, else None."""
    if _ARGS_BASE is None:
        return None
    view = _PyBuffer()
    try:
        if _get_buffer(data, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE: contiguous bytes
            return None
    except (BufferError, TypeError, ValueError):
        return None
    try:
        start = (view.buf or 0) - ctypes.addressof(_ARGS_BASE)
        if not view.readonly or start < 0 or start + view.len > len(_ARGS):
            return None
        return f"&{start}:{view.len}"
    finally:
        _release_buffer(ctypes.byref(view))


def _array_type(size: int) -> Any:
    """A ctypes char array type of at least ``size`` bytes: sizes are rounded up to a 16th of
    their power of two, so that few types are made (ctypes keeps each for good)."""
    step = max(PAGE, 1 << max(size.bit_length() - 5, 0))
    return ctypes.c_char * (-(-size // step) * step)


def arena_view(offset: int, size: int) -> memoryview:
    """A read-only memoryview of ``size`` bytes at ``offset`` of the argument arena (no copy),
    recorded for the job being decoded on this thread (:func:`collect`).

    The view's exporter is a ctypes array of its own, so :func:`settle` can tell from its
    reference count whether Python still holds the view (or a slice, or a NumPy array over
    it) when the job ends.

    Raises:
        ValueError: no argument arena, or the region lies outside it.
    """
    if _ARGS is None:
        raise ValueError("this worker has no argument arena (SNAKEPIT_ARENA)")
    if offset < 0 or size < 0 or offset % PAGE or offset + size > len(_ARGS):
        raise ValueError(f"region {offset}+{size} lies outside the argument arena")
    if size == 0:
        return memoryview(b"")
    kind = _array_type(size)
    if offset + ctypes.sizeof(kind) > len(_ARGS):
        kind = ctypes.c_char * size
    array = kind.from_buffer(_ARGS, offset)
    views = getattr(_local, "views", None)
    if views is not None:
        views.append((offset, array))
    return memoryview(array).cast("B")[:size].toreadonly()


class collect:
    """``with collect(views):`` records the argument-arena views decoded on this thread in the
    list ``views`` (a job's), for :func:`settle`."""

    def __init__(self, views: List[Tuple[int, Any]]) -> None:
        self.views = views

    def __enter__(self) -> None:
        self.outer = getattr(_local, "views", None)
        _local.views = self.views

    def __exit__(self, *exc: Any) -> None:
        _local.views = self.outer


def _let_go(offset: int) -> None:
    with _released_lock:
        _released.append(offset)


def _pop_counted(views: List[Tuple[int, Any]]) -> Tuple[int, Any, int]:
    """The last ``(offset, exporter)`` of ``views``, and the exporter's reference count."""
    offset, array = views.pop()
    return offset, array, sys.getrefcount(array)


#: What :func:`_pop_counted` counts for an exporter nothing else refers to, measured here
#: rather than assumed: interpreters differ in the references their own frames hold.
_UNHELD = _pop_counted([(0, (ctypes.c_char * 1)())])[2]


def settle(views: List[Tuple[int, Any]]) -> List[int]:
    """The offsets of a finished job's argument-arena views that Python still holds (each
    reported to :func:`released` once it lets go). Empties ``views``."""
    kept = []
    while views:
        offset, array, count = _pop_counted(views)
        if count > _UNHELD:
            weakref.finalize(array, _let_go, offset)
            kept.append(offset)
        del array
    return kept


def released() -> List[int]:
    """The kept argument-arena offsets let go of since the last call (then forgotten)."""
    global _released
    if not _released:
        return []
    with _released_lock:
        out, _released = _released, []
    return out


class _ResultArena:
    """The worker's result arena: first-fit regions after the page table (one byte per page:
    1 while the BEAM holds the region that starts there)."""

    def __init__(self, mapping: mmap.mmap, retain: int) -> None:
        self.map = mapping
        self.table = -(-(len(mapping) // PAGE) // PAGE) * PAGE
        self.retain = max(retain, self.table)
        self.regions: Dict[int, int] = {}
        self.high = self.table
        self.lock = threading.Lock()

    def put(self, data: Any) -> Optional[str]:
        """Copies ``data`` into a free region; ``"@offset:size"``, or None when it is full."""
        try:
            view = memoryview(data)
            if view.ndim != 1 or view.format not in ("B", "b", "c"):
                view = view.cast("B")  # contiguous buffers only: others raise
        except (TypeError, ValueError):
            return None
        size = view.nbytes
        with self.lock:
            self._reclaim()
            offset = self._take(max(size, 1))
            if offset is None:
                return None
            self.map[offset // PAGE] = 1
        self.map[offset : offset + size] = view
        return f"@{offset}:{size}"

    def free(self, offset: int) -> None:
        """Gives back a region whose reply was never sent."""
        with self.lock:
            if self.regions.pop(offset, None) is not None:
                self.map[offset // PAGE] = 0

    def tidy(self) -> None:
        """Reclaims what the BEAM freed; space above ``retain`` goes back to the kernel."""
        if self.high > self.retain:
            with self.lock:
                self._reclaim()

    def trim(self) -> None:
        """Gives every free page back to the kernel (the pool has been idle)."""
        with self.lock:
            retain, self.retain = self.retain, self.table
            try:
                self._reclaim(force=True)
            finally:
                self.retain = retain

    def _take(self, size: int) -> Optional[int]:
        size = -(-size // PAGE) * PAGE
        at = self.table
        for offset in sorted(self.regions):
            if offset >= at + size:
                break
            at = max(at, offset + self.regions[offset])
        if at + size > len(self.map):
            return None
        self.regions[at] = size
        self.high = max(self.high, at + size)
        return at

    def _reclaim(self, force: bool = False) -> None:
        table = self.map
        for offset in [o for o in self.regions if table[o // PAGE] == 0]:
            del self.regions[offset]
        if self.high <= self.retain and not force:
            return
        at = self.retain
        for offset in sorted(self.regions):
            end = offset + self.regions[offset]
            if offset > at:
                self._punch(at, offset)
            at = max(at, end)
        if self.high > at:
            self._punch(at, self.high)
        self.high = at

    def _punch(self, start: int, end: int) -> None:
        try:
            self.map.madvise(mmap.MADV_REMOVE, start, end - start)
        except (AttributeError, OSError, ValueError):
            pass


configure(os.environ.get("SNAKEPIT_SHM"))
configure_arena(os.environ.get("SNAKEPIT_ARENA"))
