"""Stress-run an adapter on many threads with the thread-safety checker on.

Usage::

    python -m snakepit_bridge.check package.module.Class --threads 20 --calls 1000 \\
        [--method compute_intensive --args '{"data": [1, 2, 3]}'] [--strict] [--json]

The adapter is created as a threaded pool would create it (``max_workers`` = ``--threads``,
``initialize()`` called), then ``--calls`` calls of ``--method`` (default ``ping``) with the
JSON object ``--args`` as keyword arguments run through a ``ThreadPoolExecutor`` of
``--threads`` threads. The report gives the throughput, the latency, the failures, the
adapter's per-thread statistics and the checker's report. ``cleanup()`` runs at the end.

Exit status: 0 when every call succeeded; 1 when the adapter could not be loaded or a call
failed (with ``--strict``, a thread-safety warning fails the call that caused it); 2 for a
usage error (bad flags, ``--args`` not a JSON object, unknown method).

This replaces the checking and stress role of the upstream ``grpc_server_threaded.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

from . import _runtime
from .base_adapter_threaded import collect_stats
from .thread_safety_checker import ThreadSafetyChecker

__all__ = ["main", "run_check", "UnknownMethod"]


class UnknownMethod(LookupError):
    """The ``--method`` given is not a command of the adapter."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge.check",
        description="Stress-run a Snakepit adapter on many threads with thread-safety checks.",
        epilog="Exit status: 0 all calls succeeded, 1 load failure or failed calls, 2 usage error.",
    )
    parser.add_argument("adapter", help="adapter class path, e.g. mypkg.adapters.MyAdapter")
    parser.add_argument("--threads", type=int, default=20, help="worker threads (default 20)")
    parser.add_argument("--calls", type=int, default=1000, help="calls in total (default 1000)")
    parser.add_argument("--method", default="ping", help="command to call (default ping)")
    parser.add_argument(
        "--args", default="{}", help="keyword arguments as a JSON object (default {})"
    )
    parser.add_argument(
        "--strict", action="store_true", help="strict mode: thread-safety warnings fail calls"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="add DIR to sys.path before importing the adapter (repeatable)",
    )
    return parser


def _percentile(sorted_values: List[float], share: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(share * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_check(
    adapter_path: str,
    threads: int = 20,
    calls: int = 1000,
    method: str = "ping",
    args: Optional[Dict[str, Any]] = None,
    strict: bool = False,
) -> Dict[str, Any]:
    """Run the stress check and return the report as a dict.

    Raises:
        ImportError, Exception: the adapter could not be created.
        UnknownMethod: ``method`` is not a command of the adapter.
    """
    kwargs = dict(args or {})
    checker = ThreadSafetyChecker(enabled=True, strict_mode=strict)
    try:
        adapter = _runtime.create_adapter(
            adapter_path,
            "check",
            0,
            {"threaded": threads > 1, "max_workers": threads, "thread_safety_check": True},
        )
        try:
            available = _runtime.commands(adapter)
            command = available.get(method)
            if command is None:
                names = ", ".join(sorted(available))
                raise UnknownMethod(f"{adapter_path} has no command {method!r}; commands: {names}")

            def one_call(_: int) -> float:
                start = time.perf_counter()
                command(**kwargs)
                return time.perf_counter() - start

            latencies: List[float] = []
            errors: Dict[str, int] = {}
            first_error: Optional[str] = None
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="check"
            ) as executor:
                futures = [executor.submit(one_call, i) for i in range(calls)]
                for future in futures:
                    try:
                        latencies.append(future.result())
                    except Exception as exc:  # a failed call is data for the report
                        key = f"{type(exc).__name__}: {exc}"
                        errors[key] = errors.get(key, 0) + 1
                        if first_error is None:
                            first_error = "".join(traceback.format_exception(exc))
            elapsed = time.perf_counter() - started
            stats = collect_stats(adapter)  # thread statistics, whatever get_stats returns
        finally:
            _runtime.cleanup(adapter)
        latencies.sort()
        return {
            "adapter": adapter_path,
            "method": method,
            "threads": threads,
            "calls": calls,
            "succeeded": len(latencies),
            "failed": calls - len(latencies),
            "errors": errors,
            "first_error": first_error,
            "elapsed_seconds": elapsed,
            "calls_per_second": calls / elapsed if elapsed > 0 else 0.0,
            "latency_ms": {
                "p50": _percentile(latencies, 0.50) * 1000.0,
                "p99": _percentile(latencies, 0.99) * 1000.0,
                "max": (latencies[-1] if latencies else 0.0) * 1000.0,
            },
            "adapter_stats": stats,
            "thread_safety": dict(checker.get_report()),
            "thread_safety_text": checker.format_report(),
        }
    finally:
        checker.deactivate()


def _format(result: Dict[str, Any]) -> str:
    lat = result["latency_ms"]
    lines = [
        f"Adapter {result['adapter']}: {result['calls']} calls of {result['method']!r} "
        f"on {result['threads']} threads",
        f"  succeeded {result['succeeded']}, failed {result['failed']}, "
        f"{result['elapsed_seconds']:.3f} s, {result['calls_per_second']:.0f} calls/s",
        f"  latency p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, max {lat['max']:.3f} ms",
    ]
    for error, count in result["errors"].items():
        lines.append(f"  error x{count}: {error}")
    stats = result["adapter_stats"]
    if stats["total_requests"]:
        lines.append(
            f"Adapter stats: total_requests={stats.get('total_requests')} "
            f"active_requests={stats.get('active_requests')} "
            f"max_workers={stats.get('max_workers')}"
        )
        for name, entry in sorted(stats["thread_utilization"].items()):
            lines.append(
                f"  {name}: requests={entry['requests']} busy={entry['busy_seconds']:.4f}s "
                f"share={entry['busy_share']:.1%}"
            )
    lines.append(result["thread_safety_text"])
    if result.get("first_error"):
        lines.append("First failure:")
        lines.append(result["first_error"].rstrip())
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    opts = parser.parse_args(argv)
    if opts.threads < 1 or opts.calls < 0:
        parser.error("--threads must be >= 1 and --calls >= 0")
    try:
        args = json.loads(opts.args)
    except json.JSONDecodeError as exc:
        parser.error(f"--args is not valid JSON: {exc}")
    if not isinstance(args, dict):
        parser.error("--args must be a JSON object of keyword arguments")
    for directory in reversed(opts.path):
        sys.path.insert(0, directory)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s - [%(threadName)s] - %(levelname)s - %(message)s"
    )
    try:
        result = run_check(opts.adapter, opts.threads, opts.calls, opts.method, args, opts.strict)
    except UnknownMethod as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = f"error: cannot run adapter {opts.adapter}: {type(exc).__name__}: {exc}"
        print(message, file=sys.stderr)
        return 1
    if opts.json:
        result = dict(result)
        result.pop("thread_safety_text")
        print(json.dumps(result, indent=2, default=repr))
    else:
        print(_format(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
