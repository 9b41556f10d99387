"""Second memcpy reference for bench/suite.exs (large data): a copy into fresh pages.

``:binary.copy/1`` in the BEAM often lands in memory its allocator has cached from an earlier
copy of the same size, pages already mapped: a warm memcpy, which on a shared VM measured
anywhere from 1 to 18 GB/s. A payload that crosses to another process or into a new object
lands in memory nobody has touched yet, and the kernel must map each page as it is written.
This script measures that floor, in a plain Python process: one anonymous mapping per copy
(``mmap.mmap(-1, n)``, untouched), the source copied into it with one ``memcpy``, the mapping
released.

Usage::

    .venv/bin/python bench/python/fresh_copy.py SIZE_BYTES [REPEATS]

Prints ``key=value`` lines (read by the suite): ``fresh_us`` (median microseconds of one
copy) and ``warm_us`` (the same copy into a mapping reused from the previous round).
"""

import mmap
import statistics
import sys
import time


def main(argv):
    size = int(argv[1])
    repeats = int(argv[2]) if len(argv) > 2 else 5
    src = b"\xab" * size
    fresh, warm = [], []
    for _ in range(repeats + 1):
        dst = mmap.mmap(-1, size)
        t0 = time.perf_counter()
        dst[:] = src
        t1 = time.perf_counter()
        dst[:] = src
        t2 = time.perf_counter()
        dst.close()
        fresh.append((t1 - t0) * 1e6)
        warm.append((t2 - t1) * 1e6)
    # The first round is a warm-up (imports, the source's own pages).
    print(f"fresh_us={statistics.median(fresh[1:]):.1f}")
    print(f"warm_us={statistics.median(warm[1:]):.1f}")


if __name__ == "__main__":
    main(sys.argv)
