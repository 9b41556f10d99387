defmodule Snakepit.ConformanceCase do
  @moduledoc false
  # One set of cases run against every worker profile (docs/architecture.md): the term mapping,
  # errors, timeouts and cancellation, concurrency, stats and tools.
  #
  # `Snakepit.ConformanceThreadTest` and `Snakepit.ConformanceProcessTest` below `use` this
  # template with `profile: :thread | :process | :process_threaded` (:process workers of two
  # threads each). The helpers `start/2`, `call/5`, `stats/2`,
  # `tools/2` and `stop/2` are the only places that know how each profile is driven; once
  # `Snakepit.start_pool/1` routes `worker_profile: :process`, the :process clauses become
  # the same as the :thread ones.
  use ExUnit.CaseTemplate

  alias Snakepit.Error

  @adapter "snakepit_test_adapters.TestAdapter"

  def adapter, do: @adapter

  @doc "Starts a pool of `profile` with `opts`; returns its name."
  def start(profile, opts) do
    name =
      Keyword.get_lazy(opts, :name, fn ->
        :"conf_#{profile}_#{System.unique_integer([:positive])}"
      end)

    opts =
      Keyword.merge(
        [name: name, adapter: @adapter, worker_profile: worker_profile(profile)],
        opts
      )

    with {:ok, _} <- Snakepit.start_pool(opts), do: {:ok, name}
  end

  def start!(profile, opts) do
    {:ok, pool} = start(profile, opts)
    ExUnit.Callbacks.on_exit(fn -> stop(profile, pool) end)
    pool
  end

  def stop(_profile, name), do: Snakepit.stop_pool(name)

  @doc "The same public API for either profile."
  def call(_profile, name, command, args, opts \\ []),
    do: Snakepit.execute(name, command, args, opts)

  def stream(_profile, name, command, args, opts \\ []),
    do: Snakepit.execute_stream(name, command, args, opts)

  def stats(_profile, name), do: elem(Snakepit.stats(name), 1)
  def tools(_profile, name), do: Snakepit.tools(name)

  @doc """
  Polls `fun` until it returns true (then true) or `timeout` ms pass (then false). The timeout
  only bounds a failure on a loaded machine; it orders nothing.
  """
  def wait_for(fun, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Enum.reduce_while(Stream.repeatedly(fn -> nil end), false, fn _, _ ->
      cond do
        fun.() -> {:halt, true}
        System.monotonic_time(:millisecond) > deadline -> {:halt, false}
        true -> {:cont, Process.sleep(10) && false}
      end
    end)
  end

  # Events instead of sleeps: `started_*` calls send {tag, os_pid, thread} to the test process
  # once they run; `started_hold` then returns only when its release file exists.

  @doc "A path that `release/1` creates; removed when the test ends."
  def release_file do
    path =
      Path.join(
        System.tmp_dir!(),
        "snakepit_release_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    ExUnit.Callbacks.on_exit(fn -> File.rm(path) end)
    path
  end

  def release(path), do: File.write!(path, "")

  @doc "A task whose call runs until `path` exists; its started message comes to the caller."
  def async_hold(profile, pool, tag, path) do
    test = self()

    Task.async(fn ->
      call(profile, pool, "started_hold", %{pid: test, tag: tag, path: path}, timeout: :infinity)
    end)
  end

  def assert_started(tag) do
    ExUnit.Assertions.assert_receive({^tag, _os_pid, _thread}, 30_000)
  end

  @doc "Pool options giving `capacity` concurrent calls in either profile."
  def capacity(:thread, n), do: [pool_size: 1, threads_per_worker: n]
  def capacity(:process, n), do: [pool_size: n]
  # OS workers with several threads each (the guide's threaded server), 1 thread for n = 1.
  def capacity(:process_threaded, 1), do: [pool_size: 1, threads_per_worker: 1]
  def capacity(:process_threaded, n), do: [pool_size: div(n, 2), threads_per_worker: 2]
  def capacity(:subinterpreter, 1), do: [pool_size: 1, threads_per_worker: 1]
  def capacity(:subinterpreter, n), do: [pool_size: div(n, 2), threads_per_worker: 2]

  @doc "The `worker_profile` of a template profile."
  def worker_profile(:process_threaded), do: :process
  def worker_profile(profile), do: profile

  using opts do
    profile = Keyword.fetch!(opts, :profile)

    quote do
      import Snakepit.ConformanceCase
      alias Snakepit.Error

      @profile unquote(profile)
      # CPython >= 3.12 only: test_helper.exs excludes the tag, saying why, on older ones.
      unquote(if profile == :subinterpreter, do: quote(do: @moduletag(:subinterpreter)))

      setup_all do
        {:ok, pool} = start(@profile, capacity(@profile, 4))
        on_exit(fn -> stop(@profile, pool) end)
        %{pool: pool, profile: @profile}
      end

      defp echo(ctx, value), do: call(ctx.profile, ctx.pool, "echo", %{value: value})

      defp exec(ctx, command, args, opts \\ []),
        do: call(ctx.profile, ctx.pool, command, args, opts)

      defp py_type(ctx, value) do
        {:ok, %{"type" => type}} = exec(ctx, "inspect", %{value: value})
        type
      end

      describe "terms" do
        test "a large nested argument converts, and Python's GC is on again afterwards", ctx do
          # 20,000 small maps: past the point where the :thread profile's conversion pauses
          # the cyclic GC (native/snakepit/src/convert.rs).
          value = for i <- 1..20_000, do: %{"i" => i, "tags" => [i]}

          assert {:ok, %{"enabled" => true, "size" => 20_000}} =
                   exec(ctx, "gc_state", %{value: value})

          assert echo(ctx, value) == {:ok, value}
          assert {:ok, %{"enabled" => true}} = exec(ctx, "gc_state", %{})
        end

        test "nil, true, false", ctx do
          for v <- [nil, true, false], do: assert(echo(ctx, v) == {:ok, v})
          assert py_type(ctx, nil) == "NoneType"
          assert py_type(ctx, true) == "bool"
        end

        test "other atoms become str and come back as binaries", ctx do
          assert echo(ctx, :hello) == {:ok, "hello"}
          assert echo(ctx, :"héllo wörld") == {:ok, "héllo wörld"}
          assert py_type(ctx, :hello) == "str"
        end

        test "integers of any size", ctx do
          for v <- [
                0,
                255,
                256,
                -1,
                42,
                2 ** 31,
                -(2 ** 31) - 1,
                2 ** 62,
                -(2 ** 63),
                2 ** 64,
                2 ** 200,
                -(3 ** 150),
                2 ** 3000
              ] do
            assert echo(ctx, v) == {:ok, v}
          end

          assert py_type(ctx, 2 ** 100) == "int"
        end

        test "integers past CPython's 4,300-digit str limit, both ways", ctx do
          huge = 10 ** 5_000 + 7
          assert echo(ctx, huge) == {:ok, huge}
          assert echo(ctx, -huge) == {:ok, -huge}
          assert echo(ctx, 2 ** 100_000) == {:ok, 2 ** 100_000}
          # Made in Python, not only echoed: 10 ** 5000 computed there.
          assert exec(ctx, "power", %{base: 10, exp: 5_000}) == {:ok, 10 ** 5_000}
        end

        test "a set from Python is == to MapSet.new/1 of its elements", ctx do
          {:ok, set} = echo(ctx, MapSet.new([3, "y"]))
          assert set == MapSet.new([3, "y"])
          assert Map.keys(set) |> Enum.sort() == Map.keys(MapSet.new([3, "y"])) |> Enum.sort()
          assert MapSet.member?(MapSet.put(set, 4), 4)
        end

        test "floats, and NaN and infinities from Python as atoms", ctx do
          for v <- [0.0, -1.5, 1.0e300, 5.0e-324], do: assert(echo(ctx, v) == {:ok, v})
          assert py_type(ctx, 1.5) == "float"
          assert exec(ctx, "floats", %{}) == {:ok, [:nan, :infinity, :neg_infinity, 1.5]}
        end

        test "UTF-8 binaries are str; other binaries and {:bytes, bin} are bytes", ctx do
          assert echo(ctx, "héllo ✓") == {:ok, "héllo ✓"}
          assert echo(ctx, "") == {:ok, ""}
          assert py_type(ctx, "héllo") == "str"
          assert echo(ctx, <<0xFF, 0xFE, 0>>) == {:ok, <<0xFF, 0xFE, 0>>}
          assert py_type(ctx, <<0xFF, 0xFE>>) == "bytes"
          assert py_type(ctx, {:bytes, "abc"}) == "bytes"
          assert echo(ctx, {:bytes, "abc"}) == {:ok, "abc"}
          assert py_type(ctx, {"bytes", "abc"}) == "tuple"
          big = :rand.bytes(200_000)
          assert echo(ctx, big) == {:ok, big}
        end

        test "lists, charlists and tuples", ctx do
          assert echo(ctx, [1, "a", [2.0, nil]]) == {:ok, [1, "a", [2.0, nil]]}
          assert echo(ctx, ~c"abc") == {:ok, [97, 98, 99]}
          assert echo(ctx, {1, {2, "x"}, []}) == {:ok, {1, {2, "x"}, []}}
          assert echo(ctx, {}) == {:ok, {}}
          long = Enum.to_list(1..10_000)
          assert echo(ctx, long) == {:ok, long}
          assert py_type(ctx, {1, 2}) == "tuple"
          assert py_type(ctx, [1, 2]) == "list"
        end

        test "maps: atom keys become str, come back as string keys", ctx do
          assert echo(ctx, %{"b" => %{c: [1]}, a: 1}) == {:ok, %{"a" => 1, "b" => %{"c" => [1]}}}
          assert echo(ctx, %{1 => "one", {1, 2} => :x}) == {:ok, %{1 => "one", {1, 2} => "x"}}
          assert echo(ctx, %{}) == {:ok, %{}}
          mid = Map.new(1..100, &{"k#{&1}", &1})
          assert echo(ctx, mid) == {:ok, mid}
        end

        test "large maps (hash maps of more than 32 keys) both ways", ctx do
          big = Map.new(1..1_000, &{"k#{&1}", &1})
          assert {:ok, %{"type" => "dict"}} = exec(ctx, "inspect", %{value: big})
          assert echo(ctx, big) == {:ok, big}
        end

        test "MapSet <-> set, frozenset -> MapSet", ctx do
          assert echo(ctx, MapSet.new([1, 2, "x"])) == {:ok, MapSet.new([1, 2, "x"])}
          assert echo(ctx, MapSet.new()) == {:ok, MapSet.new()}
          assert py_type(ctx, MapSet.new([1])) == "set"
          {:ok, c} = exec(ctx, "collections", %{})
          assert c["set"] == MapSet.new([1, 2, 3])
          assert c["frozenset"] == MapSet.new(["a"])
          assert c["tuple"] == {1, "two", 3.0}
          assert c["bytes"] == <<0, 255>>
          assert c["bytearray"] == "ab"
          assert c["int_keys"] == %{1 => "one"}
        end

        test "pids cross as snakepit_bridge.Pid and Python can send to them", ctx do
          assert echo(ctx, self()) == {:ok, self()}
          assert echo(ctx, [self(), %{p: self()}]) == {:ok, [self(), %{"p" => self()}]}
          assert py_type(ctx, self()) == "Pid"
          assert {:ok, pid} = exec(ctx, "send_to", %{pid: self(), message: %{hi: [1, 2]}})
          assert pid == self()
          assert_receive %{"hi" => [1, 2]}, 30_000
        end

        if @profile == :subinterpreter,
          do:
            @tag(
              skip:
                "NumPy does not support subinterpreters (it refuses to import in one); " <>
                  "subinterpreter_test.exs checks the start error it gives"
            )

        test "NumPy arrays and scalars, objects with __snakepit__", ctx do
          assert {:ok, %{"array" => [[0, 1, 2], [3, 4, 5]], "scalar" => 2.5, "int" => 7}} =
                   exec(ctx, "numpy_values", %{})

          assert exec(ctx, "custom", %{}) == {:ok, %{"x" => 1, "y" => 2}}
        end

        test "deep nesting within the limit round-trips", ctx do
          deep = Enum.reduce(1..1_500, [], fn _, acc -> [acc] end)
          assert echo(ctx, deep) == {:ok, deep}
          assert {:ok, from_py} = exec(ctx, "nested", %{depth: 1_500})
          assert from_py == deep
        end

        test "nesting past the limit is a conversion error, not a crash", ctx do
          deep = Enum.reduce(1..100_000, [], fn _, acc -> [acc] end)
          assert {:error, %Error{category: :conversion, message: msg}} = echo(ctx, deep)
          assert msg =~ "nested deeper than"

          assert {:error, %Error{category: :conversion}} = exec(ctx, "nested", %{depth: 100_000})

          assert echo(ctx, 1) == {:ok, 1}
        end

        test "functions, refs and ports cannot cross", ctx do
          for v <- [fn -> 1 end, &Enum.map/2, make_ref(), hd(Port.list() ++ [nil])], v != nil do
            assert {:error, %Error{category: :conversion, message: msg}} = echo(ctx, v)
            assert msg =~ "cannot convert"
          end
        end

        test "unconvertible Python results name the type", ctx do
          assert {:error, %Error{category: :conversion, message: msg}} =
                   exec(ctx, "unconvertible", %{})

          assert msg =~ "of type object"
        end

        test "improper lists are rejected", ctx do
          assert {:error, %Error{category: :conversion}} = echo(ctx, [1 | 2])
        end

        test "arguments: map = kwargs, keyword list = kwargs, list = positional, nil = none",
             ctx do
          assert exec(ctx, "echo", value: 5) == {:ok, 5}
          assert exec(ctx, "positional", [1, "b", [3]]) == {:ok, [1, "b", [3]]}
          assert exec(ctx, "positional", []) == {:ok, []}
          assert exec(ctx, "echo", nil) == {:ok, nil}
          assert exec(ctx, "echo", %{}) == {:ok, nil}
          assert {:error, %Error{category: :conversion}} = exec(ctx, "echo", "not args")
          assert {:error, %Error{category: :conversion}} = exec(ctx, "echo", %{1 => 2})
        end
      end

      describe "errors" do
        test "a Python exception carries type, message and traceback", ctx do
          assert {:error, %Error{} = e} = exec(ctx, "fail", %{message: "bad input"})
          assert e.category == :python_error
          assert e.python_type == "ValueError"
          assert e.message == "bad input"
          assert e.python_traceback =~ "Traceback (most recent call last)"
          assert e.python_traceback =~ "in inner"
          assert e.python_traceback =~ "ValueError: bad input"
          assert Exception.message(e) =~ "ValueError: bad input"
        end

        test "SystemExit and KeyboardInterrupt are values, not an exit", ctx do
          assert {:error,
                  %Error{category: :python_error, python_type: "SystemExit", message: "3"}} =
                   exec(ctx, "exit", %{code: 3})

          assert {:error, %Error{category: :python_error, python_type: "KeyboardInterrupt"}} =
                   exec(ctx, "interrupt", %{})

          assert echo(ctx, 1) == {:ok, 1}
        end

        test "an unknown command lists the available ones", ctx do
          assert {:error, %Error{category: :validation, message: msg, details: details}} =
                   exec(ctx, "no_such_command", %{})

          assert msg =~ ~s(unknown command "no_such_command")
          assert msg =~ "echo"
          assert "echo" in details.available
          assert "ping" in details.available
          assert "get_stats" in details.available
        end

        test "an unknown command suggests the closest one; an unmarked method says how", ctx do
          assert {:error, %Error{category: :validation, message: msg}} = exec(ctx, "ehco", %{})
          assert msg =~ ~s[(did you mean "echo"?)]

          assert {:error, %Error{category: :validation, message: msg}} =
                   exec(ctx, "not_a_command", %{})

          assert msg =~ "the method not_a_command exists but is not a command: mark it with @tool"
        end

        test "bad keyword arguments are a Python TypeError", ctx do
          assert {:error, %Error{python_type: "TypeError", message: msg}} =
                   exec(ctx, "echo", %{nope: 1})

          assert msg =~ "nope"
        end

        test "a command that is not a string", ctx do
          assert {:error, %Error{category: :validation}} = exec(ctx, 123, %{})
        end

        test "adapter import errors stop the pool start with the Python error", ctx do
          assert {:error, %Error{python_type: "ImportError", message: msg}} =
                   start(ctx.profile, adapter: "no_such_module.Adapter")

          assert msg =~ "no_such_module"
        end

        test "an exception in the adapter's __init__ stops the pool start with its traceback",
             ctx do
          assert {:error, %Error{python_type: "RuntimeError", message: msg} = e} =
                   start(ctx.profile, adapter: "snakepit_test_adapters.BrokenInit")

          assert msg =~ "cannot load the model"
          assert e.python_traceback =~ "__init__"
        end
      end

      describe "timeouts and cancellation" do
        test "a call that runs too long times out in time, and the pool serves on", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1))

          # The loop outlasts the test's own timeout: the echo runs only if it was stopped.
          assert {:error, %Error{category: :timeout, message: msg}} =
                   call(ctx.profile, pool, "busy", %{seconds: 3_600}, timeout: 200)

          assert msg =~ "200 ms"
          assert call(ctx.profile, pool, "echo", %{value: 7}, timeout: 30_000) == {:ok, 7}
          stats = stats(ctx.profile, pool)
          assert stats.cancelled == 1
          assert stats.active_requests == 0
        end

        test "a call blocked in C (a socket read) times out in time", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1))
          {:ok, listen} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
          {:ok, port} = :inet.port(listen)

          # The read returns only once the test answers the connection, which it does after
          # the call returned: the caller did not wait for the C call.
          assert {:error, %Error{category: :timeout}} =
                   call(ctx.profile, pool, "blocked_recv", %{port: port}, timeout: 50)

          spawn_link(fn ->
            with {:ok, socket} <- :gen_tcp.accept(listen), do: :gen_tcp.close(socket)
          end)

          assert {:ok, 7} = call(ctx.profile, pool, "echo", %{value: 7}, timeout: 30_000)
        end

        test "a queued job whose caller timed out is dropped, not run", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1))
          release = release_file()
          blocker = async_hold(ctx.profile, pool, "blocker", release)
          assert_started("blocker")

          assert {:error, %Error{category: :timeout}} =
                   call(ctx.profile, pool, "increment", %{}, timeout: 50)

          release(release)
          assert {:ok, _} = Task.await(blocker, 30_000)
          # increment never ran.
          assert {:ok, %{"counter" => 0}} = call(ctx.profile, pool, "state", %{})
          assert stats(ctx.profile, pool).cancelled == 1
        end

        test "a caller that dies cancels its running job; the pool serves on", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1))
          test = self()
          # The loop outlasts the test's own timeout: the echo runs only if it was stopped.
          args = %{tag: "running", seconds: 3_600, pid: test}
          caller = spawn(fn -> call(ctx.profile, pool, "tracked_busy", args) end)
          assert_started("running")
          Process.exit(caller, :kill)
          assert {:ok, 1} = call(ctx.profile, pool, "echo", %{value: 1}, timeout: 30_000)
        end

        test "a caller that dies drops its queued job", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1))
          release = release_file()
          blocker = async_hold(ctx.profile, pool, "blocker", release)
          assert_started("blocker")
          caller = spawn(fn -> call(ctx.profile, pool, "increment", %{}) end)
          assert wait_for(fn -> stats(ctx.profile, pool).queued == 1 end)
          Process.exit(caller, :kill)
          # The pool has seen the caller go before the blocker lets the queue move.
          assert wait_for(fn -> stats(ctx.profile, pool).cancelled == 1 end)
          release(release)
          assert {:ok, _} = Task.await(blocker, 30_000)
          assert {:ok, %{"counter" => 0}} = call(ctx.profile, pool, "state", %{})
        end

        test "no stray reply reaches a caller after its timeout", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 2))

          for _ <- 1..20 do
            call(ctx.profile, pool, "sleep", %{seconds: 0.01}, timeout: 10)
          end

          # Every call is over (it ran or was dropped) before the mailbox is read.
          assert wait_for(fn ->
                   s = stats(ctx.profile, pool)

                   s.completed + s.cancelled == 20 and s.active_requests == 0 and
                     s.queued == 0
                 end)

          {:messages, messages} = Process.info(self(), :messages)
          assert messages == []
        end
      end

      describe "streaming" do
        setup ctx do
          %{pool: start!(ctx.profile, capacity(ctx.profile, 1))}
        end

        test "halting early with Stream.take cleans up, and the pool keeps serving", ctx do
          for _ <- 1..5 do
            assert [%{"i" => 0}, %{"i" => 1}] =
                     stream(ctx.profile, ctx.pool, "count_up", %{limit: 50})
                     |> Stream.take(2)
                     |> Enum.to_list()
          end

          assert {:ok, 1} = call(ctx.profile, ctx.pool, "echo", %{value: 1})
          assert wait_for(fn -> stats(ctx.profile, ctx.pool).active_requests == 0 end)
        end

        test "chunks arrive in order", ctx do
          items = stream(ctx.profile, ctx.pool, "count_up", %{limit: 100}) |> Enum.to_list()
          assert items == Enum.map(0..99, &%{"i" => &1})

          assert {:ok, %{"produced" => 100, "closed" => true}} =
                   call(ctx.profile, ctx.pool, "stream_state", %{})
        end

        test "taking 5 of a million stops the generator", ctx do
          items = stream(ctx.profile, ctx.pool, "count_up", %{limit: 1_000_000}) |> Enum.take(5)

          assert items == Enum.map(0..4, &%{"i" => &1})
          {:ok, state} = call(ctx.profile, ctx.pool, "stream_state", %{})
          assert state["closed"] == true
          assert state["produced"] <= 5 + 4
          # The stream's end was consumed when it closed, and chunks sent after that are
          # dropped: the mailbox is empty now, with no wait.
          {:messages, messages} = Process.info(self(), :messages)
          assert messages == []
        end

        test "a slow consumer's mailbox stays bounded", ctx do
          parent = self()

          spawn_link(fn ->
            stream(ctx.profile, ctx.pool, "count_up", %{limit: 200}, window: 4)
            |> Stream.each(fn %{"i" => i} ->
              if rem(i, 20) == 0 do
                {:message_queue_len, len} = Process.info(self(), :message_queue_len)
                send(parent, {:queue_len, len})
              end

              Process.sleep(2)
            end)
            |> Stream.run()

            send(parent, :finished)
          end)

          assert_receive :finished, 30_000
          lens = for _ <- 1..10, do: assert_received({:queue_len, len}) && len
          assert Enum.max(lens) <= 4
        end

        test "an error mid-stream raises in the consumer after the items before it", ctx do
          parent = self()

          assert_raise Error, ~r/ValueError: failed at 3/, fn ->
            stream(ctx.profile, ctx.pool, "count_up", %{limit: 10, fail_at: 3})
            |> Enum.each(fn item -> send(parent, {:item, item}) end)
          end

          for i <- 0..2, do: assert_received({:item, %{"i" => ^i}})
          refute_received {:item, _}
          assert {:ok, 1} = call(ctx.profile, ctx.pool, "echo", %{value: 1})
        end

        test "a consumer that dies stops the generator", ctx do
          test = self()

          consumer =
            spawn(fn ->
              stream(ctx.profile, ctx.pool, "count_up", %{limit: 1_000_000, delay: 0.001})
              |> Stream.each(fn %{"i" => i} -> if i == 0, do: send(test, :streaming) end)
              |> Stream.run()
            end)

          assert_receive :streaming, 30_000
          Process.exit(consumer, :kill)

          assert wait_for(fn ->
                   {:ok, state} = call(ctx.profile, ctx.pool, "stream_state", %{})
                   state["closed"] == true
                 end)
        end

        test "a command that does not return an iterator, and unknown commands, raise", ctx do
          assert_raise Error, ~r/iterator/, fn ->
            stream(ctx.profile, ctx.pool, "echo", %{value: 5}) |> Enum.to_list()
          end

          # A dict would stream its keys, a list its items: neither is taken as a stream.
          for {value, hint} <- [
                {%{"a" => 1, "b" => 2},
                 ~r/returned dict \(iterating it would give only its keys/},
                {[1, 2, 3], ~r/returned list \(return iter\(\.\.\.\) of it/}
              ] do
            error =
              assert_raise Error, fn ->
                stream(ctx.profile, ctx.pool, "echo", %{value: value}) |> Enum.to_list()
              end

            assert error.category == :conversion
            assert error.message =~ ~s(command "echo" returned)
            assert error.message =~ hint
          end

          assert_raise Error, ~r/unknown command/, fn ->
            stream(ctx.profile, ctx.pool, "nope", %{}) |> Enum.to_list()
          end

          assert {:ok, 1} = call(ctx.profile, ctx.pool, "echo", %{value: 1})
          assert stats(ctx.profile, ctx.pool).active_requests == 0
        end
      end

      describe "results that do not suit the call" do
        test "execute on a command that returns a generator says to use execute_stream", ctx do
          assert {:error, %Error{category: :conversion, message: message}} =
                   exec(ctx, "count_up", %{limit: 3})

          assert message ==
                   ~s(command "count_up" returned a generator: use Snakepit.execute_stream/4 ) <>
                     "to receive its items"

          assert {:error, %Error{message: message}} = exec(ctx, "iterate", %{value: [1, 2]})

          assert message =~
                   ~s[returned an iterator (list_iterator): use Snakepit.execute_stream/4]

          # The same commands stream, and other unconvertible results keep their message.
          assert [1, 2] =
                   stream(ctx.profile, ctx.pool, "iterate", %{value: [1, 2]}) |> Enum.to_list()

          assert {:error, %Error{message: message}} = exec(ctx, "unconvertible", %{})
          assert message =~ "cannot convert Python object"
        end
      end

      describe "concurrency and counters" do
        test "a caller keeps no monitor after its calls, and gets no stray message later", ctx do
          parent = self()

          caller =
            spawn(fn ->
              for i <- 1..20, do: {:ok, ^i} = call(ctx.profile, ctx.pool, "echo", %{value: i})
              {:monitors, monitors} = Process.info(self(), :monitors)
              send(parent, {:monitors, monitors})

              receive do
                :report -> send(parent, {:mailbox, Process.info(self(), :messages)})
              end
            end)

          assert_receive {:monitors, []}, 30_000
          send(caller, :report)
          assert_receive {:mailbox, {:messages, []}}, 30_000
        end

        test "a command declared @tool(inline=True) answers alike, alone and from 200 callers",
             ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 4))
          # Whether a call runs inline (:thread, threads parked) or not changes nothing seen.
          assert call(ctx.profile, pool, "echo_inline", %{value: [1, "a", 2.5]}) ==
                   {:ok, [1, "a", 2.5]}

          assert {:error, %Snakepit.Error{category: :python_error, python_type: "ValueError"} = e} =
                   call(ctx.profile, pool, "fail_inline", %{message: "short and wrong"})

          assert e.message =~ "short and wrong"
          assert e.python_traceback =~ "fail_inline"

          results =
            1..200
            |> Task.async_stream(
              fn i -> {i, call(ctx.profile, pool, "echo_inline", %{value: %{"i" => i}})} end,
              max_concurrency: 200,
              timeout: 60_000
            )
            |> Enum.map(fn {:ok, r} -> r end)

          for {i, result} <- results, do: assert(result == {:ok, %{"i" => i}})

          stats = stats(ctx.profile, pool)
          assert stats.total_requests == 202
          assert stats.completed == 201
          assert stats.failed == 1
          assert stats.workers |> Enum.map(& &1.requests) |> Enum.sum() == 202
          assert Map.get(stats, :inline_calls, 0) <= 202
        end

        test "500 concurrent callers: every reply reaches its caller, none lost", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 4))
          parent = self()

          for i <- 1..500 do
            spawn_link(fn ->
              value = %{caller: i, payload: List.duplicate(i, rem(i, 7))}
              send(parent, {:done, i, call(ctx.profile, pool, "echo", %{value: value})})
            end)
          end

          results =
            for _ <- 1..500 do
              receive do
                {:done, i, result} -> {i, result}
              after
                30_000 -> flunk("a caller got no reply")
              end
            end

          assert results |> Enum.map(&elem(&1, 0)) |> Enum.sort() == Enum.to_list(1..500)

          for {i, result} <- results do
            assert result == {:ok, %{"caller" => i, "payload" => List.duplicate(i, rem(i, 7))}}
          end

          refute_received {:done, _, _}
          stats = stats(ctx.profile, pool)
          assert stats.completed == 500
          assert stats.total_requests == 500
          assert stats.active_requests == 0
          assert stats.queued == 0
        end

        test "stats have the same keys in every profile", ctx do
          stats = stats(ctx.profile, ctx.pool)

          for key <- [
                :total_requests,
                :active_requests,
                :queued,
                :completed,
                :failed,
                :cancelled,
                :rejected,
                :max_workers,
                :pool_size,
                :threads_per_worker,
                :max_queue,
                :thread_utilization,
                :workers,
                :uptime_ms
              ] do
            assert Map.has_key?(stats, key), "missing #{key}"
          end

          assert stats.max_workers == 4

          for w <- stats.workers,
              key <- [:index, :adapter, :requests, :threads, :recycles] do
            assert Map.has_key?(w, key), "a worker's stats miss #{key}"
          end

          assert [%{index: 0, requests: _} | _] = stats.workers
        end

        test "a full queue answers at once with a :pool error", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 1) ++ [max_queue: 2])
          # One call running until released, then two queued: the queue is full.
          release = release_file()
          running = async_hold(ctx.profile, pool, "running", release)
          assert_started("running")

          queued =
            for _ <- 1..2,
                do: Task.async(fn -> call(ctx.profile, pool, "sleep", %{seconds: 0.01}) end)

          assert wait_for(fn -> stats(ctx.profile, pool).queued == 2 end)

          assert {:error, %Error{category: :pool, message: msg}} =
                   call(ctx.profile, pool, "echo", %{value: 1})

          assert msg =~ "max_queue"
          release(release)
          assert Enum.all?(Task.await_many([running | queued], 30_000), &match?({:ok, _}, &1))
          assert stats(ctx.profile, pool).rejected == 1
        end

        test "tools lists commands with descriptions and parameters", ctx do
          {:ok, tools} = tools(ctx.profile, ctx.pool)
          names = Enum.map(tools, & &1["name"])
          assert "echo" in names and "ping" in names
          sleep = Enum.find(tools, &(&1["name"] == "sleep"))
          assert sleep["description"] =~ "Sleep"
          assert [%{"name" => "seconds", "required" => false}] = sleep["parameters"]
        end

        test "adapter_env reaches the adapter", ctx do
          pool =
            start!(
              ctx.profile,
              capacity(ctx.profile, 1) ++ [adapter_env: [{"SNAKEPIT_CONF_VAR", "42"}]]
            )

          assert call(ctx.profile, pool, "getenv", %{name: "SNAKEPIT_CONF_VAR"}) == {:ok, "42"}
        end

        test "subprocess.run works inside adapters", ctx do
          assert exec(ctx, "run_subprocess", %{}) == {:ok, "child ok"}
        end
      end
    end
  end
end
