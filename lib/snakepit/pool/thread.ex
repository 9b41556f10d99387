defmodule Snakepit.Pool.Thread do
  @moduledoc false
  # The :thread profile (docs/architecture.md): a process that owns a native pool of
  # `pool_size` adapter instances × `threads_per_worker` native threads inside this BEAM node,
  # and stops it when it terminates (the native pool also stops when this process dies
  # without terminating: it monitors its owner, native/snakepit/src/pool.rs).
  #
  # Calls do not go through this process: Snakepit.Caller submits straight to the native queue
  # and the pool thread replies straight to the caller, `{tag, {:ok, term} | {:error, map}}`
  # (streams: `{tag, {:chunk, term}}` then `{tag, :done | :closed | {:error, map}}`).
  use GenServer
  require Logger

  @behaviour Snakepit.Pool

  alias Snakepit.{Config, Error, Native, Runtime}

  @shutdown_grace 5_000

  @impl Snakepit.Pool
  def start_link(%Config{} = config), do: GenServer.start_link(__MODULE__, config)

  @impl Snakepit.Pool
  def submit(pool, command, args, window) do
    tag = make_ref()

    submitted =
      case Process.get(:"$snakepit_chain") do
        # A call from an Elixir function that Python called (Snakepit.Functions): the pool
        # thread waiting for that function may run it (re-entrancy).
        chain when is_integer(chain) ->
          Native.submit_nested(pool, chain, tag, command, args, window || 0)

        _ when window != nil ->
          Native.submit_stream(pool, tag, command, args, window)

        _ ->
          Native.submit(pool, tag, command, args)
      end

    case submitted do
      {:ok, job} -> {:ok, tag, job}
      # A command declared `@tool(inline=True)`, run on this scheduler (native/snakepit/src/inline.rs).
      {:done, _reply} = done -> done
      {:error, map} -> {:error, Error.from_native(map)}
    end
  end

  # One interpreter for the node: a ref's object is reachable from every thread of every pool.
  @impl Snakepit.Pool
  def object_home, do: :node

  @impl Snakepit.Pool
  def submit_to(pool, _worker, command, args, window), do: submit(pool, command, args, window)

  @impl Snakepit.Pool
  def cancel(_pool, _tag, job), do: Native.cancel(job)

  @impl Snakepit.Pool
  def demand(_pool, _tag, job, n), do: Native.stream_demand(job, n)

  @impl Snakepit.Pool
  def finished(_pool, _tag, _job), do: :ok

  @impl Snakepit.Pool
  def stats(pool, python) do
    pool
    |> Native.stats()
    |> Map.put(:python, Map.take(python, [:version, :free_threaded, :gil_enabled]))
  end

  # On a dirty scheduler; fails without touching the current instances (native/snakepit/src/reload.rs).
  @impl Snakepit.Pool
  def reload(pool, roots, _timeout) do
    case Native.reload(pool, roots) do
      {:ok, modules} -> {:ok, modules}
      {:error, map} -> {:error, Error.from_native(map)}
    end
  end

  @impl Snakepit.Pool
  def tools(pool) do
    case Native.tools(pool) do
      {:ok, tools} -> {:ok, tools}
      {:error, map} -> {:error, Error.from_native(map)}
    end
  end

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    # Claim the name before any thread starts: a second pool of the same name stops here.
    case Snakepit.Registry.claim(config.name) do
      :ok -> start_native(config)
      {:error, %Error{} = e} -> {:stop, e}
    end
  end

  defp start_native(%Config{} = config) do
    with {:ok, runtime} <- Runtime.native_config(),
         {:ok, ref} <- native_start(config, runtime),
         {:ok, python} <- Runtime.info() do
      :ok = Snakepit.Registry.publish(config.name, {__MODULE__, ref}, python, config.ndarray)
      # Subinterpreter workers each have their own GIL: the warning does not apply.
      if config.worker_profile != :subinterpreter,
        do: Snakepit.Compatibility.warn_if_gil(config.name, python, config)

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
      ndarray: Snakepit.CallOptions.python_ndarray(config.ndarray),
      adapter_env: config.adapter_env,
      runtime: runtime,
      worker_max_requests: infinity_as_zero(config.worker_max_requests),
      worker_ttl_ms: infinity_as_zero(config.worker_ttl),
      subinterpreters: config.worker_profile == :subinterpreter
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
    Snakepit.Registry.release(config.name)
    stragglers = Native.stop_pool(ref, @shutdown_grace)

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
