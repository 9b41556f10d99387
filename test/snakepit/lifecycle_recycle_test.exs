defmodule Snakepit.RecycleTest do
  # Recycling, back-pressure, telemetry, adapter_env, restart of the application.
  use Snakepit.PoolCase, async: false

  alias Snakepit.Error

  defmodule Collector do
    @moduledoc false
    # An Erlang :logger handler that sends each event's text to a test process.
    def log(%{msg: msg}, %{config: %{to: pid}}), do: send(pid, {:log_text, text(msg)})

    defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
    defp text({:report, report}), do: inspect(report)
    defp text({format, args}), do: format |> :io_lib.format(args) |> IO.chardata_to_string()
  end

  setup do
    :persistent_term.put(:telemetry_stub_listeners, [self()])
    on_exit(fn -> :persistent_term.erase(:telemetry_stub_listeners) end)
    assert Snakepit.Telemetry.refresh()
    :ok
  end

  # Sends this test every log event from now on.
  defp collect_logs do
    handler = :"recycle_test_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(handler, Collector, %{config: %{to: self()}})
    on_exit(fn -> :logger.remove_handler(handler) end)
  end

  # Waits for a log event whose text contains `text` (the wait only bounds a failure).
  defp assert_logged(text, seen \\ []) do
    receive do
      {:log_text, logged} ->
        if logged =~ text, do: logged, else: assert_logged(text, [logged | seen])
    after
      30_000 -> flunk("no log event with #{inspect(text)}; saw #{inspect(Enum.reverse(seen))}")
    end
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

    # The pool process emits the event after the cleanup: it may still be on its way.
    assert_receive {:telemetry, [:snakepit, :worker, :recycled], %{requests: served},
                    %{pool: ^pool, reason: :max_requests}},
                   30_000

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
    # Lets the ttl pass (the feature is about time): sleeping longer, as a loaded machine does,
    # changes nothing, since only a served call triggers the replacement.
    Process.sleep(300)
    # This call runs on the old instance and triggers the replacement.
    assert Snakepit.execute!(pool, "whoami", %{}) == first
    wait_until(fn -> Snakepit.execute!(pool, "whoami", %{}) != first end)
    # The old instance is cleaned up once its last call is over, then the event is sent.
    wait_until(fn -> first in Snakepit.execute!(pool, "cleaned", %{}) end)
    assert_receive {:telemetry, [:snakepit, :worker, :recycled], _, %{reason: :ttl}}, 30_000
  end

  test "a recycle that fails keeps the old instance serving and logs the error" do
    pool =
      start_test_pool!(
        adapter: "snakepit_test_adapters.FailsOnRecycle",
        threads_per_worker: 2,
        worker_max_requests: 5
      )

    first = Snakepit.execute!(pool, "whoami", %{})
    collect_logs()
    for _ <- 1..50, do: assert(Snakepit.execute!(pool, "whoami", %{}) == first)

    # The pool's process logs the failure when the pool thread reports it.
    log = assert_logged("could not recycle worker 0")
    assert log =~ "model store unavailable"
  end

  test "a full queue emits [:snakepit, :pool, :saturated] and the pool recovers" do
    pool = start_test_pool!(threads_per_worker: 1, max_queue: 1)

    release =
      Path.join(
        System.tmp_dir!(),
        "snakepit_sat_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    on_exit(fn -> File.rm(release) end)
    test = self()

    # The running call holds the only thread until released.
    running =
      Task.async(fn ->
        args = %{pid: test, tag: "running", path: release}
        Snakepit.execute(pool, "started_hold", args, timeout: :infinity)
      end)

    assert_receive {"running", _os_pid, _thread}, 30_000
    queued = Task.async(fn -> Snakepit.execute(pool, "echo", %{value: :queued}) end)
    wait_until(fn -> match?({:ok, %{queued: 1}}, Snakepit.stats(pool)) end)

    assert {:error, %Error{category: :pool, details: %{reason: :saturated, max_queue: 1}}} =
             Snakepit.execute(pool, "echo", %{value: 1})

    assert_received {:telemetry, [:snakepit, :pool, :saturated], %{max_queue: 1}, %{pool: ^pool}}
    File.write!(release, "")
    assert {:ok, _} = Task.await(running, 30_000)
    assert {:ok, "queued"} = Task.await(queued, 30_000)
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

    # A call with result options runs through a built-in command; the events name the user's.
    assert {:ok, %Snakepit.Ref{}} = Snakepit.execute(pool, "echo", %{value: 3}, return: :ref)

    assert_received {:telemetry, [:snakepit, :execute, :start], _,
                     %{pool: ^pool, command: "echo"}}
  end

  test "adapter_env that can no longer take effect is logged" do
    # NumPy is already imported in this VM (the guide's pool imports it).
    {:ok, _} = Snakepit.execute(:hpc_pool, "matrix_multiply", %{a: [[1]]})
    collect_logs()
    start_test_pool!(adapter_env: [{"OPENBLAS_NUM_THREADS", "3"}])
    # Python's warning reaches Logger through Snakepit.PythonLogger's process.
    assert_logged("adapter_env OPENBLAS_NUM_THREADS=3 cannot take effect for numpy")
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
    assert_receive {:long, {:ok, _}}, 30_000
    before = length(pool_thread_names())
    :ok = Application.stop(:snakepit)
    assert length(pool_thread_names()) == before - 64
    assert {:error, %Error{category: :pool}} = Snakepit.execute(:hpc_pool, "ping", %{})
    {:ok, _} = Application.ensure_all_started(:snakepit)
    assert {:ok, "pong"} = Snakepit.execute(:hpc_pool, "ping", %{})
  end
end
