"""Baseline for bench/suite.exs (parallel scaling): one task of each workload in plain Python.

The same functions the pool runs (``bench/adapters/bench_adapter.py``), called in a plain
Python process of the venv interpreter, no Elixir, no threads: the time one task takes when
nothing else is in the way.

Usage::

    .venv/bin/python bench/python/work_units.py CPU_ITERATIONS DOT_REPS SLEEP_MS [REPEATS]

Prints ``key=value`` lines (read by the suite): ``cpu_ms``, ``numpy_ms``, ``sleep_ms`` (the
median of REPEATS runs of one task each), ``blas_threads`` and ``blas_lib``.
"""

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [
    os.path.join(HERE, "..", "adapters"),
    os.path.join(HERE, "..", "..", "priv", "python"),
]

import bench_adapter  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    iterations, reps, sleep_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    adapter = bench_adapter.BenchAdapter()
    print(f"cpu_ms={timed(lambda: bench_adapter.cpu_work(iterations), repeats):.3f}")
    if bench_adapter.np is not None:
        print(f"numpy_ms={timed(lambda: adapter.numpy_dot(reps), repeats):.3f}")
    print(f"sleep_ms={timed(lambda: adapter.sleep(sleep_ms), repeats):.3f}")
    info = bench_adapter.blas_threads()
    print(f"blas_threads={info['threads']}")
    print(f"blas_lib={info['lib']}")


if __name__ == "__main__":
    main()
