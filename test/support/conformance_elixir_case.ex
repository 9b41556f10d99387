defmodule Snakepit.ConformanceElixirCase do
  @moduledoc false
  # Python calling Elixir (snakepit_bridge.elixir) and async def commands, against every
  # worker profile (test/snakepit/conformance_elixir_test.exs). Uses the helpers of
  # Snakepit.ConformanceCase. Registered function names are unique per test: the registry
  # is node-wide.
  use ExUnit.CaseTemplate

  using opts do
    profile = Keyword.fetch!(opts, :profile)

    quote do
      import Snakepit.ConformanceCase
      alias Snakepit.Error

      @profile unquote(profile)

      setup_all do
        {:ok, pool} = start(@profile, capacity(@profile, 4) ++ [max_queue: 20_000])
        on_exit(fn -> stop(@profile, pool) end)
        %{pool: pool, profile: @profile}
      end

      defp exec(ctx, command, args, opts \\ []),
        do: call(ctx.profile, ctx.pool, command, args, opts)

      defp fname(base), do: "#{base}_#{System.unique_integer([:positive])}"

      defp register!(fun) do
        name = fname("f")
        :ok = Snakepit.register_function(name, fun)
        name
      end

      describe "elixir.call" do
        test "runs the function and converts its result", ctx do
          name = register!(fn a, b -> %{sum: a + b, list: [a, b], tuple: {a, :x}} end)

          assert {:ok, %{"sum" => 5, "list" => [2, 3], "tuple" => {2, "x"}}} =
                   exec(ctx, "call_elixir", %{name: name, args: [2, 3]})
        end

        test "{module, function} functions, and elixir.functions() lists them", ctx do
          name = fname("mf")
          :ok = Snakepit.register_function(name, {Enum, :sum})
          assert {:ok, 6} = exec(ctx, "call_elixir", %{name: name, args: [[1, 2, 3]]})
          assert name in Snakepit.functions()
          assert {:ok, names} = exec(ctx, "elixir_functions", %{})
          assert name in names
        end

        test "runs in a fresh supervised process whose $callers is the caller", ctx do
          test = self()

          name =
            register!(fn ->
              send(test, {:ran, self(), Process.get(:"$callers"), Process.get(:"$ancestors")})
              :ok
            end)

          caller = Task.async(fn -> exec(ctx, "call_elixir", %{name: name}) end)

          assert {:ok, "ok"} = Task.await(caller, 30_000)
          assert_receive {:ran, pid, callers, ancestors}, 30_000
          assert pid != self()
          assert caller.pid in callers

          assert Snakepit.FunctionSupervisor in ancestors or
                   Process.whereis(Snakepit.FunctionSupervisor) in ancestors
        end

        test "an exception, exit or throw raises ElixirError with message and stacktrace",
             ctx do
          raising = register!(fn -> raise ArgumentError, "bad thing" end)
          exiting = register!(fn -> exit(:gone_away) end)
          throwing = register!(fn -> throw(:ball) end)

          assert {:ok, %{"kind" => "error", "message" => msg, "stacktrace" => st}} =
                   exec(ctx, "elixir_error", %{name: raising})

          assert msg =~ "ArgumentError"
          assert msg =~ "bad thing"
          assert st =~ "anonymous fn"
          assert st =~ "conformance_elixir"

          assert {:ok, %{"kind" => "exit", "message" => exit_msg}} =
                   exec(ctx, "elixir_error", %{name: exiting})

          assert exit_msg =~ "gone_away"

          assert {:ok, %{"kind" => "throw", "message" => throw_msg}} =
                   exec(ctx, "elixir_error", %{name: throwing})

          assert throw_msg =~ "ball"

          # Uncaught, it is a Python error of the command.
          assert {:error, %Error{category: :python_error} = e} =
                   exec(ctx, "call_elixir", %{name: raising})

          assert e.python_type =~ "ElixirError"
          assert e.message =~ "bad thing"
        end

        test "a result Python cannot represent raises ElixirError (conversion)", ctx do
          name = register!(fn -> make_ref() end)

          assert {:ok, %{"kind" => "conversion", "message" => msg}} =
                   exec(ctx, "elixir_error", %{name: name})

          assert msg =~ name
          # The pool still serves.
          assert {:ok, "pong"} = exec(ctx, "ping", %{})
        end

        test "an unknown name raises ElixirError listing the registered names", ctx do
          known = register!(fn -> 1 end)

          assert {:ok, %{"kind" => "unknown", "message" => msg}} =
                   exec(ctx, "elixir_error", %{name: "no_such_function"})

          assert msg =~ "no_such_function"
          assert msg =~ known
        end

        test "a timeout raises TimeoutError and stops the function's process", ctx do
          test = self()

          name =
            register!(fn ->
              send(test, {:slow, self()})
              Process.sleep(:infinity)
            end)

          assert {:error, %Error{python_type: "TimeoutError"}} =
                   exec(ctx, "call_elixir", %{name: name, timeout: 0.2})

          assert_receive {:slow, pid}, 30_000
          ref = Process.monitor(pid)
          assert_receive {:DOWN, ^ref, _, _, _}, 30_000
        end

        test "a killed caller cancels the wait: Cancelled in Python, function stopped", ctx do
          test = self()
          tag = fname("killed")

          name =
            register!(fn ->
              send(test, {:waiting_fn, self()})
              Process.sleep(:infinity)
            end)

          caller =
            spawn(fn ->
              exec(ctx, "tracked_elixir_call", %{tag: tag, pid: test, name: name})
            end)

          assert_receive {^tag, _, _}, 30_000
          assert_receive {:waiting_fn, fun_pid}, 30_000
          fun_ref = Process.monitor(fun_pid)
          Process.exit(caller, :kill)

          assert_receive {^tag, "outcome", "Cancelled"}, 30_000
          assert_receive {:DOWN, ^fun_ref, _, _, _}, 30_000
        end

        test "many concurrent callers each get their own answer", ctx do
          name = register!(fn x -> x * 2 end)

          results =
            1..200
            |> Task.async_stream(
              fn i -> exec(ctx, "call_elixir", %{name: name, args: [i]}) end,
              max_concurrency: 200,
              timeout: 60_000
            )
            |> Enum.map(fn {:ok, {:ok, v}} -> v end)

          assert results == Enum.map(1..200, &(&1 * 2))
        end
      end

      describe "re-entrancy" do
        test "ping-pong Python -> Elixir -> Python depth 5 on a 1x1 pool" do
          pool = start!(@profile, capacity(@profile, 1))
          name = fname("pong")

          :ok =
            Snakepit.register_function(name, fn depth ->
              {:ok, threads} = call(@profile, pool, "ping_pong", %{name: name, depth: depth - 1})
              threads
            end)

          assert {:ok, threads} = call(@profile, pool, "ping_pong", %{name: name, depth: 5})
          # Six Python frames of the chain, all on the only thread.
          assert length(threads) == 6
          assert Enum.uniq(threads) |> length() == 1
          # The pool is still healthy afterwards.
          assert {:ok, "pong"} = call(@profile, pool, "ping", %{})
        end

        test "concurrent chains on a busy pool do not deadlock" do
          pool = start!(@profile, capacity(@profile, 2))
          name = fname("pong")

          :ok =
            Snakepit.register_function(name, fn depth ->
              {:ok, threads} = call(@profile, pool, "ping_pong", %{name: name, depth: depth - 1})
              threads
            end)

          results =
            1..20
            |> Task.async_stream(
              fn _ ->
                call(@profile, pool, "ping_pong", %{name: name, depth: 3}, timeout: 120_000)
              end,
              max_concurrency: 20,
              timeout: 130_000
            )
            |> Enum.map(fn {:ok, {:ok, threads}} -> length(threads) end)

          assert results == List.duplicate(4, 20)
        end

        test "a chain deeper than 16 is an ElixirError saying so" do
          pool = start!(@profile, capacity(@profile, 1))
          name = fname("deep")

          :ok =
            Snakepit.register_function(name, fn depth ->
              case call(@profile, pool, "ping_pong", %{name: name, depth: depth - 1}) do
                {:ok, threads} -> threads
                {:error, e} -> raise e
              end
            end)

          assert {:error, %Error{python_type: type, message: msg}} =
                   call(@profile, pool, "ping_pong", %{name: name, depth: 40})

          assert type =~ "ElixirError"
          assert msg =~ "call chain too deep: 16 nested elixir.call waits"
          assert {:ok, "pong"} = call(@profile, pool, "ping", %{})
        end
      end

      describe "async def commands" do
        test "are awaited; their exceptions are errors", ctx do
          assert {:ok, 42} = exec(ctx, "async_sleep", %{seconds: 0.0, value: 42})

          assert {:error, %Error{category: :python_error, python_type: "ValueError"} = e} =
                   exec(ctx, "async_fail", %{message: "nope"})

          assert e.message =~ "nope"
        end

        test "a timeout cancels the task: CancelledError, finally runs", ctx do
          tag = fname("async_timeout")

          assert {:error, %Error{category: :timeout}} =
                   exec(ctx, "async_tracked_sleep", %{tag: tag, pid: self()}, timeout: 300)

          assert_receive {^tag, _, _}, 30_000
          assert_receive {^tag, "finally", "CancelledError"}, 30_000
        end

        test "a killed caller cancels the task", ctx do
          tag = fname("async_killed")
          test = self()

          caller = spawn(fn -> exec(ctx, "async_tracked_sleep", %{tag: tag, pid: test}) end)

          assert_receive {^tag, _, _}, 30_000
          Process.exit(caller, :kill)
          assert_receive {^tag, "finally", "CancelledError"}, 30_000
        end

        test "async generators stream; halting early closes them", ctx do
          tag = fname("agen")

          args = %{tag: tag, limit: 6, pid: self()}

          assert Enum.to_list(stream(ctx.profile, ctx.pool, "async_count", args)) == [
                   0,
                   1,
                   2,
                   3,
                   4,
                   5
                 ]

          assert_receive {^tag, "finally", "finished", 6}, 30_000

          halted = fname("agen_halt")
          args = %{tag: halted, limit: 1000, pid: self()}
          assert [0, 1, 2] = stream(ctx.profile, ctx.pool, "async_count", args) |> Enum.take(3)
          # Closed at a yield: GeneratorExit, as a generator would be.
          assert_receive {^halted, "finally", "GeneratorExit", n}, 30_000
          assert n < 1000
        end

        @tag timeout: 300_000
        test "awaiting calls hold no thread: 2,000 sleepers on a pool of capacity 2", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 2) ++ [max_queue: 5_000])
          key = fname("sleepers")
          n = 2_000
          args = &%{seconds: 0.5, value: &1, key: key, report: true}

          replies =
            1..n
            |> Task.async_stream(
              fn i -> call(ctx.profile, pool, "async_sleep", args.(i), timeout: 240_000) end,
              max_concurrency: n,
              timeout: 250_000
            )
            |> Enum.map(fn {:ok, {:ok, [v, peak]}} -> {v, peak} end)

          assert replies |> Enum.map(&elem(&1, 0)) |> Enum.sort() == Enum.to_list(1..n)
          # Were awaits holding the 2 threads, at most 2 would ever be in flight.
          assert replies |> Enum.map(&elem(&1, 1)) |> Enum.max() > 100
        end

        test "recycling waits for the async calls in flight on the old instance", ctx do
          pool = start!(ctx.profile, capacity(ctx.profile, 2) ++ [worker_max_requests: 3])

          results =
            1..30
            |> Task.async_stream(
              fn i -> call(ctx.profile, pool, "async_sleep", %{seconds: 0.05, value: i}) end,
              max_concurrency: 30,
              timeout: 120_000
            )
            |> Enum.map(fn {:ok, reply} -> reply end)

          assert results == Enum.map(1..30, &{:ok, &1})
        end

        test "a worker whose last call before recycling was async def is recycled", ctx do
          # The async call leaves its thread when it begins to await, so its reply frees no
          # thread: the recycle must still happen then, or the due worker takes no more calls
          # and the next call waits forever.
          pool = start!(ctx.profile, capacity(ctx.profile, 1) ++ [worker_max_requests: 1])

          for i <- 1..4 do
            assert {:ok, ^i} =
                     call(ctx.profile, pool, "async_sleep", %{seconds: 0.01, value: i},
                       timeout: 30_000
                     )
          end

          assert wait_for(fn ->
                   stats(ctx.profile, pool).workers |> Enum.map(& &1.recycles) |> Enum.sum() >= 3
                 end)
        end

        test "await elixir.acall(...) calls Elixir", ctx do
          name = register!(fn a -> {:got, a} end)

          assert {:ok, {"got", 9}} = exec(ctx, "async_call_elixir", %{name: name, args: [9]})
        end
      end
    end
  end
end
