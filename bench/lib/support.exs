# Helpers of bench/suite.exs and bench/lib/fresh_node.exs: pools of either profile behind one
# interface, the timing loops (the approach of bench/core.exs), payloads, machine facts, noise
# control and formatting. Loaded with Code.require_file/1; defines modules only.

defmodule Bench.Pools do
  @moduledoc false

  @doc "Whether this Python has `worker_profile: :subinterpreter` (CPython >= 3.12)."
  def subinterpreters? do
    match?({:ok, _}, Snakepit.Pool.Subinterpreter.check_python())
  end

  # One interface over the worker profiles (`:subinterpreter` where the Python has it).
  #
  # `:thread` pools go through `Snakepit.start_pool/1` and `Snakepit.execute/4`.
  #
  # `:process` pools: while `Snakepit.start_pool/1` refuses `worker_profile: :process`, they are
  # driven through `Snakepit.ProcessPool` directly. `@process_via` picks the route:
  #   :auto         — `Snakepit.start_pool/1`, falling back to `Snakepit.ProcessPool` only when
  #                   it refuses the profile as not available yet (the default);
  #   :snakepit     — `Snakepit.start_pool/1` + `Snakepit.execute/4` only;
  #   :process_pool — `Snakepit.ProcessPool` only.
  # Now that the profile is wired into Snakepit.start_pool/1, :auto takes that route; :snakepit
  # makes it the only one (the one-line switch). The report names the route that ran.
  @process_via :auto

  defstruct [:name, :profile, :via, :pid, :call, :size, :threads]

  @doc "Starts a pool; `opts` are pool config keys (`:name` required). Raises on failure."
  def start!(profile, opts) do
    case start(profile, opts) do
      {:ok, pool} ->
        pool

      {:error, e} ->
        raise "could not start #{profile} pool #{inspect(opts[:name])}: #{message(e)}"
    end
  end

  def start(:thread, opts) do
    opts = Keyword.put(opts, :worker_profile, :thread)

    with {:ok, pid} <- Snakepit.start_pool(opts) do
      {:ok, snakepit_pool(:thread, opts, pid)}
    end
  end

  def start(:subinterpreter, opts) do
    opts = Keyword.put(opts, :worker_profile, :subinterpreter)

    with {:ok, pid} <- Snakepit.start_pool(opts) do
      {:ok, snakepit_pool(:subinterpreter, opts, pid)}
    end
  end

  def start(:process, opts) do
    opts = Keyword.put(opts, :worker_profile, :process)

    case @process_via do
      :process_pool ->
        start_process_pool(opts)

      :snakepit ->
        start_snakepit_process(opts)

      :auto ->
        case start_snakepit_process(opts) do
          # "worker_profile :process is not available yet": drive Snakepit.ProcessPool.
          {:error, %Snakepit.Error{category: :validation, details: %{key: :worker_profile}}} ->
            start_process_pool(opts)

          other ->
            other
        end
    end
  end

  defp start_snakepit_process(opts) do
    with {:ok, pid} <- Snakepit.start_pool(opts) do
      {:ok, snakepit_pool(:process, opts, pid)}
    end
  end

  defp start_process_pool(opts) do
    with {:ok, config} <- Snakepit.Config.validate_pool(opts),
         {:ok, pid} <- Snakepit.ProcessPool.start_link(config) do
      %{
        base(:process, opts, pid)
        | via: :process_pool,
          call: fn command, args, timeout ->
            Snakepit.ProcessPool.execute(pid, command, args, timeout)
          end
      }
      |> then(&{:ok, &1})
    end
  end

  defp snakepit_pool(profile, opts, pid) do
    name = Keyword.fetch!(opts, :name)

    %{
      base(profile, opts, pid)
      | via: :snakepit,
        call: fn command, args, timeout ->
          Snakepit.execute(name, command, args, timeout: timeout)
        end
    }
  end

  defp base(profile, opts, pid) do
    %__MODULE__{
      name: Keyword.fetch!(opts, :name),
      profile: profile,
      pid: pid,
      size: Keyword.get(opts, :pool_size, 1),
      threads:
        case profile do
          :thread -> Keyword.get(opts, :threads_per_worker, 8)
          :subinterpreter -> Keyword.get(opts, :threads_per_worker, 1)
          :process -> 1
        end
    }
  end

  @doc "Runs `command`; the `{:ok, _} | {:error, _}` of `Snakepit.execute/4`."
  def call(%__MODULE__{call: call}, command, args, timeout \\ 60_000),
    do: call.(command, args, timeout)

  def stop(%__MODULE__{via: :process_pool, pid: pid}) do
    Process.unlink(pid)
    Snakepit.ProcessPool.stop(pid)
  end

  def stop(%__MODULE__{name: name}), do: Snakepit.stop_pool(name)

  @doc "The OS pids of a :process pool's workers."
  def os_pids(%__MODULE__{via: :process_pool, pid: pid}),
    do: for(w <- Snakepit.ProcessPool.stats(pid).workers, do: w.os_pid)

  def os_pids(%__MODULE__{name: name}) do
    {:ok, stats} = Snakepit.stats(name)
    for w <- Map.get(stats, :workers, []), is_map(w), pid = w[:os_pid], do: pid
  end

  @doc "`\"thread 1×8\"`, `\"process 8×1\"`: workers × threads per worker."
  def shape(%__MODULE__{profile: p, size: s, threads: t}), do: "#{p} #{s}×#{t}"

  defp message(%{__exception__: true} = e), do: Exception.message(e)
  defp message(other), do: inspect(other)
end

defmodule Bench.Measure do
  @moduledoc false
  # Timing loops. `call` is a 0-arity function that makes one call and returns true when the
  # reply was right.

  @doc "One caller, back-to-back calls, each timed: %{median_us, p99_us, bad}."
  def round_trip(call, calls, warmup) do
    warm(call, warmup)
    {samples, bad} = time_calls(call, calls, [], 0)
    sorted = samples |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)

    %{
      median_us: percentile(sorted, n, 0.5) / 1000,
      p99_us: percentile(sorted, n, 0.99) / 1000,
      bad: bad
    }
  end

  defp time_calls(_call, 0, acc, bad), do: {acc, bad}

  defp time_calls(call, n, acc, bad) do
    t0 = :erlang.monotonic_time(:nanosecond)
    ok? = call.()
    t1 = :erlang.monotonic_time(:nanosecond)
    time_calls(call, n - 1, [t1 - t0 | acc], if(ok?, do: bad, else: bad + 1))
  end

  # Nearest-rank percentile of a sorted tuple.
  defp percentile(sorted, n, q), do: elem(sorted, min(n - 1, max(0, ceil(q * n) - 1)))

  def warm(call, n), do: Enum.each(1..n//1, fn _ -> call.() end)

  @doc "Calls back to back for `ms` milliseconds (after an idle spell the machine needs a while)."
  def warm_for(call, ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    warm_until(call, deadline)
  end

  defp warm_until(call, deadline) do
    if System.monotonic_time(:millisecond) < deadline do
      call.()
      warm_until(call, deadline)
    else
      :ok
    end
  end

  @doc """
  `callers` processes, each warmed before a common start signal, then calling back to back
  until the shared deadline: %{calls_per_s, bad}. calls/s = completed calls / time from the
  start signal to the last caller's finish.
  """
  def throughput(call, callers, duration_ms, opts \\ []) do
    # With `:setup`, each caller makes its own state and `call` takes it (`:teardown` ends it).
    {setup, call} =
      case Keyword.fetch(opts, :setup) do
        {:ok, setup} -> {setup, call}
        :error -> {fn -> nil end, fn _state -> call.() end}
      end

    teardown = Keyword.get(opts, :teardown, fn _ -> :ok end)

    %{count: count, bad: bad, seconds: s} =
      run_callers(
        callers,
        fn deadline, state -> call_until(fn -> call.(state) end, deadline, 0, 0) end,
        fn ->
          state = setup.()
          warm(fn -> call.(state) end, 10)
          state
        end,
        teardown,
        duration_ms
      )

    %{calls_per_s: count / s, bad: bad}
  end

  @doc """
  `callers` processes that together make `tasks` calls (tasks / callers each, back to back),
  started at once: %{seconds, count, bad}.
  """
  def batch(call, callers, tasks) do
    per = div(tasks, callers)

    work = fn _deadline, _state ->
      Enum.reduce(1..per//1, {0, 0}, fn _, {c, b} -> {c + 1, if(call.(), do: b, else: b + 1)} end)
    end

    run_callers(callers, work, fn -> nil end, fn _ -> :ok end, 0)
  end

  # Spawns the callers, lets each `prepare` its state, starts them together, waits for all;
  # each caller's `teardown` runs after its finish time is taken.
  defp run_callers(callers, work, prepare, teardown, duration_ms) do
    parent = self()
    ref = make_ref()

    pids =
      for _ <- 1..callers do
        spawn_link(fn ->
          state = prepare.()
          send(parent, {ref, :ready})

          receive do
            {^ref, :go, deadline} ->
              {count, bad} = work.(deadline, state)
              finished = :erlang.monotonic_time(:nanosecond)
              teardown.(state)
              send(parent, {ref, :done, count, bad, finished})
          end
        end)
      end

    for _ <- pids, do: receive(do: ({^ref, :ready} -> :ok))
    start = :erlang.monotonic_time(:nanosecond)
    deadline = start + duration_ms * 1_000_000
    Enum.each(pids, &send(&1, {ref, :go, deadline}))

    {count, bad, last} =
      Enum.reduce(pids, {0, 0, start}, fn _, {c, b, l} ->
        receive do
          {^ref, :done, count, bad, finished} -> {c + count, b + bad, max(l, finished)}
        end
      end)

    %{count: count, bad: bad, seconds: (last - start) / 1.0e9}
  end

  defp call_until(call, deadline, count, bad) do
    if :erlang.monotonic_time(:nanosecond) >= deadline do
      {count, bad}
    else
      bad = if call.(), do: bad, else: bad + 1
      call_until(call, deadline, count + 1, bad)
    end
  end

  @doc "Wall time of `fun` in seconds, and its result."
  def timed(fun) do
    t0 = :erlang.monotonic_time(:nanosecond)
    result = fun.()
    {(:erlang.monotonic_time(:nanosecond) - t0) / 1.0e9, result}
  end
end

defmodule Bench.Payload do
  @moduledoc false
  # The payloads of the data section, built exactly as bench_adapter.make_value builds them.

  @fanout 100

  def build("binary", count), do: :binary.copy(<<0xAB>>, count)
  def build("floats", count), do: for(i <- 0..(count - 1)//1, do: i * 0.5 + 0.25)
  def build("map", count), do: tree(count)

  defp record(i),
    do: %{
      "id" => i,
      "name" => "item-#{i}",
      "score" => i * 0.5,
      "tags" => ["a", "b"],
      "pos" => %{"x" => i, "y" => -i}
    }

  defp tree(count) do
    span = Stream.iterate(@fanout, &(&1 * @fanout)) |> Enum.find(&(&1 >= count))
    tree(0, count, span)
  end

  defp tree(lo, hi, @fanout) do
    Map.new(lo..(min(lo + @fanout, hi) - 1)//1, fn i -> {"k#{i}", record(i)} end)
  end

  defp tree(lo, hi, span) do
    sub = div(span, @fanout)

    for j <- 0..(@fanout - 1), lo + j * sub < hi, into: %{} do
      {"n#{j}", tree(lo + j * sub, hi, sub)}
    end
  end

  @doc "What `sink` returns for the value: its length."
  def length_of(bin) when is_binary(bin), do: byte_size(bin)
  def length_of(list) when is_list(list), do: length(list)
  def length_of(map) when is_map(map), do: map_size(map)

  @doc "The count of items for a payload of about `bytes` bytes in the external term format."
  def count_for("binary", bytes), do: max(bytes - 6, 1)
  def count_for("floats", bytes), do: max(div(bytes - 7, 9), 1)

  def count_for("map", bytes) do
    per_record = (etf_size(build("map", 10_000)) - etf_size(build("map", 0))) / 10_000
    max(round(bytes / per_record), 1)
  end

  def etf_size(term), do: byte_size(:erlang.term_to_binary(term))
end

defmodule Bench.Support do
  @moduledoc false

  @bench_dir Path.expand("..", __DIR__)
  @quiet_share 0.15

  def bench_dir, do: @bench_dir
  def project_dir, do: Path.expand("..", @bench_dir)

  def progress(msg), do: IO.puts("[bench #{Time.utc_now() |> Time.truncate(:second)}] #{msg}")

  def python_executable do
    venv = Path.join(project_dir(), ".venv/bin/python")

    cond do
      File.exists?(venv) -> venv
      python = Application.get_env(:snakepit, :python) -> python
      python = System.find_executable("python3") -> python
      true -> raise "no Python found: expected #{venv}"
    end
  end

  @doc "Runs a Python script of the venv and parses its key=value lines."
  def python_kv(script, args, env \\ []) do
    case System.cmd(python_executable(), [script | args], stderr_to_stdout: true, env: env) do
      {out, 0} -> parse_kv(out)
      {out, status} -> raise "#{script} exited with #{status}:\n#{out}"
    end
  end

  def parse_kv(out) do
    for line <- String.split(out, "\n", trim: true),
        [k, v] <- [String.split(line, "=", parts: 2)],
        into: %{},
        do: {k, v}
  end

  def number(s) do
    case s && Float.parse(s) do
      {f, _} -> f
      _ -> nil
    end
  end

  ## Memory

  @doc "VmRSS of an OS process (`:self` for this BEAM) in bytes; nil when unreadable."
  def vm_rss(pid \\ :self), do: status_kb(pid, "VmRSS")

  def status_kb(pid, field) do
    path = if pid == :self, do: "/proc/self/status", else: "/proc/#{pid}/status"

    with {:ok, text} <- File.read(path),
         [_, kb] <- Regex.run(~r/^#{field}:\s+(\d+) kB/m, text) do
      String.to_integer(kb) * 1024
    else
      _ -> nil
    end
  end

  @doc "Proportional set size (shared pages split between their users) in bytes, or nil."
  def pss(pid) do
    with {:ok, text} <- File.read("/proc/#{pid}/smaps_rollup"),
         [_, kb] <- Regex.run(~r/^Pss:\s+(\d+) kB/m, text) do
      String.to_integer(kb) * 1024
    else
      _ -> nil
    end
  end

  @doc "Garbage-collects every process of this node, then waits a little, so RSS settles."
  def settle(ms \\ 300) do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    Process.sleep(ms)
  end

  ## Machine facts

  def machine_facts do
    {py_version, py_build, free?} =
      case Snakepit.python_info() do
        {:ok, info} ->
          build = if info[:free_threaded], do: "free-threaded build", else: "GIL build"
          {info[:version], build, info[:free_threaded] == true}

        {:error, error} ->
          {"unknown (#{Exception.message(error)})", "?", false}
      end

    %{
      schedulers_online: :erlang.system_info(:schedulers_online),
      dirty_cpu: :erlang.system_info(:dirty_cpu_schedulers_online),
      logical_processors: :erlang.system_info(:logical_processors_available),
      otp_release: List.to_string(:erlang.system_info(:otp_release)),
      otp_version: otp_version(),
      erts_version: List.to_string(:erlang.system_info(:version)),
      elixir_version: System.version(),
      python_version: py_version,
      python_build: py_build,
      free_threaded: free?,
      python: python_executable(),
      cpu: cpu_model(),
      kernel: kernel(),
      mem_total: meminfo("MemTotal"),
      date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_string(),
      loadavg: loadavg()
    }
  end

  defp otp_version do
    path =
      Path.join([
        :code.root_dir(),
        "releases",
        List.to_string(:erlang.system_info(:otp_release)),
        "OTP_VERSION"
      ])

    case File.read(path) do
      {:ok, v} -> String.trim(v)
      _ -> List.to_string(:erlang.system_info(:otp_release))
    end
  end

  def cpu_model do
    with {:ok, text} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/^model name\s*:\s*(.+)$/m, text) do
      String.trim(model)
    else
      _ -> "unknown"
    end
  end

  defp kernel do
    case File.read("/proc/sys/kernel/osrelease") do
      {:ok, v} -> "Linux " <> String.trim(v)
      _ -> to_string(elem(:os.type(), 1))
    end
  end

  defp meminfo(field) do
    with {:ok, text} <- File.read("/proc/meminfo"),
         [_, kb] <- Regex.run(~r/^#{field}:\s+(\d+) kB/m, text) do
      String.to_integer(kb) * 1024
    else
      _ -> nil
    end
  end

  def loadavg do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "n/a"
    end
  end

  ## Noise

  # Other processes' load skews every figure. Sample it until it is below @quiet_share or
  # `max_wait_ms` has passed: %{share, waited_ms}.
  def wait_for_quiet(max_wait_ms, sample_ms) do
    started = System.monotonic_time(:millisecond)

    Stream.repeatedly(fn -> background_cpu(sample_ms) end)
    |> Enum.reduce_while(nil, fn share, _ ->
      waited = System.monotonic_time(:millisecond) - started
      result = %{share: share, waited_ms: waited}

      cond do
        share == nil or share < @quiet_share -> {:halt, result}
        waited >= max_wait_ms -> {:halt, result}
        true -> {:cont, result}
      end
    end)
  end

  def quiet_share, do: @quiet_share

  # Share of all CPUs busy over `ms` while this bench does nothing, from /proc/stat.
  def background_cpu(ms) do
    with {:ok, a} <- cpu_jiffies(),
         :ok <- Process.sleep(ms),
         {:ok, b} <- cpu_jiffies() do
      {busy, total} = {b.busy - a.busy, b.total - a.total}
      if total > 0, do: busy / total, else: nil
    else
      _ -> nil
    end
  end

  @doc """
  CPU time the hypervisor gave to other guests while this VM wanted it (`steal` in
  /proc/stat), in ms summed over all CPUs since boot; nil where unreadable. While the host
  takes a vCPU, whatever that vCPU ran (a BEAM scheduler too) stands still.
  """
  def steal_ms do
    case cpu_ticks() do
      # /proc/stat counts in USER_HZ ticks, 100 per second on Linux.
      {:ok, [_, _, _, _, _, _, _, steal | _]} -> steal * 10
      _ -> nil
    end
  end

  defp cpu_jiffies do
    with {:ok, ticks} <- cpu_ticks(), values = Enum.take(ticks, 8), 8 <- length(values) do
      idle = Enum.at(values, 3) + Enum.at(values, 4)
      {:ok, %{busy: Enum.sum(values) - idle, total: Enum.sum(values)}}
    else
      _ -> :error
    end
  end

  # The machine-wide "cpu" line of /proc/stat: user, nice, system, idle, iowait, irq,
  # softirq, steal, ... in ticks.
  defp cpu_ticks do
    with {:ok, text} <- File.read("/proc/stat"),
         ["cpu" <> _ | fields] <- text |> String.split("\n") |> hd() |> String.split() do
      {:ok, Enum.map(fields, &String.to_integer/1)}
    else
      _ -> :error
    end
  end

  ## Statistics and formatting

  def median([]), do: nil

  def median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, div(n, 2)),
      else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2
  end

  def pct(nil), do: "n/a"
  def pct(x), do: :erlang.float_to_binary(x * 100, decimals: 0) <> " %"

  def us(nil), do: "—"
  def us(x) when x < 10, do: :erlang.float_to_binary(x / 1, decimals: 2)
  def us(x), do: :erlang.float_to_binary(x / 1, decimals: 1)

  def ms(nil), do: "—"
  def ms(x) when x < 10, do: :erlang.float_to_binary(x / 1, decimals: 2)
  def ms(x) when x < 100, do: :erlang.float_to_binary(x / 1, decimals: 1)
  def ms(x), do: x |> round() |> Integer.to_string()

  def fixed(nil, _), do: "—"
  def fixed(x, d), do: :erlang.float_to_binary(x / 1, decimals: d)

  # Three significant digits, at least.
  def sig(nil), do: "—"
  def sig(x) when x >= 100, do: rate(x)
  def sig(x) when x >= 10, do: fixed(x, 1)
  def sig(x) when x >= 1, do: fixed(x, 2)
  def sig(x), do: fixed(x, 3)

  def mib(nil), do: "—"
  def mib(bytes), do: fixed(bytes / 1_048_576, 1)

  # 1234567.8 -> "1,234,568"
  def rate(nil), do: "—"

  def rate(x) do
    x
    |> round()
    |> Integer.to_string()
    |> String.reverse()
    |> String.graphemes()
    |> Enum.chunk_every(3)
    |> Enum.join(",")
    |> String.reverse()
  end

  def size_label(bytes) when bytes >= 1_048_576, do: "#{div(bytes, 1_048_576)} MB"
  def size_label(bytes), do: "#{div(bytes, 1024)} KB"
end
