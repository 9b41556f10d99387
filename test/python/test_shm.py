"""Large binaries through shared-memory files (snakepit_bridge._shm, the ETF hooks in etf.py).

The Elixir side (lib/snakepit/pool/process/shm.ex) is exercised by
test/snakepit/process_shm_test.exs; here the Python half alone, in a temporary directory.
"""

from __future__ import annotations

import os
import struct

import pytest

from snakepit_bridge import _shm, etf


@pytest.fixture
def shm(tmp_path):
    _shm.configure(f"{tmp_path}|snakepit-test-|1024")
    yield tmp_path
    _shm.configure(None)


def _ref(path: str, size: int) -> bytes:
    """``term_to_binary({:"$snakepit_shm", path, size})`` (body, no version byte)."""
    atom = b"$snakepit_shm"
    raw = path.encode()
    return (
        bytes([104, 3, 119, len(atom)]) + atom + bytes([109]) + struct.pack(">I", len(raw)) + raw
        + bytes([98]) + struct.pack(">i", size)
    )


def _file(directory, name: str, data: bytes) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_buffer_ref_is_a_readonly_view_of_the_file_which_is_unlinked(shm):
    data = bytes(range(256)) * 8
    path = _file(shm, "snakepit-test-a1", data)
    term = bytes([131, 104, 2, 119, 6]) + b"buffer" + _ref(path, len(data))
    view = etf.decode(term)
    assert isinstance(view, memoryview) and view.readonly
    assert bytes(view) == data
    assert not os.path.exists(path)


def test_plain_ref_decodes_as_a_binary_would(shm):
    text = "snake " * 300
    path = _file(shm, "snakepit-test-a2", text.encode())
    assert etf.decode(bytes([131]) + _ref(path, len(text))) == text
    raw = b"\xff" * 2000
    path = _file(shm, "snakepit-test-a3", raw)
    assert etf.decode(bytes([131]) + _ref(path, len(raw))) == raw


def test_refs_outside_the_pool_prefix_are_refused(shm):
    path = _file(shm, "other-file", b"x" * 2000)
    with pytest.raises(etf.ConversionError, match="not a shared-memory file"):
        etf.decode(bytes([131]) + _ref(path, 2000))
    assert os.path.exists(path)


def test_capture_exports_large_bytes_and_leaves_small_ones_inline(shm):
    big, small = b"\x01" * 5000, b"\x02" * 10

    def build():
        out = bytearray(10)
        out[4] = 0
        out[5:9] = struct.pack(">I", 42)
        out[9] = etf.VERSION
        etf.encode_into(out, (etf.Atom("ok"), [big, small]))
        struct.pack_into(">I", out, 0, len(out) - 4)
        return out

    frame = _shm.capture(build)
    assert frame[4] == _shm.REPLY_SHM
    assert struct.unpack_from(">I", frame, 5)[0] == 42
    n = struct.unpack_from(">I", frame, 9)[0]
    paths = bytes(frame[13 : 13 + n]).decode().split("\0")
    assert len(paths) == 1 and os.path.basename(paths[0]).startswith("snakepit-test-w")
    with open(paths[0], "rb") as f:
        assert f.read() == big
    assert small in bytes(frame[13 + n :])
    os.unlink(paths[0])


def test_capture_removes_its_files_when_the_encoding_fails(shm):
    def build():
        out = bytearray()
        etf.encode_into(out, [b"\x01" * 5000, object()])
        return out

    with pytest.raises(etf.ConversionError):
        _shm.capture(build)
    assert os.listdir(shm) == []


def test_off_without_configuration():
    _shm.configure(None)
    out = bytearray()
    etf.encode_into(out, b"\x01" * 5000)
    assert len(out) == 5005
