defmodule Snakepit do
  @moduledoc """
  Run Python from Elixir, in-process: a Rust NIF hosts CPython inside the BEAM, a native thread
  pool runs the methods of a Python adapter, and each result comes back to the caller as an
  ordinary message.

      {:ok, result} = Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})

  See the README for the quick start, `Snakepit.Config` for pool options and
  `Snakepit.Error` for what can go wrong.

  ## Arguments and results

  A map of arguments becomes keyword arguments of the Python method (atom keys become `str`),
  a list becomes positional arguments, `nil` none. Values map as in the table of the README
  ("Terms and Python"): strings and binaries, numbers of any size, lists, tuples, maps,
  `MapSet`s and pids cross both ways; NumPy arrays come back as lists.

  > #### Blocking a pool thread {: .warning}
  >
  > A call that times out is cancelled: dropped if still queued, interrupted with
  > `snakepit_bridge.Cancelled` if running Python code. Code blocked inside a C call (a long
  > `time.sleep`, a socket read) is only interrupted when that call returns, and holds its
  > pool thread until then.
  """

  alias Snakepit.{Config, Error, Native, Pool, ProcessPool, Registry}

  @default_timeout 60_000

  @typedoc "A pool name, as in `config :snakepit, pools: [%{name: :hpc_pool, ...}]`."
  @type pool :: atom()
  @type command :: String.t() | atom()
  @type args :: map() | list() | nil
  @type result :: {:ok, term()} | {:error, Error.t()}

  @doc """
  Runs `command` of the pool's Python adapter with `args` and waits for the result.

  There are two forms:

      Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})
      Snakepit.execute("compute_intensive", %{data: [1, 2, 3]}, pool_name: :hpc_pool)

  The second (upstream Snakepit's) takes the pool from `:pool_name`, else the default pool
  (`config :snakepit, default_pool: ...`, else the first configured pool).

  ## Options

    * `:timeout` — milliseconds to wait (default #{@default_timeout}); on expiry the call is
      cancelled and `{:error, %Snakepit.Error{category: :timeout}}` returned.
    * `:pool_name` — the pool, in the three-argument form.
  """
  @spec execute(pool(), command(), args(), keyword()) :: result()
  @spec execute(command(), args(), keyword()) :: result()
  def execute(pool_or_command, command_or_args, args_or_opts \\ [], opts \\ [])

  def execute(command, args, opts, []) when is_binary(command) and is_list(opts) do
    if Keyword.keyword?(opts) do
      case Keyword.get(opts, :pool_name) || Config.default_pool() do
        nil -> {:error, Error.new(:pool, "no :pool_name given and no default pool configured")}
        pool -> execute(pool, command, args, opts)
      end
    else
      {:error, Registry.not_running(command)}
    end
  end

  def execute(pool, command, args, opts) when is_atom(pool) and is_list(opts) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    with {:ok, command} <- command_name(command),
         {:ok, ref} <- local_or_remote(pool, command, args, opts) do
      if Snakepit.Telemetry.enabled?() do
        instrumented(pool, ref, command, normalize_args(args), timeout)
      else
        call(ref, command, normalize_args(args), timeout)
      end
    else
      {:remote, result} -> result
      other -> other
    end
  end

  # A pool name that is not an atom ("my_pool", 123): a :pool error, never a FunctionClauseError.
  def execute(pool, _command, _args, _opts), do: {:error, Registry.not_running(pool)}

  # The local pool, or the result of the call made on another node that has the pool.
  defp local_or_remote(pool, command, args, opts) do
    case Pool.lookup(pool) do
      {:ok, ref} ->
        {:ok, ref}

      {:error, _} = not_here ->
        case Snakepit.Cluster.execute_remote(pool, command, normalize_args(args), opts) do
          :no_remote -> not_here
          result -> {:remote, result}
        end
    end
  end

  defp instrumented(pool, ref, command, args, timeout) do
    alias Snakepit.Telemetry
    meta = %{pool: pool, command: command}
    start = System.monotonic_time()
    Telemetry.execute([:snakepit, :execute, :start], %{system_time: System.system_time()}, meta)

    try do
      call(ref, command, args, timeout)
    catch
      kind, reason ->
        duration = System.monotonic_time() - start

        Telemetry.execute(
          [:snakepit, :execute, :exception],
          %{duration: duration},
          Map.merge(meta, %{kind: kind, reason: reason})
        )

        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      result ->
        duration = System.monotonic_time() - start

        with {:error, %Error{details: %{reason: :saturated, max_queue: max}}} <- result do
          Telemetry.execute([:snakepit, :pool, :saturated], %{max_queue: max}, %{pool: pool})
        end

        Telemetry.execute(
          [:snakepit, :execute, :stop],
          %{duration: duration},
          Map.put(meta, :result, elem(result, 0))
        )

        result
    end
  end

  @doc "Like `execute/4`, but returns the result or raises `Snakepit.Error`."
  @spec execute!(pool() | command(), command() | args(), args() | keyword(), keyword()) ::
          term()
  def execute!(a, b, c \\ [], opts \\ []) do
    case execute(a, b, c, opts) do
      {:ok, value} -> value
      {:error, %Error{} = e} -> raise e
    end
  end

  defp command_name(command) when is_binary(command), do: {:ok, command}
  defp command_name(command) when is_atom(command), do: {:ok, Atom.to_string(command)}

  defp command_name(command),
    do: {:error, Error.new(:validation, "command must be a string, got: #{inspect(command)}")}

  # A keyword list means keyword arguments, as a map would.
  defp normalize_args([{k, _} | _] = args) when is_atom(k) do
    if Keyword.keyword?(args), do: Map.new(args), else: args
  end

  defp normalize_args(args), do: args

  @compile {:inline, call: 4}
  defp call({:process, pid}, command, args, timeout),
    do: ProcessPool.execute(pid, command, args, timeout)

  defp call(ref, command, args, timeout) do
    tag = make_ref()

    case Native.submit(ref, tag, command, args) do
      {:ok, job} ->
        receive do
          {^tag, reply} -> reply(reply)
        after
          timeout ->
            case Native.cancel(job) do
              :cancelled ->
                {:error,
                 Error.new(:timeout, "no result within #{timeout} ms; the call was cancelled",
                   details: %{timeout: timeout, command: command}
                 )}

              :done ->
                receive do
                  {^tag, reply} -> reply(reply)
                end
            end
        end

      {:error, map} ->
        {:error, Error.from_native(map)}
    end
  end

  defp reply({:ok, _} = ok), do: ok
  defp reply({:error, map}), do: {:error, Error.from_native(map)}

  @doc """
  Runs `command`, a method that returns an iterator or generator, and streams its items.

  Returns a lazy `Stream`: nothing runs until it is consumed. Flow is demand-driven: at most
  `:window` items (default 4) are in flight to the consumer, so a slow consumer never fills its
  mailbox, and the generator only advances as items are taken. Halting early (`Enum.take/2`,
  `Stream.take/2`, an exception in the consumer) stops the generator and runs its `finally`
  blocks; so does the consumer process dying.

      Snakepit.execute_stream(:hpc_pool, "count_up", %{limit: 1_000_000}) |> Enum.take(5)

  An exception in the generator raises `Snakepit.Error` in the consumer, after the items that
  came before it. A pool that is not running (or a name that is not an atom) raises a `:pool`
  `Snakepit.Error` when the stream is consumed. `:timeout` (default #{@default_timeout} ms) bounds the wait for each item.
  """
  @spec execute_stream(pool(), command(), args(), keyword()) :: Enumerable.t()
  def execute_stream(pool, command, args, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    window = Keyword.get(opts, :window, 4)

    case Pool.lookup(pool) do
      {:ok, {:process, pid}} ->
        ProcessPool.execute_stream(pid, command, normalize_args(args),
          timeout: timeout,
          window: window
        )

      _ ->
        Stream.resource(
          fn -> start_stream(pool, command, normalize_args(args), window) end,
          fn state -> next_chunk(state, timeout) end,
          &close_stream/1
        )
    end
  end

  defp start_stream(pool, command, args, window) do
    with {:ok, ref} <- Pool.lookup(pool),
         {:ok, command} <- command_name(command) do
      tag = make_ref()

      case Native.submit_stream(ref, tag, command, args, window) do
        {:ok, job} -> {tag, job, :running}
        {:error, map} -> raise Error.from_native(map)
      end
    else
      {:error, %Error{} = e} -> raise e
    end
  end

  defp next_chunk({_tag, _job, :finished} = state, _timeout), do: {:halt, state}

  defp next_chunk({tag, job, :running} = state, timeout) do
    receive do
      {^tag, {:chunk, value}} ->
        Native.stream_demand(job, 1)
        {[value], state}

      {^tag, :done} ->
        {:halt, {tag, job, :finished}}

      {^tag, {:error, map}} ->
        # The stream's last message: close_stream (run as the exception unwinds) must not wait.
        Process.put({__MODULE__, tag}, :finished)
        raise Error.from_native(map)
    after
      timeout ->
        raise Error.new(:timeout, "no stream item within #{timeout} ms; the stream was cancelled")
    end
  end

  defp close_stream({_tag, _job, :finished}), do: :ok

  defp close_stream({tag, job, :running}) do
    case Process.delete({__MODULE__, tag}) do
      :finished ->
        :ok

      nil ->
        Native.cancel(job)
        drain_stream(tag)
    end
  end

  # Drop the chunks still in flight, up to the stream's last message.
  defp drain_stream(tag) do
    receive do
      {^tag, {:chunk, _}} -> drain_stream(tag)
      {^tag, _last} -> :ok
    after
      5_000 -> :ok
    end
  end

  @doc """
  Counters of a pool: `total_requests`, `active_requests`, `queued`, `completed`, `failed`,
  `cancelled`, `rejected`, `max_workers` (its capacity), `thread_utilization` (one entry per
  thread: `name`, `worker`, `requests`, `busy_ms`, `busy_share`), `workers`, and `python`
  (`version`, `free_threaded`, `gil_enabled`).
  """
  @spec stats(pool()) :: {:ok, map()} | {:error, Error.t()}
  def stats(pool) do
    case Pool.entry(pool) do
      {_pid, {:process, pid}, _python} ->
        {:ok, ProcessPool.stats(pid)}

      {_pid, ref, python} ->
        stats = Native.stats(ref)
        {:ok, Map.put(stats, :python, Map.take(python, [:version, :free_threaded, :gil_enabled]))}

      nil ->
        {:error, Registry.not_running(pool)}
    end
  end

  @doc "Alias of `stats/1`, the upstream name."
  @spec get_stats(pool()) :: {:ok, map()} | {:error, Error.t()}
  def get_stats(pool), do: stats(pool)

  @doc """
  The adapter's commands: a list of `%{"name" => ..., "description" => ..., "parameters" => [...]}`
  (each parameter with `"name"`, `"type"`, `"required"`, `"default"`).
  """
  @spec tools(pool()) :: {:ok, [map()]} | {:error, Error.t()}
  def tools(pool) do
    case Pool.lookup(pool) do
      {:ok, {:process, pid}} ->
        ProcessPool.tools(pid)

      {:ok, ref} ->
        case Native.tools(ref) do
          {:ok, tools} -> {:ok, tools}
          {:error, map} -> {:error, Error.from_native(map)}
        end

      {:error, _} = error ->
        error
    end
  end

  @doc """
  The pid of the pool named `pool` in this node, or `nil` (as `GenServer.whereis/1` answers).
  A pool that has stopped or died is never returned.
  """
  @spec whereis(pool()) :: pid() | nil
  def whereis(pool), do: Registry.whereis(pool)

  @doc "The Python interpreter in use (started if it was not): version, build, executable."
  @spec python_info() :: {:ok, map()} | {:error, Error.t()}
  def python_info, do: Snakepit.Runtime.info()

  @doc """
  Starts a pool under Snakepit's supervisor. `config` as in `Snakepit.Config`; a bad key or
  value returns `{:error, %Snakepit.Error{category: :validation}}` naming it.
  """
  @spec start_pool(Config.pool_config()) :: {:ok, pid()} | {:error, Error.t()}
  def start_pool(config) do
    case DynamicSupervisor.start_child(Snakepit.PoolSupervisor, {Pool, config}) do
      {:ok, pid} -> {:ok, pid}
      {:error, %Error{} = e} -> {:error, e}
      {:error, {%Error{} = e, _child}} -> {:error, e}
      {:error, other} -> {:error, Error.new(:pool, "pool failed to start: #{inspect(other)}")}
    end
  end

  @doc """
  Stops a pool started with `start_pool/1` or from config: running calls finish (bounded),
  queued calls get a `:pool` error, threads are joined.
  """
  @spec stop_pool(pool()) :: :ok | {:error, Error.t()}
  def stop_pool(name) do
    case Pool.entry(name) do
      {pid, _ref, _} ->
        case DynamicSupervisor.terminate_child(Snakepit.PoolSupervisor, pid) do
          :ok ->
            :ok

          {:error, :not_found} ->
            {:error,
             Error.new(
               :pool,
               "pool #{inspect(name)} is not supervised by Snakepit; stop it through its own supervisor"
             )}
        end

      nil ->
        {:error, Registry.not_running(name)}
    end
  end
end
