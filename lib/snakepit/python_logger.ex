defmodule Snakepit.PythonLogger do
  @moduledoc """
  Python `logging` records, in Elixir's `Logger`.

  The NIF puts a handler on Python's root logger (level taken from `Logger.level/0` when the
  interpreter starts); each record arrives here and is logged at the matching level as
  `"[snakepit-hpc_pool-w0-t3] message"`, with metadata `python_thread`, `python_logger` and
  `pool` (the pool whose thread logged it, when a pool thread did).

      import logging
      log = logging.getLogger(__name__)

      class MyAdapter(ThreadSafeAdapter):
          @tool(description="...")
          def predict(self, x):
              log.info("predicting %s", x)   # => [info] [snakepit-my_pool-w0-t2] predicting 1
  """
  use GenServer
  require Logger

  @doc false
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc "The Python logging level matching Elixir's current `Logger.level/0`."
  @spec python_level() :: pos_integer()
  def python_level do
    case Logger.level() do
      :debug -> 10
      level when level in [:info, :notice] -> 20
      :warning -> 30
      :warn -> 30
      :error -> 40
      _ -> 50
    end
  end

  @doc false
  @spec elixir_level(integer()) :: Logger.level()
  def elixir_level(level) when level >= 50, do: :critical
  def elixir_level(level) when level >= 40, do: :error
  def elixir_level(level) when level >= 30, do: :warning
  def elixir_level(level) when level >= 20, do: :info
  def elixir_level(_level), do: :debug

  @doc false
  # One Python logging record, from any profile: the :thread profile's handler (above) and the
  # log frames of :process workers.
  @spec log(integer(), String.t(), String.t(), String.t(), atom() | nil) :: :ok
  def log(level, logger, message, thread, pool) do
    metadata = [python_logger: logger, python_thread: thread]
    metadata = if pool, do: [{:pool, pool} | metadata], else: metadata
    Logger.log(elixir_level(level), "[#{thread}] #{message}", metadata)
  end

  @impl true
  def init(nil), do: {:ok, nil}

  @impl true
  def handle_info({:snakepit_log, level, logger, message, thread, pool}, state) do
    log(level, logger, message, thread, pool && pool_name(pool))
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Pool names are atoms that exist (the pool was configured with one).
  defp pool_name(pool) do
    String.to_existing_atom(pool)
  rescue
    ArgumentError -> pool
  end
end
