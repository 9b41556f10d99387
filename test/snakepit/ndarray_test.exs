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

  test "a call's ndarray: decides over the pool's; a relayed call keeps what it was submitted with" do
    alias Snakepit.CallOptions
    a = NDArray.from_list([1, 2], {:s, 64}, {2})

    assert {:ok, %{"x" => [%Nx.Tensor{}]}} = CallOptions.finish({:ok, %{"x" => [a]}}, [], :nx)
    assert {:ok, ^a} = CallOptions.finish({:ok, a}, [], :struct)
    assert {:ok, ^a} = CallOptions.finish({:ok, a}, [ndarray: :struct], :nx)
    assert {:ok, {%Nx.Tensor{}}} = CallOptions.finish({:ok, {a}}, [ndarray: :nx], :list)
    assert {:error, :e} = CallOptions.finish({:error, :e}, [], :nx)

    # Relayed to another node: the command carries the call's mode (:nx as "struct", finished
    # on this node); over there the pool's :nx must not convert what the call asked for.
    assert Enum.sort(CallOptions.remote_opts(ndarray: :struct, return: :term, timeout: 5)) ==
             [snakepit_ndarray: :struct, timeout: 5]

    assert CallOptions.remote_opts(ndarray: :nx) == [snakepit_ndarray: :struct]
    assert CallOptions.remote_opts(timeout: 5) == [timeout: 5]
    assert {:ok, ^a} = CallOptions.finish({:ok, a}, [snakepit_ndarray: :struct], :nx)
    assert {:ok, %Nx.Tensor{}} = CallOptions.finish({:ok, a}, [snakepit_remote: true], :nx)
  end

  test "Snakepit.ProcessPool refuses ndarray: :nx (its execute/4 takes no result options)" do
    assert {:error, %Snakepit.Error{category: :validation, message: m, details: d}} =
             Snakepit.ProcessPool.start_link(name: :pp_nx, ndarray: :nx, pool_size: 1)

    assert m =~ "ndarray" and m =~ ":nx"
    assert d.key == :ndarray
    assert Snakepit.whereis(:pp_nx) == nil
  end
end

defmodule Snakepit.NDArrayWithoutNxTest do
  # Swaps the module Nx (test/support/fake_nx.ex) for one without Nx's API, as a node without
  # Nx has: global, so these tests run alone (async: false runs after every async module).
  use ExUnit.Case, async: false

  alias Snakepit.{Config, Error}

  setup do
    {:module, Nx} = Code.ensure_loaded(Nx)
    {Nx, beam, file} = :code.get_object_code(Nx)
    forms = [{:attribute, 1, :module, Nx}, {:attribute, 1, :export, []}]
    {:ok, Nx, empty} = :compile.forms(forms, [:binary])
    :code.purge(Nx)
    {:module, Nx} = :code.load_binary(Nx, ~c"no_nx", empty)

    on_exit(fn ->
      :code.purge(Nx)
      {:module, Nx} = :code.load_binary(Nx, file, beam)
      :code.purge(Nx)
    end)

    refute Snakepit.NDArray.nx_loaded?()
    :ok
  end

  test "a pool with ndarray: :nx does not start, with a :validation error naming the key" do
    for profile <- [:thread, :process] do
      name = :"no_nx_#{profile}"

      assert {:error, %Error{category: :validation, message: m, details: d}} =
               Snakepit.start_pool(name: name, worker_profile: profile, ndarray: :nx)

      assert m ==
               "pool #{inspect(name)}: ndarray: :nx needs Nx, which is not loaded " <>
                 "(add :nx to your dependencies, or use ndarray: :struct)"

      assert d == %{key: :ndarray, value: :nx, pool: name}
      assert Snakepit.whereis(name) == nil
    end

    # The config itself is valid (validation does not look for Nx); other modes start.
    assert {:ok, %Config{ndarray: :nx}} = Config.validate_pool(name: :p, ndarray: :nx)
    assert {:ok, _} = Snakepit.start_pool(name: :no_nx_struct, ndarray: :struct, pool_size: 1)
    assert :ok = Snakepit.stop_pool(:no_nx_struct)
  end

  test "a call with ndarray: :nx is a :validation error" do
    assert {:error,
            %Error{category: :validation, message: "ndarray: :nx needs Nx, which is not loaded"}} =
             Snakepit.execute(:hpc_pool, "ping", %{}, ndarray: :nx)
  end
end
