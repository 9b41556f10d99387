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
    running = Task.async(fn -> Snakepit.execute(:drain_pool, "sleep", %{seconds: 0.3}) end)
    wait_until(fn -> match?({:ok, %{active_requests: 1}}, Snakepit.stats(:drain_pool)) end)

    queued =
      for _ <- 1..5, do: Task.async(fn -> Snakepit.execute(:drain_pool, "echo", %{value: 1}) end)

    wait_until(fn -> match?({:ok, %{queued: 5}}, Snakepit.stats(:drain_pool)) end)
    :ok = Snakepit.stop_pool(:drain_pool)
    assert {:ok, _} = Task.await(running)

    for t <- queued do
      assert {:error, %Error{category: :pool, message: msg}} = Task.await(t)
      assert msg =~ "stopped"
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
