defmodule Snakepit.ThreadSafetyTest do
  # The guide's patterns, pitfalls and checks, through real pools.
  use Snakepit.PoolCase, async: false

  defmodule Collector do
    @moduledoc false
    def log(event, %{config: %{to: pid}}), do: send(pid, {:log_event, event})
  end

  setup do
    :ok = :logger.add_handler(:snakepit_ts_collector, Collector, %{config: %{to: self()}})
    on_exit(fn -> :logger.remove_handler(:snakepit_ts_collector) end)
    :ok
  end

  defp concurrently(n, fun) do
    1..n
    |> Task.async_stream(fn i -> fun.(i) end, max_concurrency: n, timeout: 30_000)
    |> Enum.map(fn {:ok, v} -> v end)
  end

  # Waits for a Python log record (they reach Logger through another process) matching
  # `pattern`; the timeout only bounds a failure.
  defp assert_python_message(pattern, seen \\ []) do
    receive do
      {:log_event, %{msg: {:string, text}, meta: %{python_logger: _}}} ->
        text = IO.chardata_to_string(text)
        if text =~ pattern, do: text, else: assert_python_message(pattern, [text | seen])

      {:log_event, _} ->
        assert_python_message(pattern, seen)
    after
      30_000 -> flunk("no Python log record matching #{inspect(pattern)}: #{inspect(seen)}")
    end
  end

  test "pattern 1: shared read-only state serves every thread (the guide's MyAdapter)" do
    pool = start_test_pool!(adapter: "guide_adapters.MyAdapter", threads_per_worker: 8)

    results =
      concurrently(64, fn i ->
        Snakepit.execute!(pool, "predict", %{input_data: "x#{rem(i, 4)}"})
      end)

    assert Enum.all?(results, &match?(%{"prediction" => _}, &1))
    assert results |> Enum.map(& &1["prediction"]) |> Enum.uniq() |> length() == 4
  end

  test "pattern 2: thread-local storage is per pool thread" do
    pool = start_test_pool!(threads_per_worker: 4)

    pairs =
      concurrently(200, fn _ ->
        Snakepit.execute!(pool, "thread_local_count", %{seconds: 0.005})
      end)

    by_thread = Enum.group_by(pairs, &hd/1, &List.last/1)
    assert map_size(by_thread) > 1
    # Each thread counted its own calls 1, 2, 3, ... with no gaps or repeats.
    for {_thread, counts} <- by_thread do
      assert Enum.sort(counts) == Enum.to_list(1..length(counts))
    end
  end

  test "pattern 3: a locked counter reaches exactly threads x iterations" do
    pool = start_test_pool!(adapter: "guide_adapters.MyAdapter", threads_per_worker: 16)
    concurrently(16, fn _ -> for _ <- 1..100, do: Snakepit.execute!(pool, "increment", %{}) end)
    # 16 threads x 100 iterations, every increment under acquire_lock().
    {:ok, stats} = Snakepit.execute(pool, "get_thread_stats", %{})
    assert stats["total_requests"] >= 1_600
    assert %{"request_count" => 0} = Snakepit.execute!(pool, "get_stats", %{})
  end

  test "the adapter's stats counters are exact after a known load" do
    pool = start_test_pool!(threads_per_worker: 4)
    concurrently(40, fn _ -> Snakepit.execute!(pool, "tracked_sleep", %{seconds: 0.001}) end)
    stats = Snakepit.execute!(pool, "get_thread_stats", %{})
    assert stats["total_requests"] == 40
    assert stats["max_workers"] == 4
    per_thread = stats["thread_utilization"] |> Map.values() |> Enum.map(& &1["requests"])
    assert Enum.sum(per_thread) == 40
    assert stats["active_requests"] in [0, 1]
  end

  test "thread_safety_check: concurrent access to a method is reported with the guide's text" do
    pool =
      start_test_pool!(
        adapter: "snakepit_test_adapters.CheckedAdapter",
        threads_per_worker: 4,
        thread_safety_check: true
      )

    # Four calls meet at a barrier inside the tracked method: they are there at the same time.
    key = "checked-#{System.unique_integer([:positive])}"

    concurrently(4, fn _ ->
      Snakepit.execute!(pool, "checked_barrier", %{key: key, parties: 4})
    end)

    assert_python_message(
      ~r/THREAD SAFETY: Method 'checked_barrier' accessed by \d+ different threads concurrently\./
    )
  end

  test "--thread-safety-check in adapter_args reports an unsafe library" do
    start_test_pool!(
      adapter: "snakepit_test_adapters.UsesSqlite",
      threads_per_worker: 2,
      adapter_args: ["--thread-safety-check"]
    )

    assert_python_message("THREAD SAFETY: Unsafe library 'sqlite3' detected")
  end

  test "an adapter without __thread_safe__ runs in a threaded pool, with a warning that says the fix" do
    pool = start_test_pool!(adapter: "guide_adapters.UndeclaredAdapter", threads_per_worker: 2)

    assert_python_message(
      "Adapter UndeclaredAdapter does not declare thread safety. The pool calls it " <>
        "from several threads anyway: add __thread_safe__ = True to class " <>
        "UndeclaredAdapter once its methods are thread-safe"
    )

    # It runs: the README calls the attribute a promise, not a requirement.
    assert {:ok, "pong"} = Snakepit.execute(pool, "ping", %{})
  end
end
