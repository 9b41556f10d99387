defmodule Snakepit.Pool do
  @moduledoc """
  A pool of Python workers: `pool_size` adapter instances, each served by
  `threads_per_worker` native threads inside this BEAM node (the `:thread` profile).

  A pool is a process that owns the native pool and stops it when it terminates, so it can
  live in any supervision tree:

      children = [
        {Snakepit.Pool, name: :my_pool, pool_size: 2, threads_per_worker: 8,
         adapter: "my_app.adapters.Model"}
      ]

  Pools from `config :snakepit, pools: [...]` start with the `:snakepit` application; others
  with `Snakepit.start_pool/1` and stop with `Snakepit.stop_pool/1`. The options are those of
  `Snakepit.Config`.

  Calls do not go through this process: `Snakepit.execute/4` hands the job straight to the
  native queue and the pool thread replies straight to the caller.

  > #### Stopping a pool {: .info}
  >
  > Stopping refuses new calls, lets running calls finish for up to 5 s, then raises
  > `snakepit_bridge.Cancelled` in the ones still running (their callers get a `:pool` error,
  > "pool stopped while the call ran") and gives their threads up to 2 s more to leave. Queued
  > calls get a `:pool` error ("pool stopped before the call ran"). Each worker whose threads
  > all left runs its adapter's `cleanup()`. A thread blocked inside a C call (a long
  > `time.sleep`) can only leave when that call returns: it is named in the log, exits on its
  > own afterwards and then runs its worker's `cleanup()` if it was the worker's last thread.
  """
  use GenServer
  require Logger

  alias Snakepit.{Config, Error, Native, Runtime}

  @shutdown_grace 5_000

  @doc false
  def child_spec(config) do
    name =
      case config do
        %{name: name} -> name
        list when is_list(list) -> Keyword.get(list, :name)
        _ -> nil
      end

    %{
      id: {__MODULE__, name},
      start: {__MODULE__, :start_link, [config]},
      type: :worker,
      restart: :permanent,
      shutdown: @shutdown_grace * 3
    }
  end

  @doc "Starts a pool process linked to the caller. `config` as in `Snakepit.Config`."
  @spec start_link(Config.pool_config() | Config.t()) :: GenServer.on_start()
  def start_link(config) do
    case Config.validate_pool(config) do
      {:ok, %Config{worker_profile: :process} = valid} -> Snakepit.ProcessPool.start_link(valid)
      {:ok, %Config{} = valid} -> GenServer.start_link(__MODULE__, valid)
      {:error, %Error{} = e} -> {:error, e}
    end
  end

  @doc false
  @spec lookup(atom()) :: {:ok, reference() | {:process, pid()}} | {:error, Error.t()}
  def lookup(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      {_pid, ref, _info} ->
        {:ok, ref}

      nil ->
        {:error,
         Error.new(:pool, "no pool named #{inspect(name)} is running",
           details: %{pool: name, running: running()}
         )}
    end
  end

  @doc false
  @spec entry(atom()) :: {pid(), reference(), map()} | nil
  def entry(name), do: :persistent_term.get({__MODULE__, name}, nil)

  @doc "Names of the pools running in this node."
  @spec running() :: [atom()]
  def running do
    for {{__MODULE__, name}, _} <- :persistent_term.get(), do: name
  end

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    if entry(config.name) do
      {:stop,
       Error.new(:pool, "a pool named #{inspect(config.name)} is already running",
         details: %{pool: config.name}
       )}
    else
      start_native(config)
    end
  end

  defp start_native(%Config{} = config) do
    with {:ok, runtime} <- Runtime.native_config(),
         {:ok, ref} <- native_start(config, runtime),
         {:ok, python} <- Runtime.info() do
      :persistent_term.put({__MODULE__, config.name}, {self(), ref, python})
      Snakepit.Cluster.join(config.name)
      Snakepit.Compatibility.warn_if_gil(config.name, python, config)
      {:ok, %{config: config, ref: ref}}
    else
      {:error, %Error{} = e} -> {:stop, e}
    end
  end

  defp native_start(config, runtime) do
    native = %{
      name: Atom.to_string(config.name),
      pool_size: config.pool_size,
      threads_per_worker: config.threads_per_worker,
      adapter: config.adapter,
      max_queue: config.max_queue,
      thread_safety_check: config.thread_safety_check,
      adapter_env: config.adapter_env,
      runtime: runtime,
      worker_max_requests: infinity_as_zero(config.worker_max_requests),
      worker_ttl_ms: infinity_as_zero(config.worker_ttl)
    }

    case Native.start_pool(native) do
      {:ok, ref} ->
        {:ok, ref}

      {:error, map} ->
        e = Error.from_native(map)
        {:error, %{e | message: "pool #{inspect(config.name)} failed to start: #{e.message}"}}
    end
  end

  defp infinity_as_zero(:infinity), do: 0
  defp infinity_as_zero(n) when is_integer(n), do: n

  @impl true
  def handle_info({:snakepit_recycled, worker, reason, served}, %{config: config} = state) do
    Logger.debug(
      "snakepit: pool #{inspect(config.name)} recycled worker #{worker} (#{reason}) after #{served} calls"
    )

    Snakepit.Telemetry.execute([:snakepit, :worker, :recycled], %{requests: served}, %{
      pool: config.name,
      worker: worker,
      reason: reason
    })

    {:noreply, state}
  end

  def handle_info({:snakepit_recycle_failed, worker, reason, error}, %{config: config} = state) do
    e = Error.from_native(error)

    Logger.error(
      "snakepit: pool #{inspect(config.name)} could not recycle worker #{worker} (#{reason}); " <>
        "it keeps its current instance and retries with backoff: #{Exception.message(e)}",
      pool: config.name
    )

    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{config: config, ref: ref}) do
    :persistent_term.erase({__MODULE__, config.name})
    {:ok, stragglers} = Native.stop_pool(ref, @shutdown_grace)

    if stragglers != [] do
      threads = Enum.map_join(stragglers, ", ", fn {name, why} -> "#{name} (#{why})" end)

      Logger.warning(
        "snakepit: pool #{inspect(config.name)} stopped with #{length(stragglers)} thread(s) " <>
          "still running: #{threads}; each exits on its own when it can, and runs its " <>
          "worker's cleanup() if it is the worker's last",
        pool: config.name
      )
    end

    :ok
  end

  def terminate(_reason, _state), do: :ok
end
