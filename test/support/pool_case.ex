defmodule Snakepit.PoolCase do
  @moduledoc false
  # Starts a pool of the test adapter for a test module and stops it afterwards.
  use ExUnit.CaseTemplate

  using do
    quote do
      import Snakepit.PoolCase
    end
  end

  @adapter "snakepit_test_adapters.TestAdapter"

  def adapter, do: @adapter

  @doc "Starts a pool with a unique name; stopped when the test ends."
  def start_test_pool!(opts \\ []) do
    name =
      Keyword.get_lazy(opts, :name, fn -> :"test_pool_#{System.unique_integer([:positive])}" end)

    config =
      [name: name, adapter: @adapter, pool_size: 1, threads_per_worker: 4]
      |> Keyword.merge(opts)

    {:ok, _pid} = Snakepit.start_pool(config)
    ExUnit.Callbacks.on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  @doc """
  A fresh temporary directory put on the `:python_path` config (global: for tests that are not
  async); both are undone when the test (or, from `setup_all`, the module) ends.
  """
  def python_dir!(tag) do
    dir = Path.join(System.tmp_dir!(), "snakepit_#{tag}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    before = Application.get_env(:snakepit, :python_path)
    Application.put_env(:snakepit, :python_path, List.wrap(before) ++ [dir])

    ExUnit.Callbacks.on_exit(fn ->
      Application.put_env(:snakepit, :python_path, before)
      File.rm_rf!(dir)
    end)

    dir
  end

  @doc """
  Polls `fun` every 5 ms until it returns true; fails the test after `timeout` ms.

  The timeout only bounds a failure (the condition must come true eventually): it is generous
  because the suite runs on loaded machines, and never orders events.
  """
  def wait_until(fun, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait_until(fun, deadline, timeout)
  end

  defp do_wait_until(fun, deadline, timeout) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        ExUnit.Assertions.flunk("condition not met within #{timeout} ms")

      true ->
        Process.sleep(5)
        do_wait_until(fun, deadline, timeout)
    end
  end

  @doc """
  Asserts that the adapter sees its busy loop interrupted by `snakepit_bridge.Cancelled`
  (within 5 s: the caller gets its timeout before the interrupt is delivered).
  """
  def assert_interrupted(pool) do
    wait_until(fn ->
      case Snakepit.execute(pool, "last_interrupt_name", %{}, timeout: 5_000) do
        {:ok, "Cancelled"} -> true
        {:ok, nil} -> false
        other -> ExUnit.Assertions.flunk("busy loop not interrupted: #{inspect(other)}")
      end
    end)
  end

  @doc "Number of OS threads of this BEAM process."
  def os_thread_count do
    "/proc/self/task" |> File.ls!() |> length()
  end

  @doc "Names of this OS process's threads that belong to Snakepit pools."
  def pool_thread_names do
    for tid <- File.ls!("/proc/self/task"),
        {:ok, comm} <- [File.read("/proc/self/task/#{tid}/comm")],
        String.starts_with?(comm, "snakepit-"),
        do: String.trim(comm)
  end
end
