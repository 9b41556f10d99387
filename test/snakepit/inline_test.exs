defmodule Snakepit.InlineTest do
  # Commands declared `@tool(inline=True)` (test/support/python/snakepit_inline_adapters.py),
  # which a :thread pool runs on the calling scheduler when no Snakepit thread may hold the
  # GIL (native/snakepit/src/inline.rs, gil_gate.rs). Where a call ran is read from Python:
  # `threading.current_thread().name` is "snakepit-..." on a pool thread, a dummy name on a
  # BEAM scheduler.
  #
  # async: false: another module's pool threads running would (rightly) keep calls from
  # running inline.
  use ExUnit.Case, async: false

  import Snakepit.PoolCase, only: [wait_until: 1, python_dir!: 1]

  alias Snakepit.Error

  @adapter "snakepit_inline_adapters.InlineAdapter"

  setup_all do
    # A strike stops inline calls for a minute here, so a slow test machine cannot see one end.
    System.put_env("SNAKEPIT_INLINE_PAUSE_MS", "60000")
    on_exit(fn -> System.delete_env("SNAKEPIT_INLINE_PAUSE_MS") end)
  end

  defp start!(opts \\ []) do
    name = :"inline_#{System.unique_integer([:positive])}"

    config =
      [name: name, adapter: @adapter, pool_size: 2, threads_per_worker: 2]
      |> Keyword.merge(opts)

    {:ok, _} = Snakepit.start_pool(config)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  defp stats(pool) do
    {:ok, stats} = Snakepit.stats(pool)
    stats
  end

  defp where(pool) do
    {:ok, name} = Snakepit.execute(pool, "where", %{})
    name
  end

  defp pool_thread?(name), do: String.starts_with?(name, "snakepit-")

  # Once the pool's threads have parked, the next short call runs inline.
  defp await_inline(pool), do: wait_until(fn -> not pool_thread?(where(pool)) end)

  defp hold(pool) do
    key = "hold#{System.unique_integer([:positive])}"
    test = self()
    task = Task.async(fn -> Snakepit.execute(pool, "hold", %{pid: test, key: key}) end)
    assert_receive "holding", 30_000
    {task, key}
  end

  defp release(pool, {task, key}) do
    assert {:ok, true} = Snakepit.execute(pool, "release", %{key: key})
    assert Task.await(task, 30_000) == {:ok, "released"}
  end

  test "a short command on an idle pool runs on the calling scheduler, and is counted" do
    pool = start!()
    await_inline(pool)
    before = stats(pool)

    for i <- 1..50 do
      assert Snakepit.execute(pool, "echo", %{value: [i, "x", %{"k" => 1.5}]}) ==
               {:ok, [i, "x", %{"k" => 1.5}]}
    end

    s = stats(pool)
    assert s.inline_calls - before.inline_calls == 50
    assert s.total_requests - before.total_requests == 50
    assert s.completed - before.completed == 50
    # The pool threads ran none of them.
    assert Enum.sum(Enum.map(s.thread_utilization, & &1.requests)) ==
             Enum.sum(Enum.map(before.thread_utilization, & &1.requests))

    # Counted in the workers' requests, spread over both.
    assert Enum.sum(Enum.map(s.workers, & &1.requests)) == s.total_requests
    assert Enum.all?(s.workers, &(&1.requests > 0))
  end

  test "while a pool thread runs, short commands are handed off; once it parks, inline again" do
    pool = start!()
    held = hold(pool)
    inline_before = stats(pool).inline_calls

    names = for _ <- 1..20, do: where(pool)
    assert Enum.all?(names, &pool_thread?/1), inspect(names)
    assert stats(pool).inline_calls == inline_before

    release(pool, held)
    await_inline(pool)
    assert stats(pool).inline_calls > inline_before
  end

  test "while an async def call is in flight, short commands are handed off" do
    pool = start!()
    key = "async#{System.unique_integer([:positive])}"
    test = self()
    parks = stats(pool).parks
    task = Task.async(fn -> Snakepit.execute(pool, "hold_async", %{pid: test, key: key}) end)
    assert_receive "holding_async", 30_000
    # The async call holds no pool thread: the one that started it parks, yet the event loop
    # may run Python at any moment.
    wait_until(fn -> stats(pool).parks > parks end)

    names = for _ <- 1..20, do: where(pool)
    assert Enum.all?(names, &pool_thread?/1), inspect(names)

    assert {:ok, true} = Snakepit.execute(pool, "release", %{key: key})
    assert Task.await(task, 30_000) == {:ok, "released"}
    await_inline(pool)
  end

  test "errors of inline calls are the pool's errors" do
    pool = start!()
    await_inline(pool)
    before = stats(pool)

    assert {:error, %Error{category: :python_error, python_type: "ValueError"} = e} =
             Snakepit.execute(pool, "boom", %{message: "no good"})

    assert e.message =~ "no good"
    assert e.python_traceback =~ "raise ValueError(message)"

    assert {:error, %Error{category: :conversion}} = Snakepit.execute(pool, "unconvertible", %{})

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute(pool, "echo", %{no_such_argument: 1})

    assert e.message =~ "no_such_argument"

    s = stats(pool)
    assert s.inline_calls - before.inline_calls == 3
    assert s.failed - before.failed == 3

    # An unknown command is never inline: the usual error, listing the commands.
    assert {:error, %Error{category: :validation} = e} = Snakepit.execute(pool, "ech", %{})
    assert e.message =~ "echo"
  end

  test "elixir.call inside an inline call raises instead of holding the scheduler" do
    pool = start!()
    await_inline(pool)

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute(pool, "call_elixir", %{name: "anything"})

    assert e.message =~ "inline=True"
  end

  test "two slow inline calls in a row stop inline calls in that pool for a while" do
    pool = start!()
    await_inline(pool)
    other = start!()
    await_inline(other)

    # Wrongly declared short: each sleeps 20 ms on the scheduler. A call may still be handed
    # off now and then (the release thread attached for a moment); that one counts neither way,
    # so the two slow inline calls are awaited, and nothing is backed off before the second.
    inline_naps =
      Enum.reduce_while(1..50, 0, fn _, naps ->
        assert stats(pool).inline_backoffs == 0
        {:ok, name} = Snakepit.execute(pool, "nap", %{seconds: 0.02})
        naps = if pool_thread?(name), do: naps, else: naps + 1
        if naps == 2, do: {:halt, naps}, else: {:cont, naps}
      end)

    assert inline_naps == 2
    assert stats(pool).inline_backoffs == 1
    {:ok, name} = Snakepit.execute(pool, "nap", %{seconds: 0.02})
    assert pool_thread?(name), "handed off during the back-off"
    assert pool_thread?(where(pool))
    assert stats(pool).inline_backoffs == 1

    # Only that pool: the other's calls run inline again once the threads are parked.
    await_inline(other)
    assert stats(other).inline_backoffs == 0
  end

  test "hundreds of concurrent callers: every call answered once, inline or not" do
    pool = start!(threads_per_worker: 4)
    before = stats(pool)

    results =
      1..200
      |> Task.async_stream(
        fn c ->
          for i <- 1..25 do
            command = if rem(i, 2) == 0, do: "echo", else: "where"
            {c, i, command, Snakepit.execute(pool, command, %{value: {c, i}} |> args(command))}
          end
        end,
        max_concurrency: 200,
        timeout: 120_000
      )
      |> Enum.flat_map(fn {:ok, list} -> list end)

    assert length(results) == 5_000

    for {c, i, command, result} <- results do
      case command do
        "echo" -> assert result == {:ok, [c, i]}
        "where" -> assert match?({:ok, name} when is_binary(name), result)
      end
    end

    s = stats(pool)
    assert s.total_requests - before.total_requests == 5_000
    assert s.completed - before.completed == 5_000
    assert s.active_requests == 0
    assert s.inline_calls - before.inline_calls <= 5_000
    assert Enum.sum(Enum.map(s.workers, & &1.requests)) == s.total_requests
  end

  defp args(map, "where"), do: Map.delete(map, :value)
  defp args(%{value: {c, i}}, "echo"), do: %{value: [c, i]}

  test "stopping a pool while short calls run: each ends in a result or an error" do
    pool = start!()
    await_inline(pool)
    test = self()

    callers =
      for c <- 1..100 do
        spawn_link(fn ->
          results =
            Stream.repeatedly(fn -> Snakepit.execute(pool, "echo", %{value: c}) end)
            |> Enum.reduce_while([], fn
              {:ok, ^c} = ok, acc ->
                if length(acc) == 20, do: send(test, {:warm, c})
                {:cont, [ok | acc]}

              other, acc ->
                {:halt, [other | acc]}
            end)

          send(test, {:ended, c, hd(results), length(results)})
        end)
      end

    # Stop once every caller got 20 answers (they keep calling meanwhile).
    for c <- 1..100, do: assert_receive({:warm, ^c}, 60_000)
    assert :ok = Snakepit.stop_pool(pool)

    for c <- 1..100 do
      assert_receive {:ended, ^c, last, n}, 60_000
      assert n > 20
      assert {:error, %Error{}} = last
    end

    assert length(callers) == 100
  end

  test "a pool that recycles its workers runs every call on its threads" do
    pool = start!(worker_max_requests: 1_000)
    wait_until(fn -> stats(pool).parks >= 4 end)
    names = for _ <- 1..20, do: where(pool)
    assert Enum.all?(names, &pool_thread?/1)
    assert stats(pool).inline_calls == 0
  end

  test "a reload that declares a command short makes it inline" do
    dir = python_dir!("inline")
    module = "inline_reload_#{System.unique_integer([:positive])}"

    write = fn inline ->
      File.write!(Path.join(dir, "#{module}.py"), """
      import threading

      from snakepit_bridge import ThreadSafeAdapter, tool


      class Adapter(ThreadSafeAdapter):
          __thread_safe__ = True

          @tool(inline=#{inline})
          def where(self):
              return threading.current_thread().name
      """)
    end

    write.("False")
    pool = start!(adapter: "#{module}.Adapter")
    wait_until(fn -> stats(pool).parks >= 4 end)
    assert Enum.all?(for(_ <- 1..10, do: where(pool)), &pool_thread?/1)
    assert stats(pool).inline_calls == 0

    write.("True")
    assert :ok = Snakepit.reload(pool)
    await_inline(pool)
    assert stats(pool).inline_calls > 0
  end

  test "the :process profile ignores the declaration" do
    pool = start!(worker_profile: :process, pool_size: 1)
    assert Snakepit.execute(pool, "echo", %{value: 7}) == {:ok, 7}
    assert {:ok, name} = Snakepit.execute(pool, "where", %{})
    refute name =~ "Dummy"
  end

  test "tools list the declaration" do
    pool = start!()
    {:ok, tools} = Snakepit.tools(pool)
    echo = Enum.find(tools, &(&1["name"] == "echo" or &1[:name] == "echo"))
    assert echo, inspect(tools)
    assert inspect(echo) =~ "inline"
  end
end
