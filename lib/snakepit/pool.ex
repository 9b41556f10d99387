defmodule Snakepit.Pool do
  @moduledoc """
  A pool of Python workers, and the contract every worker profile implements.

  A pool is `pool_size` workers (adapter instances), each served by `threads_per_worker`
  threads; where a worker lives is its profile (`worker_profile:`):

    * `:thread` (`Snakepit.Pool.Thread`) — native threads inside this BEAM node, one embedded
      interpreter;
    * `:process` (`Snakepit.Pool.Process`) — one Python OS process per worker, for isolation;
    * `:subinterpreter` (`Snakepit.Pool.Subinterpreter`) — one subinterpreter with its own GIL
      per worker inside this BEAM node (CPython 3.12 or later).

  A pool is a process, so it can live in any supervision tree:

      children = [
        {Snakepit.Pool, name: :my_pool, pool_size: 2, threads_per_worker: 8,
         adapter: "my_app.adapters.Model"}
      ]

  Pools from `config :snakepit, pools: [...]` start with the `:snakepit` application; others
  with `Snakepit.start_pool/1` and stop with `Snakepit.stop_pool/1`. The options are those of
  `Snakepit.Config`. A pool that crashes or is killed is restarted by its supervisor with its
  config; its name is free again as soon as it is gone (`Snakepit.whereis/1`).

  > #### Stopping a pool {: .info}
  >
  > Stopping refuses new calls, lets running calls finish for up to 5 s, then raises
  > `snakepit_bridge.Cancelled` in the ones still running (their callers get a `:pool` error,
  > "pool stopped while the call ran") and gives their threads up to 2 s more to leave. Queued
  > calls get a `:pool` error ("pool stopped before the call ran"). Each worker whose threads
  > all left runs its adapter's `cleanup()`. A thread blocked inside a C call (a long
  > `time.sleep`) can only leave when that call returns: it is named in the log, exits on its
  > own afterwards and then runs its worker's `cleanup()` if it was the worker's last thread.

  ## The contract

  A profile is one module with these callbacks. It registers `{module, handle}` with
  `Snakepit.Registry` once it is ready; `Snakepit.Caller` drives every call through the
  callbacks, so argument handling, timeouts, cancellation, streams and telemetry are written
  once for all profiles. The messages a profile sends to the caller:

    * a call: exactly one `{tag, reply}`, where `reply` is `{:ok, term}`, `{:error, map}` or
      `{:etf, binary}` (an external term of either), unless `cancel/3` answered `:cancelled`
      (`{:etf, binary, blobs}` too: the term's `{:"$snakepit_shm", i}` stand for the binaries
      of the tuple `blobs`, Snakepit.Pool.Process.Shm);
    * a stream: `{tag, {:chunk, item}}` (`item` a term or `{:etf, binary}`) while there is
      demand, then one last message: `{tag, :done}`, `{tag, :closed}` (after `cancel/3`) or
      `{tag, {:error, map}}`;
    * `{:DOWN, tag, ...}` when `tag` is a monitor of the pool process that went down.
  """

  alias Snakepit.{Config, Error}

  @typedoc "What a profile registers for its pool: how the caller reaches it."
  @type handle :: term()
  @typedoc "A submitted job, as the profile wants it back in `cancel/3` and `demand/4`."
  @type job :: term()

  @doc "Starts the pool process (linked), registers its name, and returns once it serves."
  @callback start_link(Config.t()) :: GenServer.on_start()

  @doc """
  Queues a call of `command` with `args` (`window` nil), or a stream with `window` chunks in
  flight. Never blocks. Returns the tag its messages carry, or, for a call the profile ran at
  once (a short command the `:thread` profile runs on the caller's scheduler: "Inline calls"
  in docs/architecture.md), `{:done, reply}` with the reply no message will bring.
  """
  @callback submit(handle(), String.t(), term(), pos_integer() | nil) ::
              {:ok, reference(), job()} | {:done, term()} | {:error, Error.t()}

  @doc """
  Cancels a job: `:cancelled` (a call: no reply will come; a stream: its last message will),
  or `:done` (the reply is here or on its way).
  """
  @callback cancel(handle(), reference(), job()) :: :cancelled | :done

  @doc "A stream's consumer wants `n` more chunks."
  @callback demand(handle(), reference(), job(), pos_integer()) :: :ok

  @doc """
  The caller is done with a job: a call's reply was received, or a stream's last message was
  received or given up on. Drops what the profile keeps for it in the caller (a monitor).
  """
  @callback finished(handle(), reference(), job()) :: :ok

  @doc """
  Where the Python objects behind this profile's `%Snakepit.Ref{}`s live: `:node` (in this
  node's interpreter: a ref works on any worker, and `submit/4` is used for every call) or
  `:worker` (each in one worker: `Snakepit.Caller` looks for refs in a call's arguments and
  submits a call that passes one with `submit_to/5`).
  """
  @callback object_home() :: :node | :worker

  @doc """
  Like `submit/4`, for a call that must run on one worker: the one that holds the objects of
  the refs in `args`. `worker` is `{{pool, index, os_pid}, keep}`: the worker as a `:worker`
  profile's refs name it, and the refs' guards (resources), which the profile holds until the
  call ends (so no object is released while a call that passes it runs). If that worker is gone (it died or was recycled) the call answers
  `{:error, %Snakepit.Error{category: :worker}}`, "the object was lost with its worker"; it
  never runs on another worker. A `:node` profile runs the call anywhere.
  """
  @callback submit_to(handle(), worker :: term(), String.t(), term(), pos_integer() | nil) ::
              {:ok, reference(), job()} | {:error, Error.t()}

  @doc "The pool's counters, as `Snakepit.stats/1` returns them; `info` as registered."
  @callback stats(handle(), info :: map()) :: map()

  @doc "The adapter's commands, as `Snakepit.tools/1` returns them."
  @callback tools(handle()) :: {:ok, [map()]} | {:error, Error.t()}

  @doc """
  Reloads the pool's Python code and replaces every adapter instance (`Snakepit.Reloader`):
  calls in flight finish on the old instances; on failure the old instances keep serving.
  `roots` are the `:python_path` directories. Returns the modules re-imported, or `:all` (new
  worker processes).
  """
  @callback reload(handle(), roots :: [String.t()], timeout()) ::
              {:ok, [String.t()] | :all} | {:error, Error.t()}

  @profiles %{
    thread: Snakepit.Pool.Thread,
    process: Snakepit.Pool.Process,
    subinterpreter: Snakepit.Pool.Subinterpreter
  }
  @shutdown_grace 5_000

  @doc false
  @spec module(Config.worker_profile()) :: module()
  def module(profile), do: Map.fetch!(@profiles, profile)

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
    # Run-time requirements of a valid config (Nx for `ndarray: :nx`) are checked here, not
    # in Snakepit.Config, whose validation stays pure.
    with {:ok, %Config{} = valid} <- Config.validate_pool(config),
         :ok <- Snakepit.CallOptions.check_pool(valid) do
      module(valid.worker_profile).start_link(valid)
    else
      {:error, %Error{} = e} -> {:error, e}
    end
  end

  @doc false
  @spec lookup(term()) :: {:ok, {module(), handle()}} | {:error, Error.t()}
  defdelegate lookup(name), to: Snakepit.Registry

  @doc false
  @spec entry(term()) :: {pid(), {module(), handle()}, map()} | nil
  defdelegate entry(name), to: Snakepit.Registry

  @doc "Names of the pools running in this node."
  @spec running() :: [atom()]
  defdelegate running(), to: Snakepit.Registry
end
