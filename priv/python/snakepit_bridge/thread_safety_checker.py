"""Run-time thread-safety checks for adapters, for development and tests.

A checker created enabled becomes the process-wide active checker: every
``@thread_safe_method`` call reports to it, with no further wiring::

    checker = ThreadSafetyChecker(enabled=True, strict_mode=False)
    adapter = MyAdapter()
    ...  # call adapter methods from many threads
    print(checker.get_report())

It detects, and logs once each through ``logging.getLogger("snakepit_bridge.thread_safety")``
with a ``⚠️`` prefix (the report keeps the text without it):

- a method running on several threads at the same time:
  ``THREAD SAFETY: Method 'predict' accessed by 5 different threads concurrently.``
  (once per method and thread count). Informational for a declared adapter, whose methods
  are meant to run concurrently; a hint to check its locking;
- an adapter class without ``__thread_safe__ = True`` used from a second thread:
  ``Adapter MyAdapter does not declare thread safety.``
- a thread-unsafe library imported (see :data:`LIBRARY_MATRIX`):
  ``THREAD SAFETY: Unsafe library 'pandas' detected``

In strict mode every detection raises :class:`ThreadSafetyViolation` instead: from the method
call that caused it (the call does not run), or from :meth:`ThreadSafetyChecker.check_adapter`
and :meth:`ThreadSafetyChecker.check_imports`. Library scans that happen on their own (when a
checker starts, when it first sees a thread, in ``get_report()``) only record and log.

The checker serialises its bookkeeping under a lock: keep it off in production.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Dict, List, Optional, Set

from .errors import ThreadSafetyViolation

__all__ = [
    "LIBRARY_MATRIX",
    "ThreadSafetyChecker",
    "ThreadSafetyReport",
    "ThreadSafetyViolation",
    "get_active_checker",
]

logger = logging.getLogger("snakepit_bridge.thread_safety")

#: Prefix of the log messages (the guide's "Common Error Messages").
WARNING_PREFIX = "⚠️  "

#: Thread-safety of common libraries, keyed by import name. ``status`` is ``"safe"``,
#: ``"conditional"`` (safe with the setting in ``notes``) or ``"unsafe"`` (use locking or the
#: process profile; ``notes`` gives the workaround). Only "unsafe" libraries are warned about.
LIBRARY_MATRIX: Dict[str, Dict[str, str]] = {
    "numpy": {"name": "NumPy", "status": "safe", "notes": "Releases GIL during computation"},
    "scipy": {"name": "SciPy", "status": "safe", "notes": "Releases GIL for numerical operations"},
    "torch": {
        "name": "PyTorch",
        "status": "conditional",
        "notes": "Configure with `torch.set_num_threads()`",
    },
    "tensorflow": {
        "name": "TensorFlow",
        "status": "conditional",
        "notes": "Use `tf.config.threading` API",
    },
    "sklearn": {
        "name": "Scikit-learn",
        "status": "conditional",
        "notes": "Set `n_jobs=1` per estimator",
    },
    "requests": {
        "name": "Requests",
        "status": "conditional",
        "notes": "Separate sessions per thread",
    },
    "httpx": {"name": "HTTPx", "status": "safe", "notes": "Async-first, thread-safe"},
    "pandas": {"name": "Pandas", "status": "unsafe", "notes": "Use locking or process mode"},
    "matplotlib": {
        "name": "Matplotlib",
        "status": "unsafe",
        "notes": "Use `threading.local()` for figures",
    },
    "sqlite3": {"name": "SQLite3", "status": "unsafe", "notes": "Connection per thread"},
}

# The process-wide active checker, read by every @thread_safe_method call. A plain module
# global: reading it is one dictionary lookup, and rebinding it is atomic.
_active_checker: Optional["ThreadSafetyChecker"] = None
_active_lock = threading.Lock()


def get_active_checker() -> Optional["ThreadSafetyChecker"]:
    """Return the checker that ``@thread_safe_method`` calls report to, or None."""
    return _active_checker


def declares_thread_safety(cls: type) -> bool:
    """True when the adapter class sets ``__thread_safe__ = True`` (itself or by inheritance)."""
    return getattr(cls, "__thread_safe__", False) is True


def concurrent_access_message(method: str, threads: int) -> str:
    """The warning for ``threads`` threads inside ``method`` at the same time."""
    return f"THREAD SAFETY: Method '{method}' accessed by {threads} different threads concurrently."


def undeclared_adapter_message(class_name: str) -> str:
    """The warning for an adapter class used threaded without ``__thread_safe__ = True``."""
    return f"Adapter {class_name} does not declare thread safety."


def unsafe_library_message(library: str) -> str:
    """The warning for a thread-unsafe library found in ``sys.modules``."""
    return f"THREAD SAFETY: Unsafe library '{library}' detected"


class ThreadSafetyReport(dict):
    """The dict returned by :meth:`ThreadSafetyChecker.get_report`; ``str()`` is readable text."""

    def __str__(self) -> str:
        return format_report(self)


class _MethodStats:
    __slots__ = ("calls", "threads", "max_concurrency", "inside")

    def __init__(self) -> None:
        self.calls = 0
        self.threads: Set[int] = set()  # thread tokens that ever called the method
        self.max_concurrency = 0
        self.inside: Dict[int, int] = {}  # thread token -> nesting depth, while inside


class ThreadSafetyChecker:
    """Detects thread-safety problems while an adapter runs.

    Args:
        enabled: record and warn. An enabled checker registers itself as the process-wide
            active checker (replacing any previous one) so ``@thread_safe_method`` calls
            report to it. A disabled checker does nothing until :meth:`enable`.
        strict_mode: raise :class:`ThreadSafetyViolation` instead of warning.

    Usable as a context manager: ``with ThreadSafetyChecker() as checker: ...`` deactivates
    it on exit.
    """

    def __init__(self, enabled: bool = True, strict_mode: bool = False) -> None:
        self.enabled = bool(enabled)
        self.strict_mode = bool(strict_mode)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._next_token = 0
        self._methods: Dict[str, _MethodStats] = {}
        self._warnings: List[str] = []
        self._warned: Set[str] = set()
        self._declared: Dict[type, bool] = {}
        self._class_threads: Dict[type, Set[int]] = {}
        self._libraries: Dict[str, str] = {}
        if self.enabled:
            self.activate()
            self._scan_imports(strict=False)

    # -- activation -------------------------------------------------------------------------

    def activate(self) -> "ThreadSafetyChecker":
        """Make this the process-wide active checker. Returns self."""
        global _active_checker
        with _active_lock:
            _active_checker = self
        return self

    def deactivate(self) -> None:
        """Stop receiving ``@thread_safe_method`` reports (if this is the active checker)."""
        global _active_checker
        with _active_lock:
            if _active_checker is self:
                _active_checker = None

    @property
    def active(self) -> bool:
        """True when ``@thread_safe_method`` calls report to this checker."""
        return _active_checker is self

    def enable(self) -> None:
        """Enable checking and make this the active checker."""
        self.enabled = True
        self.activate()

    def disable(self) -> None:
        """Disable checking and deactivate this checker. Recorded data is kept."""
        self.enabled = False
        self.deactivate()

    def __enter__(self) -> "ThreadSafetyChecker":
        if self.enabled:
            self.activate()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.deactivate()

    # -- recording --------------------------------------------------------------------------

    def _token(self) -> int:
        """A number for the calling thread, unique for this checker's lifetime (unlike
        ``threading.get_ident()``, which the OS reuses once a thread has ended)."""
        try:
            return self._local.token
        except AttributeError:
            pass
        with self._lock:
            self._next_token += 1
            token = self._next_token
        self._local.token = token
        self._scan_imports(strict=False)  # a new thread: a good moment to look at imports
        return token

    def _record_locked(self, messages: List[str]) -> List[str]:
        """Store the messages not seen before and return them. Call with ``self._lock`` held."""
        new = [m for m in dict.fromkeys(messages) if m not in self._warned]
        self._warned.update(new)
        self._warnings.extend(new)
        return new

    @staticmethod
    def _log(messages: List[str]) -> None:
        """Log new warnings (outside the lock: handlers may be slow)."""
        for message in messages:
            logger.warning("%s%s", WARNING_PREFIX, message)

    def _declared_locked(self, cls: type) -> bool:
        declared = self._declared.get(cls)
        if declared is None:
            declared = self._declared[cls] = declares_thread_safety(cls)
        return declared

    def _enter(self, adapter: Any, method: str) -> None:
        """Called by ``@thread_safe_method`` before the method runs."""
        if not self.enabled:
            return
        token = self._token()
        cls = type(adapter)
        problems: List[str] = []
        with self._lock:
            stats = self._methods.get(method)
            if stats is None:
                stats = self._methods[method] = _MethodStats()
            stats.calls += 1
            stats.threads.add(token)
            inside = stats.inside
            inside[token] = inside.get(token, 0) + 1
            concurrency = len(inside)
            if concurrency > stats.max_concurrency:
                stats.max_concurrency = concurrency
            if concurrency > 1:
                problems.append(concurrent_access_message(method, concurrency))
            if not self._declared_locked(cls):
                seen = self._class_threads.setdefault(cls, set())
                seen.add(token)
                if len(seen) > 1:
                    problems.append(undeclared_adapter_message(cls.__name__))
            new = self._record_locked(problems)
            if problems and self.strict_mode:
                self._leave_locked(stats, token)  # the call is refused: it never ran
        self._log(new)
        if problems and self.strict_mode:
            raise ThreadSafetyViolation(problems[0])

    def _exit(self, method: str) -> None:
        """Called by ``@thread_safe_method`` when the method returns or raises."""
        token = getattr(self._local, "token", None)
        if token is None:
            return
        with self._lock:
            stats = self._methods.get(method)
            if stats is not None:
                self._leave_locked(stats, token)

    @staticmethod
    def _leave_locked(stats: _MethodStats, token: int) -> None:
        depth = stats.inside.get(token, 0) - 1
        if depth > 0:
            stats.inside[token] = depth
        else:
            stats.inside.pop(token, None)

    # -- explicit checks --------------------------------------------------------------------

    def check_adapter(self, adapter_or_class: Any, threaded: bool = True) -> List[str]:
        """Check that an adapter (instance or class) declares ``__thread_safe__ = True``.

        Args:
            adapter_or_class: the adapter instance or its class.
            threaded: whether it is used by several threads; a single-threaded adapter
                needs no declaration.

        Returns:
            The problems found (empty when none).

        Raises:
            ThreadSafetyViolation: in strict mode, when a problem is found.
        """
        cls = adapter_or_class if isinstance(adapter_or_class, type) else type(adapter_or_class)
        problems: List[str] = []
        new: List[str] = []
        with self._lock:
            if threaded and not self._declared_locked(cls):
                problems.append(undeclared_adapter_message(cls.__name__))
            if self.enabled:
                new = self._record_locked(problems)
        self._log(new)
        if problems and self.strict_mode and self.enabled:
            raise ThreadSafetyViolation(problems[0])
        return problems

    def check_imports(self) -> List[str]:
        """Look in ``sys.modules`` for the libraries :data:`LIBRARY_MATRIX` marks "unsafe".

        Returns:
            One ``THREAD SAFETY: Unsafe library '<name>' detected`` message per unsafe library
            currently imported.

        Raises:
            ThreadSafetyViolation: in strict mode, when one is found.
        """
        return self._scan_imports(strict=self.strict_mode)

    def _scan_imports(self, strict: bool) -> List[str]:
        modules = sys.modules
        found = [
            name
            for name, info in LIBRARY_MATRIX.items()
            if info["status"] == "unsafe" and name in modules
        ]
        problems = [unsafe_library_message(name) for name in found]
        if problems and self.enabled:
            with self._lock:
                for name in found:
                    self._libraries[name] = LIBRARY_MATRIX[name]["notes"]
                new = self._record_locked(problems)
            self._log(new)
            if strict:
                raise ThreadSafetyViolation(problems[0])
        return problems

    # -- reporting --------------------------------------------------------------------------

    def get_report(self) -> ThreadSafetyReport:
        """Return what the checker saw.

        A dict (its ``str()`` is the text of :meth:`format_report`) with:

        - ``enabled``, ``strict_mode``;
        - ``methods``: ``{name: {"calls", "threads" (distinct threads), "max_concurrency"}}``;
        - ``warnings``: the distinct warning texts, in order, without the log prefix;
        - ``unsafe_libraries``: ``{import name: workaround}`` for unsafe libraries imported;
        - ``adapters``: ``{class name: declares __thread_safe__}`` for the classes seen.
        """
        if self.enabled:
            self._scan_imports(strict=False)
        with self._lock:
            methods = {
                name: {
                    "calls": stats.calls,
                    "threads": len(stats.threads),
                    "max_concurrency": stats.max_concurrency,
                }
                for name, stats in sorted(self._methods.items())
            }
            return ThreadSafetyReport(
                enabled=self.enabled,
                strict_mode=self.strict_mode,
                methods=methods,
                warnings=list(self._warnings),
                unsafe_libraries=dict(self._libraries),
                adapters={cls.__name__: declared for cls, declared in self._declared.items()},
            )

    def format_report(self) -> str:
        """The report as readable text, one line per method and per warning."""
        return format_report(self.get_report())

    def reset(self) -> None:
        """Forget everything recorded (methods, warnings, libraries, adapters)."""
        with self._lock:
            self._methods.clear()
            self._warnings.clear()
            self._warned.clear()
            self._declared.clear()
            self._class_threads.clear()
            self._libraries.clear()

    def __repr__(self) -> str:
        return (
            f"<ThreadSafetyChecker enabled={self.enabled} strict_mode={self.strict_mode}"
            f" active={self.active} warnings={len(self._warnings)}>"
        )


def format_report(report: Dict[str, Any]) -> str:
    """Render a report dict from :meth:`ThreadSafetyChecker.get_report` as text."""
    mode = "strict" if report.get("strict_mode") else "warn"
    state = "enabled" if report.get("enabled") else "disabled"
    lines = [f"Thread safety report ({state}, {mode} mode)"]
    methods = report.get("methods") or {}
    if methods:
        width = max(len(name) for name in methods)
        lines.append("Methods:")
        for name, stats in methods.items():
            lines.append(
                f"  {name:<{width}}  calls={stats['calls']}  threads={stats['threads']}"
                f"  max_concurrency={stats['max_concurrency']}"
            )
    else:
        lines.append("Methods: none tracked")
    for library, notes in (report.get("unsafe_libraries") or {}).items():
        lines.append(f"Unsafe library {library}: {notes}")
    warnings = report.get("warnings") or []
    if warnings:
        lines.append(f"Warnings ({len(warnings)}):")
        lines.extend(f"  {WARNING_PREFIX}{warning}" for warning in warnings)
    else:
        lines.append("No thread safety issues detected.")
    return "\n".join(lines)
