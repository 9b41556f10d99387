"""Baseline for bench/core.exs: the far end of a raw Erlang port echo.

Started by the benchmark as ``Port.open({:spawn_executable, python}, [:binary, {:packet, 4},
args: ["-u", "bench/port_echo.py"]])``. Reads 4-byte big-endian length-prefixed frames from
stdin and writes each frame back unchanged (header included) to stdout. Nothing is decoded:
the payload bytes are never looked at. Raw ``os.read``/``os.write`` on the file descriptors,
so there is no Python-level buffering in either direction. Exits when stdin closes (the port
is closed or the BEAM exits).
"""

import os
import sys


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes from ``fd``; return b"" on end of file."""
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def main() -> None:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        header = read_exact(stdin, 4)
        if not header:
            return
        size = int.from_bytes(header, "big")
        payload = read_exact(stdin, size) if size else b""
        if size and not payload:
            return
        frame = header + payload
        while frame:
            frame = frame[os.write(stdout, frame):]


if __name__ == "__main__":
    main()
