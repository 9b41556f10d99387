defmodule Snakepit.ProcessPool do
  @moduledoc """
  A `:process` pool driven by its pid rather than its name.

  The `:process` profile itself is `Snakepit.Pool.Process` (its module doc says how workers
  live, fail and stop). Most code starts such pools with
  `Snakepit.start_pool(name: ..., worker_profile: :process)` and calls them by name; this
  module is for the few places that hold the pool's pid (it registers its name all the same).
  """

  alias Snakepit.{Caller, Config, Error}

  @typedoc "The pool process."
  @type server :: GenServer.server()

  @doc false
  # Snakepit.Pool's child spec (same id and shutdown), starting this module directly.
  def child_spec(config),
    do: %{Snakepit.Pool.child_spec(config) | start: {__MODULE__, :start_link, [config]}}

  @doc """
  Starts a `:process` pool linked to the caller and waits until every worker's adapter is ready.

  `config` is a `%Snakepit.Config{}` with `worker_profile: :process`, or a pool config (keyword
  list or map) where `worker_profile` defaults to `:process`. A worker that cannot start (an
  import error, an exception in the adapter's `__init__`) makes this return
  `{:error, %Snakepit.Error{}}` with the Python type, message and traceback.
  """
  @spec start_link(Config.t() | Config.pool_config()) :: GenServer.on_start()
  def start_link(config) do
    with {:ok, config} <- validate(config), do: Snakepit.Pool.Process.start_link(config)
  end

  # execute/4 here takes no result options: `ndarray: :nx` (finished by Snakepit.Caller for
  # calls by name) would silently give %Snakepit.NDArray{} structs.
  defp validate(%Config{worker_profile: :process, ndarray: :nx} = config) do
    {:error,
     Error.new(
       :validation,
       "pool #{inspect(config.name)}: Snakepit.ProcessPool takes ndarray: :list or :struct; " <>
         "start the pool with Snakepit.start_pool/1 for ndarray: :nx",
       details: %{key: :ndarray, value: :nx, pool: config.name}
     )}
  end

  defp validate(%Config{worker_profile: :process} = config), do: {:ok, config}

  defp validate(%Config{} = config) do
    {:error,
     Error.new(
       :validation,
       "pool #{inspect(config.name)}: Snakepit.ProcessPool runs only worker_profile :process",
       details: %{key: :worker_profile, value: config.worker_profile, pool: config.name}
     )}
  end

  defp validate(config) when is_list(config) or is_map(config) do
    config = if is_list(config), do: config, else: Map.to_list(config)

    config =
      if Keyword.keyword?(config) and not Keyword.has_key?(config, :worker_profile),
        do: [{:worker_profile, :process} | config],
        else: config

    case Config.validate_pool(config) do
      {:ok, valid} -> validate(valid)
      {:error, _} = error -> error
    end
  end

  @doc """
  Runs `command` with `args` on a worker; same contract as `Snakepit.execute/4`, with the
  timeout in milliseconds as the last argument.
  """
  @spec execute(server(), String.t() | atom(), map() | list() | nil, timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def execute(server, command, args, timeout \\ 60_000) do
    with {:ok, command} <- Caller.command_name(command) do
      Caller.call({Snakepit.Pool.Process, server}, command, Caller.normalize_args(args), timeout)
    end
  end

  @doc "Streams the items of the iterator `command` returns; as `Snakepit.execute_stream/4`."
  @spec execute_stream(server(), String.t() | atom(), map() | list() | nil, keyword()) ::
          Enumerable.t()
  def execute_stream(server, command, args, opts \\ []),
    do: Caller.stream({:target, {Snakepit.Pool.Process, server}}, command, args, opts)

  @doc "The adapter's commands, as `Snakepit.tools/1` returns them."
  @spec tools(server()) :: {:ok, [map()]} | {:error, Error.t()}
  def tools(server), do: Snakepit.Pool.Process.tools(server)

  @doc "The pool's counters, as `Snakepit.stats/1` returns them."
  @spec stats(server()) :: map()
  def stats(server), do: Snakepit.Pool.Process.stats(server, %{})

  @doc "Stops the pool and every worker process."
  @spec stop(server(), timeout()) :: :ok
  def stop(server, timeout \\ :infinity), do: GenServer.stop(server, :normal, timeout)
end
