defmodule Snakepit.RecycleTest do
  # Recycling, back-pressure, telemetry, adapter_env, restart of the application.
  use Snakepit.PoolCase, async: false

  alias Snakepit.Error

  setup do
    :persistent_term.put(:telemetry_stub_listeners, [self()])
    on_exit(fn -> :persistent_term.erase(:telemetry_stub_listeners) end)
    assert Snakepit.Telemetry.refresh()
    :ok
  end

  test "10,000 calls with worker_max_requests: 100 lose nothing, and instances change" do
    pool =
      start_test_pool!(
        adapter: "snakepit_test_adapters.RecycledAdapter",
        pool_size: 2,
        threads_per_worker: 4,
        worker_max_requests: 100
      )

    results =
      1..10_000
      |> Task.async_stream(fn i -> {i, Snakepit.execute(pool, "echo", %{value: i})} end,
        max_concurrency: 32,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    assert Enum.all?(results, fn {i, r} -> r == {:ok, i} end)
    assert length(results) == 10_000

    {:ok, stats} = Snakepit.stats(pool)
    recycles = stats.workers |> Enum.map(& &1.recycles) |> Enum.sum()
    assert recycles >= 90
    assert stats.completed >= 10_000

    # Old instances were cleaned up, and telemetry saw the recycling.
    cleaned = Snakepit.execute!(pool, "cleaned", %{})
    assert length(cleaned) >= 90

    assert_received {:telemetry, [:snakepit, :worker, :recycled], %{requests: served},
                     %{pool: ^pool, reason: :max_requests}}

    assert served >= 100
  end

  test "worker_ttl recycles a worker after its time" do
    pool =
      start_test_pool!(
        adapter: "snakepit_test_adapters.RecycledAdapter",
        threads_per_worker: 1,
        worker_ttl: {200, :milliseconds}
      )

    first = Snakepit.execute!(pool, "whoami", %{})
    Process.sleep(300)
    # This call runs on the old instance and triggers the replacement.
    assert Snakepit.execute!(pool, "whoami", %{}) == first
    wait_until(fn -> Snakepit.execute!(pool, "whoami", %{}) != first end)
    # The old instance is cleaned up once its last call is over, then the event is sent.
    wait_until(fn -> first in Snakepit.execute!(pool, "cleaned", %{}) end)
    assert_receive {:telemetry, [:snakepit, :worker, :recycled], _, %{reason: :ttl}}, 5_000
  end

  test "a recycle that fails keeps the old instance serving and logs the error" do
    pool =
      start_test_pool!(
        adapter: "snakepit_test_adapters.FailsOnRecycle",
        threads_per_worker: 2,
        worker_max_requests: 5
      )

    first = Snakepit.execute!(pool, "whoami", %{})

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        for _ <- 1..50, do: assert(Snakepit.execute!(pool, "whoami", %{}) == first)
        Process.sleep(100)
      end)

    assert log =~ "could not recycle worker 0"
    assert log =~ "model store unavailable"
  end

  test "a full queue emits [:snakepit, :pool, :saturated] and the pool recovers" do
    pool = start_test_pool!(threads_per_worker: 1, max_queue: 1)
    running = Task.async(fn -> Snakepit.execute(pool, "sleep", %{seconds: 0.3}) end)
    wait_until(fn -> match?({:ok, %{active_requests: 1}}, Snakepit.stats(pool)) end)
    queued = Task.async(fn -> Snakepit.execute(pool, "echo", %{value: :queued}) end)
    wait_until(fn -> match?({:ok, %{queued: 1}}, Snakepit.stats(pool)) end)

    assert {:error, %Error{category: :pool, details: %{reason: :saturated, max_queue: 1}}} =
             Snakepit.execute(pool, "echo", %{value: 1})

    assert_received {:telemetry, [:snakepit, :pool, :saturated], %{max_queue: 1}, %{pool: ^pool}}
    assert {:ok, _} = Task.await(running)
    assert {:ok, "queued"} = Task.await(queued)
    assert Snakepit.execute(pool, "echo", %{value: 2}) == {:ok, 2}
  end

  test "execute emits start and stop events" do
    pool = start_test_pool!()
    assert {:ok, 1} = Snakepit.execute(pool, "echo", %{value: 1})

    assert_received {:telemetry, [:snakepit, :execute, :start], %{system_time: _},
                     %{pool: ^pool, command: "echo"}}

    assert_received {:telemetry, [:snakepit, :execute, :stop], %{duration: d}, %{result: :ok}}
    assert d > 0
    assert {:error, _} = Snakepit.execute(pool, "fail", %{})
    assert_received {:telemetry, [:snakepit, :execute, :stop], _, %{result: :error}}
  end

  test "adapter_env that can no longer take effect is logged" do
    # NumPy is already imported in this VM (the guide's pool imports it).
    {:ok, _} = Snakepit.execute(:hpc_pool, "matrix_multiply", %{a: [[1]]})

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        start_test_pool!(adapter_env: [{"OPENBLAS_NUM_THREADS", "3"}])
        Process.sleep(100)
      end)

    assert log =~ "adapter_env OPENBLAS_NUM_THREADS=3 cannot take effect for numpy"
  end

  test "stopping the application drains and joins; a later start in the same VM works" do
    parent = self()

    long =
      spawn(fn ->
        send(
          parent,
          {:long, Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1], iterations: 1})}
        )
      end)

    _ = long
    assert_receive {:long, {:ok, _}}, 5_000
    before = length(pool_thread_names())
    :ok = Application.stop(:snakepit)
    assert length(pool_thread_names()) == before - 64
    assert {:error, %Error{category: :pool}} = Snakepit.execute(:hpc_pool, "ping", %{})
    {:ok, _} = Application.ensure_all_started(:snakepit)
    assert {:ok, "pong"} = Snakepit.execute(:hpc_pool, "ping", %{})
  end
end
