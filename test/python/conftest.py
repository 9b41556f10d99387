"""pytest setup: put priv/python (the package) and this directory (test adapters) on sys.path."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PRIV_PYTHON = os.path.abspath(os.path.join(HERE, "..", "..", "priv", "python"))

for path in (HERE, PRIV_PYTHON):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def no_active_checker():
    """Each test starts and ends without a process-wide active ThreadSafetyChecker."""
    from snakepit_bridge import thread_safety_checker

    thread_safety_checker._active_checker = None
    yield
    thread_safety_checker._active_checker = None
