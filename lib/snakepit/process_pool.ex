defmodule Snakepit.ProcessPool do
  @moduledoc """
  A pool of Python OS processes: the `:process` worker profile.

  Each of `pool_size` workers is a `python -m snakepit_bridge.worker` process started through an
  Erlang port. It runs one adapter instance, single-threaded, and answers one call at a time.
  The adapters, the arguments, the term mapping and the errors are those of the `:thread`
  profile (`Snakepit.Pool`); what differs is isolation:

    * a worker that dies (an exception escaping its loop, `os._exit`, a segfault in a C
      extension, the OOM killer) fails only its in-flight call, with
      `%Snakepit.Error{category: :worker}`, and is restarted;
    * a call that times out, or whose caller dies, while it runs has its worker killed
      (`SIGKILL`: it may be stuck in C code) and restarted; a queued one is dropped;
    * no Python process outlives its pool or the VM: stopping the pool stops (then kills) every
      worker, and a worker exits when its stdin closes or its parent dies.

  Use it for thread-unsafe libraries, for CPU parallelism on a GIL build, for C extensions that
  may crash, and to run a different interpreter than the one the NIF was built for (`:python`).

  ## How a call travels

  The caller encodes the arguments (`:erlang.term_to_binary/1`) and sends them to the pool
  process, which owns the ports; the pool writes the frame to an idle worker or queues it. The
  worker's reply frame goes back to the caller undecoded, and the caller decodes it with
  `:erlang.binary_to_term(bin, [:safe])`. So the pool process never encodes or decodes a value.
  The frames are described in `priv/python/snakepit_bridge/worker.py`.

  ## Worker environment

  `PYTHONPATH` is `Snakepit.Runtime.python_path/0` (Snakepit's `priv/python`, then
  `config :snakepit, python_path: ...`, then the `PYTHONPATH` of the VM). `OPENBLAS_NUM_THREADS`,
  `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `NUMEXPR_NUM_THREADS` and `VECLIB_MAXIMUM_THREADS` are
  `"1"` unless `:adapter_env` sets them: a pool of N processes should not start N × cores BLAS
  threads. `:adapter_env` is applied on top.

  ## Recycling

  `:worker_ttl` and `:worker_max_requests` replace one worker process at a time: a worker due
  for recycling finishes its call, gets a stop frame (its adapter's `cleanup()` runs) and a
  fresh process takes its place; the other workers keep serving meanwhile.

  ## Messages from Python

  `snakepit_bridge.send(pid, term)` works in a worker as in the `:thread` profile: the worker
  writes a message frame, which the pool process decodes and sends to `pid` before it forwards
  the reply of the call that sent it (so the message arrives first). `snakepit_bridge.Pid` is
  the pid's external-term encoding. Python `logging` records at or above `Logger.level/0`
  become `Logger` events with `python_logger`, `python_thread` and `pool` metadata. Anything
  printed to stdout or stderr goes to the VM's stderr (stdout carries the frames).

  ## Stopping

  On stop, queued calls get a `:pool` error, every worker gets a stop frame (read after its
  running call, if any, which may finish for up to 5 s), and workers still alive after that are
  killed; `terminate/2` returns once every worker process is gone. If the pool process itself
  is killed (`:kill`, no `terminate/2`), its ports close: idle workers exit at once, a worker
  inside a long C call when that call returns; workers whose VM dies are killed by the kernel
  (`PR_SET_PDEATHSIG` on Linux) or exit within a second (a watchdog thread).
  """
  use GenServer
  require Logger

  alias Snakepit.{Config, Error, Runtime}

  # Frame kinds, Elixir -> worker.
  @call 0
  @tools 1
  @stop 2
  @init 3
  @stream 4
  @demand 5
  @cancel 6
  # Frame kinds, worker -> Elixir.
  @reply_ok 0
  @reply_error 1
  @ready 2
  @send 3
  @log 4
  @chunk 5
  @done 6

  # Every atom a worker may send. binary_to_term(bin, [:safe]) refuses atoms that do not exist
  # yet; these exist as soon as this module is loaded (see worker_atoms/0).
  @worker_atoms [
    :ok,
    :error,
    nil,
    true,
    false,
    :nan,
    :infinity,
    :neg_infinity,
    :__struct__,
    MapSet,
    :map,
    :version,
    :category,
    :message,
    :python_type,
    :python_traceback,
    :details,
    :available,
    :python_error,
    :timeout,
    :pool,
    :validation,
    :conversion,
    :worker,
    :python,
    :os_pid,
    :adapter,
    :free_threaded,
    :gil_enabled,
    :executable
  ]

  @shutdown_grace 5_000
  # How long a cancelled stream's generator may take to close before its worker is killed.
  @stream_close_grace 2_000
  @restart_backoff 1_000
  @blas_vars ~w(OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS NUMEXPR_NUM_THREADS
                VECLIB_MAXIMUM_THREADS)

  @typedoc "The pool process."
  @type server :: GenServer.server()

  ## Client API

  @doc false
  # Referenced so that the atoms are in this module's literals (created when it loads).
  def worker_atoms, do: @worker_atoms

  @doc false
  # Snakepit.Pool's child spec (same id and shutdown), starting this module directly.
  def child_spec(config),
    do: %{Snakepit.Pool.child_spec(config) | start: {__MODULE__, :start_link, [config]}}

  @doc """
  Starts a `:process` pool linked to the caller and waits until every worker's adapter is ready.

  `config` is a `%Snakepit.Config{}` with `worker_profile: :process`, or a pool config (keyword
  list or map) where `worker_profile` defaults to `:process`. The pool registers its name like
  `Snakepit.Pool` does. A worker that cannot start (an import error, an exception in the
  adapter's `__init__`) makes this return `{:error, %Snakepit.Error{}}` with the Python type,
  message and traceback.
  """
  @spec start_link(Config.t() | Config.pool_config()) :: GenServer.on_start()
  def start_link(config) do
    with {:ok, config} <- validate(config) do
      GenServer.start_link(__MODULE__, config)
    end
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
  Runs `command` with `args` on a worker; same contract as `Snakepit.execute/4`.

  `args` is a map (keyword arguments), a list (positional arguments) or `nil`. Waits at most
  `timeout` ms; then the call is dropped if queued, or its worker killed and restarted if
  running, and `{:error, %Snakepit.Error{category: :timeout}}` is returned.
  """
  @spec execute(server(), String.t() | atom(), map() | list() | nil, timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def execute(server, command, args, timeout \\ 60_000)

  def execute(server, command, args, timeout) when is_atom(command),
    do: execute(server, Atom.to_string(command), args, timeout)

  def execute(server, command, args, timeout) when is_binary(command) do
    payload = [<<@call, byte_size(command)::32>>, command | :erlang.term_to_binary(args)]
    request(server, payload, :call, timeout, command)
  end

  def execute(_server, command, _args, _timeout),
    do: {:error, Error.new(:validation, "command must be a string, got: #{inspect(command)}")}

  @doc """
  Streams the items of the iterator `command` returns; same contract as
  `Snakepit.execute_stream/4`: a lazy `Stream`, at most `:window` (default 4) items in flight,
  each awaited for at most `:timeout` ms (default 60_000; on expiry `Snakepit.Error` with
  `category: :timeout` is raised). An exception in the generator raises `Snakepit.Error` in
  the consumer after the items before it.

  A consumer that halts early (`Enum.take/2`), times out or dies has the generator closed (its
  `finally` blocks run) the next time the worker waits for demand; a worker that has not
  closed it after #{@stream_close_grace} ms (stuck in C) is killed and restarted.
  """
  @spec execute_stream(server(), String.t() | atom(), map() | list() | nil, keyword()) ::
          Enumerable.t()
  def execute_stream(server, command, args, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 60_000)
    window = Keyword.get(opts, :window, 4)

    Stream.resource(
      fn -> start_stream(server, command, args, window) end,
      fn state -> next_chunk(state, timeout) end,
      &close_stream/1
    )
  end

  defp start_stream(server, command, args, window) do
    command =
      case command do
        c when is_binary(c) -> c
        c when is_atom(c) -> Atom.to_string(c)
        c -> raise Error.new(:validation, "command must be a string, got: #{inspect(c)}")
      end

    payload = [
      <<@stream, window::32, byte_size(command)::32>>,
      command | :erlang.term_to_binary(args)
    ]

    server = GenServer.whereis(server) || server
    tag = :erlang.monitor(:process, server, [{:alias, :demonitor}])
    if is_pid(server), do: send(server, {:"$snakepit_call", tag, self(), payload, :stream})
    {server, tag, :running}
  end

  defp next_chunk({_server, _tag, :finished} = state, _timeout), do: {:halt, state}

  defp next_chunk({server, tag, :running} = state, timeout) do
    receive do
      {^tag, {:chunk, bin}} ->
        send(server, {:"$snakepit_demand", tag, 1})
        {[:erlang.binary_to_term(bin, [:safe])], state}

      {^tag, :done} ->
        Process.demonitor(tag, [:flush])
        {:halt, {server, tag, :finished}}

      {^tag, reply} ->
        Process.demonitor(tag, [:flush])
        # The stream's last message: close_stream (run as the exception unwinds) has nothing
        # left to cancel.
        Process.put({__MODULE__, tag}, :finished)
        {:error, e} = decode_reply(reply)
        raise e

      {:DOWN, ^tag, _, _, reason} ->
        Process.put({__MODULE__, tag}, :finished)
        raise Error.new(:pool, "the pool stopped during the stream (#{inspect(reason)})")
    after
      timeout ->
        raise Error.new(:timeout, "no stream item within #{timeout} ms; the stream was cancelled",
                details: %{timeout: timeout}
              )
    end
  end

  defp close_stream({_server, _tag, :finished}), do: :ok

  defp close_stream({server, tag, :running}) do
    if Process.delete({__MODULE__, tag}) != :finished do
      # Deactivating the alias drops every chunk sent from now on; flush those already here.
      Process.demonitor(tag, [:flush])
      if is_pid(server), do: send(server, {:"$snakepit_close", tag})
      flush_stream(tag)
    end

    :ok
  end

  defp flush_stream(tag) do
    receive do
      {^tag, _} -> flush_stream(tag)
    after
      0 -> :ok
    end
  end

  @doc "The adapter's commands, as `Snakepit.tools/1` returns them."
  @spec tools(server(), timeout()) :: {:ok, [map()]} | {:error, Error.t()}
  def tools(server, timeout \\ 60_000), do: request(server, <<@tools>>, :tools, timeout, "tools")

  @doc """
  Counters of the pool, with the keys of the `:thread` profile's stats: `total_requests`,
  `active_requests`, `queued`, `completed`, `failed`, `cancelled`, `rejected`, `max_workers`
  (= `pool_size`), `pool_size`, `threads_per_worker` (1), `max_queue`, `thread_utilization`
  (`[]`), `uptime_ms`, `python` (`version`, `free_threaded`, `gil_enabled`, `executable` of the
  workers' interpreter), `worker_profile` (`:process`) and `workers`: one map per worker with
  `index`, `os_pid`, `requests` (served by that slot, over restarts), `restarts` (after a crash,
  a kill or a failed start), `recycled`, `status` (`:starting`, `:idle`, `:busy` or `:down`
  while waiting to be restarted), `adapter` and `threads` (1).
  """
  @spec stats(server()) :: map()
  def stats(server), do: GenServer.call(server, :stats)

  @doc "Stops the pool and every worker process (see the module doc)."
  @spec stop(server(), timeout()) :: :ok
  def stop(server, timeout \\ :infinity), do: GenServer.stop(server, :normal, timeout)

  # The caller side of a call: the reply comes to a monitor alias, so a reply that arrives
  # after a timeout is dropped by the runtime and never reaches the caller's mailbox.
  defp request(server, payload, kind, timeout, command) do
    # A name that is not registered gives an immediate :DOWN (noproc) below.
    server = GenServer.whereis(server) || server
    tag = :erlang.monitor(:process, server, [{:alias, :demonitor}])
    if is_pid(server), do: send(server, {:"$snakepit_call", tag, self(), payload, kind})

    receive do
      {^tag, reply} ->
        Process.demonitor(tag, [:flush])
        decode_reply(reply)

      {:DOWN, ^tag, _, _, reason} ->
        {:error,
         Error.new(:pool, "the pool stopped before the call finished (#{inspect(reason)})",
           details: %{command: command}
         )}
    after
      timeout ->
        Process.demonitor(tag, [:flush])

        receive do
          {^tag, reply} -> decode_reply(reply)
        after
          0 ->
            if is_pid(server), do: send(server, {:"$snakepit_cancel", tag})

            {:error,
             Error.new(:timeout, "no result within #{timeout} ms; the call was cancelled",
               details: %{timeout: timeout, command: command}
             )}
        end
    end
  end

  defp decode_reply(bin) when is_binary(bin) do
    case :erlang.binary_to_term(bin, [:safe]) do
      {:ok, _} = ok -> ok
      {:error, map} when is_map(map) -> {:error, Error.from_native(map)}
    end
  rescue
    ArgumentError ->
      {:error, Error.new(:conversion, "the worker's reply could not be decoded")}
  end

  defp decode_reply({:error, %Error{}} = error), do: error

  ## Server

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    with :ok <- check_name(config),
         {:ok, python} <- python_executable(config) do
      state = %{
        config: config,
        name: config.name,
        python: python,
        env: worker_env(config),
        workers: %{},
        ports: %{},
        idle: [],
        queue: :queue.new(),
        queued: 0,
        jobs: %{},
        running: %{},
        callers: %{},
        recycling: nil,
        retiring: %{},
        info: nil,
        submitted: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        rejected: 0,
        started_at: System.monotonic_time(:millisecond)
      }

      state =
        Enum.reduce(0..(config.pool_size - 1), state, fn i, acc ->
          spawn_worker(acc, i, new_worker(i))
        end)

      deadline = System.monotonic_time(:millisecond) + config.startup_timeout

      case await_ready(state, deadline) do
        {:ok, state} ->
          :persistent_term.put(
            {Snakepit.Pool, config.name},
            {self(), {:process, self()}, python_info(state)}
          )

          {:ok, state}

        {:error, %Error{} = e, state} ->
          kill_all(state)
          {:stop, %{e | message: "pool #{inspect(config.name)} failed to start: #{e.message}"}}
      end
    else
      {:error, %Error{} = e} -> {:stop, e}
    end
  end

  defp check_name(config) do
    if Snakepit.Pool.entry(config.name) do
      {:error,
       Error.new(:pool, "a pool named #{inspect(config.name)} is already running",
         details: %{pool: config.name}
       )}
    else
      :ok
    end
  end

  defp python_executable(%Config{python: nil, name: name}) do
    case Runtime.build_info() do
      {:ok, %{executable: exe}} -> check_executable(exe, name)
      {:error, _} = error -> error
    end
  end

  defp python_executable(%Config{python: python, name: name}), do: check_executable(python, name)

  defp check_executable(path, name) do
    path = to_string(path)

    found =
      cond do
        String.contains?(path, "/") -> if File.regular?(path), do: Path.expand(path)
        true -> System.find_executable(path)
      end

    case found do
      nil ->
        {:error,
         Error.new(
           :validation,
           "pool #{inspect(name)}: invalid python: no interpreter at #{inspect(path)}",
           details: %{key: :python, value: path, pool: name}
         )}

      exe ->
        {:ok, exe}
    end
  end

  defp worker_env(%Config{adapter_env: adapter_env}) do
    given = MapSet.new(adapter_env, &elem(&1, 0))
    blas = for var <- @blas_vars, not MapSet.member?(given, var), do: {var, "1"}

    base = [
      {"PYTHONPATH", Enum.join(Runtime.python_path(), ":")},
      {"PYTHONUNBUFFERED", "1"},
      {"SNAKEPIT_BEAM_PID", System.pid()}
    ]

    for {k, v} <- base ++ blas ++ adapter_env,
        do: {String.to_charlist(k), String.to_charlist(v)}
  end

  defp new_worker(index) do
    %{
      index: index,
      port: nil,
      os_pid: nil,
      status: :down,
      job: nil,
      served: 0,
      requests: 0,
      restarts: 0,
      recycled: 0,
      due: false,
      closing: false,
      failures: 0,
      adapter: nil,
      start_error: nil
    }
  end

  # Opens a worker process in slot `index` and sends it the init frame.
  defp spawn_worker(state, index, worker) do
    config = state.config

    port =
      Port.open({:spawn_executable, state.python}, [
        :binary,
        {:packet, 4},
        :exit_status,
        :use_stdio,
        :hide,
        {:busy_limits_port, :disabled},
        {:args, ["-m", "snakepit_bridge.worker"]},
        {:env, state.env}
      ])

    os_pid =
      case Port.info(port, :os_pid) do
        {:os_pid, pid} -> pid
        _ -> nil
      end

    init = %{
      adapter: config.adapter,
      pool_name: Atom.to_string(config.name),
      index: index,
      log_level: python_log_level(),
      options: %{
        threaded: false,
        max_workers: 1,
        thread_safety_check: config.thread_safety_check,
        pool_name: Atom.to_string(config.name)
      }
    }

    Port.command(port, [@init | :erlang.term_to_binary(init)])
    Process.send_after(self(), {:startup_timeout, port}, config.startup_timeout)

    worker = %{
      worker
      | port: port,
        os_pid: os_pid,
        status: :starting,
        job: nil,
        closing: false,
        served: 0,
        due: false,
        start_error: nil
    }

    %{
      state
      | workers: Map.put(state.workers, index, worker),
        ports: Map.put(state.ports, port, index)
    }
  end

  # In init: waits for every worker's ready frame (they start in parallel).
  defp await_ready(state, deadline) do
    if Enum.all?(state.workers, fn {_, w} -> w.status == :idle end) do
      {:ok, %{state | idle: Enum.sort(Map.keys(state.workers))}}
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {port, {:data, <<@ready, bin::binary>>}} when is_map_key(state.ports, port) ->
          state |> mark_ready(port, bin) |> await_ready(deadline)

        {port, {:data, <<@reply_error, bin::binary>>}} when is_map_key(state.ports, port) ->
          {:error, error} = decode_reply(bin)
          {:error, error, state}

        {_port, {:data, <<@log, bin::binary>>}} ->
          log_frame(state, bin)
          await_ready(state, deadline)

        {port, {:exit_status, status}} when is_map_key(state.ports, port) ->
          w = state.workers[state.ports[port]]

          {:error, exit_error(state, w, status, "while starting"),
           %{state | ports: Map.delete(state.ports, port)}}
      after
        remaining ->
          {:error,
           Error.new(
             :worker,
             "workers did not start within #{state.config.startup_timeout} ms (startup_timeout)",
             details: %{startup_timeout: state.config.startup_timeout}
           ), state}
      end
    end
  end

  defp mark_ready(state, port, bin) do
    index = state.ports[port]
    {:ok, info} = :erlang.binary_to_term(bin, [:safe])
    w = state.workers[index]

    w = %{
      w
      | status: :idle,
        failures: 0,
        adapter: info[:adapter],
        os_pid: info[:os_pid] || w.os_pid
    }

    if ttl = ttl(state.config), do: Process.send_after(self(), {:ttl, port}, ttl)

    %{state | workers: Map.put(state.workers, index, w), info: state.info || info[:python]}
  end

  defp ttl(%Config{worker_ttl: :infinity}), do: nil
  defp ttl(%Config{worker_ttl: ms}), do: ms

  defp python_info(%{info: nil}), do: %{}
  defp python_info(%{info: info}), do: info

  @impl true
  def handle_info({:"$snakepit_call", tag, caller, payload, kind}, state) do
    state = if kind != :tools, do: %{state | submitted: state.submitted + 1}, else: state

    case state.idle do
      [index | rest] ->
        mon = Process.monitor(caller)
        job = {tag, caller, mon, payload, kind}
        {:noreply, dispatch(%{state | idle: rest}, index, job)}

      [] when state.queued >= state.config.max_queue ->
        reply(tag, {:error, saturated(state)})

        state =
          if kind != :tools,
            do: %{state | rejected: state.rejected + 1, submitted: state.submitted - 1},
            else: state

        {:noreply, state}

      [] ->
        mon = Process.monitor(caller)
        job = {tag, caller, mon, payload, kind}

        {:noreply,
         %{
           state
           | queue: :queue.in(tag, state.queue),
             queued: state.queued + 1,
             jobs: Map.put(state.jobs, tag, job),
             callers: Map.put(state.callers, mon, tag)
         }}
    end
  end

  def handle_info({port, {:data, <<kind, bin::binary>>}}, state) when is_port(port) do
    case state.ports do
      %{^port => index} -> {:noreply, worker_frame(state, index, kind, bin)}
      _ -> {:noreply, retiring_frame(state, kind, bin)}
    end
  end

  def handle_info({port, {:exit_status, status}}, state) when is_port(port) do
    {:noreply, port_down(state, port, {:exit_status, status})}
  end

  def handle_info({:EXIT, port, reason}, state) when is_port(port) do
    {:noreply, port_down(state, port, {:exit, reason})}
  end

  def handle_info({:"$snakepit_cancel", tag}, state) do
    {:noreply, cancel(state, tag)}
  end

  def handle_info({:"$snakepit_close", tag}, state) do
    {:noreply, cancel(state, tag)}
  end

  def handle_info({:"$snakepit_demand", tag, n}, state) do
    with %{^tag => index} <- state.running,
         %{port: port} when port != nil <- state.workers[index] do
      port_send(port, <<@demand, n::32>>)
    end

    {:noreply, state}
  end

  def handle_info({:stream_close_grace, tag, port}, state) do
    with %{^tag => index} <- state.running,
         %{port: ^port} <- state.workers[index] do
      Logger.warning(
        "snakepit: pool #{inspect(state.name)} worker #{index} did not close a cancelled " <>
          "stream within #{@stream_close_grace} ms; killing it"
      )

      {:noreply, kill_and_restart(state, index, :cancelled)}
    else
      _ -> {:noreply, state}
    end
  end

  def handle_info({:DOWN, mon, :process, _pid, _reason}, state) do
    case state.callers do
      %{^mon => tag} ->
        {:noreply, cancel(%{state | callers: Map.delete(state.callers, mon)}, tag)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:startup_timeout, port}, state) do
    case state.ports do
      %{^port => index} ->
        if state.workers[index].status == :starting do
          Logger.error(
            "snakepit: pool #{inspect(state.name)} worker #{index} did not start within " <>
              "#{state.config.startup_timeout} ms; killing it"
          )

          {:noreply, kill_and_restart(state, index, :failed_start)}
        else
          {:noreply, state}
        end

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:ttl, port}, state) do
    case state.ports do
      %{^port => index} ->
        state = update_worker(state, index, &%{&1 | due: &1.due || :ttl})
        {:noreply, maybe_recycle_idle(state)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:restart, index}, state) do
    case state.workers[index] do
      %{status: :down} = w -> {:noreply, spawn_worker(state, index, w)}
      _ -> {:noreply, state}
    end
  end

  def handle_info({:retire_timeout, port}, state) do
    case Map.pop(state.retiring, port) do
      {nil, _} ->
        {:noreply, state}

      {os_pid, retiring} ->
        close_port(port)
        kill_os_pid(os_pid)
        {:noreply, %{state | retiring: retiring}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:stats, _from, state), do: {:reply, stats_map(state), state}

  ## Jobs

  defp dispatch(state, index, {tag, _caller, mon, payload, _kind} = job) do
    w = state.workers[index]

    port_send(w.port, payload)

    w = %{w | status: :busy, job: job}

    %{
      state
      | workers: Map.put(state.workers, index, w),
        running: Map.put(state.running, tag, index),
        callers: Map.put(state.callers, mon, tag)
    }
  end

  # A worker is free: it is recycled when due (one worker at a time), else takes the next job.
  defp worker_free(state, index) do
    w = state.workers[index]

    cond do
      w.due != false and state.recycling == nil ->
        recycle(state, index)

      true ->
        case next_job(state) do
          {nil, state} ->
            %{
              state
              | workers: Map.put(state.workers, index, %{w | status: :idle}),
                idle: [index | state.idle]
            }

          {job, state} ->
            dispatch(state, index, job)
        end
    end
  end

  defp next_job(state) do
    case :queue.out(state.queue) do
      {:empty, _} ->
        {nil, state}

      {{:value, tag}, queue} ->
        case Map.pop(state.jobs, tag) do
          {nil, _} -> next_job(%{state | queue: queue})
          {job, jobs} -> {job, %{state | queue: queue, jobs: jobs, queued: state.queued - 1}}
        end
    end
  end

  defp cancel(state, tag) do
    case Map.pop(state.jobs, tag) do
      {{^tag, _caller, mon, _payload, _kind}, jobs} ->
        Process.demonitor(mon, [:flush])

        %{
          state
          | jobs: jobs,
            queued: state.queued - 1,
            callers: Map.delete(state.callers, mon),
            cancelled: state.cancelled + 1
        }

      {nil, _} ->
        case state.running do
          %{^tag => index} ->
            case state.workers[index] do
              %{job: {_, _, _, _, :stream}, closing: false, port: port} = w ->
                # A generator can be closed: ask the worker, kill it if it does not answer.
                port_send(port, <<@cancel>>)
                Process.send_after(self(), {:stream_close_grace, tag, port}, @stream_close_grace)
                state = update_worker(state, index, fn _ -> %{w | closing: true} end)
                %{state | cancelled: state.cancelled + 1}

              %{job: {_, _, _, _, :stream}, closing: true} ->
                state

              _ ->
                state = %{state | cancelled: state.cancelled + 1}
                kill_and_restart(state, index, :cancelled)
            end

          _ ->
            state
        end
    end
  end

  # Writes a frame; a port that closed meanwhile is reported by its exit message.
  defp port_send(port, data) do
    Port.command(port, data)
  rescue
    ArgumentError -> false
  end

  defp finish_job(state, index, status) do
    w = state.workers[index]
    {tag, _caller, mon, _payload, kind} = w.job
    Process.demonitor(mon, [:flush])

    state = %{
      state
      | running: Map.delete(state.running, tag),
        callers: Map.delete(state.callers, mon)
    }

    counted = kind != :tools

    state =
      case {counted, status} do
        {true, :ok} -> %{state | completed: state.completed + 1}
        {true, :error} -> %{state | failed: state.failed + 1}
        _ -> state
      end

    served = if counted, do: w.served + 1, else: w.served
    requests = if counted, do: w.requests + 1, else: w.requests
    max = state.config.worker_max_requests
    due = w.due || (max != :infinity and served >= max and :max_requests)
    w = %{w | job: nil, closing: false, served: served, requests: requests, due: due}
    {tag, %{state | workers: Map.put(state.workers, index, w)}}
  end

  defp saturated(state) do
    Error.new(
      :pool,
      "pool #{inspect(state.name)} is saturated: its queue holds " <>
        "max_queue = #{state.config.max_queue} jobs",
      details: %{pool: state.name, reason: :saturated, max_queue: state.config.max_queue}
    )
  end

  defp reply(tag, message), do: :erlang.send(tag, {tag, message})

  ## Frames from workers

  defp worker_frame(state, index, kind, bin) when kind in [@reply_ok, @reply_error] do
    w = state.workers[index]

    case w do
      %{status: :busy, job: {_, _, _, _, _}} ->
        {tag, state} = finish_job(state, index, if(kind == @reply_ok, do: :ok, else: :error))
        reply(tag, bin)
        worker_free(state, index)

      %{status: :starting} ->
        # A start-up error of a restarted worker; it exits next and is restarted later.
        {:error, e} = decode_reply(bin)
        update_worker(state, index, &%{&1 | start_error: e})

      _ ->
        state
    end
  end

  defp worker_frame(state, index, @chunk, bin) do
    case state.workers[index] do
      %{status: :busy, job: {tag, _, _, _, :stream}} -> reply(tag, {:chunk, bin})
      _ -> :ok
    end

    state
  end

  defp worker_frame(state, index, @done, <<closed>>) do
    case state.workers[index] do
      %{status: :busy, job: {_, _, _, _, :stream}} ->
        {tag, state} = finish_job(state, index, if(closed == 1, do: :cancelled, else: :ok))
        reply(tag, :done)
        worker_free(state, index)

      _ ->
        state
    end
  end

  defp worker_frame(state, index, @ready, bin) do
    state = mark_ready(state, state.workers[index].port, bin)
    state = if state.recycling == index, do: %{state | recycling: nil}, else: state
    state = worker_free(state, index)
    maybe_recycle_idle(state)
  end

  defp worker_frame(state, _index, kind, bin), do: retiring_frame(state, kind, bin)

  # Frames any worker may send, including one being retired.
  defp retiring_frame(state, @send, bin) do
    case safe_decode(bin) do
      {:ok, {pid, term}} when is_pid(pid) ->
        send(pid, term)

      _ ->
        Logger.warning(
          "snakepit: pool #{inspect(state.name)}: a worker sent an undecodable message"
        )
    end

    state
  end

  defp retiring_frame(state, @log, bin) do
    log_frame(state, bin)
    state
  end

  defp retiring_frame(state, _kind, _bin), do: state

  defp safe_decode(bin) do
    {:ok, :erlang.binary_to_term(bin, [:safe])}
  rescue
    ArgumentError -> :error
  end

  defp python_log_level do
    case Logger.level() do
      :debug -> 10
      level when level in [:info, :notice] -> 20
      level when level in [:warning, :warn] -> 30
      :error -> 40
      _ -> 50
    end
  end

  # As Snakepit.PythonLogger logs the records of the :thread profile.
  defp log_frame(state, bin) do
    case safe_decode(bin) do
      {:ok, {level, logger, message, thread}} ->
        level =
          cond do
            level >= 50 -> :critical
            level >= 40 -> :error
            level >= 30 -> :warning
            level >= 20 -> :info
            true -> :debug
          end

        Logger.log(level, "[#{thread}] #{message}",
          pool: state.name,
          python_logger: logger,
          python_thread: thread
        )

      _ ->
        :ok
    end
  end

  ## Worker lifecycle

  defp port_down(state, port, how) do
    case Map.pop(state.ports, port) do
      {nil, _} ->
        case Map.pop(state.retiring, port) do
          {nil, _} -> state
          {_os_pid, retiring} -> %{state | retiring: retiring}
        end

      {index, ports} ->
        state = %{state | ports: ports}
        w = state.workers[index]
        close_port(port)
        status = with {:exit_status, s} <- how, do: s

        state =
          case w do
            %{status: :busy, job: {_, _, _, _, _}} ->
              {tag, state} = finish_job(state, index, :error)
              reply(tag, {:error, exit_error(state, w, status, "while running the call")})
              state

            _ ->
              state
          end

        log_exit(state, w, status)
        restart(state, index, if(w.status == :starting, do: :failed_start, else: :crashed))
    end
  end

  defp log_exit(state, w, status) do
    message =
      case w.start_error do
        %Error{} = e -> "failed to start: #{Exception.message(e)}"
        nil -> "exited (#{describe_status(status)})"
      end

    Logger.warning(
      "snakepit: pool #{inspect(state.name)} worker #{w.index} (OS pid #{w.os_pid}) " <>
        "#{message}; restarting it"
    )
  end

  defp exit_error(state, w, status, doing) do
    Error.new(
      :worker,
      "worker #{w.index} of pool #{inspect(state.name)} (OS pid #{w.os_pid}) died #{doing}: " <>
        describe_status(status),
      details: %{
        pool: state.name,
        worker: w.index,
        os_pid: w.os_pid,
        exit_status: status,
        signal: signal(status)
      }
    )
  end

  defp signal(status) when is_integer(status) and status > 128, do: status - 128
  defp signal(_), do: nil

  defp describe_status(status) when is_integer(status) and status > 128 do
    names = %{
      6 => "SIGABRT",
      9 => "SIGKILL",
      11 => "SIGSEGV",
      15 => "SIGTERM",
      7 => "SIGBUS",
      8 => "SIGFPE"
    }

    sig = status - 128
    "killed by signal #{sig}#{if n = names[sig], do: " (#{n})", else: ""}"
  end

  defp describe_status(status) when is_integer(status), do: "exit status #{status}"
  defp describe_status(nil), do: "exited"
  defp describe_status(other), do: "port closed: #{inspect(other)}"

  # Kills the worker in slot `index` (a cancelled running call, a start-up timeout) and
  # starts another.
  defp kill_and_restart(state, index, why) do
    w = state.workers[index]
    close_port(w.port)
    kill_os_pid(w.os_pid)
    state = %{state | ports: Map.delete(state.ports, w.port)}

    state =
      case w do
        %{status: :busy, job: {_, _, _, _, _}} ->
          {_tag, state} = finish_job(state, index, :cancelled)
          state

        _ ->
          state
      end

    restart(state, index, why)
  end

  defp restart(state, index, why) do
    w = state.workers[index]
    state = %{state | idle: List.delete(state.idle, index)}
    failures = if why == :failed_start, do: w.failures + 1, else: 0
    w = %{w | restarts: w.restarts + 1, failures: failures, status: :down, port: nil, job: nil}
    state = %{state | workers: Map.put(state.workers, index, w)}

    if failures > 0 do
      Process.send_after(self(), {:restart, index}, min(@restart_backoff * failures, 30_000))
      state
    else
      spawn_worker(state, index, w)
    end
  end

  defp maybe_recycle_idle(%{recycling: nil} = state) do
    case Enum.find(state.idle, fn i -> state.workers[i].due != false end) do
      nil -> state
      index -> recycle(%{state | idle: List.delete(state.idle, index)}, index)
    end
  end

  defp maybe_recycle_idle(state), do: state

  # Retires the (free) worker in slot `index`: a stop frame runs its cleanup(), it is killed if
  # it has not exited after the grace period; a fresh process takes the slot.
  defp recycle(state, index) do
    w = state.workers[index]

    port_send(w.port, <<@stop>>)

    Process.send_after(self(), {:retire_timeout, w.port}, @shutdown_grace)

    Logger.debug(
      "snakepit: pool #{inspect(state.name)} recycled worker #{index} (#{w.due}) after " <>
        "#{w.served} calls"
    )

    Snakepit.Telemetry.execute([:snakepit, :worker, :recycled], %{requests: w.served}, %{
      pool: state.name,
      worker: index,
      reason: w.due
    })

    state = %{
      state
      | ports: Map.delete(state.ports, w.port),
        retiring: Map.put(state.retiring, w.port, w.os_pid),
        recycling: index
    }

    spawn_worker(state, index, %{w | recycled: w.recycled + 1})
  end

  defp update_worker(state, index, fun),
    do: %{state | workers: Map.update!(state.workers, index, fun)}

  defp close_port(nil), do: :ok

  defp close_port(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  defp kill_os_pid(nil), do: :ok

  defp kill_os_pid(os_pid) do
    spawn(fn -> kill_now(os_pid) end)
    :ok
  end

  defp kill_now(os_pids) do
    case for(pid <- List.wrap(os_pids), is_integer(pid), do: Integer.to_string(pid)) do
      [] ->
        :ok

      pids ->
        case System.find_executable("kill") do
          nil -> :os.cmd(String.to_charlist("kill -9 #{Enum.join(pids, " ")} 2>/dev/null"))
          kill -> System.cmd(kill, ["-KILL" | pids], stderr_to_stdout: true)
        end

        :ok
    end
  end

  # Kills every worker process that is still running and waits (up to 2 s) until each is
  # gone, so that no Python process outlives the pool.
  defp kill_all(state) do
    ports = Map.keys(state.ports) ++ Map.keys(state.retiring)

    pids =
      Enum.map(state.ports, fn {_port, index} -> state.workers[index].os_pid end) ++
        Map.values(state.retiring)

    kill_now(pids)
    await_exits(ports, System.monotonic_time(:millisecond) + 2_000)
    Enum.each(ports, &close_port/1)
  end

  defp await_exits([], _deadline), do: :ok

  defp await_exits(ports, deadline) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {port, {:exit_status, _}} when is_port(port) ->
        await_exits(List.delete(ports, port), deadline)
    after
      remaining -> :ok
    end
  end

  ## Stats

  defp stats_map(state) do
    config = state.config

    workers =
      for {i, w} <- Enum.sort(state.workers) do
        %{
          index: i,
          os_pid: w.os_pid,
          requests: w.requests,
          restarts: w.restarts,
          recycled: w.recycled,
          status: w.status,
          adapter: w.adapter,
          threads: 1
        }
      end

    %{
      total_requests: state.submitted,
      active_requests: Enum.count(state.workers, fn {_, w} -> w.status == :busy end),
      queued: state.queued,
      completed: state.completed,
      failed: state.failed,
      cancelled: state.cancelled,
      rejected: state.rejected,
      max_workers: config.pool_size,
      pool_size: config.pool_size,
      threads_per_worker: 1,
      max_queue: config.max_queue,
      thread_utilization: [],
      workers: workers,
      uptime_ms: System.monotonic_time(:millisecond) - state.started_at,
      python: python_info(state),
      worker_profile: :process
    }
  end

  ## Stopping

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({Snakepit.Pool, state.name})

    stopped =
      Error.new(:pool, "pool stopped before the call ran (pool #{inspect(state.name)})",
        details: %{pool: state.name}
      )

    for {tag, {tag, _caller, _mon, _payload, _kind}} <- state.jobs,
        do: reply(tag, {:error, stopped})

    for {port, _index} <- state.ports, do: port_send(port, <<@stop>>)

    deadline = System.monotonic_time(:millisecond) + @shutdown_grace
    state = drain(%{state | jobs: %{}, queue: :queue.new(), queued: 0}, deadline)

    lost =
      Error.new(:pool, "pool stopped while the call ran (pool #{inspect(state.name)})",
        details: %{pool: state.name}
      )

    for {_port, index} <- state.ports do
      case state.workers[index] do
        %{status: :busy, job: {tag, _, _, _, _}} -> reply(tag, {:error, lost})
        _ -> :ok
      end
    end

    kill_all(state)
    :ok
  end

  # Forwards the replies of running calls until every worker exited or the deadline passed.
  defp drain(state, deadline) do
    if map_size(state.ports) == 0 and map_size(state.retiring) == 0 do
      state
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {port, {:data, <<kind, bin::binary>>}} when kind in [@reply_ok, @reply_error] ->
          state =
            case state.ports do
              %{^port => index} ->
                case state.workers[index] do
                  %{status: :busy, job: {_, _, _, _, _}} ->
                    {tag, state} = finish_job(state, index, :ok)
                    reply(tag, bin)
                    update_worker(state, index, &%{&1 | status: :idle})

                  _ ->
                    state
                end

              _ ->
                state
            end

          drain(state, deadline)

        {_port, {:data, <<kind, bin::binary>>}} ->
          drain(retiring_frame(state, kind, bin), deadline)

        {port, {:exit_status, _}} ->
          state =
            case Map.pop(state.ports, port) do
              {nil, _} ->
                %{state | retiring: Map.delete(state.retiring, port)}

              {index, ports} ->
                case state.workers[index] do
                  %{status: :busy, job: {tag, _, _, _, _}} = w ->
                    reply(tag, {:error, exit_error(state, w, nil, "while the pool stopped")})

                  _ ->
                    :ok
                end

                %{state | ports: ports}
            end

          drain(state, deadline)

        {:"$snakepit_call", tag, _caller, _payload, _kind} ->
          reply(
            tag,
            {:error,
             Error.new(:pool, "pool #{inspect(state.name)} is stopped",
               details: %{pool: state.name}
             )}
          )

          drain(state, deadline)
      after
        remaining -> state
      end
    end
  end
end
