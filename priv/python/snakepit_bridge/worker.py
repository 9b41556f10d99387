"""A worker of the ``:process`` profile: one adapter instance in its own Python OS process,
served by ``threads`` threads (the pool's ``threads_per_worker``).

Elixir (``Snakepit.ProcessPool``) starts ``python -m snakepit_bridge.worker`` through an Erlang
port and talks to it over the process's stdin and stdout with length-prefixed frames
(``{:packet, 4}``: a 4-byte big-endian length, then the payload). Not a user API.

Every payload starts with one kind byte; a job's frames then carry its id (``id::32``, chosen
by Elixir, unique among the worker's jobs in flight); terms are in the Erlang external term
format (:mod:`snakepit_bridge.etf`).

Elixir → worker:

=====  ===========================================  ==============================================
kind   payload after the kind byte                  meaning
=====  ===========================================  ==============================================
3      ``term_to_binary(%{adapter:, pool_name:,      the first frame: create the adapter
       index:, log_level:, threads:,                (``_runtime.create_adapter``) and start
       options: %{...}})``                          ``threads`` threads; ``log_level`` is the
                                                    Python level of Elixir's Logger
0      ``<<id::32, len::32,                          call ``command``; ``args`` a map (keyword
       command::binary-size(len),                   arguments), a list (positional) or nil
       term_to_binary(args)::binary>>``
1      ``<<id::32>>``                               ``_runtime.tools(adapter)``
2      (nothing)                                    finish the jobs in flight, run ``cleanup()``
                                                    and exit
4      ``<<id::32, window::32>>`` then as a call     stream the items of the iterator the command
       frame after its id                           returns; ``window`` chunks may be in flight
5      ``<<id::32, n::32>>``                        demand: ``n`` more chunks of stream ``id``
6      ``<<id::32>>``                               cancel job ``id``: a running call gets
                                                    ``snakepit_bridge.Cancelled`` raised in its
                                                    thread; a stream's generator is closed
7      ``<<call_id::32>>`` + ``term_to_binary``       the reply of an ``elixir.call``
                                                    (``_worker_elixir.py``)
8      ``<<object_id::64>>``                        the last Elixir ref to object ``object_id``
                                                    is gone: drop it from ``_refs.TABLE``
9      ``<<call_id::32>>`` + a call/stream frame    a job of that ``elixir.call``'s chain, run by
                                                    the thread that waits for it
11     (nothing)                                    the pool moved no large data for a while:
                                                    give the result arena's free pages back
                                                    (``_shm.trim``)
=====  ===========================================  ==============================================

Worker → Elixir:

=====  ===========================================  ==============================================
kind   payload after the kind byte                  meaning
=====  ===========================================  ==============================================
2      ``{:ok, %{python:, os_pid:, adapter:}}``     the adapter is ready (answers the init frame)
0      ``<<id::32>>`` ``{:ok, value}``              the result of job ``id``
1      ``<<id::32>>`` ``{:error, %{category:,        job ``id`` failed (id 0: the start-up failed)
       message:, python_type:,
       python_traceback:, details:}}``
3      ``{pid, term}``                              ``snakepit_bridge.send(pid, term)``
4      ``{level, logger, message, thread}``         a Python ``logging`` record (``log_level`` and
                                                    up)
5      ``<<id::32>>`` ``value``                     one item of stream ``id``
6      ``<<id::32, closed::8>>`` (not a term)       stream ``id`` ended: 0 exhausted, 1 cancelled
7      ``{call_id, name, args, job_id | nil}``      ``elixir.call`` (``_worker_elixir.py``)
8      ``<<call_id::32>>``                          that call was abandoned (timeout, cancel)
10     ``<<id::32>>``                               call ``id`` (``async def``) awaits on the
                                                    worker's loop: its thread is free, its reply
                                                    comes later (``_async.detach``)
11     ``<<id::32, n::32, paths::n>>`` ``{:ok, v}`` as 0, the large binaries of ``v`` in shm
                                                    files (``paths`` NUL-separated; ``_shm.py``)
                                                    or the result arena (``@offset:size``)
12     ``<<id::32, n::32, kept::n*8,                 before job ``id``'s terminal frame: the
       released::binary>>`` (64-bit offsets)        argument-arena regions of its views Python
                                                    still holds, and those it let go of since
=====  ===========================================  ==============================================

Every job ends with exactly one reply, error or done frame, a cancelled one too (Elixir frees
the job's thread slot on it). A send frame is written before the reply of the call that sent
it, so the message reaches its pid first. Frames of different jobs interleave.

The worker exits when its stdin closes (the port was closed or the VM died), when its parent
dies (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread that notices the re-parenting or
the end of the BEAM whose OS pid is in ``SNAKEPIT_BEAM_PID``), or after a stop frame.
``print()`` in adapter code goes to stderr: stdout carries the frames.
"""

from __future__ import annotations

import collections.abc
import ctypes
import io
import logging
import os
import platform
import queue
import signal
import struct
import sys
import sysconfig
import threading
import traceback
from typing import Any, Callable, Dict, Optional

from . import (
    _async,
    _cancel,
    _dispatch,
    _refs,
    _reload,
    _runtime,
    _shm,
    _worker_elixir,
    elixir,
    etf,
)
from .errors import Cancelled
from .etf import Atom, ConversionError

__all__ = ["main"]

# Frame kinds, Elixir -> worker.
CALL, TOOLS, STOP, INIT, STREAM, DEMAND, CANCEL, DROP_REF = 0, 1, 2, 3, 4, 5, 6, 8
TRIM = 11
# Frame kinds, worker -> Elixir.
REPLY_OK, REPLY_ERROR, READY, SEND, LOG, CHUNK, DONE = 0, 1, 2, 3, 4, 5, 6
ARENA_KEPT = 12

_OK = Atom("ok")
_ERROR = Atom("error")
_K_CATEGORY = Atom("category")
_K_MESSAGE = Atom("message")
_K_TYPE = Atom("python_type")
_K_TRACEBACK = Atom("python_traceback")
_K_DETAILS = Atom("details")

_u32 = struct.Struct(">I")
_u32x2 = struct.Struct(">II")
_u64 = struct.Struct(">Q")

#: How long a cancellation waits to be raised at a safe instruction before it is raised
#: with PyThreadState_SetAsyncExc (as the :thread profile's interrupter does).
_FALLBACK_AFTER = 0.5

#: Stack of each serving thread: room for deep conversions (as the ``:thread`` profile's).
THREAD_STACK = 16 * 1024 * 1024

logger = logging.getLogger("snakepit_bridge.worker")

#: The worker of this process, once :func:`main` runs (tests and ``send`` reach it here).
current: Optional["Worker"] = None

# PyThreadState_SetAsyncExc(id, exc) raises `exc` in thread `id`; with NULL it drops one
# that is pending. Two prototypes of the one C function (ctypes caches argtypes per name).
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def error_map(
    category: str,
    message: str,
    python_type: Optional[str] = None,
    python_traceback: Optional[str] = None,
    details: Optional[Dict[Any, Any]] = None,
) -> Dict[Atom, Any]:
    """The map ``Snakepit.Error.from_native/1`` reads."""
    return {
        _K_CATEGORY: Atom(category),
        _K_MESSAGE: message,
        _K_TYPE: python_type,
        _K_TRACEBACK: python_traceback,
        _K_DETAILS: details or {},
    }


def python_error(exc: BaseException) -> Dict[Atom, Any]:
    """The error map of a Python exception (:func:`snakepit_bridge._dispatch.exception_info`)."""
    if isinstance(exc, _dispatch.UnknownCommand):
        return error_map("validation", str(exc), details={Atom("available"): exc.available})
    python_type, message, tb = _dispatch.exception_info(exc)
    return error_map("python_error", message, python_type, tb)


class Job:
    """One call, stream or tools request, from its frame to its one terminal frame."""

    __slots__ = ("id", "kind", "frame", "lock", "credit", "credits", "cancelled", "thread",
                 "interruptible", "pending", "async_exc", "command", "future", "views")

    def __init__(self, job_id: int, kind: int, frame: memoryview) -> None:
        self.id = job_id
        self.kind = kind
        self.frame = frame
        self.lock = threading.Lock()
        self.credit = threading.Condition(self.lock)
        self.credits = 0
        self.cancelled = False
        #: ``threading.get_ident()`` of the thread running it, while it runs adapter code.
        self.thread = 0
        self.interruptible = False
        #: A cancellation waits to be raised at a safe instruction (snakepit_bridge._cancel).
        self.pending = False
        #: PyThreadState_SetAsyncExc was called for it: clear what is left when the job ends.
        self.async_exc = False
        #: The command's name, once the frame has been read.
        self.command = ""
        #: An ``async def`` call awaited on the worker's loop (``_async.detach``): its future.
        self.future: Any = None
        #: ``(offset, exporter)`` of its argument-arena views (``_shm.arena_view``).
        self.views: list = []


class Worker:
    """Reads request frames from ``in_fd``, runs them on one adapter with ``threads`` threads,
    writes replies."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._reader = io.open(in_fd, "rb", buffering=1 << 16, closefd=True)
        self._out_fd = out_fd
        self._write_lock = threading.Lock()
        self._jobs: Dict[int, Job] = {}
        self._jobs_lock = threading.Lock()
        self._queue: "queue.SimpleQueue[Optional[Job]]" = queue.SimpleQueue()
        self._threads: list = []
        #: Thread ident -> the job whose adapter code it runs (for the safe-point callback).
        self._running: Dict[int, Job] = {}
        self._safe_point = _cancel.install(self._take_cancel)
        self.adapter: Any = None
        self.commands: Dict[str, Callable[..., Any]] = {}
        self.names: list = []
        self.class_name = ""
        self.log_handler = _ElixirLogHandler(self)
        # snakepit_bridge.elixir over this worker's port (_worker_elixir.py: frames 7 and 8).
        self.elixir = _worker_elixir.ElixirCalls(self)
        elixir.set_transport(self.elixir.call)

    # -- frames ----------------------------------------------------------------------------

    def read_frame(self) -> Optional[bytes]:
        """The next frame, or None at end of input."""
        header = self._reader.read(4)
        if len(header) < 4:
            return None
        (size,) = _u32.unpack(header)
        data = self._reader.read(size)
        if len(data) < size:
            return None
        return data

    def write_term(self, kind: int, term: Any, job_id: Optional[int] = None) -> None:
        """Encode ``term`` and write it as one frame of ``kind`` (for job ``job_id``).

        Raises:
            ConversionError: ``term`` cannot be encoded; nothing was written.
        """
        self._write(_frame(kind, term, job_id))

    def _write(self, data: bytearray) -> None:
        view = memoryview(data)
        with self._write_lock:
            while view:
                written = os.write(self._out_fd, view)
                view = view[written:]

    # A job's terminal frame (reply, error or done) is written once: writing it forgets the job.

    def reply_ok(self, job_id: int, value: Any, command: str = "") -> None:
        try:
            # Large binaries through shared memory (snakepit_bridge._shm, frame kind 11).
            frame = _shm.capture(lambda: _frame(REPLY_OK, (_OK, value), job_id))
        except ConversionError as exc:
            message = _dispatch.not_a_value(command, value) or str(exc)
            self.reply_error(job_id, error_map("conversion", message))
            return
        self._forget(job_id)
        self._write(frame)

    def reply_error(self, job_id: int, error: Dict[Atom, Any]) -> None:
        self._forget(job_id)
        self.write_term(REPLY_ERROR, (_ERROR, error), job_id)

    def done(self, job_id: int, closed: bool) -> None:
        self._forget(job_id)
        self._write(bytearray(_u32.pack(6) + bytes((DONE,)) + _u32.pack(job_id) + bytes((closed,))))

    def _forget(self, job_id: int) -> None:
        with self._jobs_lock:
            job = self._jobs.pop(job_id, None)
        # Before the job's terminal frame: its argument-arena views Python still holds, and
        # those let go of since (frame 12; snakepit_bridge._shm).
        kept = _shm.settle(job.views) if job is not None and job.views else []
        gone = _shm.released()
        if kept or gone:
            self._write(
                bytearray(
                    _u32.pack(9 + 8 * (len(kept) + len(gone)))
                    + bytes((ARENA_KEPT,))
                    + _u32x2.pack(job_id, len(kept))
                    + b"".join(_u64.pack(offset) for offset in kept + gone)
                )
            )
        _shm.tidy()

    def send(self, pid: Any, term: Any) -> None:
        """``snakepit_bridge.send`` inside a worker: a send frame Elixir delivers."""
        if not isinstance(pid, etf.Pid):
            raise TypeError(f"send expects a snakepit_bridge.Pid, got {type(pid).__name__}")
        self.write_term(SEND, (pid, term))

    # -- start -----------------------------------------------------------------------------

    def start(self, frame: bytes) -> bool:
        """Handles the init frame; returns whether the adapter is ready (and the threads run)."""
        try:
            if not frame or frame[0] != INIT:
                raise RuntimeError("the first frame of a worker must be its init frame")
            init = etf.decode(memoryview(frame)[1:])
            pool_name = init.get("pool_name", "")
            index = int(init.get("index", 0))
            threads = max(1, int(init.get("threads", 1)))
            _runtime.set_thread_name(f"snakepit-{pool_name}-w{index}")
            _refs.set_home(pool_name, index)
            level = int(init.get("log_level", logging.WARNING))
            self.log_handler.setLevel(level)
            root = logging.getLogger()
            if root.level > level:
                root.setLevel(level)
            options = dict(init.get("options") or {})
            for root in init.get("fresh_bytecode") or ():
                _reload.drop_bytecode(root)  # a reload's probe (Snakepit.Pool.Process.Reload)
            self.adapter = _runtime.create_adapter(init["adapter"], pool_name, index, options)
            self.commands = _runtime.command_table(self.adapter)
            self.names = sorted(n for n in self.commands if not n.startswith("__snakepit_"))
            self.class_name = type(self.adapter).__qualname__
            self._start_threads(threads, f"snakepit-{pool_name}-w{index}", pool_name)
        except BaseException as exc:  # noqa: BLE001 - reported to Elixir as the start-up error
            self.reply_error(0, python_error(exc))
            return False
        self.write_term(
            READY,
            (
                _OK,
                {
                    Atom("python"): python_info(),
                    Atom("os_pid"): os.getpid(),
                    Atom("adapter"): self.class_name,
                },
            ),
        )
        return True

    def _start_threads(self, n: int, prefix: str, pool_name: str) -> None:
        try:
            previous = threading.stack_size(THREAD_STACK)
        except (ValueError, RuntimeError):
            previous = None
        try:
            for t in range(n):
                name = f"{prefix}-t{t}"
                thread = threading.Thread(
                    target=self._serve_jobs, args=(name, pool_name), name=name, daemon=True
                )
                thread.start()
                self._threads.append(thread)
        finally:
            if previous is not None:
                threading.stack_size(previous)

    # -- the serving threads ---------------------------------------------------------------

    def _serve_jobs(self, name: str, pool_name: str) -> None:
        _runtime.set_thread_name(name, pool_name)
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run_guarded(job)

    def _run_guarded(self, job: Job) -> None:
        """Runs a job and makes sure it ends with its terminal frame (also a job nested in an
        ``elixir.call`` wait: ``_worker_elixir.py``)."""
        try:
            self._run(job)
        except Cancelled:
            # A cancellation that landed between the adapter's code and the job's reply.
            _clear_pending()
        except BaseException:  # noqa: BLE001 - the worker's own machinery failed
            # Nothing can be trusted any more (a frame may be half written): die, so that
            # Elixir fails the jobs in flight with :worker and starts a fresh process.
            traceback.print_exc()
            os._exit(70)
        with self._jobs_lock:
            unanswered = self._jobs.get(job.id) is job and job.future is None
        if unanswered:
            if job.kind == STREAM:
                self.done(job.id, True)
            else:
                self.reply_error(job.id, cancelled_error())

    def _run(self, job: Job) -> None:
        if job.kind == CALL:
            ok, result = self._interruptibly(job, lambda: self.invoke(job, job.frame, 5))
            if ok and _async.is_coroutine(result):
                _async.detach(self, job, result)  # awaited on the loop; the thread is free
            elif ok:
                self.reply_ok(job.id, result, job.command)
        elif job.kind == STREAM:
            self.stream(job)
        else:
            try:
                described = _runtime.tools(self.adapter)
            except BaseException as exc:  # noqa: BLE001
                self.reply_error(job.id, python_error(exc))
                return
            self.reply_ok(job.id, described)

    def _interruptibly(self, job: Job, body: Callable[[], Any]) -> Any:
        """Runs ``body`` (adapter code) so that :meth:`cancel` can interrupt it.

        Returns ``(True, result)``, or ``(False, None)`` after replying with the error. The
        interrupt can only land while ``job.interruptible`` is set, under ``job.lock``; it is
        cleared before the reply is written, so a cancellation never cuts a frame in half.
        """
        with job.lock:
            if job.cancelled:
                self.reply_error(job.id, cancelled_error())
                return False, None
            job.thread = threading.get_ident()
            job.interruptible = True
            self._running[job.thread] = job
        try:
            return body()
        except Cancelled as exc:
            self._leave(job)
            self.reply_error(job.id, python_error(exc))
            return False, None
        finally:
            self._leave(job)

    def _leave(self, job: Job) -> None:
        with job.lock:
            was = job.interruptible
            job.interruptible = False
            job.pending = False
            self._running.pop(job.thread, None)
        if was and job.cancelled:
            if self._safe_point:
                _cancel.disarm(job.thread)
            if job.async_exc:
                _clear_pending()

    # -- requests --------------------------------------------------------------------------

    def invoke(self, job: Job, frame: memoryview, offset: int) -> Any:
        """Looks up and runs the command of a call or stream frame.

        The frame holds, from ``offset``, ``<<len::32, command, term_to_binary(args)>>``.
        Returns ``(True, result)``, or ``(False, None)`` after replying with the error.
        """
        (size,) = _u32.unpack_from(frame, offset)
        start = offset + 4
        name = str(frame[start : start + size], "utf-8", "replace")
        job.command = name
        func = self.commands.get(name)
        if func is None:
            self.reply_error(
                job.id,
                error_map(
                    "validation",
                    _dispatch.unknown_command(name, self.class_name, self.names, self.adapter),
                    details={Atom("available"): self.names},
                ),
            )
            return False, None
        try:
            with _shm.collect(job.views):
                args = etf.decode(frame[start + size :])
        except ConversionError as exc:
            self.reply_error(job.id, error_map("conversion", str(exc)))
            return False, None
        if type(args) is dict and any(not isinstance(key, str) for key in args):
            key = next(key for key in args if not isinstance(key, str))
            self.reply_error(
                job.id,
                error_map("conversion", f"argument names must be atoms or strings, got {key!r}"),
            )
            return False, None
        if not (args is None or type(args) is dict or type(args) is list):
            self.reply_error(
                job.id,
                error_map(
                    "conversion",
                    "arguments must be a map (keyword arguments), a list (positional) or nil",
                ),
            )
            return False, None
        try:
            if type(args) is dict:
                result = func(**args)
            elif type(args) is list:
                result = func(*args)
            else:
                result = func()
        except Cancelled:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a value, not an exit
            error = python_error(exc)
        else:
            return True, result
        # Replied to once the arguments (and the traceback, which refers to them) are gone.
        del args, func
        self.reply_error(job.id, error)
        return False, None

    def stream(self, job: Job) -> None:
        """Runs a stream job: ``<<id::32, window::32>>`` then as :meth:`invoke`.

        Each item of the iterator the command returns is a chunk frame, sent while the
        consumer has credit (``window`` at the start, plus each demand frame); a done frame ends
        the stream (``0``: exhausted, ``1``: closed after a cancel frame), an error frame ends
        it with the exception.
        """
        with job.lock:
            job.credits += _u32.unpack_from(job.frame, 5)[0]
        ok, result = self._interruptibly(job, lambda: self.invoke(job, job.frame, 9))
        if not ok:
            return
        source = _async.stream_source(self.adapter, result)
        if not isinstance(source, collections.abc.Iterator):
            self.reply_error(
                job.id, error_map("conversion", _dispatch.not_an_iterator(job.command, result))
            )
            return
        iterator = source
        while True:
            with job.lock:
                while job.credits <= 0 and not job.cancelled:
                    job.credit.wait()
                if job.cancelled:
                    break
                job.credits -= 1
            try:
                ok, item = self._interruptibly(job, lambda: (True, next(iterator)))
            except StopIteration:
                self.done(job.id, False)
                return
            except BaseException as exc:  # noqa: BLE001 - ends the stream, as a value
                self.reply_error(job.id, python_error(exc))
                return
            if not ok:
                # Cancelled inside the generator: the error frame was the stream's last.
                _close(iterator)
                return
            try:
                self.write_term(CHUNK, item, job.id)
            except ConversionError as exc:
                _close(iterator)
                self.reply_error(job.id, error_map("conversion", str(exc)))
                return
        _close(iterator)
        self.done(job.id, True)

    def cancel(self, job_id: int) -> None:
        """Cancels job ``job_id``: a queued job answers at once when a thread takes it; a stream
        waiting for demand closes; adapter code running gets ``Cancelled`` raised into it."""
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is None:
            return
        with job.lock:
            job.cancelled = True
            job.credit.notify_all()
            if job.future is not None:
                job.future.cancel()  # an async call: its task is cancelled on the loop
                return
            if not (job.interruptible and job.thread) or job.pending:
                return
            job.pending = True
        # Raised at an instruction its try blocks cover (snakepit_bridge/_cancel.py explains
        # why: on CPython 3.13 an async exception can skip except/finally); directly when that
        # is not possible, or when the thread runs no armed code for a while (a C call).
        if self._safe_point and _cancel.arm(job.thread, lambda: job.pending):
            timer = threading.Timer(_FALLBACK_AFTER, self._raise_async, (job,))
            timer.daemon = True
            timer.start()
        else:
            self._raise_async(job)

    def _raise_async(self, job: Job) -> None:
        with job.lock:
            if job.pending and job.interruptible:
                job.pending = False
                job.async_exc = True
                _set_async_exc(job.thread, Cancelled)

    def _take_cancel(self) -> bool:
        """For the safe-point callback, in the job's thread: raise the cancellation now? (Once.)"""
        job = self._running.get(threading.get_ident())
        if job is None:
            return False
        # Only in the adapter's code, never in the worker's own frames around it (frame 0 is
        # this function, 1 the monitoring callback, 2 the instruction's frame).
        if sys._getframe(2).f_code.co_filename == __file__:
            return False
        with job.lock:
            if job.pending and job.interruptible:
                job.pending = False
                return True
        return False

    def demand(self, job_id: int, n: int) -> None:
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is not None:
            with job.lock:
                job.credits += n
                job.credit.notify_all()

    def cleanup(self) -> None:
        if self.adapter is None:
            return
        try:
            _runtime.cleanup(self.adapter)
        except BaseException:  # noqa: BLE001 - logged; the worker exits anyway
            logger.exception("cleanup() of adapter %s failed", self.class_name)

    def serve(self) -> None:
        """Reads frames until a stop frame or the end of input; then lets the jobs in flight
        finish (Elixir kills the process if they take too long) and runs ``cleanup()``."""
        while True:
            frame = self.read_frame()
            if frame is None:
                break
            kind = frame[0]
            if kind in (CALL, STREAM, TOOLS):
                view = memoryview(frame)
                job = Job(_u32.unpack_from(view, 1)[0], kind, view)
                with self._jobs_lock:
                    self._jobs[job.id] = job
                self._queue.put(job)
            elif kind == DEMAND:
                job_id, n = _u32x2.unpack_from(frame, 1)
                self.demand(job_id, n)
            elif kind == CANCEL:
                self.cancel(_u32.unpack_from(frame, 1)[0])
            elif kind == DROP_REF:
                _refs.TABLE.drop(_u64.unpack_from(frame, 1)[0])
            elif kind == _worker_elixir.ELIXIR_REPLY:
                self.elixir.reply(frame)
            elif kind == _worker_elixir.NESTED:
                # <<9, call_id::32>> then a call or stream frame: a job of that call's chain.
                view = memoryview(frame)[5:]
                job = Job(_u32.unpack_from(view, 1)[0], view[0], view)
                with self._jobs_lock:
                    self._jobs[job.id] = job
                if not self.elixir.nested(_u32.unpack_from(frame, 1)[0], job):
                    self._queue.put(job)
            elif kind == TRIM:
                _shm.trim()
            elif kind == STOP:
                break
            else:
                raise RuntimeError(f"unknown frame kind {kind}")
            frame = None
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self.cleanup()


def _frame(kind: int, term: Any, job_id: Optional[int]) -> bytearray:
    """One frame of ``kind`` (for job ``job_id``) holding ``term``, length prefix included.

    Raises:
        ConversionError: ``term`` cannot be encoded.
    """
    head = 5 if job_id is None else 9
    out = bytearray(head + 1)
    out[4] = kind
    if job_id is not None:
        _u32.pack_into(out, 5, job_id)
    out[head] = etf.VERSION
    etf.encode_into(out, term)
    _u32.pack_into(out, 0, len(out) - 4)
    return out


def cancelled_error() -> Dict[Atom, Any]:
    return error_map("python_error", "", "snakepit_bridge.errors.Cancelled")


def _clear_pending() -> None:
    """Drops an async exception set for this thread but not raised yet."""
    _clear_async_exc(threading.get_ident(), None)


def _close(iterator: Any) -> None:
    """Lets a generator run its ``finally`` blocks; errors there are logged."""
    close = getattr(iterator, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001
            logger.exception("closing a streamed iterator failed")


def python_info() -> Dict[Atom, Any]:
    """``%{version:, free_threaded:, gil_enabled:, executable:}`` of this interpreter."""
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    gil_enabled = bool(is_gil_enabled()) if callable(is_gil_enabled) else True
    return {
        Atom("version"): platform.python_version(),
        Atom("free_threaded"): free_threaded,
        Atom("gil_enabled"): gil_enabled,
        Atom("executable"): sys.executable,
    }


class _ElixirLogHandler(logging.Handler):
    """Sends log records to Elixir's Logger as log frames."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(logging.WARNING)  # until the init frame gives Elixir's level
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._worker.write_term(
                LOG, (record.levelno, record.name, message, record.threadName or "")
            )
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _exit_with_parent() -> None:
    """Dies with the process that spawned us (the BEAM's port helper) or with the BEAM.

    Three guards: ``PR_SET_PDEATHSIG`` (Linux: the kernel sends SIGKILL when the parent dies),
    and a watchdog thread that exits when this process is re-parented or when the BEAM whose
    OS pid is in ``SNAKEPIT_BEAM_PID`` is gone (also covering a parent that died before the
    worker got this far). The end of stdin ends the worker too, in :meth:`Worker.serve`.
    """
    parent = os.getppid()
    try:
        beam = int(os.environ.get("SNAKEPIT_BEAM_PID") or 0)
    except ValueError:
        beam = 0
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def orphaned() -> bool:
        if os.getppid() != parent:
            return True
        if beam > 0:
            try:
                os.kill(beam, 0)
            except ProcessLookupError:
                return True
            except OSError:
                pass
        return False

    if orphaned():
        os._exit(0)

    def watch() -> None:
        import time

        while True:
            time.sleep(1.0)
            if orphaned():
                os._exit(0)

    threading.Thread(target=watch, name="snakepit-watchdog", daemon=True).start()


def main() -> int:
    """Entry point of ``python -m snakepit_bridge.worker``."""
    global current

    # Frames use private copies of stdin and stdout; fd 0 becomes /dev/null (subprocesses
    # must not read our frames) and fd 1 becomes stderr (print() must not corrupt them).
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # The BEAM owns this process: Ctrl-C in the terminal is for the BEAM, not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), etf.MAX_DEPTH * 2 + 1_000))

    worker = Worker(in_fd, out_fd)
    current = worker

    import snakepit_bridge

    # Adapters that do `from snakepit_bridge import send` get the worker's send.
    snakepit_bridge.send = worker.send  # type: ignore[assignment]
    logging.getLogger().addHandler(worker.log_handler)

    try:
        frame = worker.read_frame()
        if frame is None:
            return 0
        if not worker.start(frame):
            return 1
        worker.serve()
    except BrokenPipeError:
        # Elixir closed the port (this worker was cancelled, or its pool stopped): nobody is
        # listening any more, so leave without a traceback.
        os._exit(0)
    return 0


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that
    # `snakepit_bridge.worker.current` is the running worker.
    from snakepit_bridge.worker import main as _main

    sys.exit(_main())
