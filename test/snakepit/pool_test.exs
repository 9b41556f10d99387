defmodule Snakepit.PoolTest do
  use Snakepit.PoolCase, async: true

  alias Snakepit.Error

  describe "the guide's :hpc_pool from config/config.exs" do
    test "both call forms work" do
      assert {:ok, %{"sum" => 6, "squares" => [1, 4, 9]}} =
               Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})

      assert {:ok, %{"sum" => 6}} =
               Snakepit.execute("compute_intensive", %{data: [1, 2, 3]}, pool_name: :hpc_pool)

      assert {:ok, %{"sum" => 6}} = Snakepit.execute("compute_intensive", %{data: [1, 2, 3]}, [])
    end

    test "matrix_multiply runs NumPy" do
      assert {:ok, %{"result" => [[19, 22], [43, 50]], "shape" => [2, 2]}} =
               Snakepit.execute(:hpc_pool, "matrix_multiply", %{
                 a: [[1, 2], [3, 4]],
                 b: [[5, 6], [7, 8]]
               })
    end

    test "adapter_env reached the Python process" do
      pool = start_test_pool!(adapter_env: [{"SNAKEPIT_TEST_VAR", "42"}])
      assert Snakepit.execute(pool, "getenv", %{name: "SNAKEPIT_TEST_VAR"}) == {:ok, "42"}
      assert Snakepit.execute(pool, "getenv", %{name: "OMP_NUM_THREADS"}) == {:ok, "16"}
    end

    test "stats reports the configured capacity and the Python build" do
      assert {:ok, stats} = Snakepit.stats(:hpc_pool)
      assert stats.max_workers == 64
      assert length(stats.thread_utilization) == 64
      assert length(stats.workers) == 4
      assert %{version: _, free_threaded: ft, gil_enabled: gil} = stats.python
      assert is_boolean(ft) and is_boolean(gil)
    end
  end

  test "1,000 concurrent callers on a 2x16 pool: every reply reaches its caller, none lost" do
    pool = start_test_pool!(pool_size: 2, threads_per_worker: 16)
    parent = self()

    pids =
      for i <- 1..1_000 do
        spawn_link(fn ->
          value = %{caller: i, payload: List.duplicate(i, rem(i, 7))}
          send(parent, {:done, i, Snakepit.execute(pool, "echo", %{value: value})})
        end)
      end

    results =
      for _ <- pids do
        receive do
          {:done, i, result} -> {i, result}
        after
          30_000 -> flunk("a caller got no reply")
        end
      end

    assert length(results) == 1_000
    assert results |> Enum.map(&elem(&1, 0)) |> Enum.sort() == Enum.to_list(1..1_000)

    for {i, result} <- results do
      assert result == {:ok, %{"caller" => i, "payload" => List.duplicate(i, rem(i, 7))}}
    end

    refute_received {:done, _, _}
    {:ok, stats} = Snakepit.stats(pool)
    assert stats.completed == 1_000
    assert stats.total_requests == 1_000
    assert stats.active_requests == 0
    assert stats.queued == 0
    assert Enum.sum(Enum.map(stats.thread_utilization, & &1.requests)) == 1_000
  end

  test "one adapter instance per worker, shared by its threads; a locked counter is exact" do
    pool = start_test_pool!(pool_size: 1, threads_per_worker: 8)

    1..16
    |> Task.async_stream(fn _ -> Snakepit.execute!(pool, "increment", %{times: 250}) end,
      max_concurrency: 16,
      timeout: 30_000
    )
    |> Stream.run()

    assert %{"counter" => 4_000} = Snakepit.execute!(pool, "state", %{})
  end

  test "pool threads carry the pool's names" do
    pool = start_test_pool!(pool_size: 2, threads_per_worker: 2)
    names = for _ <- 1..50, into: MapSet.new(), do: Snakepit.execute!(pool, "thread_name", %{})
    assert Enum.all?(names, &String.starts_with?(&1, "snakepit-#{pool}-w"))
  end

  test "GIL-releasing calls run in parallel on the pool's threads" do
    pool = start_test_pool!(pool_size: 1, threads_per_worker: 8)
    # Eight calls wait (GIL released) at a barrier that opens only when all eight are inside
    # it: they all return only if they ran at the same time, on eight threads.
    key = "parallel-#{System.unique_integer([:positive])}"

    names =
      1..8
      |> Task.async_stream(
        fn _ -> Snakepit.execute!(pool, "barrier", %{key: key, parties: 8}, timeout: 60_000) end,
        max_concurrency: 8,
        timeout: 90_000
      )
      |> Enum.map(fn {:ok, name} -> name end)

    assert MapSet.size(MapSet.new(names)) == 8
  end

  describe "timeouts and cancellation" do
    test "a busy Python loop times out in time and is interrupted, freeing the thread" do
      pool = start_test_pool!(pool_size: 1, threads_per_worker: 1)
      # A timer cannot wait for the loop to start: on a loaded machine the timeout may drop the
      # job before its loop runs. Such attempts are retried with longer timeouts until one
      # interrupts a running loop (tracked_outcome tells them apart).
      attempts = interrupt_running_loop(pool, [200, 1_000, 5_000, 20_000], 1)
      # The only thread is free again: the next call runs (it would wait an hour otherwise).
      assert_interrupted(pool)

      {:ok, stats} = Snakepit.stats(pool)
      assert stats.cancelled == attempts
      assert stats.active_requests == 0
    end

    test "a call blocked in C (time.sleep) frees its thread when the C call returns" do
      pool = start_test_pool!(pool_size: 1, threads_per_worker: 1)

      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute(pool, "sleep", %{seconds: 0.3}, timeout: 50)

      assert {:ok, 7} = Snakepit.execute(pool, "echo", %{value: 7}, timeout: 30_000)
    end
  end

  # Times out `tracked_busy` calls, one timeout after the other, until one interrupts a loop
  # that had started; returns the number of attempts. Each attempt waits until its job is over
  # (dropped, or interrupted: the loop would run an hour) before it asks how the job went.
  defp interrupt_running_loop(_pool, [], _attempt),
    do: flunk("no tracked_busy loop started before its call timed out")

  defp interrupt_running_loop(pool, [timeout | longer], attempt) do
    tag = "busy-#{System.unique_integer([:positive])}"

    assert {:error, %Error{category: :timeout, message: msg}} =
             Snakepit.execute(pool, "tracked_busy", %{tag: tag, seconds: 3_600}, timeout: timeout)

    assert msg =~ "#{timeout} ms"

    wait_until(fn ->
      {:ok, s} = Snakepit.stats(pool)
      s.cancelled == attempt and s.active_requests == 0
    end)

    case Snakepit.execute(pool, "tracked_outcome", %{tag: tag}, timeout: 30_000) do
      {:ok, nil} -> interrupt_running_loop(pool, longer, attempt + 1)
      {:ok, _started} -> attempt
    end
  end
end
