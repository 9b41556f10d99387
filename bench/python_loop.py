"""Baseline for bench/core.exs: Snakepit's ``ping`` called in a plain Python loop.

No Elixir, no NIF, no threads: the adapter is built exactly as a Snakepit worker builds it
(``snakepit_bridge._runtime.create_adapter``) and its ``ping`` command is taken from the same
dispatch table the pool thread uses (``_runtime.commands(adapter)["ping"]``), then called
``N`` times back to back with no arguments (the ``%{}`` of ``Snakepit.execute/3`` becomes
``**{}``). The loop is timed with ``time.perf_counter_ns``; this is the floor for what one
``ping`` can cost in Python itself.

Usage::

    .venv/bin/python bench/python_loop.py [N]

Prints ``key=value`` lines (read by bench/core.exs)::

    python=3.11.7
    calls=1000000
    ns_per_call=123.4
    calls_per_s=8100000
"""

import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "priv", "python"))

from snakepit_bridge import _runtime  # noqa: E402

ADAPTER = "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    adapter = _runtime.create_adapter(
        ADAPTER, "python_loop", 0, {"threaded": True, "max_workers": 1}
    )
    ping = _runtime.commands(adapter)["ping"]
    kwargs: dict = {}

    assert ping(**kwargs) == "pong"
    for _ in range(min(n, 10_000)):  # warm-up
        ping(**kwargs)

    start = time.perf_counter_ns()
    for _ in range(n):
        ping(**kwargs)
    elapsed = time.perf_counter_ns() - start

    ns_per_call = elapsed / n
    print(f"python={platform.python_version()}")
    print(f"calls={n}")
    print(f"ns_per_call={ns_per_call:.1f}")
    print(f"calls_per_s={1e9 / ns_per_call:.0f}")


if __name__ == "__main__":
    main()
