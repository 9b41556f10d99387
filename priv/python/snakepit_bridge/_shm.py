"""Large binaries of the ``:process`` profile through shared-memory files, not the port
(docs/architecture.md, "Large data"; Elixir side: lib/snakepit/pool/process/shm.ex).

Arguments: a large binary crosses as ``{:"$snakepit_shm", path, size}``; :func:`open_view`
maps the file read-only and unlinks it at once, so a ``{:buffer, _}`` or NDArray data is a
read-only ``memoryview`` over the mapping (no copy).

Results: while :func:`capture` builds a reply frame, :func:`export` writes each large
``bytes``/buffer into a fresh file (one copy) and the term holds ``{:"$snakepit_shm", i}``;
the frame becomes kind :data:`REPLY_SHM` with the file list, and the pool process maps the
files (and unlinks them). If building the frame fails, the files are removed here.

Configured from ``SNAKEPIT_SHM`` (``dir|prefix|min_bytes``, set by the pool); without it
everything goes through the port.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
from typing import Any, Callable, List, Optional

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
    """Writes ``data`` (bytes-like, 1-D bytes) into a fresh file for the reply being built on
    this thread; its index in the reply's file list, or None (no reply being built here, or
    the file could not be written: the bytes then go through the port)."""
    paths: Optional[List[str]] = getattr(_local, "paths", None)
    if paths is None:
        return None
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
        try:
            os.unlink(path)
        except OSError:
            pass


configure(os.environ.get("SNAKEPIT_SHM"))
