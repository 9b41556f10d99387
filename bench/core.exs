# Core benchmark of Snakepit: what one `ping` costs, next to two baselines measured in the
# same run.
#
#     mix run bench/core.exs            # full run (~40 s)
#     mix run bench/core.exs --quick    # smoke run (~5 s), for CI
#     SNAKEPIT_BENCH_OUT=bench.md mix run bench/core.exs   # also write the table to a file
#
# What is measured, and how:
#
#   * Snakepit `ping` — `Snakepit.execute(pool, "ping", %{})`, which must return
#     `{:ok, "pong"}` (every result is checked; a wrong one fails the run). Two pools:
#     `:hpc_pool` from config/config.exs (4 workers x 16 threads) and `:bench_small`, started
#     here (1 worker x 2 threads) and stopped at the end.
#       - round trip: one caller, back-to-back calls after a warm-up, each call timed with
#         `:erlang.monotonic_time(:nanosecond)`; median and p99 in µs;
#       - calls/s with 1, 8 and 64 concurrent callers: each caller is a process that makes
#         back-to-back calls until a common deadline; calls/s = completed calls / time from
#         the start signal to the last caller's finish.
#   * Baseline "Python loop" (bench/python_loop.py) — the same `ping` command, built and looked
#     up as a Snakepit worker does, called in a plain Python loop in a subprocess of the venv
#     Python and timed with `time.perf_counter_ns`: mean ns per call and calls/s of one thread.
#     This is the floor set by Python itself.
#   * Baseline "port echo" (bench/port_echo.py) — a raw Erlang port
#     (`{:spawn_executable, python}`, `:binary`, `{:packet, 4}`) to a Python process that
#     writes every frame back unchanged (no decoding, raw `os.read`/`os.write`). Round trip
#     from one caller as above; for 1, 8 and 64 callers, each caller owns its own port (so 64
#     callers = 64 Python processes): one port serialises its frames, so sharing one would
#     only measure the queue.
#
# Targets (from the issue): `ping` round trip (median) at most 1/5 of the port echo's, and
# at least 200,000 calls/s with 64 callers on 2 cores. The `:hpc_pool` rows are the ones the
# targets are about; `:bench_small` is printed beside them for comparison. MISS does not change
# the exit status (timings vary by ±30 % between runs); a wrong `ping` result does.

defmodule Snakepit.Bench.Core do
  @moduledoc false

  @concurrency [1, 8, 64]
  @rtt_target 0.2
  @throughput_target 200_000
  @port_payload "pong"

  @full %{rtt_calls: 20_000, warmup: 2_000, duration_ms: 3_000, python_loop_calls: 2_000_000}
  @quick %{rtt_calls: 2_000, warmup: 500, duration_ms: 250, python_loop_calls: 100_000}

  @bench_dir __DIR__
  @small_pool %{name: :bench_small, pool_size: 1, threads_per_worker: 2}

  ## Entry point

  def main(argv) do
    quick? = "--quick" in argv
    params = if quick?, do: @quick, else: @full
    python = python_executable()

    progress("Snakepit core benchmark (#{if quick?, do: "quick", else: "full"} run)")
    facts = machine_facts(python)

    progress("python loop: #{params.python_loop_calls} calls of ping in one Python thread")
    py_loop = python_loop(python, params.python_loop_calls)

    progress("port echo: round trip, #{params.rtt_calls} calls")
    port_rtt = port_round_trip(python, params)

    port_tp =
      throughputs(
        "port echo",
        params,
        &port_caller_setup(python, &1),
        &port_call/1,
        &Port.close/1
      )

    hpc = snakepit_rows(:hpc_pool, "4 workers x 16 threads, from config", params)

    small =
      with_small_pool(fn ->
        snakepit_rows(:bench_small, "1 worker x 2 threads", params)
      end)

    results = %{
      quick?: quick?,
      params: params,
      facts: facts,
      python_loop: py_loop,
      port: %{rtt: port_rtt, tp: port_tp},
      pools: Enum.reject([hpc, small], &is_nil/1)
    }

    table = render(results)
    IO.puts("")
    IO.puts(table)

    case System.get_env("SNAKEPIT_BENCH_OUT") do
      path when path in [nil, ""] ->
        :ok

      path ->
        File.write!(path, table)
        progress("table written to #{path}")
    end

    bad = total_bad(results)

    if bad > 0 do
      IO.puts(:stderr, "ERROR: #{bad} calls returned something other than the expected reply")
      System.halt(1)
    end
  end

  ## Snakepit

  defp snakepit_rows(pool, shape, params) do
    case Snakepit.execute(pool, "ping", %{}) do
      {:ok, "pong"} ->
        progress("snakepit #{inspect(pool)}: round trip, #{params.rtt_calls} calls")
        call = fn -> Snakepit.execute(pool, "ping", %{}) == {:ok, "pong"} end
        rtt = round_trip(call, params)

        tp =
          throughputs(
            "snakepit #{inspect(pool)}",
            params,
            fn _ -> warm(call, 10) end,
            fn _ -> call.() end,
            fn _ -> :ok end
          )

        %{pool: pool, shape: shape, rtt: rtt, tp: tp}

      other ->
        progress("snakepit #{inspect(pool)}: skipped, ping returned #{inspect(other)}")
        nil
    end
  end

  defp with_small_pool(fun) do
    _ = Snakepit.stop_pool(@small_pool.name)

    case Snakepit.start_pool(@small_pool) do
      {:ok, _pid} ->
        try do
          fun.()
        after
          Snakepit.stop_pool(@small_pool.name)
        end

      {:error, error} ->
        progress("could not start #{inspect(@small_pool.name)}: #{Exception.message(error)}")
        nil
    end
  end

  ## Python loop baseline

  defp python_loop(python, calls) do
    script = Path.join(@bench_dir, "python_loop.py")

    case System.cmd(python, [script, Integer.to_string(calls)], stderr_to_stdout: true) do
      {out, 0} ->
        kv =
          for line <- String.split(out, "\n", trim: true),
              [k, v] <- [String.split(line, "=", parts: 2)],
              into: %{},
              do: {k, v}

        %{
          ns_per_call: parse_number(kv["ns_per_call"]),
          calls_per_s: parse_number(kv["calls_per_s"])
        }

      {out, status} ->
        raise "bench/python_loop.py exited with #{status}:\n#{out}"
    end
  end

  defp parse_number(s) do
    case Float.parse(s) do
      {f, _} -> f
      :error -> raise "not a number: #{inspect(s)}"
    end
  end

  ## Port echo baseline

  defp open_echo_port(python) do
    script = Path.join(@bench_dir, "port_echo.py")
    Port.open({:spawn_executable, python}, [:binary, {:packet, 4}, args: ["-u", script]])
  end

  defp port_call(port) do
    Port.command(port, @port_payload)

    receive do
      {^port, {:data, data}} -> data == @port_payload
    end
  end

  defp port_caller_setup(python, _index) do
    port = open_echo_port(python)
    warm(fn -> port_call(port) end, 10)
    port
  end

  defp port_round_trip(python, params) do
    port = open_echo_port(python)

    try do
      round_trip(fn -> port_call(port) end, params)
    after
      Port.close(port)
    end
  end

  ## Measurement

  # One caller, back-to-back calls, each one timed. `call` returns true when the reply was right.
  defp round_trip(call, params) do
    warm(call, params.warmup)
    {samples, bad} = time_calls(call, params.rtt_calls, [], 0)
    sorted = samples |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)

    %{
      median_us: percentile(sorted, n, 0.5) / 1000,
      p99_us: percentile(sorted, n, 0.99) / 1000,
      calls: n,
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

  defp warm(call, n), do: Enum.each(1..n, fn _ -> call.() end)

  defp throughputs(label, params, setup, call, teardown) do
    for callers <- @concurrency, into: %{} do
      progress("#{label}: #{callers} concurrent caller(s) for #{params.duration_ms} ms")
      {callers, throughput(callers, params.duration_ms, setup, call, teardown)}
    end
  end

  # `callers` processes, each set up (`setup.(index)` -> state) and warmed before a common start
  # signal, then calling `call.(state)` back to back until the shared deadline.
  defp throughput(callers, duration_ms, setup, call, teardown) do
    parent = self()
    ref = make_ref()

    pids =
      for i <- 1..callers do
        spawn_link(fn ->
          state = setup.(i)
          send(parent, {ref, :ready})

          receive do
            {^ref, :go, deadline} ->
              {count, bad} = call_until(call, state, deadline, 0, 0)
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

    elapsed_s = (last - start) / 1.0e9

    %{
      callers: callers,
      calls: count,
      bad: bad,
      seconds: elapsed_s,
      calls_per_s: count / elapsed_s
    }
  end

  defp call_until(call, state, deadline, count, bad) do
    if :erlang.monotonic_time(:nanosecond) >= deadline do
      {count, bad}
    else
      bad = if call.(state), do: bad, else: bad + 1
      call_until(call, state, deadline, count + 1, bad)
    end
  end

  ## Facts

  defp python_executable do
    venv = Path.expand("../.venv/bin/python", @bench_dir)

    cond do
      File.exists?(venv) -> venv
      python = Application.get_env(:snakepit, :python) -> python
      python = System.find_executable("python3") -> python
      true -> raise "no Python found: expected #{venv}"
    end
  end

  defp machine_facts(python) do
    {py_version, py_build} =
      case Snakepit.python_info() do
        {:ok, info} ->
          build = if info[:free_threaded], do: "free-threaded", else: "GIL build"
          {info[:version], build}

        {:error, error} ->
          {"unknown (#{Exception.message(error)})", "?"}
      end

    %{
      schedulers_online: :erlang.system_info(:schedulers_online),
      logical_processors: :erlang.system_info(:logical_processors_available),
      otp_release: List.to_string(:erlang.system_info(:otp_release)),
      erts_version: List.to_string(:erlang.system_info(:version)),
      elixir_version: System.version(),
      python_version: py_version,
      python_build: py_build,
      python: python,
      cpu: cpu_model()
    }
  end

  defp cpu_model do
    with {:ok, text} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/^model name\s*:\s*(.+)$/m, text) do
      String.trim(model)
    else
      _ -> "unknown"
    end
  end

  ## Report

  defp render(r) do
    f = r.facts
    p = r.params
    port_median = r.port.rtt.median_us

    path_rows =
      Enum.map(r.pools, fn pool ->
        row(
          "Snakepit `ping`, `#{inspect(pool.pool)}` (#{pool.shape})",
          pool.rtt,
          pool.tp
        )
      end) ++
        [
          "| plain Python loop, same `ping` (one thread, mean) | #{us(r.python_loop.ns_per_call / 1000)} | — | " <>
            "#{rate(r.python_loop.calls_per_s)} | — | — |",
          row("raw port echo (packet 4, one port per caller)", r.port.rtt, r.port.tp)
        ]

    target_rows =
      Enum.flat_map(r.pools, fn pool ->
        ratio = pool.rtt.median_us / port_median
        tp64 = pool.tp[64].calls_per_s

        [
          "| `ping` median RTT / port echo median RTT, `#{inspect(pool.pool)}` | " <>
            "#{:erlang.float_to_binary(ratio, decimals: 3)} (#{us(pool.rtt.median_us)} / #{us(port_median)} µs) | " <>
            "≤ #{@rtt_target} | #{status(ratio <= @rtt_target)} |",
          "| calls/s with 64 callers, `#{inspect(pool.pool)}` | #{rate(tp64)} | " <>
            "≥ #{rate(@throughput_target)} | #{status(tp64 >= @throughput_target)} |"
        ]
      end)

    bad = total_bad(r)

    Enum.join(
      [
        "## Snakepit core benchmark#{if r.quick?, do: " (quick run)", else: ""}",
        "",
        "Machine: #{f.cpu}, #{f.logical_processors} logical CPUs, " <>
          "schedulers online #{f.schedulers_online}; OTP #{f.otp_release} (ERTS #{f.erts_version}), " <>
          "Elixir #{f.elixir_version}; Python #{f.python_version} (#{f.python_build}, #{f.python}).",
        "",
        "Round trip: one caller, #{p.rtt_calls} timed calls after #{p.warmup} warm-up calls. " <>
          "Calls/s: N caller processes calling back to back for #{p.duration_ms} ms. " <>
          "Python loop: #{p.python_loop_calls} calls.",
        "",
        "| path | RTT median (µs) | RTT p99 (µs) | calls/s, 1 caller | calls/s, 8 callers | calls/s, 64 callers |",
        "| --- | ---: | ---: | ---: | ---: | ---: |"
        | path_rows
      ] ++
        [
          "",
          "| target | measured | goal | status |",
          "| --- | ---: | ---: | --- |"
          | target_rows
        ] ++
        [
          "",
          if(bad == 0,
            do: "Every reply checked: all correct.",
            else: "**#{bad} replies were wrong.**"
          ),
          ""
        ],
      "\n"
    )
  end

  defp row(label, rtt, tp) do
    rates = Enum.map_join(@concurrency, " | ", fn n -> rate(tp[n].calls_per_s) end)
    "| #{label} | #{us(rtt.median_us)} | #{us(rtt.p99_us)} | #{rates} |"
  end

  defp total_bad(r) do
    pools = Enum.map(r.pools, &(&1.rtt.bad + sum_bad(&1.tp)))
    Enum.sum(pools) + r.port.rtt.bad + sum_bad(r.port.tp)
  end

  defp sum_bad(tp), do: tp |> Map.values() |> Enum.map(& &1.bad) |> Enum.sum()

  defp status(true), do: "PASS"
  defp status(false), do: "MISS"

  defp us(x) when x < 10, do: :erlang.float_to_binary(x / 1, decimals: 2)
  defp us(x), do: :erlang.float_to_binary(x / 1, decimals: 1)

  # 1234567.8 -> "1,234,568"
  defp rate(x) do
    x
    |> round()
    |> Integer.to_string()
    |> String.reverse()
    |> String.graphemes()
    |> Enum.chunk_every(3)
    |> Enum.join(",")
    |> String.reverse()
  end

  defp progress(msg) do
    IO.puts("[bench #{Time.utc_now() |> Time.truncate(:second)}] #{msg}")
  end
end

Snakepit.Bench.Core.main(System.argv())
