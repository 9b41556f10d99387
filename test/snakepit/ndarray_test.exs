defmodule Snakepit.NDArrayTest do
  use ExUnit.Case, async: true

  alias Snakepit.NDArray

  doctest Snakepit.NDArray
  doctest Snakepit, only: [buffer: 1]

  test "new/3 checks the data size against shape and dtype" do
    assert %NDArray{shape: {2, 2}} = NDArray.new(<<0::size(4 * 32)>>, {:f, 32}, {2, 2})

    assert_raise ArgumentError,
                 ~r/3 bytes of data for shape \{2\} of \{:f, 64\}, which needs 16/,
                 fn ->
                   NDArray.new(<<1, 2, 3>>, {:f, 64}, {2})
                 end

    assert_raise ArgumentError, ~r/unsupported dtype/, fn -> NDArray.new(<<>>, {:q, 7}, {0}) end
  end

  test "lists round-trip for every real dtype" do
    for dtype <- [{:f, 32}, {:f, 64}, {:s, 8}, {:s, 16}, {:s, 32}, {:s, 64}, {:u, 8}, {:u, 64}] do
      values = [0, 1, 2, 100]
      a = NDArray.from_list(values, dtype, {4})

      assert NDArray.to_list(a) ==
               if(elem(dtype, 0) == :f, do: Enum.map(values, &(&1 * 1.0)), else: values)
    end
  end

  test "to_nx and from_nx go through Nx's API (the stand-in in test/support/fake_nx.ex)" do
    a = NDArray.from_list([1, 2, 3, 4, 5, 6], {:s, 16}, {3, 2})
    t = NDArray.to_nx(a)
    assert %Nx.Tensor{type: {:s, 16}, shape: {3, 2}} = t
    assert NDArray.from_nx(t) == a
  end

  test "a call option ndarray: other than :list, :struct or :nx is a validation error" do
    assert {:error, %Snakepit.Error{category: :validation, message: m}} =
             Snakepit.CallOptions.submission("echo", %{}, ndarray: "struct")

    assert m =~ ":list, :struct, :nx"
    assert {:ok, {"echo", %{}}} = Snakepit.CallOptions.submission("echo", %{}, timeout: 5)
  end
end
