"""The arenas of snakepit_bridge._shm (native/snakepit/src/arena.rs is the BEAM's half):
argument views that say whether Python kept them, and the result arena's regions, reused once
their byte of the page table is cleared (as the BEAM's binary destructor does)."""

from __future__ import annotations

import gc
import os

import pytest

from snakepit_bridge import _shm

CAP = 4 << 20


def _memfd(tmp_path, name):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(CAP)
    return str(path)


@pytest.fixture
def arenas(tmp_path):
    args, results = _memfd(tmp_path, "args"), _memfd(tmp_path, "results")
    _shm.configure_arena(f"{args}|{results}|{1 << 20}")
    assert _shm._ARGS is not None and _shm._RESULTS is not None
    yield args
    _shm.configure_arena(None)


def test_a_view_reads_the_region_in_place_and_is_read_only(arenas):
    with open(arenas, "r+b") as f:
        f.seek(8 * _shm.PAGE)
        f.write(b"hello arena")
    views = []
    with _shm.collect(views):
        view = _shm.arena_view(8 * _shm.PAGE, 11)
    assert bytes(view) == b"hello arena" and view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    assert [offset for offset, _ in views] == [8 * _shm.PAGE]


def test_settle_reports_views_python_still_holds_and_then_their_release(arenas):
    views = []
    with _shm.collect(views):
        dropped = _shm.arena_view(0, 100)
        kept = _shm.arena_view(_shm.PAGE, 100)[10:20]  # a slice keeps the region too
    del dropped
    assert _shm.settle(views) == [_shm.PAGE]
    assert views == [] and _shm.released() == []
    del kept
    gc.collect()
    assert _shm.released() == [_shm.PAGE]
    assert _shm.released() == []


def test_a_read_only_view_inside_the_argument_arena_is_returned_as_its_region(arenas):
    view = _shm.arena_view(_shm.PAGE, 100)
    assert _shm._argument_region(view) == f"&{_shm.PAGE}:100"
    assert _shm._argument_region(view[10:20]) == f"&{_shm.PAGE + 10}:10"
    # Copies, writable buffers and other memory are not.
    assert _shm._argument_region(bytes(view)) is None
    assert _shm._argument_region(bytearray(100)) is None
    assert _shm._argument_region(memoryview(_shm._ARGS)[0:10]) is None
    assert _shm._argument_region(42) is None


def test_bad_regions_are_refused(arenas):
    for offset, size in [(-_shm.PAGE, 1), (1, 1), (0, CAP + 1)]:
        with pytest.raises(ValueError):
            _shm.arena_view(offset, size)


def test_result_regions_are_reused_once_the_beam_clears_their_byte(arenas):
    arena = _shm._RESULTS
    first = arena.put(b"x" * 100_000)
    second = arena.put(bytearray(b"y" * 5000))
    a, n = (int(v) for v in first[1:].split(":"))
    b, _ = (int(v) for v in second[1:].split(":"))
    assert n == 100_000 and a >= arena.table and b > a
    assert arena.map[a : a + 3] == b"xxx" and arena.map[a // _shm.PAGE] == 1
    # Held by the BEAM: a third region goes after them.
    third = int(arena.put(b"z")[1:].split(":")[0])
    assert third > b
    # The BEAM frees the first: its space is taken again.
    arena.map[a // _shm.PAGE] = 0
    assert int(arena.put(b"w" * 10)[1:].split(":")[0]) == a


def test_a_full_result_arena_says_so_and_an_unsent_region_is_given_back(arenas):
    arena = _shm._RESULTS
    assert arena.put(b"\0" * CAP) is None
    region = arena.put(b"q" * 10)
    offset = int(region[1:].split(":")[0])
    _shm._remove([region])
    assert arena.regions == {} and arena.map[offset // _shm.PAGE] == 0


def test_no_arena_without_its_path(tmp_path):
    _shm.configure_arena(f"|{os.devnull}-missing|0")
    try:
        assert _shm._ARGS is None and _shm._RESULTS is None
        with pytest.raises(ValueError):
            _shm.arena_view(0, 1)
    finally:
        _shm.configure_arena(None)


def test_trim_reclaims_what_the_beam_freed_and_resets_the_high_mark(arenas):
    arena = _shm._RESULTS
    offsets = [int(arena.put(b"r" * 300_000)[1:].split(":")[0]) for _ in range(3)]
    assert arena.high > offsets[-1]
    arena.map[offsets[0] // _shm.PAGE] = 0  # the BEAM freed the first only
    _shm.trim()
    assert sorted(arena.regions) == offsets[1:]
    assert arena.high == offsets[-1] + arena.regions[offsets[-1]]
    for offset in offsets[1:]:
        arena.map[offset // _shm.PAGE] = 0
    _shm.trim()
    assert arena.regions == {} and arena.high == arena.table
    assert arena.retain == 1 << 20  # only for the trim
