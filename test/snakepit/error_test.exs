defmodule Snakepit.ErrorTest do
  # Every failure of a call is a %Snakepit.Error{} value, and the pool keeps serving.
  use Snakepit.PoolCase, async: true

  alias Snakepit.Error

  setup_all do
    name = :error_pool
    {:ok, _} = Snakepit.start_pool(name: name, adapter: adapter(), threads_per_worker: 2)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    %{pool: name}
  end

  test "execute! raises Snakepit.Error", %{pool: p} do
    assert_raise Error, ~r/ValueError: kaboom/, fn ->
      Snakepit.execute!(p, "fail", %{message: "kaboom"})
    end

    assert Snakepit.execute!(p, "echo", %{value: 2}) == 2
  end

  test "an unknown pool is a :pool error" do
    assert {:error, %Error{category: :pool, message: msg}} =
             Snakepit.execute(:no_such_pool, "ping", %{})

    assert msg =~ ":no_such_pool"
  end

  test "bad config names the key" do
    assert {:error, %Error{category: :validation, message: msg}} =
             Snakepit.start_pool(name: :bad_cfg, threads_per_worker: 0)

    assert msg =~ "threads_per_worker"

    assert {:error, %Error{category: :validation, message: msg}} =
             Snakepit.start_pool(name: :bad_cfg, adapter_args: ["--port", "50052"])

    assert msg =~ "--port"
  end

  test "starting a pool twice under one name is an error", %{pool: p} do
    assert {:error, %Error{category: :pool, message: msg}} =
             Snakepit.start_pool(name: p, adapter: adapter())

    assert msg =~ "already running"
  end
end
