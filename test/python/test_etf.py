"""The ETF codec of the :process profile (snakepit_bridge.etf).

The byte strings in VECTORS were computed once with ``:erlang.term_to_binary/1`` on
Erlang/OTP 25 (Elixir 1.14) and are hard-coded here, so these tests need no Erlang. OTP 26+
writes atoms as ATOM_UTF8 (tags 118/119) instead of ATOM_EXT (100); both are covered.
``test_erlang_decodes_what_python_encodes`` additionally runs ``erl`` (skipped when absent) to
check that Erlang's ``binary_to_term(Bin, [safe])`` reads our encoding as the expected terms.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import zlib

import pytest

from snakepit_bridge import Pid
from snakepit_bridge.etf import (
    MAX_DEPTH,
    Atom,
    ConversionError,
    decode,
    encode,
    set_mapset_fields,
)

VECTORS = {
    "nil": bytes.fromhex("836400036e696c"),
    "true": bytes.fromhex("8364000474727565"),
    "false": bytes.fromhex("8364000566616c7365"),
    "atom": bytes.fromhex("8364000568656c6c6f"),
    "small_int": bytes.fromhex("83612a"),
    "int_neg": bytes.fromhex("8362ffffffff"),
    "int32": bytes.fromhex("8362000186a0"),
    "int_min32": bytes.fromhex("836280000000"),
    "big64": bytes.fromhex("836e0900000000000000000001"),
    "big_neg": bytes.fromhex(
        "836e1e0119e2c663fb92e616cc60cfbdff014c11e75ab431a364681da18cb9a29b35"
    ),
    "float": bytes.fromhex("83463ff8000000000000"),
    "float_neg": bytes.fromhex("8346bfb999999999999a"),
    "utf8": bytes.fromhex("836d0000000a68c3a96c6c6f20e29c93"),
    "not_utf8": bytes.fromhex("836d00000003fffe00"),
    "empty_bin": bytes.fromhex("836d00000000"),
    "bytes_tuple": bytes.fromhex("83680264000562797465736d00000003616263"),
    "charlist": bytes.fromhex("836b0003616263"),
    "list": bytes.fromhex(
        "836c0000000361016d00000001616c000000024640000000000000006400036e696c6a6a"
    ),
    "empty_list": bytes.fromhex("836a"),
    "tuple": bytes.fromhex("8368036101680261026d00000001786800"),
    "map": bytes.fromhex(
        "8374000000026400016161016400016274000000016d00000001636b000101"
    ),
    "mapset": bytes.fromhex(
        "83740000000364000a5f5f7374727563745f5f64000d456c697869722e4d61705365746400036d6170"
        "740000000261016a61026a64000776657273696f6e6102"
    ),
    "latin1_atom": bytes.fromhex("8364000568e96c6c6f"),
    "compressed": bytes.fromhex("83500000013278dacb61606010c905125c897030cac5c3cd0200771055ff"),
}

EXPECTED = {
    "nil": None,
    "true": True,
    "false": False,
    "atom": "hello",
    "small_int": 42,
    "int_neg": -1,
    "int32": 100_000,
    "int_min32": -(2**31),
    "big64": 2**64,
    "big_neg": -(3**150),
    "float": 1.5,
    "float_neg": -0.1,
    "utf8": "héllo ✓",
    "not_utf8": b"\xff\xfe\x00",
    "empty_bin": "",
    "bytes_tuple": b"abc",
    "charlist": [97, 98, 99],
    "list": [1, "a", [2.0, None]],
    "empty_list": [],
    "tuple": (1, (2, "x"), ()),
    "map": {"a": 1, "b": {"c": [1]}},
    "mapset": {1, 2},
    "latin1_atom": "héllo",
    "compressed": ["aaaaaaaaaa"] * 20,
}

PID = bytes.fromhex("835864000d6e6f6e6f6465406e6f686f7374000000600000000000000000")
REF = bytes.fromhex("835a000364000d6e6f6e6f6465406e6f686f7374000000000000cc084670000166555e6e")
FUN = bytes.fromhex(
    "83700000005500294f52812ba73fc142f25b92535463230000000100000000640011656c697869725f636f6d"
    "70696c65725f30610162014a7a945864000d6e6f6e6f6465406e6f686f7374000000600000000000000000"
)
EXPORT = bytes.fromhex("837164000b456c697869722e456e756d6400036d61706102")
PORT = bytes.fromhex("835964000d6e6f6e6f6465406e6f686f73740000000000000000")
BITSTRING = bytes.fromhex("834d000000010320")
IMPROPER = bytes.fromhex("836c0000000161016102")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decode_known_bytes(name):
    value = decode(VECTORS[name])
    assert value == EXPECTED[name]
    assert type(value) is type(EXPECTED[name])


def test_decode_types():
    assert type(decode(VECTORS["atom"])) is str
    assert type(decode(VECTORS["not_utf8"])) is bytes
    assert type(decode(VECTORS["tuple"])) is tuple
    assert type(decode(VECTORS["mapset"])) is set


# Python values whose encoding is byte-for-byte what Erlang writes (maps and atoms aside: we
# write atoms as SMALL_ATOM_UTF8, OTP 25 as ATOM_EXT).
@pytest.mark.parametrize(
    "name",
    ["small_int", "int_neg", "int32", "int_min32", "big64", "big_neg", "float", "float_neg",
     "utf8", "not_utf8", "empty_bin", "empty_list", "tuple"],
)
def test_encode_matches_erlang_bytes(name):
    assert encode(EXPECTED[name]) == VECTORS[name]


def test_encode_atoms_as_small_atom_utf8():
    assert encode(None) == b"\x83\x77\x03nil"
    assert encode(True) == b"\x83\x77\x04true"
    assert encode(False) == b"\x83\x77\x05false"
    assert encode(Atom("ok")) == b"\x83\x77\x02ok"
    assert encode(Atom("é" * 200))[:4] == b"\x83\x76\x01\x90"  # 400 bytes: ATOM_UTF8_EXT


def test_decode_utf8_atoms_of_newer_otp():
    assert decode(b"\x83\x77\x03nil") is None
    assert decode(b"\x83\x77\x05hello") == "hello"
    assert decode(b"\x83\x76\x00\x05hello") == "hello"
    assert decode(b"\x83\x73\x05hello") == "hello"  # SMALL_ATOM_EXT (latin-1)
    # {bytes, <<"abc">>} with a SMALL_ATOM_UTF8 atom.
    assert decode(b"\x83\x68\x02\x77\x05bytes\x6d\x00\x00\x00\x03abc") == b"abc"


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, 2**63, -(2**63) - 1,
        2**2100, -(7**999), 0.0, -0.0, 1e300, 5e-324, "", "x", "héllo ✓", "𝄞", b"\xff",
        [], [1, [2, [3]]], (), (1, "a"), {"a": 1, "b": [1, 2]}, {1: "one", (1, 2): "x"},
        {1, 2, "x"}, [list(range(300))], tuple(range(300)),
    ],
)
def test_round_trip(value):
    assert decode(encode(value)) == value


def test_special_floats_become_atoms():
    assert encode(float("nan")) == b"\x83\x77\x03nan"
    assert encode(math.inf) == b"\x83\x77\x08infinity"
    assert encode(-math.inf) == b"\x83\x77\x0cneg_infinity"
    assert decode(encode([math.nan, math.inf, -math.inf, 1.5])) == [
        "nan", "infinity", "neg_infinity", 1.5
    ]


def test_python_collections_map_as_in_design():
    assert decode(encode(frozenset(["a"]))) == {"a"}
    assert decode(encode(bytearray(b"ab"))) == "ab"
    assert decode(encode(memoryview(b"\x00\xff"))) == b"\x00\xff"
    assert decode(encode({Atom("k"): 1})) == {"k": 1}
    # A set is a MapSet struct: __struct__, map (element => []) and the running Elixir's
    # other fields (version 2 on Elixir 1.14, none later).
    raw = encode({7})
    assert b"Elixir.MapSet" in raw and b"__struct__" in raw and b"version" not in raw
    try:
        set_mapset_fields([("version", 2)])
        assert decode(encode({7})) == {7}
        assert b"version" in encode({7})
    finally:
        set_mapset_fields([])


def test_keys_that_encode_alike_keep_the_last_value():
    # "a" and b"a" are both the binary <<"a">>: Erlang rejects a map with a repeated key.
    value = decode(encode({"a": 1, b"a": 2}))
    assert value == {"a": 2}
    assert decode(encode({"a", b"a"})) == {"a"}
    assert decode(encode({float("nan"): 1, -float("nan"): 2})) == {"nan": 2}


def test_a_string_keyed_struct_is_not_a_mapset():
    # %{"__struct__" => "Elixir.MapSet", "map" => %{}} (string keys) stays a dict.
    value = {"__struct__": "Elixir.MapSet", "map": {}}
    assert decode(encode(value)) == value


def test_pids_keep_their_exact_encoding():
    pid = decode(PID)
    assert isinstance(pid, Pid)
    assert pid.raw == PID[1:]
    assert encode(pid) == PID
    assert decode(encode([pid, {"p": pid}])) == [pid, {"p": pid}]
    assert hash(pid) == hash(decode(PID))


@pytest.mark.parametrize(
    "data, what",
    [(REF, "a reference"), (FUN, "a function"), (EXPORT, "a function"), (PORT, "a port"),
     (BITSTRING, "a bitstring")],
)
def test_unconvertible_terms(data, what):
    with pytest.raises(ConversionError, match=f"cannot convert {what}"):
        decode(data)


def test_improper_list():
    with pytest.raises(ConversionError, match="improper"):
        decode(IMPROPER)


def test_unhashable_key_is_a_conversion_error():
    # %{[1] => 2}: a list key has no Python dict counterpart.
    data = b"\x83\x74\x00\x00\x00\x01\x6c\x00\x00\x00\x01\x61\x01\x6a\x61\x02"
    # 3.14 words it "cannot use 'list' as a dict key (unhashable type: 'list')".
    with pytest.raises(ConversionError, match="TypeError: .*unhashable"):
        decode(data)


def test_malformed_input():
    for data in [b"", b"\x83", b"\x82\x61\x01", b"\x83\x6d\x00\x00\x00\x09ab", b"\x83\x61\x01\x00",
                 b"\x83\xff"]:
        with pytest.raises(ConversionError):
            decode(data)


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def _nested_bytes(depth):
    # [[[...]]] as Erlang writes it: LIST_EXT(1) ... NIL NIL ...
    return b"\x83" + b"\x6c\x00\x00\x00\x01" * depth + b"\x6a" + b"\x6a" * depth


def _same_nesting(a, b):
    """a == b for the single-element nested lists of _nested, without recursion (Python 3.12+
    compares deeply nested lists against a C recursion limit)."""
    while isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False
        if not a:
            return True
        a, b = a[0], b[0]
    return a == b


def test_depth_limit_in_both_directions():
    ok = _nested(1_500)
    assert _same_nesting(decode(encode(ok)), ok)
    assert _same_nesting(decode(_nested_bytes(1_500)), ok)
    with pytest.raises(ConversionError, match=f"nested deeper than {MAX_DEPTH}"):
        encode(_nested(100_000))
    with pytest.raises(ConversionError, match=f"nested deeper than {MAX_DEPTH}"):
        decode(_nested_bytes(100_000))


def test_objects_with_snakepit_or_tolist():
    class Point:
        def __snakepit__(self):
            return {"x": 1, "y": 2}

    class Vector:
        def tolist(self):
            return [1, 2]

    class Broken:
        def __snakepit__(self):
            raise ValueError("no")

    assert decode(encode(Point())) == {"x": 1, "y": 2}
    assert decode(encode(Vector())) == [1, 2]
    with pytest.raises(ConversionError, match="ValueError: no"):
        encode(Broken())
    with pytest.raises(ConversionError, match="of type object"):
        encode(object())
    with pytest.raises(ConversionError, match=r"of type test_etf\.test_objects"):
        encode(type("Thing", (), {"__qualname__": "test_objects.Thing"})())


def test_numpy_values():
    np = pytest.importorskip("numpy")
    assert decode(encode(np.arange(6).reshape(2, 3))) == [[0, 1, 2], [3, 4, 5]]
    assert decode(encode(np.float64(2.5))) == 2.5
    assert decode(encode(np.int64(7))) == 7


def test_surrogates_are_written_like_surrogatepass():
    assert encode("\ud800") == b"\x83\x6d\x00\x00\x00\x03\xed\xa0\x80"


def test_large_binaries():
    blob = bytes(range(256)) * 1000
    assert decode(encode(blob)) == blob
    assert decode(b"\x83P" + len(encode(blob)[1:]).to_bytes(4, "big")
                  + zlib.compress(encode(blob)[1:])) == blob


ERLANG_CASES = [
    (None, "nil"),
    ([True, False], "[true, false]"),
    (2**200, "1 bsl 200"),
    (-(2**70), "-(1 bsl 70)"),
    ([1.5, float("nan"), math.inf, -math.inf], "[1.5, nan, infinity, neg_infinity]"),
    ("héllo", "<<\"héllo\"/utf8>>"),
    (b"\xff", "<<255>>"),
    ((1, [2, (3,)], {}), "{1, [2, {3}], #{}}"),
    ({"a": 1, 2: [3]}, "#{<<\"a\">> => 1, 2 => [3]}"),
    ({1, 2}, "#{'__struct__' => 'Elixir.MapSet', map => #{1 => [], 2 => []}}"),
    ({Atom("category"): Atom("python_error")}, "#{category => python_error}"),
    (list(range(1000)), "lists:seq(0, 999)"),
]


@pytest.mark.skipif(shutil.which("erl") is None, reason="erl is not installed")
def test_erlang_decodes_what_python_encodes():
    checks = ",".join(
        f"binary_to_term(binary:decode_hex(<<\"{encode(v).hex()}\">>), [safe]) =:= ({expr})"
        for v, expr in ERLANG_CASES
    )
    script = f"io:format(\"~p~n\", [[{checks}]]), halt()."
    out = subprocess.run(
        ["erl", "-noshell", "-eval", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[" + ",".join(["true"] * len(ERLANG_CASES)) + "]"


@pytest.mark.parametrize(
    "values",
    [
        list(range(-5, 300)),  # 32-bit integers, one struct call
        list(range(100_000)),  # long: packed, then tags woven in
        [i % 256 for i in range(1_000)],  # SMALL_INTEGER run
        [2**31 - 1, -(2**31)] * 10,
        [i / 7 for i in range(50)],
        [i / 7 for i in range(10_000)],
        [1, 2, 3, 4, 5, 6, 7, 2**40],  # one big integer: element by element
        [1.0] * 7 + [float("inf")],  # an infinity: element by element, as an atom
        [True] * 10,
        [1] * 9 + [True],
        [1.0] * 9 + [1],
    ],
)
def test_lists_of_numbers_in_bulk_keep_values_and_types(values):
    back = decode(encode(values))
    expected = ["infinity" if v == math.inf else v for v in values]
    assert back == expected
    assert [type(x) for x in back] == [type(x) for x in expected]


def test_bulk_decoding_matches_erlang_bytes():
    # :erlang.term_to_binary(Enum.to_list(1..300)): SMALL_INTEGER then INTEGER elements.
    data = (b"\x83\x6c" + (300).to_bytes(4, "big")
            + b"".join(b"\x61" + bytes([i]) for i in range(1, 256))
            + b"".join(b"\x62" + i.to_bytes(4, "big") for i in range(256, 301)) + b"\x6a")
    assert decode(data) == list(range(1, 301))
    data = (b"\x83\x6c" + (10).to_bytes(4, "big")
            + (b"\x46" + struct.pack(">d", 1.5)) * 10 + b"\x6a")
    assert decode(data) == [1.5] * 10
    with pytest.raises(ConversionError, match="improper"):
        decode(data[:-1] + b"\x61\x01")
