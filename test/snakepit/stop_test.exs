defmodule Snakepit.StopTest do
  # Stopping a thread-profile pool while calls run: what their callers get, what the log says,
  # which cleanups run. Each test waits out the stop's 5 s grace period. Not async: a test
  # spins a core in pure Python, another leaves a thread behind for a while.
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog
  import Snakepit.PoolCase

  alias Snakepit.Error

  # cleanup() runs on the thread that stops the pool (a dirty scheduler) or on a pool thread;
  # its message from the former goes through the snakepit-mail thread, so it may arrive just
  # after stop_pool returned: the tests wait for it.
  @adapter "snakepit_test_adapters.StopReporter"

  @tag timeout: 60_000
  test "a call spinning in pure Python is cut off: :pool errors, no straggler, cleanup() runs" do
    pool = start_test_pool!(adapter: @adapter, pool_size: 1, threads_per_worker: 1)
    parent = self()
    Snakepit.execute!(pool, "report_cleanup_to", %{pid: parent})

    spinner =
      Task.async(fn ->
        Snakepit.execute(pool, "spin_forever", %{pid: parent}, timeout: :infinity)
      end)

    assert_receive ["spinning", instance], 30_000

    queued =
      for _ <- 1..2 do
        Task.async(fn -> Snakepit.execute(pool, "echo", %{value: 1}, timeout: :infinity) end)
      end

    wait_until(fn -> match?({:ok, %{queued: 2}}, Snakepit.stats(pool)) end)

    log = capture_log(fn -> assert :ok = Snakepit.stop_pool(pool) end)

    refute log =~ "still running"
    assert_receive ["cleanup", ^instance], 30_000

    assert {:error, %Error{category: :pool, message: msg}} = Task.await(spinner)
    assert msg =~ "pool stopped while the call ran"
    assert msg =~ inspect(pool)

    for t <- queued do
      assert {:error, %Error{category: :pool, message: msg}} = Task.await(t)
      assert msg =~ "pool stopped before the call ran"
    end
  end

  @tag timeout: 60_000
  test "a thread stuck in C is the only one named; the other worker's cleanup() runs at once" do
    pool = start_test_pool!(adapter: @adapter, pool_size: 2, threads_per_worker: 1)
    parent = self()
    Snakepit.execute!(pool, "report_cleanup_to", %{pid: parent})

    sleeper =
      Task.async(fn ->
        Snakepit.execute(pool, "sleep_in_c", %{pid: parent, seconds: 10}, timeout: :infinity)
      end)

    assert_receive ["sleeping", stuck], 30_000

    log = capture_log(fn -> assert :ok = Snakepit.stop_pool(pool) end)

    assert log =~ "stopped with 1 thread(s) still running"
    assert [_] = Regex.scan(~r/snakepit-#{pool}-w\d-t\d/, log)
    assert log =~ ~r/snakepit-#{pool}-w\d-t0 \(blocked in a C call\)/
    assert_receive ["cleanup", other] when other != stuck, 30_000
    refute_received ["cleanup", ^stuck]

    # Its sleep over, the thread answers its caller, leaves, and cleans its worker up.
    assert {:error, %Error{category: :pool, message: msg}} = Task.await(sleeper, 20_000)
    assert msg =~ "pool stopped while the call ran"
    assert_receive ["cleanup", ^stuck], 30_000
  end

  @tag timeout: 60_000
  test "a stream waiting for demand is ended with a :pool error, its thread leaves" do
    pool = start_test_pool!(adapter: @adapter, pool_size: 1, threads_per_worker: 1)
    parent = self()
    Snakepit.execute!(pool, "report_cleanup_to", %{pid: parent})

    consumer =
      Task.async(fn ->
        try do
          Snakepit.execute_stream(pool, "count_up", %{limit: 100}, window: 1)
          |> Enum.each(fn item ->
            send(parent, {:item, item})

            # Held at its first item until the pool stopped: the generator, a window ahead,
            # waits for demand meanwhile.
            if item["i"] == 0 do
              receive do
                :go_on -> :ok
              end
            end
          end)
        rescue
          e in Error -> {:raised, e}
        end
      end)

    assert_receive {:item, %{"i" => 0}}, 30_000
    log = capture_log(fn -> assert :ok = Snakepit.stop_pool(pool) end)
    refute log =~ "still running"
    assert_receive ["cleanup", _], 30_000

    send(consumer.pid, :go_on)
    assert {:raised, %Error{category: :pool, message: msg}} = Task.await(consumer)
    assert msg =~ "pool stopped while the call ran"
  end
end
