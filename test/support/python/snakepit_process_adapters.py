"""Adapters for the :process profile tests: ways for a worker process to die, and probes."""

import ctypes
import logging
import os
import signal
import threading
import sys

from snakepit_bridge import tool
from snakepit_test_adapters import TestAdapter


_BARRIERS = {}
_BARRIERS_LOCK = threading.Lock()


class ProcessAdapter(TestAdapter):
    """TestAdapter plus crashes, process identity and cleanup markers."""

    @tool(description="The worker's OS pid and this adapter instance's id.")
    def whoami(self):
        return {"os_pid": os.getpid(), "instance": id(self)}

    @tool(description="Wait until `parties` calls wait here at once; then the OS pid and thread.")
    def rendezvous(self, parties: int, timeout: float = 30.0):
        with _BARRIERS_LOCK:
            barrier = _BARRIERS.setdefault(parties, threading.Barrier(parties))
        barrier.wait(timeout)
        return {"os_pid": os.getpid(), "thread": threading.current_thread().name}

    @tool(description="Leave the process at once with the exit code (no cleanup, no reply).")
    def os_exit(self, code: int = 7):
        os._exit(code)

    @tool(description="Dereference NULL in C: a real segmentation fault.")
    def segfault(self):
        return ctypes.string_at(0)

    @tool(description="Send SIGSEGV to this process.")
    def sigsegv(self):
        # To this thread, as a real fault would be (a process-directed signal may be taken
        # by another thread while this one goes on to reply).
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)

    @tool(description="Send SIGKILL to this process, as the kernel's OOM killer does.")
    def sigkill(self):
        os.kill(os.getpid(), signal.SIGKILL)

    @tool(description="Make the worker's own loop fail while replying to this call.")
    def break_loop(self):
        from snakepit_bridge import worker

        def broken(*_args):
            raise RuntimeError("the worker loop broke")

        worker.current.reply_ok = broken
        return "unreachable"

    @tool(description="Print to stdout and stderr; must not disturb the frames.")
    def noisy(self, lines: int = 100):
        for i in range(lines):
            print(f"stdout line {i}")
            print(f"stderr line {i}", file=sys.stderr)
        sys.stdout.flush()
        os.write(1, b"raw write to fd 1\n")
        return lines

    @tool(description="Log a warning through Python logging.")
    def warn(self, message: str = "careful"):
        logging.getLogger("snakepit_process_adapters").warning(message)
        return message

    @tool(description="Yield one item, then block in C for a long time.")
    def stuck_stream(self, seconds: float = 30.0, notify=None):
        import time

        from snakepit_bridge import worker

        yield 1
        if notify is not None:
            worker.current.send(notify, "stuck")
        time.sleep(seconds)
        yield 2

    @tool(
        description="Yield one item, tell notify, then block in C for a long time: also when "
        "cancelled before the sleep began (the sleep is in a finally block)."
    )
    def surely_stuck_stream(self, seconds: float = 3600.0, notify=None):
        import time

        from snakepit_bridge import worker

        yield 1
        try:
            if notify is not None:
                worker.current.send(notify, "stuck")
        finally:
            # A Cancelled raised before the C call starts lands here too: the generator is
            # stuck in C either way, however the cancellation and the sleep were ordered.
            time.sleep(seconds)
        yield 2

    @tool(description="Yield one item, then kill the process.")
    def crashing_stream(self):
        yield 1
        os._exit(5)

    def cleanup(self):
        marker_dir = os.environ.get("SNAKEPIT_CLEANUP_DIR")
        if marker_dir:
            with open(os.path.join(marker_dir, f"cleanup-{os.getpid()}"), "w") as f:
                f.write(str(id(self)))


class SlowInit(TestAdapter):
    """Takes a long time to construct (start-up timeouts)."""

    def __init__(self):
        import time

        time.sleep(float(os.environ.get("SNAKEPIT_SLOW_INIT", "30")))
        super().__init__()


class FailsWhenMarked(ProcessAdapter):
    """Construction fails while the file named by SNAKEPIT_FAIL_MARKER exists: a replacement
    worker that cannot start (a model store that is down)."""

    def __init__(self):
        marker = os.environ.get("SNAKEPIT_FAIL_MARKER")
        if marker and os.path.exists(marker):
            raise RuntimeError("model store unavailable")
        super().__init__()
