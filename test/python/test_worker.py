"""The :process profile's worker (snakepit_bridge.worker), driven over its pipes as the BEAM
would drive it: 4-byte length-prefixed frames, a kind byte, the Erlang external term format."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest

from snakepit_bridge import Pid
from snakepit_bridge.etf import decode, encode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PYTHONPATH = os.pathsep.join(
    [os.path.join(ROOT, "priv", "python"), os.path.join(ROOT, "test", "support", "python")]
)
ADAPTER = "snakepit_process_adapters.ProcessAdapter"

CALL, TOOLS, STOP, INIT = 0, 1, 2, 3
OK, ERROR, READY, SEND, LOG = 0, 1, 2, 3, 4
# Every job frame carries an id after its kind byte; these tests run one job at a time.
JOB = struct.pack(">I", 1)
# A pid as :erlang.term_to_binary(self()) wrote it (OTP 25), without the version byte.
PID_RAW = bytes.fromhex("5864000d6e6f6e6f6465406e6f686f7374000000600000000000000000")


class WorkerProcess:
    def __init__(self, adapter=ADAPTER, env=None, threads=1):
        full_env = dict(os.environ, PYTHONPATH=PYTHONPATH, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakepit_bridge.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        init = {"adapter": adapter, "pool_name": "pytest", "index": 0, "threads": threads,
                "options": {"threaded": threads > 1, "max_workers": threads}}
        self.write(bytes([INIT]) + encode(init))

    def write(self, payload: bytes) -> None:
        self.proc.stdin.write(struct.pack(">I", len(payload)) + payload)
        self.proc.stdin.flush()

    def read(self):
        header = self.proc.stdout.read(4)
        if len(header) < 4:
            return None
        (size,) = struct.unpack(">I", header)
        payload = self.proc.stdout.read(size)
        if payload[0] in (OK, ERROR, 5):  # reply, error and chunk frames carry the job id
            return payload[0], decode(payload[5:])
        return payload[0], decode(payload[1:])

    def ready(self):
        kind, term = self.read()
        assert kind == READY, term
        return term

    def call(self, command: str, args=None):
        name = command.encode()
        self.write(bytes([CALL]) + JOB + struct.pack(">I", len(name)) + name + encode(args))
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def worker():
    w = WorkerProcess()
    w.ready()
    yield w
    w.close()


def test_ready_frame_describes_the_worker(worker):
    pass  # the fixture already read READY


def test_ready_frame_contents():
    w = WorkerProcess()
    try:
        status, info = w.ready()
        assert status == "ok"
        assert info["os_pid"] == w.proc.pid
        assert info["adapter"] == "ProcessAdapter"
        assert info["python"]["version"].count(".") == 2
        assert isinstance(info["python"]["free_threaded"], bool)
    finally:
        w.close()


def test_call_with_kwargs_positional_and_none(worker):
    assert worker.call("echo", {"value": [1, "a", {"b": (2, None)}]}) == (
        OK, ("ok", [1, "a", {"b": (2, None)}]))
    assert worker.call("positional", [1, 2, 3]) == (OK, ("ok", [1, 2, 3]))
    assert worker.call("ping", None) == (OK, ("ok", "pong"))
    assert worker.call("ping", {}) == (OK, ("ok", "pong"))


def test_unknown_command_lists_the_commands(worker):
    kind, (tag, error) = worker.call("nope", {})
    assert (kind, tag) == (ERROR, "error")
    assert error["category"] == "validation"
    assert 'unknown command "nope"' in error["message"]
    assert "echo" in error["details"]["available"]


def test_python_exception_with_traceback_from_adapter_code(worker):
    kind, (_, error) = worker.call("fail", {"message": "bad"})
    assert kind == ERROR
    assert error["category"] == "python_error"
    assert error["python_type"] == "ValueError"
    assert error["message"] == "bad"
    tb = error["python_traceback"]
    assert tb.startswith("Traceback (most recent call last)")
    assert "in inner" in tb and "worker.py" not in tb


def test_system_exit_is_a_value(worker):
    kind, (_, error) = worker.call("exit", {"code": 3})
    assert (kind, error["python_type"], error["message"]) == (ERROR, "SystemExit", "3")
    assert worker.call("ping", None)[0] == OK


def test_conversion_errors(worker):
    kind, (_, error) = worker.call("unconvertible", {})
    assert (kind, error["category"]) == (ERROR, "conversion")
    assert "of type object" in error["message"]
    kind, (_, error) = worker.call("echo", "not args")
    assert error["category"] == "conversion"
    kind, (_, error) = worker.call("echo", {1: 2})
    assert error["category"] == "conversion"
    assert worker.call("echo", {"value": 1}) == (OK, ("ok", 1))


def test_tools(worker):
    worker.write(bytes([TOOLS]) + JOB)
    kind, (_, tools) = worker.read()
    assert kind == OK
    assert "whoami" in [t["name"] for t in tools]


def test_send_frame_comes_before_the_reply(worker):
    pid = Pid(PID_RAW)
    name = b"send_to"
    worker.write(bytes([CALL]) + JOB + struct.pack(">I", len(name)) + name
                 + encode({"pid": pid, "message": {"hi": [1]}}))
    assert worker.read() == (SEND, (pid, {"hi": [1]}))
    assert worker.read() == (OK, ("ok", pid))


def test_print_does_not_corrupt_the_frames(worker):
    assert worker.call("noisy", {"lines": 50}) == (OK, ("ok", 50))
    assert worker.call("ping", None) == (OK, ("ok", "pong"))


def test_logging_reaches_elixir_as_log_frames(worker):
    name = b"warn"
    worker.write(bytes([CALL]) + JOB + struct.pack(">I", len(name)) + name + encode({"message": "hm"}))
    kind, (level, logger, message, thread) = worker.read()
    assert (kind, level, logger, message) == (LOG, 30, "snakepit_process_adapters", "hm")
    assert worker.read() == (OK, ("ok", "hm"))


def test_stop_frame_runs_cleanup_and_exits(tmp_path):
    w = WorkerProcess(env={"SNAKEPIT_CLEANUP_DIR": str(tmp_path)})
    try:
        w.ready()
        w.write(bytes([STOP]))
        assert w.proc.wait(10) == 0
        assert (tmp_path / f"cleanup-{w.proc.pid}").exists()
    finally:
        w.close()


def test_end_of_input_exits():
    w = WorkerProcess()
    try:
        w.ready()
        w.proc.stdin.close()
        assert w.proc.wait(10) == 0
    finally:
        w.close()


def test_start_up_error_frame():
    w = WorkerProcess(adapter="snakepit_test_adapters.BrokenInit")
    try:
        kind, (_, error) = w.read()
        assert kind == ERROR
        assert error["python_type"] == "RuntimeError"
        assert "cannot load the model" in error["message"]
        assert "__init__" in error["python_traceback"]
        assert w.proc.wait(10) == 1
    finally:
        w.close()


def test_import_error_frame():
    w = WorkerProcess(adapter="no_such_module.Adapter")
    try:
        kind, (_, error) = w.read()
        assert (kind, error["python_type"]) == (ERROR, "ImportError")
        assert "no_such_module" in error["message"]
    finally:
        w.close()


def test_an_exception_escaping_the_loop_ends_the_process(worker):
    name = b"break_loop"
    worker.write(bytes([CALL]) + JOB + struct.pack(">I", len(name)) + name + encode(None))
    assert worker.read() is None  # no reply: the process died
    assert worker.proc.wait(10) == 70
    assert b"the worker loop broke" in worker.proc.stderr.read()


def test_worker_dies_with_its_parent():
    # An intermediate parent starts the worker, waits until it runs, and exits. The worker's
    # stdin is a pipe whose write end this test keeps open, so only the parent's death can end
    # the worker (PR_SET_PDEATHSIG, or the watchdog thread that notices the re-parenting).
    read_end, write_end = os.pipe()
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-m', 'snakepit_bridge.worker'], "
        f"stdin={read_end}, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid, flush=True); "
        "time.sleep(1.0)"
    )
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, timeout=30, pass_fds=[read_end])
        child = int(out.stdout.strip())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not _alive(child):
                return
            time.sleep(0.1)
        os.kill(child, 9)
        pytest.fail(f"worker {child} outlived its parent")
    finally:
        os.close(read_end)
        os.close(write_end)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by a non-reaping init) still answers kill 0.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_exits_when_the_beam_is_gone():
    # SNAKEPIT_BEAM_PID names a process that no longer exists: the worker leaves at once.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    w = WorkerProcess(env={"SNAKEPIT_BEAM_PID": str(gone.pid)})
    try:
        assert w.proc.wait(10) == 0
    finally:
        w.close()


STREAM, DEMAND, CANCEL = 4, 5, 6
CHUNK, DONE = 5, 6


def _stream(worker, command, args, window):
    name = command.encode()
    worker.write(bytes([STREAM]) + JOB + struct.pack(">II", window, len(name)) + name + encode(args))


def _read_raw(worker):
    header = worker.proc.stdout.read(4)
    (size,) = struct.unpack(">I", header)
    return worker.proc.stdout.read(size)


def test_stream_sends_window_chunks_then_waits_for_demand(worker):
    _stream(worker, "count_up", {"limit": 6}, 2)
    assert worker.read() == (CHUNK, {"i": 0})
    assert worker.read() == (CHUNK, {"i": 1})
    # No credit left: the generator is not advanced until demand comes.
    worker.write(bytes([DEMAND]) + JOB + struct.pack(">I", 10))
    for i in range(2, 6):
        assert worker.read() == (CHUNK, {"i": i})
    assert _read_raw(worker) == bytes([DONE]) + JOB + bytes([0])
    assert worker.call("stream_state", None) == (OK, ("ok", {"produced": 6, "closed": True}))


def test_stream_cancel_closes_the_generator(worker):
    _stream(worker, "count_up", {"limit": 1000}, 3)
    for i in range(3):
        assert worker.read() == (CHUNK, {"i": i})
    worker.write(bytes([CANCEL]) + JOB)
    assert _read_raw(worker) == bytes([DONE]) + JOB + bytes([1])
    assert worker.call("stream_state", None) == (OK, ("ok", {"produced": 3, "closed": True}))
    # A late demand for the finished stream is ignored.
    worker.write(bytes([DEMAND]) + JOB + struct.pack(">I", 1))
    assert worker.call("ping", None) == (OK, ("ok", "pong"))


def test_stream_error_after_items(worker):
    _stream(worker, "count_up", {"limit": 10, "fail_at": 2}, 8)
    assert worker.read() == (CHUNK, {"i": 0})
    assert worker.read() == (CHUNK, {"i": 1})
    kind, (_, error) = worker.read()
    assert (kind, error["python_type"], error["message"]) == (ERROR, "ValueError", "failed at 2")
    assert "worker.py" not in error["python_traceback"]


def test_stream_of_a_non_iterable_is_a_conversion_error(worker):
    _stream(worker, "echo", {"value": 5}, 4)
    kind, (_, error) = worker.read()
    assert (kind, error["category"]) == (ERROR, "conversion")
    assert "iterator" in error["message"]


def _threaded_worker(threads):
    w = WorkerProcess(threads=threads)
    w.ready()
    return w


def _raw_frame(w):
    header = w.proc.stdout.read(4)
    (size,) = struct.unpack(">I", header)
    payload = w.proc.stdout.read(size)
    return payload[0], struct.unpack(">I", payload[1:5])[0], payload[5:]


def _call_frame(job_id, command, args):
    name = command.encode()
    return bytes([CALL]) + struct.pack(">II", job_id, len(name)) + name + encode(args)


def test_threads_run_jobs_at_once_and_replies_carry_their_ids():
    w = _threaded_worker(3)
    try:
        # Three calls that only return when all three wait at the barrier together.
        for job_id in (7, 8, 9):
            w.write(_call_frame(job_id, "rendezvous", {"parties": 3}))
        replies = {}
        for _ in range(3):
            kind, job_id, body = _raw_frame(w)
            assert kind == OK
            replies[job_id] = decode(body)[1]
        assert sorted(replies) == [7, 8, 9]
        assert len({r["thread"] for r in replies.values()}) == 3
    finally:
        w.close()


def test_cancel_interrupts_one_job_and_leaves_the_others():
    w = _threaded_worker(2)
    try:
        w.write(_call_frame(1, "busy", {"seconds": 60}))
        w.write(_call_frame(2, "sleep", {"seconds": 0.2}))
        # The sleep finishes while the busy loop spins.
        kind, job_id, body = _raw_frame(w)
        assert (kind, job_id) == (OK, 2)
        w.write(bytes([6]) + struct.pack(">I", 1))
        kind, job_id, body = _raw_frame(w)
        _, error = decode(body)
        assert (kind, job_id) == (ERROR, 1)
        assert error["python_type"] == "snakepit_bridge.errors.Cancelled"
        # The thread serves on, and a cancel for a job that has ended is ignored.
        w.write(bytes([6]) + struct.pack(">I", 1))
        w.write(_call_frame(3, "last_interrupt_name", None))
        kind, job_id, body = _raw_frame(w)
        assert (kind, job_id, decode(body)) == (OK, 3, ("ok", "Cancelled"))
    finally:
        w.close()
