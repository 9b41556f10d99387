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

  alias Snakepit.{Caller, Config, Error, Pool, Registry}

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
    * `:ndarray` — `:list`, `:struct` or `:nx`: how NumPy arrays in the result cross, as
      lists, `%Snakepit.NDArray{}` or `%Nx.Tensor{}` (Nx must be loaded); overrides the pool's
      `ndarray:` (README, "Large data").
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

  def execute(pool, command, args, opts) when is_atom(pool) and is_list(opts),
    do: Caller.execute(pool, command, args, opts)

  # A pool name that is not an atom ("my_pool", 123): a :pool error, never a FunctionClauseError.
  def execute(pool, _command, _args, _opts), do: {:error, Registry.not_running(pool)}

  @doc "Like `execute/4`, but returns the result or raises `Snakepit.Error`."
  @spec execute!(pool() | command(), command() | args(), args() | keyword(), keyword()) ::
          term()
  def execute!(a, b, c \\ [], opts \\ []) do
    case execute(a, b, c, opts) do
      {:ok, value} -> value
      {:error, %Error{} = e} -> raise e
    end
  end

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
  `:ndarray` (as in `execute/4`, else the pool's) applies to each item; `return: :ref` raises a
  `:validation` error (a stream sends values).
  """
  @spec execute_stream(pool(), command(), args(), keyword()) :: Enumerable.t()
  def execute_stream(pool, command, args, opts \\ []),
    do: Caller.stream(pool, command, args, opts)

  @doc """
  Marks a binary to arrive in Python as a read-only `memoryview` over it, without a copy
  (README, "Large data"): `{:buffer, binary}`.

      iex> Snakepit.buffer(<<1, 2, 3>>)
      {:buffer, <<1, 2, 3>>}
  """
  @spec buffer(binary()) :: {:buffer, binary()}
  def buffer(binary) when is_binary(binary), do: {:buffer, binary}

  @doc """
  Counters of a pool: `total_requests`, `active_requests`, `queued`, `completed`, `failed`,
  `cancelled`, `rejected`, `max_workers` (its capacity), `thread_utilization` (one entry per
  thread: `name`, `worker`, `requests`, `busy_ms`, `busy_share`), `workers` (one entry per
  worker: `index`, `adapter`, `requests`, `threads`, `recycles`, and what its profile adds, such
  as a `:process` worker's `os_pid`, `restarts` and `status`), and `python` (`version`,
  `free_threaded`, `gil_enabled`). A `:thread` pool adds `wakeups` and `parks` (of its idle
  threads), `inline_calls` (calls of commands declared `@tool(inline=True)` that ran on the
  caller's scheduler; counted in `total_requests` and the workers' `requests`, not in
  `thread_utilization`) and `inline_backoffs` (times slow inline calls stopped them for a while).
  """
  @spec stats(pool()) :: {:ok, map()} | {:error, Error.t()}
  def stats(pool) do
    case Registry.entry(pool) do
      {_pid, {mod, handle}, info} -> {:ok, mod.stats(handle, info)}
      nil -> {:error, Registry.not_running(pool)}
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
    with {:ok, {mod, handle}} <- Registry.lookup(pool), do: mod.tools(handle)
  end

  @doc """
  Reloads the Python code of pool `pool` (or, `reload/0`, of every pool of this node) and
  replaces its adapter instances, as recycling does: calls in flight finish on the old ones.
  A failure (a `SyntaxError`, an exception in `__init__`) returns `{:error, %Snakepit.Error{}}`
  with the traceback, and the old instances keep serving. See `Snakepit.Reloader`, also for
  `config :snakepit, reload: :auto`.

      iex> Snakepit.reload(:hpc_pool)
      :ok
  """
  @spec reload() :: :ok | {:error, Error.t()}
  def reload, do: Snakepit.Reloader.reload_all()

  @spec reload(pool(), keyword()) :: :ok | {:error, Error.t()}
  def reload(pool, opts \\ []), do: Snakepit.Reloader.reload(pool, opts)

  @doc """
  The pid of the pool named `pool` in this node, or `nil` (as `GenServer.whereis/1` answers).
  A pool that has stopped or died is never returned.
  """
  @spec whereis(pool()) :: pid() | nil
  def whereis(pool), do: Registry.whereis(pool)

  @doc """
  Registers an Elixir function Python may call: `snakepit_bridge.elixir.call("name", *args)`.

  `fun` is any fun (called with the Python call's arguments, so its arity is the number of
  arguments) or a `{module, function}` tuple. Node-wide; replaces a function of the same
  name. See `Snakepit.Functions` and the README, "Python calling Elixir".

      Snakepit.register_function(:fetch_user, &MyApp.Users.fetch/1)
      Snakepit.register_function(:add, {Kernel, :+})
  """
  @spec register_function(atom() | String.t(), Snakepit.Functions.fun_spec()) ::
          :ok | {:error, Error.t()}
  defdelegate register_function(name, fun), to: Snakepit.Functions, as: :register

  @doc "The names of the Elixir functions Python may call, sorted."
  @spec functions() :: [String.t()]
  defdelegate functions(), to: Snakepit.Functions, as: :names

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
    case Registry.entry(name) do
      {pid, _handle, _} ->
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

  ## Python objects and eval (README, "Python objects and eval")

  @doc """
  Calls method `name` of the Python object behind `ref` with `args` (a map: keyword
  arguments, a list: positional, `nil`: none).

      {:ok, y} = Snakepit.call_method(model, "predict", [[[1.0, 2.0]]])

  ## Options

    * `:return` — `:term` (default) converts the result; `:ref` returns a `%Snakepit.Ref{}`.
    * `:pool` — the pool to run on (default: the ref's own; a `:thread` ref works with any
      `:thread` pool of the node).
    * `:timeout` — as in `execute/4`.
  """
  @spec call_method(Snakepit.Ref.t(), String.t() | atom(), args(), keyword()) :: result()
  def call_method(ref, name, args \\ [], opts \\ []),
    do: Snakepit.Ref.call_method(ref, name, args, opts)

  @doc """
  Reads attribute `name` of the Python object behind `ref`. Options as in `call_method/4`.

      {:ok, [3, 3]} = Snakepit.get_attr(array, "shape")
  """
  @spec get_attr(Snakepit.Ref.t(), String.t() | atom(), keyword()) :: result()
  def get_attr(ref, name, opts \\ []), do: Snakepit.Ref.get_attr(ref, name, opts)

  @doc """
  Converts the Python object behind `ref` to an Elixir term now (as a result of `execute/4`
  would be). Options as in `call_method/4`.
  """
  @spec decode(Snakepit.Ref.t(), keyword()) :: result()
  def decode(ref, opts \\ []), do: Snakepit.Ref.decode(ref, opts)

  @doc """
  Releases the Python object behind `ref` now, rather than when the ref is garbage-collected.
  Later use of the ref (or a copy of it) answers a `:validation` error. Releasing twice is `:ok`.
  """
  @spec release(Snakepit.Ref.t()) :: :ok | {:error, Error.t()}
  def release(ref), do: Snakepit.Ref.release(ref)

  @doc """
  Runs Python source `code` on a pool thread and returns the value of its last expression
  (`nil` when the code ends with a statement). `bindings` (a map or keyword list) are set as
  globals of the code.

      {:ok, 12} = Snakepit.eval("sum(x) * 2", %{x: [1, 2, 3]})

  Errors are `{:error, %Snakepit.Error{}}`; a Python exception's traceback names the
  snippet's lines (`File "<snakepit-eval-7>", line 2`) and shows them.

  ## Options

    * `:pool` — the pool to run on (default: the default pool, as in `execute/3`). In a
      `:thread` pool the code shares the interpreter with the adapters and can import their
      modules.
    * `:globals` — a `%Snakepit.Ref{}` to a Python `dict` to run in: what the code defines
      stays there for the next eval (`{:ok, ns} = Snakepit.eval("{}", %{}, return: :ref)`).
    * `:return` — `:term` (default) or `:ref`.
    * `:timeout` — as in `execute/4`.

  See `Snakepit.Sigil` for `~PY` and `~P`.
  """
  @spec eval(String.t(), map() | keyword(), keyword()) :: result()
  def eval(code, bindings \\ %{}, opts \\ []), do: Snakepit.Eval.eval(code, bindings, opts)
end
