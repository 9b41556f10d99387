"""Large data on the Python side: snakepit_bridge._ndarray, the ETF codec's buffers and
NDArrays, and the __snakepit_call__ built-in (README, "Large data")."""

from __future__ import annotations

import struct

import pytest

from snakepit_bridge import _ndarray, _runtime
from snakepit_bridge.etf import Atom, ConversionError, decode, encode

np = pytest.importorskip("numpy")


def etf_binary(data: bytes) -> bytes:
    return bytes([109]) + struct.pack(">I", len(data)) + data


def etf_atom(text: str) -> bytes:
    raw = text.encode()
    return bytes([119, len(raw)]) + raw


def ndarray_term(data: bytes, kind: str, bits: int, shape: tuple, data_first: bool = False) -> bytes:
    """``%Snakepit.NDArray{}`` as term_to_binary writes it (a flatmap, keys in atom order; from
    OTP 26 in atom-table order, where ``data`` may come before ``__struct__``)."""
    shape_term = bytes([104, len(shape)]) + b"".join(bytes([98]) + struct.pack(">i", s) for s in shape)
    pairs = [
        (etf_atom("__struct__"), etf_atom("Elixir.Snakepit.NDArray")),
        (etf_atom("data"), etf_binary(data)),
        (etf_atom("dtype"), bytes([104, 2]) + etf_atom(kind) + bytes([97, bits])),
        (etf_atom("shape"), shape_term),
    ]
    if data_first:
        pairs.insert(0, pairs.pop(1))
    return bytes([131, 116]) + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)


def test_buffer_tuple_decodes_as_a_readonly_view_of_the_frame():
    frame = bytes([131, 104, 2]) + etf_atom("buffer") + etf_binary(b"\x00\xffabc")
    view = decode(frame)
    assert isinstance(view, memoryview)
    assert view.readonly
    assert bytes(view) == b"\x00\xffabc"
    assert view.obj is frame  # no copy: a slice of the frame


def test_ndarray_struct_decodes_as_numpy_over_the_frame():
    data = np.arange(6, dtype="<f8").tobytes()
    frame = ndarray_term(data, "f", 64, (2, 3))
    arr = decode(frame)
    assert isinstance(arr, np.ndarray)
    assert arr.shape == (2, 3) and arr.dtype == np.float64
    assert not arr.flags.writeable
    assert arr.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_ndarray_data_before_its_struct_key_is_still_a_view_of_the_frame():
    data = np.arange(4, dtype="<f8").tobytes()
    frame = ndarray_term(data, "f", 64, (4,), data_first=True)
    arr = decode(frame)
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]
    base = arr
    while isinstance(getattr(base, "base", None), np.ndarray):
        base = base.base
    assert isinstance(base.base, memoryview) and base.base.obj is frame  # not copied
    # A map that is no NDArray: its "data" binary decodes as usual (str, else bytes).
    plain = bytes([131, 116, 0, 0, 0, 2]) + etf_atom("data") + etf_binary(b"\xff\x00")
    plain += etf_atom("text") + etf_binary(b"abc")
    assert decode(plain) == {"data": b"\xff\x00", "text": "abc"}
    text = bytes([131, 116, 0, 0, 0, 1]) + etf_atom("data") + etf_binary(b"hello")
    assert decode(text) == {"data": "hello"}


def test_ndarray_with_a_wrong_size_is_a_conversion_error():
    with pytest.raises(ConversionError, match="needs 16"):
        decode(ndarray_term(b"\x00" * 3, "f", 64, (2,)))


def test_from_parts_checks_dtype_and_shape():
    with pytest.raises(TypeError, match="unsupported NDArray dtype"):
        _ndarray.from_parts(b"\x00" * 2, ("q", 16), (1,))
    with pytest.raises(TypeError, match="negative"):
        _ndarray.from_parts(b"", ("u", 8), (-1,))
    arr = _ndarray.from_parts(memoryview(b"\x01\x02\x03\x04"), ("u", 16), (2,))
    assert arr.tolist() == [0x0201, 0x0403]


def test_wrap_replaces_arrays_in_containers_only_for_struct():
    a = np.arange(4, dtype="int32").reshape(2, 2)
    assert _ndarray.wrap(a, "list") is a
    wrapped = _ndarray.wrap({"a": [a, (a.T,)], "n": 1}, "struct")
    first = wrapped["a"][0]
    assert isinstance(first, _ndarray.NDArrayResult)
    assert first.dtype == ("s", 32) and first.shape == (2, 2)
    transposed = wrapped["a"][1][0]
    assert bytes(transposed.data) == np.ascontiguousarray(a.T).tobytes()
    assert wrapped["n"] == 1
    with pytest.raises(ValueError, match="unknown ndarray mode"):
        _ndarray.wrap(a, "matrix")


def test_only_readonly_arrays_over_immutable_memory_are_shared():
    writable = np.arange(3.0)
    assert _ndarray.NDArrayResult(writable).owner is None
    frozen = np.frombuffer(b"\x00" * 24, dtype="<f8")
    assert _ndarray.NDArrayResult(frozen).owner is not None
    readonly_view_of_writable = writable.view()
    readonly_view_of_writable.flags.writeable = False
    assert _ndarray.NDArrayResult(readonly_view_of_writable).owner is None


def test_ndarray_result_encodes_as_the_struct():
    res = _ndarray.NDArrayResult(np.array([1.5, 2.5]))
    encoded = encode(res)
    back = decode(encoded)  # the decoder turns the struct into an array again
    assert back.tolist() == [1.5, 2.5]


def test_memoryviews_encode_as_binaries_in_any_format():
    assert decode(encode(memoryview(b"abc"))) == "abc"
    doubles = memoryview(np.array([1.0]))
    assert decode(encode(doubles)) == struct.pack("=d", 1.0)


class Adapter:
    def double(self, a):
        return a * 2

    def echo(self, value=None):
        return value


def test_snakepit_call_applies_ndarray_and_hides_builtins():
    adapter = _runtime.create_adapter("test_ndarray.Adapter", "p", 0, {"ndarray": "list"})
    table = _runtime.command_table(adapter)
    call = table["__snakepit_call__"]
    out = call("double", {"a": np.arange(3)}, {"ndarray": "struct"})
    assert isinstance(out, _ndarray.NDArrayResult)
    assert call("echo", [5], {}) == 5
    with pytest.raises(LookupError, match="unknown command"):
        call("missing", {}, {})
    with pytest.raises(ValueError, match="unknown call options"):
        call("echo", [], {"bogus": 1})
    assert "__snakepit_call__" not in [t["name"] for t in _runtime.tools(adapter)]


def test_pool_ndarray_option_wraps_every_command_and_a_call_overrides_it():
    adapter = _runtime.create_adapter("test_ndarray.Adapter", "p", 0, {"ndarray": "struct"})
    try:
        table = _runtime.command_table(adapter)
        assert isinstance(table["double"](np.arange(2)), _ndarray.NDArrayResult)
        listed = table["__snakepit_call__"]("double", [np.arange(2)], {"ndarray": "list"})
        assert isinstance(listed, np.ndarray)
    finally:
        _runtime.cleanup(adapter)
    with pytest.raises(ValueError, match="unknown ndarray mode"):
        _runtime.create_adapter("test_ndarray.Adapter", "p", 0, {"ndarray": "nope"})


def test_wrap_applies_to_each_item_of_an_iterator_and_closes_it():
    closed = []

    def gen():
        try:
            yield np.arange(2)
            yield [np.arange(3), 1]
            yield 5
        finally:
            closed.append(True)

    items = _ndarray.wrap(gen(), "struct")
    first = next(items)
    assert isinstance(first, _ndarray.NDArrayResult) and first.shape == (2,)
    second = next(items)
    assert isinstance(second[0], _ndarray.NDArrayResult) and second[1] == 1
    items.close()
    assert closed == [True]
    # iter(...) of a list streams too; containers are still wrapped in place.
    assert [type(x) for x in _ndarray.wrap(iter([np.arange(1)]), "struct")] == [
        _ndarray.NDArrayResult
    ]
    assert isinstance(_ndarray.wrap([np.arange(1)], "struct")[0], _ndarray.NDArrayResult)


def test_wrap_applies_to_async_generators_and_coroutines():
    import asyncio

    async def agen():
        yield np.arange(2)

    async def coro():
        return {"a": np.arange(2)}

    async def main():
        items = [x async for x in _ndarray.wrap(agen(), "struct")]
        value = await _ndarray.wrap(coro(), "struct")
        return items, value

    items, value = asyncio.run(main())
    assert isinstance(items[0], _ndarray.NDArrayResult)
    assert isinstance(value["a"], _ndarray.NDArrayResult)


def test_nx_tensor_on_the_binary_backend_decodes_as_numpy():
    data = np.arange(4, dtype="=f4").tobytes()
    backend = (
        bytes([116]) + struct.pack(">I", 2)
        + etf_atom("__struct__") + etf_atom("Elixir.Nx.BinaryBackend")
        + etf_atom("state") + etf_binary(data)
    )
    shape = bytes([104, 2, 97, 2, 97, 2])
    pairs = [
        (etf_atom("__struct__"), etf_atom("Elixir.Nx.Tensor")),
        (etf_atom("data"), backend),
        (etf_atom("shape"), shape),
        (etf_atom("type"), bytes([104, 2]) + etf_atom("f") + bytes([97, 32])),
    ]
    frame = bytes([131, 116]) + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)
    arr = decode(frame)
    assert arr.dtype == np.float32 and arr.shape == (2, 2)
    assert arr.tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_nx_tensor_elsewhere_is_an_error_naming_the_fix():
    pairs = [
        (etf_atom("__struct__"), etf_atom("Elixir.Nx.Tensor")),
        (etf_atom("data"), etf_atom("device")),
        (etf_atom("shape"), bytes([104, 1, 97, 1])),
        (etf_atom("type"), bytes([104, 2]) + etf_atom("f") + bytes([97, 32])),
    ]
    frame = bytes([131, 116]) + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)
    with pytest.raises(ConversionError, match="backend_transfer"):
        decode(frame)
