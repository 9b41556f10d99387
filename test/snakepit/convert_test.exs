defmodule Snakepit.ConvertTest do
  # The term mapping (README, "Terms and Python"), through a real pool, both directions.
  use Snakepit.PoolCase, async: true

  setup_all do
    name = :convert_pool
    {:ok, _} = Snakepit.start_pool(name: name, adapter: adapter(), threads_per_worker: 2)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    %{pool: name}
  end

  defp echo(pool, value), do: Snakepit.execute(pool, "echo", %{value: value})
  defp py_type(pool, value), do: Snakepit.execute!(pool, "inspect", %{value: value})["type"]

  test "nil, true, false", %{pool: p} do
    for v <- [nil, true, false], do: assert(echo(p, v) == {:ok, v})
    assert py_type(p, nil) == "NoneType"
    assert py_type(p, true) == "bool"
  end

  test "other atoms become str and come back as binaries", %{pool: p} do
    assert echo(p, :hello) == {:ok, "hello"}
    assert py_type(p, :hello) == "str"
  end

  test "integers of any size", %{pool: p} do
    for v <- [0, -1, 42, 2 ** 62, -(2 ** 63), 2 ** 64, 2 ** 200, -(3 ** 150)] do
      assert echo(p, v) == {:ok, v}
    end

    assert py_type(p, 2 ** 100) == "int"
  end

  test "floats, and NaN and infinities from Python as atoms", %{pool: p} do
    for v <- [0.0, -1.5, 1.0e300, 5.0e-324], do: assert(echo(p, v) == {:ok, v})
    assert Snakepit.execute(p, "floats", %{}) == {:ok, [:nan, :infinity, :neg_infinity, 1.5]}
  end

  test "UTF-8 binaries are str; other binaries and {:bytes, bin} are bytes", %{pool: p} do
    assert echo(p, "héllo ✓") == {:ok, "héllo ✓"}
    assert py_type(p, "héllo") == "str"
    assert echo(p, <<0xFF, 0xFE, 0>>) == {:ok, <<0xFF, 0xFE, 0>>}
    assert py_type(p, <<0xFF, 0xFE>>) == "bytes"
    assert py_type(p, {:bytes, "abc"}) == "bytes"
    assert echo(p, {:bytes, "abc"}) == {:ok, "abc"}
    big = :rand.bytes(200_000)
    assert echo(p, big) == {:ok, big}
  end

  test "lists and tuples", %{pool: p} do
    assert echo(p, [1, "a", [2.0, nil]]) == {:ok, [1, "a", [2.0, nil]]}
    assert echo(p, {1, {2, "x"}, []}) == {:ok, {1, {2, "x"}, []}}
    assert py_type(p, {1, 2}) == "tuple"
    assert py_type(p, [1, 2]) == "list"
  end

  test "maps: atom keys become str, come back as string keys", %{pool: p} do
    assert echo(p, %{"b" => %{c: [1]}, a: 1}) == {:ok, %{"a" => 1, "b" => %{"c" => [1]}}}
    assert echo(p, %{1 => "one", {1, 2} => :x}) == {:ok, %{1 => "one", {1, 2} => "x"}}
  end

  test "MapSet <-> set, frozenset -> MapSet", %{pool: p} do
    assert echo(p, MapSet.new([1, 2, "x"])) == {:ok, MapSet.new([1, 2, "x"])}
    assert py_type(p, MapSet.new([1])) == "set"
    {:ok, c} = Snakepit.execute(p, "collections", %{})
    assert c["set"] == MapSet.new([1, 2, 3])
    assert c["frozenset"] == MapSet.new(["a"])
    assert c["tuple"] == {1, "two", 3.0}
    assert c["bytes"] == <<0, 255>>
    assert c["bytearray"] == "ab"
    assert c["int_keys"] == %{1 => "one"}
  end

  test "pids cross as snakepit_bridge.Pid and Python can send to them", %{pool: p} do
    assert echo(p, self()) == {:ok, self()}
    assert py_type(p, self()) == "Pid"
    assert {:ok, pid} = Snakepit.execute(p, "send_to", %{pid: self(), message: %{hi: [1, 2]}})
    assert pid == self()
    assert_receive %{"hi" => [1, 2]}, 30_000
  end

  test "NumPy arrays and scalars, objects with __snakepit__", %{pool: p} do
    assert {:ok, %{"array" => [[0, 1, 2], [3, 4, 5]], "scalar" => 2.5, "int" => 7}} =
             Snakepit.execute(p, "numpy_values", %{})

    assert Snakepit.execute(p, "custom", %{}) == {:ok, %{"x" => 1, "y" => 2}}
  end

  test "deep nesting within the limit round-trips", %{pool: p} do
    deep = Enum.reduce(1..1_500, [], fn _, acc -> [acc] end)
    assert echo(p, deep) == {:ok, deep}
    assert {:ok, from_py} = Snakepit.execute(p, "nested", %{depth: 1_500})
    assert from_py == deep
  end

  test "a large nested argument converts, and Python's GC is on again afterwards", %{pool: p} do
    # 20,000 small maps: past the point where the conversion pauses the cyclic GC.
    value = for i <- 1..20_000, do: %{"i" => i, "tags" => [i]}

    assert {:ok, %{"enabled" => true, "size" => 20_000}} =
             Snakepit.execute(p, "gc_state", %{value: value})

    assert echo(p, value) == {:ok, value}
    assert {:ok, %{"enabled" => true}} = Snakepit.execute(p, "gc_state", %{})
  end

  test "nesting past the limit is a conversion error, not a crash", %{pool: p} do
    deep = Enum.reduce(1..100_000, [], fn _, acc -> [acc] end)
    assert {:error, %Snakepit.Error{category: :conversion, message: msg}} = echo(p, deep)
    assert msg =~ "nested deeper than"

    assert {:error, %Snakepit.Error{category: :conversion}} =
             Snakepit.execute(p, "nested", %{depth: 100_000})
  end

  test "functions, refs and ports cannot cross", %{pool: p} do
    for v <- [fn -> 1 end, make_ref(), hd(Port.list() ++ [nil])], v != nil do
      assert {:error, %Snakepit.Error{category: :conversion, message: msg}} = echo(p, v)
      assert msg =~ "cannot convert"
    end
  end

  test "unconvertible Python results name the type", %{pool: p} do
    assert {:error, %Snakepit.Error{category: :conversion, message: msg}} =
             Snakepit.execute(p, "unconvertible", %{})

    assert msg =~ "of type object"
  end

  test "improper lists are rejected", %{pool: p} do
    assert {:error, %Snakepit.Error{category: :conversion}} = echo(p, [1 | 2])
  end

  test "arguments: map = kwargs, keyword list = kwargs, list = positional, nil = none", %{pool: p} do
    assert Snakepit.execute(p, "echo", value: 5) == {:ok, 5}
    assert Snakepit.execute(p, "positional", [1, "b", [3]]) == {:ok, [1, "b", [3]]}
    assert Snakepit.execute(p, "echo", nil) == {:ok, nil}

    assert {:error, %Snakepit.Error{category: :conversion}} =
             Snakepit.execute(p, "echo", "not args")
  end
end
