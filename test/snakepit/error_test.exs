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

  test "a Python exception carries type, message and traceback", %{pool: p} do
    assert {:error, %Error{} = e} = Snakepit.execute(p, "fail", %{message: "bad input"})
    assert e.category == :python_error
    assert e.python_type == "ValueError"
    assert e.message == "bad input"
    assert e.python_traceback =~ "Traceback (most recent call last)"
    assert e.python_traceback =~ "in inner"
    assert e.python_traceback =~ "ValueError: bad input"
    assert Exception.message(e) =~ "ValueError: bad input"
  end

  test "SystemExit and KeyboardInterrupt are values, not a VM exit", %{pool: p} do
    assert {:error, %Error{category: :python_error, python_type: "SystemExit", message: "3"}} =
             Snakepit.execute(p, "exit", %{code: 3})

    assert {:error, %Error{category: :python_error, python_type: "KeyboardInterrupt"}} =
             Snakepit.execute(p, "interrupt", %{})

    assert Snakepit.execute(p, "echo", %{value: 1}) == {:ok, 1}
  end

  test "an unknown command lists the available ones", %{pool: p} do
    assert {:error, %Error{category: :validation, message: msg, details: details}} =
             Snakepit.execute(p, "no_such_command", %{})

    assert msg =~ ~s(unknown command "no_such_command")
    assert msg =~ "echo"
    assert "echo" in details.available
    assert "ping" in details.available
    assert "get_stats" in details.available
  end

  test "bad keyword arguments are a Python TypeError", %{pool: p} do
    assert {:error, %Error{python_type: "TypeError", message: msg}} =
             Snakepit.execute(p, "echo", %{nope: 1})

    assert msg =~ "nope"
  end

  test "a command that is not a string", %{pool: p} do
    assert {:error, %Error{category: :validation}} = Snakepit.execute(p, 123, %{})
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

  test "adapter import errors stop the pool start with the Python error" do
    assert {:error, %Error{python_type: "ImportError", message: msg}} =
             Snakepit.start_pool(name: :broken_import, adapter: "no_such_module.Adapter")

    assert msg =~ "no_such_module"
    assert {:error, %Error{category: :pool}} = Snakepit.execute(:broken_import, "ping", %{})
  end

  test "an exception in the adapter's __init__ stops the pool start with its traceback" do
    assert {:error, %Error{python_type: "RuntimeError", message: msg} = e} =
             Snakepit.start_pool(
               name: :broken_init,
               adapter: "snakepit_test_adapters.BrokenInit"
             )

    assert msg =~ "cannot load the model"
    assert e.python_traceback =~ "__init__"
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
