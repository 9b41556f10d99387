defmodule Snakepit.Pool.Subinterpreter do
  @moduledoc """
  The `:subinterpreter` worker profile: each worker is an isolated CPython subinterpreter with
  its own GIL (PEP 684, CPython 3.12 or later) inside this BEAM node, so workers run
  pure-Python code in parallel on a standard (GIL) build, at the cost of a few MB per worker
  instead of an OS process.

  Each worker's adapter instance lives in its interpreter and is served by
  `threads_per_worker` native threads (default 1: threads of one worker share its GIL). The
  native side is the `:thread` profile's pool (one queue, replies straight to the caller),
  so this module drives it through `Snakepit.Pool.Thread`; only where the workers live differs
  (native/snakepit/src/subinterp/, docs/architecture.md "Subinterpreter workers").

  What does not work here, and why:

    * extension modules that do not support subinterpreters (NumPy and many C extensions)
      cannot be imported: a pool whose adapter imports one fails to start with an error naming
      the module; use `:thread` or `:process` for it;
    * objects never cross from one interpreter to another: each worker has its own
      `snakepit_bridge.Pid` class (pids cross as their external term format) and its own
      modules; module-level state is per worker.
  """

  @behaviour Snakepit.Pool

  alias Snakepit.Config
  alias Snakepit.Pool.Thread

  @min_version {3, 12}

  @impl Snakepit.Pool
  @spec start_link(Config.t()) :: GenServer.on_start()
  def start_link(%Config{} = config), do: Thread.start_link(config)

  @impl Snakepit.Pool
  defdelegate submit(pool, command, args, window), to: Thread

  @impl Snakepit.Pool
  defdelegate cancel(pool, tag, job), to: Thread

  @impl Snakepit.Pool
  defdelegate demand(pool, tag, job, n), to: Thread

  @impl Snakepit.Pool
  defdelegate finished(pool, tag, job), to: Thread

  @impl Snakepit.Pool
  defdelegate stats(pool, python), to: Thread

  @impl Snakepit.Pool
  defdelegate tools(pool), to: Thread

  # Refuses (native/snakepit/src/reload.rs): restart the pool instead.
  @impl Snakepit.Pool
  defdelegate reload(pool, roots, timeout), to: Thread

  # Refs are refused in this profile (native/snakepit/src/convert.rs): none reach a call.
  @impl Snakepit.Pool
  def object_home, do: :node

  @impl Snakepit.Pool
  def submit_to(pool, _worker, command, args, window),
    do: Thread.submit(pool, command, args, window)

  @doc """
  `{:ok, :subinterpreter}` when the Python Snakepit was built for is 3.12 or later (it has
  subinterpreters with their own GIL), else `{:error, sentence, details}` naming the version
  (used by `Snakepit.Config` to validate `worker_profile:`).
  """
  @spec check_python(String.t() | nil) :: {:ok, :subinterpreter} | {:error, String.t(), map()}
  def check_python(version \\ nil) do
    case if(version, do: {:ok, version}, else: python_version()) do
      {:ok, version} ->
        if supported?(version) do
          {:ok, :subinterpreter}
        else
          {:error,
           "worker_profile :subinterpreter needs CPython 3.12 or later (a GIL per " <>
             "interpreter, PEP 684); Snakepit is built for Python #{version}: use :thread " <>
             "or :process, or build Snakepit for a newer Python (README, \"Choosing the Python\")",
           %{python_version: version}}
        end

      :error ->
        {:ok, :subinterpreter}
    end
  end

  @doc "Whether Python `version` (a string such as `\"3.13.0\"`) has subinterpreters with their own GIL."
  @spec supported?(String.t()) :: boolean()
  def supported?(version) do
    case version |> String.split(".") |> Enum.take(2) |> Enum.map(&Integer.parse/1) do
      [{major, _}, {minor, _}] -> {major, minor} >= @min_version
      _ -> false
    end
  end

  defp python_version do
    case Snakepit.Runtime.build_info() do
      {:ok, %{version: version}} when is_binary(version) -> {:ok, version}
      _ -> :error
    end
  end
end
