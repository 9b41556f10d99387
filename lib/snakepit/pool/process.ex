defmodule Snakepit.Pool.Process do
  # How long a cancelled job may take to end before its worker is killed (stuck in C).
  @cancel_grace 2_000

  @moduledoc """
  A pool of Python OS processes: the `:process` worker profile.

  Each of `pool_size` workers is a `python -m snakepit_bridge.worker` process started through an
  Erlang port. It runs one adapter instance, served by `threads_per_worker` threads (the
  guide's threaded server: `--mode threaded --max-workers 16` is a process with 16 threads),
  so the pool's capacity is `pool_size × threads_per_worker`, as in the `:thread` profile.
  The adapters, the arguments, the term mapping and the errors are those of the `:thread`
  profile (`Snakepit.Pool`); what differs is isolation:

    * a worker that dies (an exception escaping its loop, `os._exit`, a segfault in a C
      extension, the OOM killer) fails only its in-flight call, with
      `%Snakepit.Error{category: :worker}`, and is restarted;
    * a call that times out, or whose caller dies, while it runs gets
      `snakepit_bridge.Cancelled` raised in its thread; if it has not finished
      #{@cancel_grace} ms later (stuck in C code) its worker is killed (`SIGKILL`) and
      restarted, failing the other calls it was running with `:worker`; a queued call is
      dropped;
    * no Python process outlives its pool or the VM: stopping the pool stops (then kills) every
      worker, and a worker exits when its stdin closes or its parent dies.

  Use it for thread-unsafe libraries, for CPU parallelism on a GIL build, for C extensions that
  may crash, and to run a different interpreter than the one the NIF was built for (`:python`).

  ## How a call travels

  The caller encodes the arguments (`:erlang.term_to_binary/1`) and sends them to the pool
  process, which owns the ports; the pool gives the job an id and writes the frame to a worker
  with a free thread, or queues it. The worker's reply frame goes back to the caller undecoded
  (`{:etf, binary}`, the `Snakepit.Pool` protocol), and `Snakepit.Caller` decodes it with
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
  for recycling takes no new calls, finishes the ones it runs, gets a stop frame (its adapter's `cleanup()` runs) and a
  fresh process takes its place; the other workers keep serving meanwhile. If that fresh
  process cannot start (an exception in the adapter's `__init__`), it is retried with backoff
  and the workers due meanwhile keep serving until it is up (`recycle_stalled?/1`): a
  replacement that cannot start never takes the whole pool down.

  ## Messages from Python

  `snakepit_bridge.send(pid, term)` works in a worker as in the `:thread` profile: the worker
  writes a message frame, which the pool process decodes and sends to `pid` before it forwards
  the reply of the call that sent it (so the message arrives first). `snakepit_bridge.Pid` is
  the pid's external-term encoding. Python `logging` records at or above `Logger.level/0`
  become `Logger` events with `python_logger`, `python_thread` and `pool` metadata. Anything
  printed to stdout or stderr goes to the VM's stderr (stdout carries the frames).

  ## Stopping

  On stop, queued calls get a `:pool` error ("pool stopped"), every worker gets a stop frame
  (its running calls may finish for up to 5 s; the ones cut off then get a `:pool` error too),
  and workers still alive after that are killed; `terminate/2` returns once every worker process is gone. If the pool process itself
  is killed (`:kill`, no `terminate/2`), its ports close: idle workers exit at once, a worker
  inside a long C call when that call returns; workers whose VM dies are killed by the kernel
  (`PR_SET_PDEATHSIG` on Linux) or exit within a second (a watchdog thread).
  """
  use GenServer
  require Logger

  @behaviour Snakepit.Pool

  alias Snakepit.{Caller, Config, Error}
  alias Snakepit.Pool.Process.{Client, Leases, OS, Reload, Shm}

  # Frame kinds, Elixir -> worker (priv/python/snakepit_bridge/worker.py).
  @call 0
  @tools 1
  @stop 2
  @init 3
  @stream 4
  @demand 5
  @cancel 6
  @drop_ref 8
  @trim 11
  # Frame kinds, worker -> Elixir.
  @reply_ok 0
  @reply_error 1
  @ready 2
  @send 3
  @log 4
  @chunk 5
  @done 6
  # Python calling Elixir (priv/python/snakepit_bridge/_worker_elixir.py): a call, its
  # abandonment (worker -> Elixir), its reply (Elixir -> worker).
  @elixir_call 7
  @elixir_cancel 8
  @elixir_reply 7
  @nested 9
  # An async def call awaits on the worker's loop: its thread is free (worker.py, frame 10).
  @detached 10
  # A reply whose large binaries are in shared-memory files (Snakepit.Pool.Process.Shm).
  @reply_shm 11
  # Views of argument-arena regions that Python still holds after its call ended, and those
  # it has let go of since (Snakepit.Pool.Process.Shm; _shm.py).
  @arena_kept 12

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
    :executable,
    # %Snakepit.Ref{} (priv/python/snakepit_bridge/_refs.py)
    Snakepit.Ref,
    :resource,
    :type,
    :repr,
    :id,
    # Large binaries in shared-memory files and arenas (Snakepit.Pool.Process.Shm).
    :"$snakepit_shm",
    :"$snakepit_arena"
  ]

  @shutdown_grace 5_000
  @restart_backoff 1_000
  @max_id 0xFFFFFFFF

  @doc false
  # Referenced so that the atoms are in this module's literals (created when it loads).
  def worker_atoms, do: @worker_atoms

  ## The Snakepit.Pool contract (the caller's side is Snakepit.Pool.Process.Client)

  @impl Snakepit.Pool
  def start_link(%Config{worker_profile: :process} = config),
    do: GenServer.start_link(__MODULE__, config)

  # Objects of refs live in one worker's table (priv/python/snakepit_bridge/_refs.py).
  @impl Snakepit.Pool
  def object_home, do: :worker

  @impl Snakepit.Pool
  defdelegate submit(server, command, args, window), to: Client
  @impl Snakepit.Pool
  defdelegate submit_to(server, worker, command, args, window), to: Client
  @impl Snakepit.Pool
  defdelegate cancel(server, tag, job), to: Client
  @impl Snakepit.Pool
  defdelegate demand(server, tag, job, n), to: Client
  @impl Snakepit.Pool
  defdelegate finished(server, tag, job), to: Client
  @impl Snakepit.Pool
  defdelegate stats(server, info), to: Client
  @impl Snakepit.Pool
  defdelegate reload(server, roots, timeout), to: Client
  @impl Snakepit.Pool
  defdelegate tools(server), to: Client

  ## Server

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    # Claim the name before any worker starts: a second pool of the same name stops here.
    with :ok <- Snakepit.Registry.claim(config.name),
         {:ok, python} <- OS.python_executable(config) do
      state = %{
        config: config,
        name: config.name,
        threads: config.threads_per_worker,
        python: python,
        env: OS.worker_env(config) ++ Shm.worker_env(self()),
        # The argument arena callers copy large binaries into, and who holds its regions.
        leases: Leases.new(Shm.new_arena(false)),
        workers: %{},
        ports: %{},
        # One entry per free thread: the index of its worker.
        free: [],
        queue: :queue.new(),
        queued: 0,
        # worker index => :queue of tags of jobs pinned to it (Snakepit.Pool.Process.Pinned)
        pinned: %{},
        # tag => job (queued and running): %{tag, caller, mon, body, kind, index, id, cancelled}
        jobs: %{},
        callers: %{},
        next_id: 1,
        recycling: nil,
        # A running Snakepit.reload/1: %{from, pending: worker indexes, current: index}.
        reload: nil,
        stopping: false,
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
          :ok =
            Snakepit.Registry.publish(
              config.name,
              {__MODULE__, self()},
              python_info(state),
              config.ndarray,
              Leases.arena(state)
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

  defp new_worker(index) do
    %{
      index: index,
      port: nil,
      os_pid: nil,
      status: :down,
      # id => tag of the jobs it runs
      jobs: %{},
      served: 0,
      requests: 0,
      restarts: 0,
      recycles: 0,
      due: false,
      failures: 0,
      adapter: nil,
      start_error: nil,
      # Its result arena (Shm), or nil.
      arena: nil
    }
  end

  # Opens a worker process in slot `index` and sends it the init frame.
  defp spawn_worker(state, index, worker) do
    # Jobs pinned to the process this one replaces: their objects are gone with it.
    state = Snakepit.Pool.Process.Pinned.fail(state, index)
    config = state.config

    results = Shm.new_arena(true)
    env = state.env ++ Shm.arena_env(Leases.path(state), results && elem(results, 1))
    {port, os_pid} = OS.open(state.python, env)
    OS.send(port, [@init | :erlang.term_to_binary(init_term(state, index))])
    Process.send_after(self(), {:startup_timeout, port}, config.startup_timeout)

    worker = %{
      worker
      | port: port,
        os_pid: os_pid,
        status: :starting,
        arena: results && elem(results, 0),
        jobs: %{},
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

  # What a worker's init frame carries.
  defp init_term(state, index) do
    config = state.config

    %{
      adapter: config.adapter,
      pool_name: Atom.to_string(config.name),
      index: index,
      log_level: Snakepit.PythonLogger.python_level(),
      threads: state.threads,
      options: %{
        threaded: state.threads > 1,
        max_workers: state.threads,
        thread_safety_check: config.thread_safety_check,
        pool_name: Atom.to_string(config.name),
        ndarray: Snakepit.CallOptions.python_ndarray(config.ndarray)
      }
    }
  end

  # In init: waits for every worker's ready frame (they start in parallel).
  defp await_ready(state, deadline) do
    if Enum.all?(state.workers, fn {_, w} -> w.status == :ready end) do
      {:ok, state}
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {port, {:data, <<@ready, bin::binary>>}} when is_map_key(state.ports, port) ->
          state |> mark_ready(port, bin) |> await_ready(deadline)

        {port, {:data, <<@reply_error, _id::32, bin::binary>>}}
        when is_map_key(state.ports, port) ->
          {:error, error} = Caller.result({:etf, bin})
          {:error, error, state}

        {_port, {:data, <<@log, bin::binary>>}} ->
          log_frame(state, bin)
          await_ready(state, deadline)

        {port, {:exit_status, status}} when is_map_key(state.ports, port) ->
          w = state.workers[state.ports[port]]

          {:error, OS.exit_error(state.name, w, status, "while starting"),
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

  # A worker is ready: its threads are free.
  defp mark_ready(state, port, bin) do
    index = state.ports[port]
    {:ok, info} = :erlang.binary_to_term(bin, [:safe])
    w = state.workers[index]

    w = %{
      w
      | status: :ready,
        failures: 0,
        adapter: info[:adapter],
        os_pid: info[:os_pid] || w.os_pid
    }

    if ttl = ttl(state.config), do: Process.send_after(self(), {:ttl, port}, ttl)

    state = %{
      state
      | workers: Map.put(state.workers, index, w),
        info: state.info || info[:python],
        free: List.duplicate(index, state.threads) ++ state.free
    }

    dispatch_queued(state)
  end

  defp ttl(%Config{worker_ttl: :infinity}), do: nil
  defp ttl(%Config{worker_ttl: ms}), do: ms

  defp python_info(%{info: nil}), do: %{}
  defp python_info(%{info: info}), do: info

  @impl true
  def handle_info({:"$snakepit_call", tag, caller, body, kind}, state),
    do: accept(state, new_job(tag, caller, body, kind))

  # A call whose large binaries are in the argument arena: the job holds their leases.
  def handle_info({:"$snakepit_call", tag, caller, body, kind, leases}, state),
    do: accept(Leases.note_large(state), %{new_job(tag, caller, body, kind) | leases: leases})

  def handle_info({:"$snakepit_call_to", tag, caller, body, kind, worker}, state) do
    {:noreply, Snakepit.Pool.Process.Pinned.submit(state, tag, caller, body, kind, worker)}
  end

  # No large data for a while: every free page of the arenas goes back to the kernel.
  def handle_info(:arena_idle, state) do
    trim_workers = fn ->
      for {_, %{port: port, status: :ready}} <- state.workers,
          port != nil,
          do: OS.send(port, <<@trim>>)
    end

    {:noreply, Leases.idle(state, trim_workers)}
  end

  def handle_info({:"$snakepit_drop_ref", index, os_pid, id}, state) do
    case state.workers[index] do
      %{os_pid: ^os_pid, port: port} when port != nil -> OS.send(port, <<@drop_ref, id::64>>)
      _ -> :ok
    end

    {:noreply, state}
  end

  def handle_info({:"$snakepit_nested", tag, caller, body, kind, port, call_id}, state) do
    case state.ports do
      %{^port => index} when kind != :tools ->
        job = %{
          new_job(tag, caller, [<<@nested, call_id::32, frame_kind(kind)>> | body], kind)
          | nested: true
        }

        # Not counted against the worker's free threads: the waiting thread runs it.
        {:noreply, start_job(%{state | submitted: state.submitted + 1}, index, watch(job))}

      _ ->
        handle_info({:"$snakepit_call", tag, caller, body, kind}, state)
    end
  end

  def handle_info({:snakepit_elixir_reply, port, id, reply}, state) do
    OS.send(port, [<<@elixir_reply, id::32>> | :erlang.term_to_binary(reply)])
    {:noreply, state}
  end

  def handle_info({port, {:data, <<kind, bin::binary>>}}, state)
      when is_port(port) and kind in [@elixir_call, @elixir_cancel] do
    elixir_frame(state, port, kind, bin)
    {:noreply, state}
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
    {:noreply, cancel_job(state, tag)}
  end

  def handle_info({:"$snakepit_demand", tag, n}, state) do
    with %{^tag => %{index: index, id: id}} when index != nil <- state.jobs,
         %{port: port} when port != nil <- state.workers[index] do
      OS.send(port, <<@demand, id::32, n::32>>)
    end

    {:noreply, state}
  end

  def handle_info({:cancel_grace, tag, port}, state) do
    with %{^tag => %{index: index}} when index != nil <- state.jobs,
         %{port: ^port} <- state.workers[index] do
      Logger.warning(
        "snakepit: pool #{inspect(state.name)} worker #{index} did not end a cancelled job " <>
          "within #{@cancel_grace} ms (stuck in C code?); killing it"
      )

      {:noreply, kill_and_restart(state, index, :cancelled)}
    else
      _ -> {:noreply, state}
    end
  end

  def handle_info({:DOWN, mon, :process, _pid, _reason}, state) do
    case state.callers do
      %{^mon => tag} -> {:noreply, cancel_job(state, tag)}
      _ -> {:noreply, state}
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
        {:noreply, maybe_recycle(state, index)}

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
        OS.close_port(port)
        OS.kill_os_pid(os_pid)
        {:noreply, Leases.drop_kept(%{state | retiring: retiring}, os_pid)}
    end
  end

  def handle_info({:reload_probe, :ok}, %{reload: %{}} = state),
    do:
      {:noreply,
       reload_next(%{state | reload: %{state.reload | pending: Map.keys(state.workers)}})}

  def handle_info({:reload_probe, {:error, %Error{} = e}}, %{reload: %{from: from}} = state) do
    GenServer.reply(from, {:error, e})
    {:noreply, %{state | reload: nil}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:stats, _from, state), do: {:reply, stats_map(state), state}

  # Snakepit.reload/1: a probe worker with the new code first (Snakepit.Pool.Process.Reload),
  # then every worker replaced in turn; the reply comes when the last replacement is ready.
  def handle_call({:reload, _roots}, _from, %{reload: %{}} = state),
    do: {:reply, {:error, Error.new(:pool, "a reload of this pool is already running")}, state}

  def handle_call({:reload, roots}, from, state) do
    name = state.name

    # The probe drops the bytecode cached under python_path first: an edit that keeps a file's
    # size within the same second would otherwise load the old .pyc (in every new worker).
    Reload.start_probe(
      self(),
      state.python,
      state.env,
      Map.put(init_term(state, state.config.pool_size), :fresh_bytecode, roots),
      state.config.startup_timeout,
      &log_frame(%{name: name}, &1)
    )

    {:noreply, %{state | reload: %{from: from, pending: nil, current: nil}}}
  end

  ## Jobs

  # A submitted job: to a free thread, into the queue, or refused when the queue is full.
  defp accept(state, %{tag: tag, kind: kind} = job) do
    state = if kind != :tools, do: %{state | submitted: state.submitted + 1}, else: state

    case take_thread(state) do
      {index, state} ->
        {:noreply, start_job(state, index, watch(job))}

      nil when state.queued >= state.config.max_queue ->
        reply(tag, {:error, saturated(state)})
        Leases.release(state, job.leases)

        state =
          if kind != :tools,
            do: %{state | rejected: state.rejected + 1, submitted: state.submitted - 1},
            else: state

        {:noreply, state}

      nil ->
        job = watch(job)

        {:noreply,
         %{
           state
           | queue: :queue.in(tag, state.queue),
             queued: state.queued + 1,
             jobs: Map.put(state.jobs, tag, job),
             callers: Map.put(state.callers, job.mon, tag)
         }}
    end
  end

  @doc false
  # A job as the pool keeps it, queued or running (Snakepit.Pool.Process.Pinned makes them too).
  def new_job(tag, caller, body, kind) do
    %{
      tag: tag,
      caller: caller,
      mon: nil,
      body: body,
      kind: kind,
      index: nil,
      id: nil,
      cancelled: false,
      # {offset, lease} of its large binaries in the argument arena (Shm), freed when it ends.
      leases: [],
      # Whether the job's end frees a thread of its worker: false (it does), true (a job of
      # an elixir.call chain, run by the waiting thread) or :detached (an async def call that
      # left its thread when it began to await).
      nested: false
    }
  end

  @doc false
  def watch(job), do: %{job | mon: Process.monitor(job.caller)}

  # A free thread of a ready worker that is not due for recycling (or is, but cannot be
  # recycled now: recycle_stalled?/1).
  defp take_thread(%{free: []}), do: nil

  defp take_thread(%{free: [index | rest]} = state) do
    case state.workers[index] do
      %{status: :ready, due: false} -> {index, %{state | free: rest}}
      %{status: :ready} -> if recycle_stalled?(state), do: {index, %{state | free: rest}}
      _ -> nil
    end || take_thread(%{state | free: rest})
  end

  # Whether the worker being replaced cannot start: its replacement failed and is retried
  # with a growing backoff (restart/3). Until it is ready the workers due meanwhile keep
  # serving, as a :thread worker whose recycle failed keeps its old instance; otherwise a
  # replacement that cannot start (a model store that is down) would take the whole pool
  # down with it as the other workers reach worker_max_requests.
  defp recycle_stalled?(%{recycling: nil}), do: false
  defp recycle_stalled?(state), do: state.workers[state.recycling].failures > 0

  # A replacement failed to start: the due workers' idle threads, which take_thread/1 dropped
  # from `free`, serve again (their pinned jobs first).
  defp serve_due(state) do
    idle =
      for {i, %{status: :ready, due: due} = w} <- state.workers,
          due != false,
          # Threads that run a job: an async call that left its thread holds none.
          running =
            Enum.count(w.jobs, fn {_, tag} -> match?(%{nested: false}, state.jobs[tag]) end),
          _ <- 1..(state.threads - running - Enum.count(state.free, &(&1 == i)))//1,
          do: i

    Enum.reduce(idle, state, &thread_free(&2, &1))
  end

  @doc false
  def start_job(state, index, job) do
    w = state.workers[index]
    {id, state} = next_id(state, w)

    frame =
      case job do
        # <<nested, call_id::32, kind>> then the job's frame after its kind byte
        %{nested: true, body: [<<@nested, call_id::32, kind>> | body]} ->
          [<<@nested, call_id::32, kind, id::32>> | body]

        _ ->
          [<<frame_kind(job.kind), id::32>> | job.body]
      end

    OS.send(w.port, frame)
    job = %{job | index: index, id: id}
    w = %{w | jobs: Map.put(w.jobs, id, job.tag)}

    %{
      state
      | workers: Map.put(state.workers, index, w),
        jobs: Map.put(state.jobs, job.tag, job),
        callers: Map.put(state.callers, job.mon, job.tag)
    }
  end

  defp frame_kind(:call), do: @call
  defp frame_kind(:stream), do: @stream
  defp frame_kind(:tools), do: @tools

  # An id no job of worker `w` uses.
  defp next_id(state, w) do
    id = state.next_id
    next = if id >= @max_id, do: 1, else: id + 1

    if is_map_key(w.jobs, id),
      do: next_id(%{state | next_id: next}, w),
      else: {id, %{state | next_id: next}}
  end

  # Gives queued jobs to free threads.
  defp dispatch_queued(%{queued: 0} = state), do: state

  defp dispatch_queued(state) do
    case take_thread(state) do
      nil ->
        state

      {index, state} ->
        case pop_queued(state) do
          {nil, state} -> %{state | free: [index | state.free]}
          {job, state} -> state |> start_job(index, job) |> dispatch_queued()
        end
    end
  end

  # The next queued job still wanted (a cancelled one has left `jobs` but not the queue).
  defp pop_queued(state) do
    case :queue.out(state.queue) do
      {:empty, _} ->
        {nil, state}

      {{:value, tag}, queue} ->
        state = %{state | queue: queue}

        case state.jobs do
          %{^tag => %{index: nil} = job} -> {job, %{state | queued: state.queued - 1}}
          _ -> pop_queued(state)
        end
    end
  end

  defp cancel_job(state, tag) do
    case Map.pop(state.jobs, tag) do
      {nil, _} ->
        state

      {%{index: nil} = job, jobs} ->
        # Queued: dropped. A stream's consumer waits for its last message; a call's caller
        # waits for nothing.
        Process.demonitor(job.mon, [:flush])
        Leases.release(state, job.leases)
        if job.kind == :stream, do: reply(tag, :closed)

        %{
          state
          | jobs: jobs,
            queued: state.queued - 1,
            callers: Map.delete(state.callers, job.mon),
            cancelled: state.cancelled + 1
        }

      {%{cancelled: true}, _} ->
        state

      {job, _} ->
        # Running: the worker raises Cancelled in its thread (or closes the stream) and ends
        # the job with its terminal frame; if it does not in time, it is killed.
        w = state.workers[job.index]
        OS.send(w.port, <<@cancel, job.id::32>>)
        Process.send_after(self(), {:cancel_grace, tag, w.port}, @cancel_grace)
        job = %{job | cancelled: true}
        %{state | jobs: Map.put(state.jobs, tag, job), cancelled: state.cancelled + 1}
    end
  end

  # Job `id` of worker `index` ended (`status` :ok, :error or :cancelled): returns its job and
  # the state without it, the worker's thread not yet freed (see thread_free/2).
  defp end_job(state, index, id, status) do
    w = state.workers[index]

    case Map.pop(w.jobs, id) do
      {nil, _} ->
        {nil, state}

      {tag, jobs} ->
        {job, all} = Map.pop(state.jobs, tag)
        Process.demonitor(job.mon, [:flush])
        Leases.release(state, job.leases)
        counted = job.kind != :tools and not job.cancelled

        state =
          case {counted, status} do
            {true, :ok} -> %{state | completed: state.completed + 1}
            {true, :error} -> %{state | failed: state.failed + 1}
            _ -> state
          end

        served = if job.kind != :tools, do: w.served + 1, else: w.served
        requests = if job.kind != :tools, do: w.requests + 1, else: w.requests
        max = state.config.worker_max_requests
        due = w.due || (max != :infinity and served >= max and :max_requests)
        w = %{w | jobs: jobs, served: served, requests: requests, due: due}

        {job,
         %{
           state
           | jobs: all,
             callers: Map.delete(state.callers, job.mon),
             workers: Map.put(state.workers, index, w)
         }}
    end
  end

  # A thread of worker `index` is free: it takes the next queued job, or the worker is
  # recycled once it is due and idle.
  defp thread_free(%{stopping: true} = state, _index), do: state

  defp thread_free(state, index) do
    case Snakepit.Pool.Process.Pinned.next(state, index) do
      {job, state} ->
        start_job(state, index, job)

      nil ->
        if state.workers[index].due != false and not recycle_stalled?(state),
          do: maybe_recycle(state, index),
          else: dispatch_queued(%{state | free: [index | state.free]})
    end
  end

  # After job `job` of worker `index` answered: its thread is free (nested: false); an async
  # def call that left its thread when it began to await (:detached) frees none, but it may
  # have been the last job of a worker due for recycling, which nothing else would retire; a
  # job of an elixir.call chain (true) ends inside the call whose thread waits for it.
  defp job_ended(state, index, %{nested: false}), do: thread_free(state, index)

  defp job_ended(%{stopping: false} = state, index, %{nested: :detached}),
    do: maybe_recycle(state, index)

  defp job_ended(state, _index, _job), do: state

  defp saturated(state) do
    Error.new(
      :pool,
      "pool #{inspect(state.name)} is saturated: its queue holds " <>
        "max_queue = #{state.config.max_queue} jobs",
      details: %{pool: state.name, reason: :saturated, max_queue: state.config.max_queue}
    )
  end

  @doc false
  def reply(tag, message), do: :erlang.send(tag, {tag, message})

  # What a job's caller gets when its job ends with `message`: nothing for a cancelled call
  # (its caller has gone), the last message :closed for a cancelled stream.
  defp answer(%{cancelled: true, kind: :stream, tag: tag}, _message), do: reply(tag, :closed)
  defp answer(%{cancelled: true}, _message), do: :ok
  defp answer(%{tag: tag}, message), do: reply(tag, message)

  ## Frames from workers

  defp worker_frame(state, index, kind, <<id::32, bin::binary>>)
       when kind in [@reply_ok, @reply_error],
       do: reply_frame(state, index, kind, id, {:etf, bin})

  # Its files are mapped (and unlinked) here, whoever gets the reply (Shm.take_reply/3).
  defp worker_frame(state, index, @reply_shm, <<id::32, _::binary>> = bin) do
    w = state.workers[index]

    case Shm.take_reply(bin, w.arena, Leases.candidates(state, w, id)) do
      {id, etf, blobs} ->
        state = reply_frame(Leases.note_large(state), index, @reply_ok, id, {:etf, etf, blobs})
        # Forget the binaries now (a small heap), not at some later collection: a region of
        # the worker's result arena is reused only once every process lets go of it.
        :erlang.garbage_collect()
        state

      {id, :error} ->
        error = Error.new(:worker, "a large result could not be read from shared memory")
        reply_frame(state, index, @reply_error, id, {:error, error})
    end
  end

  # Before a job's terminal frame: which of its argument-arena regions Python still holds
  # (they stay leased to the worker), and which it has let go of since.
  defp worker_frame(state, index, @arena_kept, bin), do: Leases.kept_frame(state, index, bin)

  defp worker_frame(state, index, @chunk, <<id::32, bin::binary>>) do
    with %{jobs: %{^id => tag}} <- state.workers[index],
         %{^tag => %{cancelled: false}} <- state.jobs do
      reply(tag, {:chunk, {:etf, bin}})
    end

    state
  end

  defp worker_frame(state, index, @done, <<id::32, closed>>) do
    case end_job(state, index, id, if(closed == 1, do: :cancelled, else: :ok)) do
      {nil, state} ->
        state

      {job, state} ->
        answer(job, if(closed == 1, do: :closed, else: :done))
        job_ended(state, index, job)
    end
  end

  defp worker_frame(state, index, @detached, <<id::32>>) do
    with %{jobs: %{^id => tag}} <- state.workers[index],
         %{^tag => %{nested: false} = job} <- state.jobs do
      # Its reply frees nothing: the thread is free now.
      state = %{state | jobs: Map.put(state.jobs, tag, %{job | nested: :detached})}
      thread_free(state, index)
    else
      _ -> state
    end
  end

  defp worker_frame(state, index, @ready, bin) do
    state = state |> mark_ready(state.workers[index].port, bin) |> reload_next(index)
    if state.recycling == index, do: recycle_next(%{state | recycling: nil}), else: state
  end

  defp worker_frame(state, _index, kind, bin), do: retiring_frame(state, kind, bin)

  # A job's reply (`message`: what its caller gets).
  defp reply_frame(state, index, kind, id, message) do
    case state.workers[index] do
      %{status: :ready} ->
        status = if kind == @reply_ok, do: :ok, else: :error

        case end_job(state, index, id, status) do
          {nil, state} ->
            state

          {job, state} ->
            answer(job, message)
            job_ended(state, index, job)
        end

      %{status: :starting} ->
        # A start-up error of a restarted worker; it exits next and is restarted later.
        {:error, e} = Caller.result(message)
        update_worker(state, index, &%{&1 | start_error: e})

      _ ->
        state
    end
  end

  # A reload marks the next ready worker due once the previous one's replacement is ready
  # (`index`: after recycling, or a restart if the old one died meanwhile); a worker that is
  # not ready is starting anyway, with the new code. The last one ready answers the reload.
  defp reload_next(state, index \\ nil)
  defp reload_next(%{reload: %{current: current}} = state, index) when current != index, do: state

  defp reload_next(%{reload: %{pending: []}} = state, _index) do
    GenServer.reply(state.reload.from, {:ok, :all})
    %{state | reload: nil}
  end

  defp reload_next(%{reload: %{pending: [next | rest]} = reload} = state, _index) do
    state = %{state | reload: %{reload | pending: rest, current: next}}

    case state.workers[next] do
      %{status: :ready} ->
        state |> update_worker(next, &%{&1 | due: :reload}) |> maybe_recycle(next)

      _ ->
        reload_next(state, next)
    end
  end

  defp reload_next(state, _index), do: state

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

  defp retiring_frame(state, @reply_shm, bin) do
    # Nobody waits for it: its files are mapped only to be unlinked.
    Shm.take_reply(bin, nil, [])
    state
  end

  defp retiring_frame(state, _kind, _bin), do: state

  # A worker's call of an Elixir function goes to Snakepit.Functions; its reply comes back
  # here ({:snakepit_elixir_reply, ...}) and goes down the worker's port.
  defp elixir_frame(state, port, @elixir_call, bin) do
    with {:ok, {id, name, args, job_id}} when is_list(args) <- safe_decode(bin) do
      pool = self()
      reply = fn reply -> send(pool, {:snakepit_elixir_reply, port, id, reply}) end
      caller = job_caller(state, port, job_id)
      chain = {:snakepit_process_chain, pool, port, id}
      call = {:snakepit_elixir_call, {pool, port, id}, name, args, caller, chain, reply}
      send(Snakepit.Functions, call)
    end
  end

  defp elixir_frame(_state, port, @elixir_cancel, <<id::32>>),
    do: send(Snakepit.Functions, {:snakepit_elixir_cancel, {self(), port, id}})

  # The caller of the job `job_id` of the worker on `port` (for the function's `$callers`).
  defp job_caller(state, port, job_id) do
    with %{^port => index} <- state.ports,
         %{jobs: %{^job_id => tag}} <- state.workers[index],
         %{^tag => %{caller: caller}} <- state.jobs do
      caller
    else
      _ -> nil
    end
  end

  defp safe_decode(bin) do
    {:ok, :erlang.binary_to_term(bin, [:safe])}
  rescue
    ArgumentError -> :error
  end

  defp log_frame(state, bin) do
    case safe_decode(bin) do
      {:ok, {level, logger, message, thread}} ->
        Snakepit.PythonLogger.log(level, logger, message, thread, state.name)

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
          {os_pid, retiring} -> Leases.drop_kept(%{state | retiring: retiring}, os_pid)
        end

      {index, ports} ->
        state = %{state | ports: ports}
        w = state.workers[index]
        OS.close_port(port)
        status = with {:exit_status, s} <- how, do: s

        state =
          fail_jobs(state, index, OS.exit_error(state.name, w, status, "while running the call"))

        log_exit(state, w, status)
        restart(state, index, if(w.status == :starting, do: :failed_start, else: :crashed))
    end
  end

  # Every job of worker `index` ends with `error` (cancelled ones as cancelled).
  defp fail_jobs(state, index, error) do
    Enum.reduce(state.workers[index].jobs, state, fn {id, _tag}, acc ->
      {job, acc} = end_job(acc, index, id, :error)
      answer(job, {:error, error})
      acc
    end)
  end

  defp log_exit(state, w, status) do
    message =
      case w.start_error do
        %Error{} = e -> "failed to start: #{Exception.message(e)}"
        nil -> "exited (#{OS.describe_status(status)})"
      end

    Logger.warning(
      "snakepit: pool #{inspect(state.name)} worker #{w.index} (OS pid #{w.os_pid}) " <>
        "#{message}; restarting it"
    )
  end

  # Kills the worker in slot `index` (a cancelled job that did not end, a start-up timeout) and
  # starts another; the other jobs it ran fail with :worker.
  defp kill_and_restart(state, index, why) do
    w = state.workers[index]
    OS.close_port(w.port)
    OS.kill_os_pid(w.os_pid)
    state = %{state | ports: Map.delete(state.ports, w.port)}
    error = OS.exit_error(state.name, w, 137, "after a cancelled call did not end")
    state = fail_jobs(state, index, error)
    restart(state, index, why)
  end

  defp restart(state, index, why) do
    w = state.workers[index]
    state = Leases.drop_kept(state, w.os_pid)
    # Result files the dead worker wrote for replies it never sent.
    if w.os_pid, do: Shm.remove_files(self(), w.os_pid)
    failures = if why == :failed_start, do: w.failures + 1, else: 0
    w = %{w | restarts: w.restarts + 1, failures: failures, status: :down, port: nil, jobs: %{}}

    state = %{
      state
      | workers: Map.put(state.workers, index, w),
        free: Enum.reject(state.free, &(&1 == index))
    }

    if failures > 0 do
      Process.send_after(self(), {:restart, index}, min(@restart_backoff * failures, 30_000))
      if state.recycling == index, do: serve_due(state), else: state
    else
      spawn_worker(state, index, w)
    end
  end

  # Retires worker `index` when it is due, idle and no other worker is being replaced: a stop
  # frame runs its cleanup(), it is killed if it has not exited after the grace period; a
  # fresh process takes the slot.
  defp maybe_recycle(%{recycling: nil} = state, index) do
    case state.workers[index] do
      %{status: :ready, due: due, jobs: jobs} = w when due != false and map_size(jobs) == 0 ->
        recycle(state, index, w)

      _ ->
        state
    end
  end

  defp maybe_recycle(state, _index), do: state

  defp recycle(state, index, w) do
    OS.send(w.port, <<@stop>>)
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
        recycling: index,
        free: Enum.reject(state.free, &(&1 == index))
    }

    spawn_worker(state, index, %{w | recycles: w.recycles + 1})
  end

  # A recycled worker's replacement is ready: the next due worker may go.
  defp recycle_next(state) do
    Enum.reduce(Map.keys(state.workers), state, &maybe_recycle(&2, &1))
  end

  defp update_worker(state, index, fun),
    do: %{state | workers: Map.update!(state.workers, index, fun)}

  # Kills every worker process that is still running and waits (up to 2 s) until each is
  # gone, so that no Python process outlives the pool.
  defp kill_all(state) do
    ports = Map.keys(state.ports) ++ Map.keys(state.retiring)

    pids =
      Enum.map(state.ports, fn {_port, index} -> state.workers[index].os_pid end) ++
        Map.values(state.retiring)

    OS.kill_all(ports, pids)
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
          recycles: w.recycles,
          status: worker_status(w),
          busy: map_size(w.jobs),
          adapter: w.adapter,
          threads: state.threads
        }
      end

    %{
      total_requests: state.submitted,
      active_requests: Enum.sum(for {_, w} <- state.workers, do: map_size(w.jobs)),
      queued: state.queued,
      completed: state.completed,
      failed: state.failed,
      cancelled: state.cancelled,
      rejected: state.rejected,
      max_workers: config.pool_size * state.threads,
      pool_size: config.pool_size,
      threads_per_worker: state.threads,
      max_queue: config.max_queue,
      thread_utilization: [],
      workers: workers,
      uptime_ms: System.monotonic_time(:millisecond) - state.started_at,
      python: python_info(state),
      worker_profile: :process
    }
  end

  defp worker_status(%{status: :ready, jobs: jobs}) when map_size(jobs) > 0, do: :busy
  defp worker_status(%{status: :ready}), do: :idle
  defp worker_status(%{status: status}), do: status

  ## Stopping

  @impl true
  def terminate(_reason, state) do
    Snakepit.Registry.release(state.name)

    # Queued jobs: answered at once.
    {queued, running} = Enum.split_with(state.jobs, fn {_, job} -> job.index == nil end)
    for {_tag, job} <- queued, do: answer(job, {:error, stopped(state, "before the call ran")})

    for {port, _index} <- state.ports, do: OS.send(port, <<@stop>>)
    deadline = System.monotonic_time(:millisecond) + @shutdown_grace

    state = %{
      state
      | stopping: true,
        jobs: Map.new(running),
        queue: :queue.new(),
        queued: 0
    }

    state = drain(state, deadline)

    # Running jobs the grace period cut off.
    for {_tag, job} <- state.jobs, do: answer(job, {:error, stopped(state, "while the call ran")})

    kill_all(state)
    Shm.remove_files(self())
    :ok
  end

  defp stopped(state, doing) do
    Error.new(:pool, "pool stopped #{doing} (pool #{inspect(state.name)})",
      details: %{pool: state.name, reason: :stopped}
    )
  end

  # Forwards the frames of running jobs until every worker exited or the deadline passed.
  defp drain(state, deadline) do
    if map_size(state.ports) == 0 and map_size(state.retiring) == 0 do
      state
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {port, {:data, <<kind, bin::binary>>}} ->
          state =
            case state.ports do
              %{^port => index} -> worker_frame(state, index, kind, bin)
              _ -> retiring_frame(state, kind, bin)
            end

          drain(state, deadline)

        {port, {:exit_status, _}} ->
          state =
            case Map.pop(state.ports, port) do
              {nil, _} ->
                %{state | retiring: Map.delete(state.retiring, port)}

              {index, ports} ->
                w = state.workers[index]
                error = OS.exit_error(state.name, w, nil, "while the pool stopped")
                fail_jobs(%{state | ports: ports}, index, error)
            end

          drain(state, deadline)
      after
        remaining -> state
      end
    end
  end
end
