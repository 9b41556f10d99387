defmodule Snakepit.LifecycleTest do
  # Not async: counts OS threads of the whole VM.
  use Snakepit.PoolCase, async: false

  alias Snakepit.Error

  test "a stopped pool has no threads left" do
    before = length(pool_thread_names())

    {:ok, _} =
      Snakepit.start_pool(
        name: :lifecycle_pool,
        adapter: adapter(),
        pool_size: 3,
        threads_per_worker: 5
      )

    assert length(pool_thread_names()) == before + 15
    assert {:ok, _} = Snakepit.execute(:lifecycle_pool, "echo", %{value: 1})
    assert :ok = Snakepit.stop_pool(:lifecycle_pool)
    assert length(pool_thread_names()) == before

    assert {:error, %Error{category: :pool}} =
             Snakepit.execute(:lifecycle_pool, "echo", %{value: 1})

    assert {:error, %Error{category: :pool}} = Snakepit.stop_pool(:lifecycle_pool)
  end

  test "stopping a pool answers queued calls with a :pool error and lets running ones finish" do
    {:ok, _} = Snakepit.start_pool(name: :drain_pool, adapter: adapter(), threads_per_worker: 1)
    {:ok, handle} = Snakepit.Registry.lookup(:drain_pool)

    release =
      Path.join(
        System.tmp_dir!(),
        "snakepit_drain_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    on_exit(fn -> File.rm(release) end)
    test = self()

    # The running call holds its thread until released, once the stop has begun.
    running =
      Task.async(fn ->
        args = %{pid: test, tag: "running", path: release}
        Snakepit.execute(:drain_pool, "started_hold", args, timeout: :infinity)
      end)

    assert_receive {"running", _os_pid, _thread}, 30_000

    queued =
      for _ <- 1..5, do: Task.async(fn -> Snakepit.execute(:drain_pool, "echo", %{value: 1}) end)

    wait_until(fn -> match?({:ok, %{queued: 5}}, Snakepit.stats(:drain_pool)) end)

    releaser =
      Task.async(fn ->
        wait_until(fn -> refuses_jobs?(:drain_pool, handle) end)
        File.write!(release, "")
      end)

    :ok = Snakepit.stop_pool(:drain_pool)
    :ok = Task.await(releaser, 30_000)
    assert {:ok, _} = Task.await(running, 30_000)

    for t <- queued do
      assert {:error, %Error{category: :pool, message: msg}} = Task.await(t, 30_000)
      assert msg =~ "stopped"
    end
  end

  # Whether the stop of pool `name` has begun: its name is gone and the pool itself (through
  # the Snakepit.Pool contract) refuses jobs, so its threads take no queued job after their
  # current one. A probe made before that is queued, and answered like the other queued jobs.
  defp refuses_jobs?(name, {module, pool}) do
    with nil <- Snakepit.Registry.entry(name),
         {:error, %Error{message: message}} <- module.submit(pool, "echo", nil, nil) do
      message =~ "is stopped"
    else
      _ -> false
    end
  end

  test "a pool can be a child of the user's own supervisor" do
    children = [
      {Snakepit.Pool, name: :supervised_pool, adapter: adapter(), threads_per_worker: 2}
    ]

    {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
    assert Snakepit.execute(:supervised_pool, "echo", %{value: "x"}) == {:ok, "x"}
    assert {:error, %Error{}} = Snakepit.stop_pool(:supervised_pool)
    :ok = Supervisor.stop(sup)

    assert {:error, %Error{category: :pool}} =
             Snakepit.execute(:supervised_pool, "echo", %{value: 1})
  end

  test "the same pool name can be started again after a stop" do
    for _ <- 1..3 do
      {:ok, _} = Snakepit.start_pool(name: :again_pool, adapter: adapter(), threads_per_worker: 2)
      assert {:ok, 1} = Snakepit.execute(:again_pool, "echo", %{value: 1})
      :ok = Snakepit.stop_pool(:again_pool)
    end
  end

  test "python_info/0 describes the interpreter" do
    assert {:ok, info} = Snakepit.python_info()
    assert info.version =~ ~r/^3\.\d+\.\d+$/
    assert is_boolean(info.free_threaded)
    assert info.gil_enabled == not info.free_threaded or info.free_threaded
  end
end
