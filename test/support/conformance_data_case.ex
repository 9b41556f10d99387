defmodule Snakepit.ConformanceDataCase do
  @moduledoc false
  # Large data in every worker profile (README, "Large data"; docs/architecture.md, "Large
  # data"): {:buffer, _} arguments, bytes-like results, %Snakepit.NDArray{} both ways, the
  # ndarray: option per pool and per call, and no long schedules on the caller's scheduler.
  # Driven through the helpers of Snakepit.ConformanceCase; the Python side is
  # test/support/python/snakepit_data_adapters.py.
  use ExUnit.CaseTemplate

  using opts do
    profile = Keyword.fetch!(opts, :profile)

    quote do
      import Snakepit.ConformanceCase,
        only: [start!: 2, call: 4, call: 5, stream: 4, stream: 5, capacity: 2, wait_for: 1]

      import Snakepit.ConformanceDataCase

      alias Snakepit.{Error, NDArray}

      @moduletag profile: unquote(profile)
      @adapter "snakepit_data_adapters.DataAdapter"

      setup do
        profile = unquote(profile)
        pool = start!(profile, [adapter: @adapter] ++ capacity(profile, 4))
        {:ok, profile: profile, pool: pool}
      end

      describe "{:buffer, binary} arguments (#{unquote(profile)})" do
        test "arrive as read-only memoryviews with the binary's bytes", ctx do
          for bin <- ["", "abc", :binary.copy(<<1, 2, 3, 255>>, 50_000), <<0>>] do
            assert {:ok, info} =
                     call(ctx.profile, ctx.pool, "describe_buffer", %{buf: Snakepit.buffer(bin)})

            assert info["type"] == "memoryview"
            assert info["readonly"] == true
            assert info["writable"] == false
            assert info["len"] == byte_size(bin)
            # The view's bytes come back unchanged.
            assert {:ok, ^bin} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, bin}})
          end
        end

        test "a sub-binary crosses with its own bytes only", ctx do
          big = :binary.copy(<<7>>, 200_000) <> "tail"
          <<_::binary-size(100), part::binary-size(1000), _::binary>> = big

          assert {:ok, ^part} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, part}})
        end

        test "stay valid while Python holds them, after the caller dropped the binary", ctx do
          key = "k#{System.unique_integer([:positive])}"
          expected = digest(ctx, pattern(300_000))

          # The binary exists only inside this task, which ends (and is collected) before
          # Python reads the view again.
          Task.async(fn ->
            bin = pattern(300_000)

            assert {:ok, 300_000} =
                     call(ctx.profile, ctx.pool, "hold", %{key: key, buf: {:buffer, bin}})
          end)
          |> Task.await(60_000)

          :erlang.garbage_collect()
          _ = :binary.copy(<<0>>, 10_000_000)
          assert {:ok, ^expected} = call(ctx.profile, ctx.pool, "release_held", %{key: key})
        end

        test "a plain binary still arrives as str or bytes", ctx do
          assert {:ok, %{"type" => "str"}} =
                   call(ctx.profile, ctx.pool, "inspect", %{value: "abc"})

          assert {:ok, %{"type" => "bytes"}} =
                   call(ctx.profile, ctx.pool, "inspect", %{value: <<255>>})
        end
      end

      describe "bytes-like results (#{unquote(profile)})" do
        test "bytes, bytearray and memoryview results of every size come back intact", ctx do
          for n <- [0, 10, 65_535, 65_536, 200_001],
              kind <- ["bytes", "bytearray", "memoryview"] do
            assert {:ok, bin} = call(ctx.profile, ctx.pool, "make_bytes", %{n: n, kind: kind})
            assert bin == pattern(n), "#{kind} of #{n} bytes"
          end
        end

        test "writable results one after another each come back with their own bytes", ctx do
          # Copies of writable results may reuse the memory of freed ones (native/snakepit/src/
          # spare.rs): every result must still hold its own bytes, kept or freed meanwhile.
          kept =
            for i <- 1..60, reduce: [] do
              acc ->
                n = Enum.at([65_536, 300_000, 1_100_000], rem(i, 3))
                kind = if rem(i, 2) == 0, do: "ndarray", else: "bytearray"
                opts = if kind == "ndarray", do: [ndarray: :struct], else: []

                {:ok, result} =
                  call(ctx.profile, ctx.pool, "filled", %{n: n, byte: i, kind: kind}, opts)

                bin = if kind == "ndarray", do: result.data, else: result
                assert bin == :binary.copy(<<i>>, n)
                :erlang.garbage_collect()
                if rem(i, 5) == 0, do: [{i, bin} | acc], else: acc
            end

          for {i, bin} <- kept, do: assert(bin == :binary.copy(<<i>>, byte_size(bin)))
        end

        test "large results survive garbage collection and many concurrent callers", ctx do
          results =
            1..200
            |> Task.async_stream(
              fn i ->
                n = 65_536 + i
                {:ok, bin} = call(ctx.profile, ctx.pool, "make_bytes", %{n: n})
                {:ok, back} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, bin}})
                :erlang.garbage_collect()
                {n, bin, back}
              end,
              max_concurrency: 50,
              timeout: 120_000
            )
            |> Enum.map(fn {:ok, r} -> r end)

          assert length(results) == 200

          for {n, bin, back} <- results do
            assert bin == pattern(n)
            assert back == bin
          end
        end
      end

      describe "%Snakepit.NDArray{} (#{unquote(profile)})" do
        test "arrives as a read-only NumPy array over the data, every dtype", ctx do
          for {dtype, np} <- [
                {{:f, 64}, "float64"},
                {{:f, 32}, "float32"},
                {{:s, 8}, "int8"},
                {{:s, 64}, "int64"},
                {{:u, 16}, "uint16"},
                {{:u, 8}, "uint8"}
              ] do
            a = NDArray.from_list([1, 2, 3, 4, 5, 6], dtype, {3, 2})
            assert {:ok, info} = call(ctx.profile, ctx.pool, "ndarray_info", %{a: a})

            assert info == %{
                     "type" => "ndarray",
                     "dtype" => np,
                     "shape" => [3, 2],
                     "writeable" => false,
                     "sum" => 21.0
                   }
          end
        end

        test "results are lists by default and NDArrays with ndarray: :struct", ctx do
          a = NDArray.from_list([1.5, 2.5, -3.0, 4.0], {:f, 64}, {2, 2})

          assert {:ok, [[3.0, 5.0], [-6.0, 8.0]]} = call(ctx.profile, ctx.pool, "double", %{a: a})

          assert {:ok, %NDArray{dtype: {:f, 64}, shape: {2, 2}} = d} =
                   call(ctx.profile, ctx.pool, "double", %{a: a}, ndarray: :struct)

          assert NDArray.to_list(d) == [3.0, 5.0, -6.0, 8.0]

          assert {:ok, [[1.5, 2.5], [-3.0, 4.0]]} =
                   call(ctx.profile, ctx.pool, "identity", %{a: a}, ndarray: :list)

          assert {:ok, ^a} = call(ctx.profile, ctx.pool, "identity", %{a: a}, ndarray: :struct)
        end

        test "arrays inside containers, non-contiguous ones in C order", ctx do
          assert {:ok, %{"a" => a, "t" => t, "n" => 1}} =
                   call(ctx.profile, ctx.pool, "arrays", %{rows: 2, cols: 3}, ndarray: :struct)

          assert %NDArray{dtype: {:s, 32}, shape: {2, 3}} = a
          assert NDArray.to_list(a) == [0, 1, 2, 3, 4, 5]
          assert %NDArray{dtype: {:s, 32}, shape: {3, 2}} = t
          assert NDArray.to_list(t) == [0, 3, 1, 4, 2, 5]
        end

        test "a large array round trip keeps every byte", ctx do
          n = 1_000_000

          assert {:ok, %NDArray{shape: {1000, 1000}, dtype: {:f, 64}} = a} =
                   call(ctx.profile, ctx.pool, "arange", %{n: n, shape: [1000, 1000]},
                     ndarray: :struct
                   )

          assert byte_size(a.data) == 8 * n
          assert {:ok, ^a} = call(ctx.profile, ctx.pool, "identity", %{a: a}, ndarray: :struct)
          assert {:ok, info} = call(ctx.profile, ctx.pool, "ndarray_info", %{a: a})
          assert info["sum"] == n * (n - 1) / 2
        end

        test "bad arrays and bad options are errors naming the problem", ctx do
          bad = %NDArray{data: <<1, 2, 3>>, dtype: {:f, 64}, shape: {2}}

          assert {:error, %Error{category: :conversion, message: m}} =
                   call(ctx.profile, ctx.pool, "ndarray_info", %{a: bad})

          assert m =~ "3 bytes" and m =~ "needs 16"

          odd = %NDArray{data: <<1, 2>>, dtype: {:q, 16}, shape: {1}}

          assert {:error, %Error{category: :conversion, message: m}} =
                   call(ctx.profile, ctx.pool, "ndarray_info", %{a: odd})

          assert m =~ "unsupported NDArray dtype" and m =~ "{:f, 64}"

          assert {:error, %Error{category: :validation, message: m}} =
                   call(ctx.profile, ctx.pool, "double", %{a: bad}, ndarray: :matrix)

          assert m =~ "ndarray" and m =~ ":struct"

          assert {:error, %Error{category: :validation, message: m}} =
                   call(ctx.profile, ctx.pool, "no_such", %{}, ndarray: :struct)

          assert m =~ "unknown command" and m =~ "double"
          # The pool still works.
          assert {:ok, 1} = call(ctx.profile, ctx.pool, "echo", %{value: 1})
        end

        test "the pool's ndarray: option, and a call overriding it", ctx do
          pool =
            start!(ctx.profile, [adapter: @adapter, ndarray: :struct] ++ capacity(ctx.profile, 1))

          assert {:ok, %NDArray{shape: {4}, dtype: {:s, 64}}} =
                   call(ctx.profile, pool, "arange", %{n: 4, dtype: "int64"})

          assert {:ok, [0, 1, 2, 3]} =
                   call(ctx.profile, pool, "arange", %{n: 4, dtype: "int64"}, ndarray: :list)

          assert {:ok, names} = Snakepit.tools(pool)
          refute Enum.any?(names, &String.starts_with?(&1["name"], "__snakepit_"))
        end

        test "an unknown pool ndarray: value is a config error naming the key", ctx do
          assert {:error, %Error{message: m}} =
                   Snakepit.ConformanceCase.start(ctx.profile, adapter: @adapter, ndarray: :nope)

          assert m =~ "ndarray" and m =~ ":struct"
        end
      end

      describe "Nx tensors (#{unquote(profile)}; test/support/fake_nx.ex stands in for Nx)" do
        test "an %Nx.Tensor{} argument arrives as a NumPy array", ctx do
          t = [1.0, 2.0, 3.0, 4.5] |> NDArray.from_list({:f, 32}, {4}) |> Map.fetch!(:data)
          t = t |> Nx.from_binary({:f, 32}) |> Nx.reshape({2, 2})

          assert {:ok, info} = call(ctx.profile, ctx.pool, "ndarray_info", %{a: t})

          assert info == %{
                   "type" => "ndarray",
                   "dtype" => "float32",
                   "shape" => [2, 2],
                   "writeable" => false,
                   "sum" => 10.5
                 }
        end

        test "ndarray: :nx returns tensors, inside containers too", ctx do
          t = NDArray.from_list([1, 2, 3, 4, 5, 6], {:s, 64}, {2, 3}) |> NDArray.to_nx()

          assert {:ok, %Nx.Tensor{type: {:s, 64}, shape: {2, 3}} = d} =
                   call(ctx.profile, ctx.pool, "double", %{a: t}, ndarray: :nx)

          assert NDArray.to_list(NDArray.from_nx(d)) == [2, 4, 6, 8, 10, 12]

          assert {:ok, %{"a" => %Nx.Tensor{shape: {2, 3}}, "t" => %Nx.Tensor{shape: {3, 2}}}} =
                   call(ctx.profile, ctx.pool, "arrays", %{rows: 2, cols: 3}, ndarray: :nx)
        end

        test "a tensor on another backend is an error saying what to do", ctx do
          t = %Nx.Tensor{data: :on_a_device, type: {:f, 32}, shape: {1}}

          assert {:error, %Error{category: :conversion, message: m}} =
                   call(ctx.profile, ctx.pool, "ndarray_info", %{a: t})

          assert m =~ "Nx.backend_transfer"
        end
      end

      describe "the pool's ndarray: :nx (#{unquote(profile)}; fake Nx in test/support)" do
        setup ctx do
          # One worker: the generator's finally and the `flag` call that reads it share it.
          nx_pool =
            start!(ctx.profile, [adapter: @adapter, ndarray: :nx] ++ capacity(ctx.profile, 1))

          {:ok, nx_pool: nx_pool}
        end

        test "results are tensors, inside containers too, and async def results", ctx do
          assert {:ok, %Nx.Tensor{type: {:s, 64}, shape: {2, 2}} = t} =
                   call(ctx.profile, ctx.nx_pool, "arange", %{n: 4, dtype: "int64", shape: [2, 2]})

          assert tensor_list(t) == [0, 1, 2, 3]

          assert {:ok, %{"a" => %Nx.Tensor{shape: {2, 3}}, "t" => %Nx.Tensor{shape: {3, 2}}}} =
                   call(ctx.profile, ctx.nx_pool, "arrays", %{rows: 2, cols: 3})

          assert {:ok, %Nx.Tensor{type: {:s, 32}} = a} =
                   call(ctx.profile, ctx.nx_pool, "aarange", %{n: 3})

          assert tensor_list(a) == [0, 1, 2]
          # Not arrays: unchanged.
          assert {:ok, [1, "x"]} = call(ctx.profile, ctx.nx_pool, "echo", %{value: [1, "x"]})
        end

        test "a call's ndarray: overrides the pool's, both ways", ctx do
          args = %{n: 3, dtype: "int64"}

          # :nx pool, call :list / :struct.
          assert {:ok, [0, 1, 2]} = call(ctx.profile, ctx.nx_pool, "arange", args, ndarray: :list)

          assert {:ok, %NDArray{shape: {3}} = a} =
                   call(ctx.profile, ctx.nx_pool, "arange", args, ndarray: :struct)

          assert NDArray.to_list(a) == [0, 1, 2]

          # :list pool (ctx.pool), call :nx; and without the option, lists.
          assert {:ok, %Nx.Tensor{shape: {3}}} =
                   call(ctx.profile, ctx.pool, "arange", args, ndarray: :nx)

          assert {:ok, [0, 1, 2]} = call(ctx.profile, ctx.pool, "arange", args)
        end

        test "concurrent callers each get their own tensors", ctx do
          results =
            1..200
            |> Task.async_stream(
              fn i ->
                {i, call(ctx.profile, ctx.nx_pool, "arange", %{n: rem(i, 7) + 1, dtype: "int64"})}
              end,
              max_concurrency: 100,
              timeout: 120_000
            )
            |> Enum.map(fn {:ok, r} -> r end)

          assert length(results) == 200

          for {i, {:ok, %Nx.Tensor{} = t}} <- results,
              do: assert(tensor_list(t) == Enum.to_list(0..rem(i, 7)))

          assert Enum.all?(results, &match?({_, {:ok, %Nx.Tensor{}}}, &1))
        end

        test "stream items follow the pool's and the call's ndarray:", ctx do
          items = stream(ctx.profile, ctx.nx_pool, "stream_arrays", %{count: 3}) |> Enum.to_list()

          assert [[0, 1, 2], [1, 2, 3], [2, 3, 4]] ==
                   Enum.map(items, fn %{"a" => %Nx.Tensor{} = t} -> tensor_list(t) end)

          assert [%{"a" => [0, 1, 2]}] =
                   stream(ctx.profile, ctx.nx_pool, "stream_arrays", %{count: 1}, ndarray: :list)
                   |> Enum.to_list()

          assert [%{"a" => %NDArray{}}] =
                   stream(ctx.profile, ctx.pool, "stream_arrays", %{count: 1}, ndarray: :struct)
                   |> Enum.to_list()

          assert [%{"a" => %Nx.Tensor{}}, %{"a" => %Nx.Tensor{}}] =
                   stream(ctx.profile, ctx.pool, "stream_arrays", %{count: 2}, ndarray: :nx)
                   |> Enum.to_list()

          assert [%{"a" => [0, 1, 2]}] =
                   stream(ctx.profile, ctx.pool, "stream_arrays", %{count: 1}) |> Enum.to_list()

          assert [%Nx.Tensor{shape: {2}} = t0, %Nx.Tensor{}] =
                   stream(ctx.profile, ctx.nx_pool, "astream_arrays", %{count: 2})
                   |> Enum.to_list()

          assert tensor_list(t0) == [0.0, 0.0]
        end

        test "a halted stream of wrapped items still runs the generator's finally", ctx do
          key = "k#{System.unique_integer([:positive])}"

          assert [%{"i" => 0}] =
                   stream(ctx.profile, ctx.nx_pool, "stream_arrays", %{count: 1000, key: key})
                   |> Enum.take(1)

          assert wait_for(fn ->
                   call(ctx.profile, ctx.nx_pool, "flag", %{key: key}) == {:ok, "closed"}
                 end)
        end

        test "return: :ref on a stream is a validation error", ctx do
          assert_raise Error, ~r/return: :ref does not apply to execute_stream/, fn ->
            stream(ctx.profile, ctx.pool, "stream_arrays", %{count: 1}, return: :ref)
            |> Enum.to_list()
          end

          # The pool is fine.
          assert [_] =
                   stream(ctx.profile, ctx.pool, "stream_arrays", %{count: 1}) |> Enum.to_list()
        end
      end

      describe "scheduler stalls (#{unquote(profile)})" do
        @tag timeout: 300_000
        test "a large argument never holds the caller's scheduler", ctx do
          floats = Enum.map(1..3_000_000, &(&1 * 0.5))
          bin = :binary.copy(<<1>>, 32_000_000)
          array = NDArray.new(bin, {:u, 8}, {32_000_000})

          calls = fn ->
            assert {:ok, info} = call(ctx.profile, ctx.pool, "ndarray_info", %{a: array})
            assert info["sum"] == 32_000_000.0
            assert {:ok, 3_000_000} = call(ctx.profile, ctx.pool, "count", %{items: floats})

            assert [3_000_000, 0.5] =
                     Enum.to_list(
                       Snakepit.execute_stream(ctx.pool, "stream_len", %{items: floats})
                     )
          end

          # Copying these arguments on the caller's scheduler took ~150 ms here. A stall caused
          # by the call happens on every attempt; the OS descheduling the BEAM on a busy
          # machine (tens of ms at times) does not: one clean attempt of three shows there is
          # none.
          attempts =
            Enum.reduce_while(1..3, [], fn _, seen ->
              case long_schedules(calls, 50) do
                [] -> {:halt, :clean}
                events -> {:cont, [events | seen]}
              end
            end)

          assert attempts == :clean
        end
      end
    end
  end

  @doc "n bytes: rem(i, 251) for i in 0..n-1 (as the adapter's make_bytes)."
  def pattern(0), do: ""

  def pattern(n) do
    block = for i <- 0..250, into: <<>>, do: <<i>>
    binary_part(:binary.copy(block, div(n, 251) + 1), 0, n)
  end

  @doc "Python's sha256 of the bytes (the adapter's digest)."
  def digest(ctx, bin) do
    {:ok, info} =
      Snakepit.ConformanceCase.call(ctx.profile, ctx.pool, "describe_buffer", %{
        buf: {:buffer, bin}
      })

    info["sha256"]
  end

  @doc """
  Runs `fun` in this process and returns the long_schedule events (over `ms`) of this process
  meanwhile. A separate collector process monitors (system_monitor never reports the monitor's
  own schedules), and this process is scheduled out once after the monitor is on, since a
  process is only timed from a schedule-in.
  """
  def long_schedules(fun, ms \\ 20) do
    # The system monitor is one per node: tests that use it take turns.
    :global.trans({:snakepit_system_monitor, self()}, fn -> monitored(fun, ms) end)
  end

  defp monitored(fun, ms) do
    me = self()
    collector = spawn_link(fn -> collect(me, []) end)
    previous = :erlang.system_monitor(collector, [{:long_schedule, ms}])

    receive do
    after
      1 -> :ok
    end

    try do
      fun.()
    after
      restore(previous)
    end

    send(collector, {:done, me})

    receive do
      {:long_schedules, events} -> events
    end
  end

  defp restore(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore({pid, opts}), do: :erlang.system_monitor(pid, opts)

  defp collect(me, acc) do
    receive do
      {:monitor, ^me, :long_schedule, info} -> collect(me, [info | acc])
      {:monitor, _, _, _} -> collect(me, acc)
      {:done, ^me} -> send(me, {:long_schedules, Enum.reverse(acc)})
    end
  end

  @doc false
  def tensor_list(tensor), do: tensor |> Snakepit.NDArray.from_nx() |> Snakepit.NDArray.to_list()
end
