# Benchmark suite of Snakepit: the figures to choose a worker profile by, each beside its
# baseline from the same run.
#
#     mix run bench/suite.exs            # full run (a few minutes on 2 cores); writes bench/RESULTS.md
#     mix run bench/suite.exs --smoke    # tiny run for CI (< 20 s); writes nothing
#     SNAKEPIT_BENCH_OUT=x.md mix run bench/suite.exs [--smoke]   # write the report to x.md
#
# Sections (see bench/README.md for the method of each):
#   1. call overhead — `ping` round trip and calls/s with 1, 8, 64, 512 callers: :thread 1x8,
#      :process 8x1 (equal capacity) and :process 2x1 (one per core), beside the same `ping` in a
#      plain Python loop;
#   2. parallel scaling — speed-up at 1, 2, 4, 8 threads (or processes) for pure-Python CPU work,
#      NumPy (GIL released, OpenBLAS at 1 thread) and time.sleep, against one;
#   3. data — MB/s for 1 KB, 1 MB, 64 MB binaries, float lists and nested maps, in, out and
#      echoed, beside a raw port echo and an Erlang message echo of the same term;
#   4. memory — resident memory of pools of capacity 16 in each profile, and per extra thread
#      (in fresh BEAMs: bench/lib/fresh_node.exs);
#   5. start-up — time to a ready pool (first right `ping`) with the showcase adapter;
#   6. objects and eval — `call_method` on a `%Snakepit.Ref{}` and `eval("1+1")` round trips
#      beside `ping`, and the cost of creating and releasing a ref, in each profile.
#   7. Python calling Elixir and async commands — an `elixir.call` round trip from inside a
#      command (to an echo function, and re-entrant: the function calls the pool back), beside
#      a `ping` from Elixir; calls/s of an `async def` command beside a sync one; 10,000
#      concurrent `await asyncio.sleep(1)` on a pool of 2 threads;
#   8. large data — `{:buffer, _}` in, bytes out, NDArray both ways from 1 KB to 256 MB in each
#      profile beside a memcpy (`:binary.copy/1`) of the same size, peak RSS, long schedules
#      (bench/lib/large_data.exs);
#   9. under load — `echo` idle, beside two CPU-bound OS processes and in a busy VM, each
#      profile (and a :thread call declared inline) beside a raw port echo
#      (bench/lib/under_load.exs).
#
# Every reply is checked; any wrong one makes the run exit with status 1 (after the report).

Code.require_file("lib/support.exs", __DIR__)
Code.require_file("lib/large_data.exs", __DIR__)
Code.require_file("lib/under_load.exs", __DIR__)

defmodule Bench.Suite do
  @moduledoc false
  alias Bench.{Measure, Payload, Pools, Support}
  import Support, only: [progress: 1]

  @bench_adapter "bench_adapter.BenchAdapter"
  @showcase "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"
  @blas_env [{"OPENBLAS_NUM_THREADS", "1"}, {"OMP_NUM_THREADS", "1"}]
  @long 300_000

  @full %{
    mode: "full",
    quiet_wait_ms: 30_000,
    idle_sample_ms: 500,
    # 1. overhead
    rounds: 3,
    rtt_calls: 10_000,
    warmup: 1_000,
    duration_ms: 1_000,
    callers: [1, 8, 64, 512],
    python_loop_calls: 1_000_000,
    warm_ms: 300,
    # 2. scaling
    task_ms: 20,
    tasks: 16,
    threads: [1, 2, 4, 8],
    scaling_repeats: 7,
    # 3. data
    sizes: [1024, 1_048_576, 67_108_864],
    data_calls: %{1024 => 300, 1_048_576 => 5, 67_108_864 => 1},
    # 4. memory
    mem_capacity: 16,
    mem_runs: 3,
    mem_settle_ms: 300,
    # 5. start-up
    startup_repeats: 3,
    # 6. Python calling Elixir, async
    callback_calls: 2_000,
    async_callers: [1, 64, 1_000],
    sleepers: 10_000,
    sleeper_ms: 1_000
  }

  @smoke %{
    mode: "smoke",
    quiet_wait_ms: 0,
    idle_sample_ms: 100,
    rounds: 1,
    rtt_calls: 300,
    warmup: 50,
    duration_ms: 100,
    callers: [1, 8, 64, 512],
    python_loop_calls: 20_000,
    warm_ms: 50,
    task_ms: 2,
    tasks: 8,
    threads: [1, 2, 4, 8],
    scaling_repeats: 1,
    sizes: [1024, 1_048_576],
    data_calls: %{1024 => 20, 1_048_576 => 1},
    mem_capacity: 4,
    mem_runs: 1,
    mem_settle_ms: 20,
    startup_repeats: 1,
    callback_calls: 50,
    async_callers: [1, 64],
    sleepers: 500,
    sleeper_ms: 100
  }

  ## Entry point

  def main(argv) do
    smoke? = "--smoke" in argv
    p = if smoke?, do: @smoke, else: @full
    only = only_sections(argv)
    started = System.monotonic_time(:millisecond)
    Logger.configure(level: :error)
    Application.put_env(:snakepit, :python_path, [Path.join(Support.bench_dir(), "adapters")])

    progress("Snakepit benchmark suite, #{p.mode} run (load average #{Support.loadavg()})")
    stopped_hpc = stop_config_pool(:hpc_pool)

    # The first pool this suite starts: BLAS at one thread (see the section on scaling).
    anchor =
      Pools.start!(:thread,
        name: :bench_anchor,
        adapter: @bench_adapter,
        pool_size: 1,
        threads_per_worker: 1,
        adapter_env: @blas_env
      )

    facts =
      Support.machine_facts()
      |> Map.merge(%{
        blas: blas_info(anchor),
        stopped_hpc: stopped_hpc,
        process_route: process_route()
      })

    progress(
      "Python #{facts.python_version} (#{facts.python_build}); #{facts.logical_processors} CPUs; " <>
        "OTP #{facts.otp_version}; :process pools via #{facts.process_route}"
    )

    sections = [
      {"1. Call overhead", &overhead/2},
      {"2. Parallel scaling", &scaling/2},
      {"3. Data", &data/2},
      {"4. Memory", &memory/2},
      {"5. Start-up", &startup/2},
      {"6. Objects and eval", &objects/2},
      {"7. Python calling Elixir, async commands", &callbacks/2},
      {"8. Large data", &Bench.LargeData.run/2},
      {"9. Under load", &Bench.UnderLoad.run/2}
    ]

    sections =
      Enum.filter(sections, fn {title, _} -> only == nil or String.first(title) in only end)

    ctx = %{anchor: anchor, facts: facts}

    results =
      for {title, fun} <- sections do
        progress("== #{title}")
        fun.(p, ctx) |> Map.put(:title, title)
      end

    Pools.stop(anchor)
    elapsed_s = (System.monotonic_time(:millisecond) - started) / 1000
    report = render(p, facts, results, elapsed_s, smoke?)
    IO.puts("")
    IO.puts(report)

    out =
      case System.get_env("SNAKEPIT_BENCH_OUT") do
        path when path in [nil, ""] ->
          if smoke? or only, do: nil, else: Path.join(Support.bench_dir(), "RESULTS.md")

        path ->
          path
      end

    if out do
      File.write!(out, report)
      progress("report written to #{Path.relative_to_cwd(out)}")
    end

    bad = results |> Enum.map(& &1.bad) |> Enum.sum()
    progress("done in #{Support.fixed(elapsed_s, 1)} s")

    if bad > 0 do
      IO.puts(:stderr, "ERROR: #{bad} calls returned something other than the expected reply")

      for r <- results, r.bad > 0, do: IO.puts(:stderr, "  #{r.title}: #{r.bad} wrong")

      System.halt(1)
    end
  end

  # `--only 2,3`: run those sections alone (for working on the suite; nothing is written to
  # bench/RESULTS.md).
  defp only_sections(argv) do
    case Enum.drop_while(argv, &(&1 != "--only")) do
      ["--only", list | _] -> String.split(list, ",", trim: true)
      _ -> nil
    end
  end

  # :hpc_pool (config/config.exs) starts with the application under `mix run`: 64 idle threads
  # and its memory would only add noise. Stop it for the run.
  defp stop_config_pool(name) do
    if name in Snakepit.Pool.running() do
      case Snakepit.stop_pool(name) do
        :ok ->
          progress("stopped #{inspect(name)} (started from config) for the run")
          true

        _ ->
          false
      end
    else
      false
    end
  end

  defp blas_info(anchor) do
    case Pools.call(anchor, "blas_info", %{}) do
      {:ok, info} -> info
      _ -> %{}
    end
  end

  # Which route :process pools take (see Bench.Pools).
  defp process_route do
    probe =
      Pools.start!(:process, name: :bench_route_probe, adapter: @bench_adapter, pool_size: 1)

    route =
      case probe.via do
        :snakepit -> "Snakepit.start_pool/1 and Snakepit.execute/4"
        :process_pool -> "Snakepit.ProcessPool directly (Snakepit.start_pool/1 refused :process)"
      end

    Pools.stop(probe)
    route
  end

  defp quiet(p) do
    bg = Support.wait_for_quiet(p.quiet_wait_ms, p.idle_sample_ms)
    waited = div(bg.waited_ms, 1000)

    progress(
      "  other processes' CPU use: #{Support.pct(bg.share)}" <>
        if(waited > 0, do: " (after waiting #{waited} s)", else: "")
    )

    bg
  end

  ## 1. Call overhead

  defp overhead(p, _ctx) do
    pools =
      [
        {:t8, Pools.start!(:thread, name: :bench_t8, adapter: @showcase, threads_per_worker: 8),
         "equal capacity"},
        {:p8, Pools.start!(:process, name: :bench_p8, adapter: @showcase, pool_size: 8),
         "equal capacity"},
        {:p2, Pools.start!(:process, name: :bench_p2, adapter: @showcase, pool_size: 2),
         "one per core, the :process default here"}
      ] ++ subinterpreter_overhead_pool()

    rounds =
      try do
        for round <- 1..p.rounds do
          progress("round #{round}/#{p.rounds}")
          bg = quiet(p)

          progress("  plain Python loop: #{p.python_loop_calls} calls of ping")

          kv =
            Support.python_kv(Path.join(Support.bench_dir(), "python_loop.py"), [
              Integer.to_string(p.python_loop_calls)
            ])

          loop = %{ns: Support.number(kv["ns_per_call"]), rate: Support.number(kv["calls_per_s"])}

          paths =
            for {id, pool, _} <- pools, into: %{} do
              call = fn -> Pools.call(pool, "ping", %{}) == {:ok, "pong"} end
              progress("  #{Pools.shape(pool)}: round trip, #{p.rtt_calls} calls")
              Measure.warm_for(call, p.warm_ms)
              rtt = Measure.round_trip(call, p.rtt_calls, p.warmup)

              tp =
                for n <- p.callers, into: %{} do
                  progress("  #{Pools.shape(pool)}: #{n} caller(s) for #{p.duration_ms} ms")
                  {n, Measure.throughput(call, n, p.duration_ms)}
                end

              {id, %{rtt: rtt, tp: tp}}
            end

          %{loop: loop, paths: paths, bg: bg}
        end
      after
        for {_, pool, _} <- pools, do: Pools.stop(pool)
      end

    bad =
      for r <- rounds, {_, m} <- r.paths, reduce: 0 do
        acc -> acc + m.rtt.bad + Enum.sum(for {_, t} <- m.tp, do: t.bad)
      end

    med = fn id, get -> rounds |> Enum.map(&get.(&1.paths[id])) |> Support.median() end

    rows =
      for {id, pool, why} <- pools do
        rates =
          Enum.map_join(p.callers, " | ", fn n ->
            Support.rate(med.(id, fn m -> m.tp[n].calls_per_s end))
          end)

        "| #{Pools.shape(pool)} (#{why}) | #{Support.us(med.(id, & &1.rtt.median_us))} | " <>
          "#{Support.us(med.(id, & &1.rtt.p99_us))} | #{rates} |"
      end

    loop_ns = rounds |> Enum.map(& &1.loop.ns) |> Support.median()
    loop_rate = rounds |> Enum.map(& &1.loop.rate) |> Support.median()
    dashes = Enum.map_join(tl(p.callers), " | ", fn _ -> "—" end)

    loop_row =
      "| plain Python loop, same `ping` (one thread; mean, not median) | #{Support.us(loop_ns / 1000)} | — | " <>
        "#{Support.rate(loop_rate)} | #{dashes} |"

    t_rtt = med.(:t8, & &1.rtt.median_us)
    s_rtt = if List.keymember?(pools, :s2, 0), do: med.(:s2, & &1.rtt.median_us)
    p_rtt = med.(:p8, & &1.rtt.median_us)
    top = List.last(p.callers)
    t_top = med.(:t8, & &1.tp[top].calls_per_s)
    p_top = med.(:p8, & &1.tp[top].calls_per_s)
    t64 = med.(:t8, & &1.tp[64].calls_per_s)
    p64 = med.(:p8, & &1.tp[64].calls_per_s)

    per_round =
      for {id, pool, _} <- pools do
        "- #{Pools.shape(pool)}: RTT median " <>
          Enum.map_join(rounds, ", ", &Support.us(&1.paths[id].rtt.median_us)) <>
          " µs; 64-caller calls/s " <>
          Enum.map_join(rounds, ", ", &Support.rate(&1.paths[id].tp[64].calls_per_s))
      end

    caller_cols = Enum.map_join(p.callers, " | ", &"calls/s, #{&1} caller#{if &1 > 1, do: "s"}")
    caller_align = Enum.map_join(p.callers, " | ", fn _ -> "---:" end)

    %{
      bad: bad,
      lines:
        [
          "Showcase adapter's `ping` (returns `\"pong\"`). Round trip: one caller, #{p.rtt_calls} timed calls " <>
            "after #{p.warm_ms} ms and #{p.warmup} calls of warm-up. Calls/s: N caller processes calling back to back for " <>
            "#{p.duration_ms} ms. #{p.rounds} round(s); medians over the rounds. Shapes are workers × threads per worker.",
          "",
          "| path | RTT median (µs) | RTT p99 (µs) | #{caller_cols} |",
          "| --- | ---: | ---: | #{caller_align} |"
        ] ++
          rows ++
          [
            loop_row,
            "",
            "Per round (other processes' CPU use before it: " <>
              Enum.map_join(rounds, ", ", &Support.pct(&1.bg.share)) <> "):"
          ] ++ per_round,
      headline: %{
        t_rtt: t_rtt,
        p_rtt: p_rtt,
        s_rtt: s_rtt,
        t64: t64,
        p64: p64,
        t_top: t_top,
        p_top: p_top,
        top: top,
        loop_ns: loop_ns
      }
    }
  end

  # :subinterpreter 2×1 (one per core, its default here), where the Python has the profile.
  defp subinterpreter_overhead_pool do
    if Pools.subinterpreters?() do
      [
        {:s2,
         Pools.start!(:subinterpreter,
           name: :bench_s2,
           adapter: @showcase,
           pool_size: 2,
           threads_per_worker: 1
         ), "one per core, the :subinterpreter default here"}
      ]
    else
      []
    end
  end

  ## 2. Parallel scaling

  defp scaling(p, ctx) do
    anchor = ctx.anchor

    # Calibrate each unit of work to about task_ms on one thread.
    progress("  calibrating the units of work to ~#{p.task_ms} ms")
    cpu_t = best_ms(fn -> Pools.call(anchor, "cpu", %{iterations: 100_000}) end)
    iterations = max(round(100_000 * p.task_ms / cpu_t), 1_000)
    Pools.call(anchor, "numpy_dot", %{reps: 1})
    dot_t = best_ms(fn -> Pools.call(anchor, "numpy_dot", %{reps: 1}) end)
    reps = max(round(p.task_ms / dot_t), 1)
    sleep_ms = p.task_ms
    {:ok, trace} = Pools.call(anchor, "numpy_dot", %{reps: 1})

    workloads = [
      {:cpu, "(a) pure-Python CPU: integer loop of #{Support.rate(iterations)} iterations",
       fn pool ->
         Pools.call(pool, "cpu", %{iterations: iterations}, @long) ==
           {:ok, cpu_expected(iterations)}
       end},
      {:numpy, "(b) NumPy: #{reps} × np.dot of two 300×300 float64 matrices (GIL released)",
       fn pool ->
         case Pools.call(pool, "numpy_dot", %{reps: reps}, @long) do
           {:ok, t} when is_float(t) -> abs(t - trace) <= 1.0e-9 * abs(trace)
           _ -> false
         end
       end},
      {:sleep, "(c) I/O: time.sleep(#{sleep_ms} ms)",
       fn pool -> Pools.call(pool, "sleep", %{ms: sleep_ms}, @long) == {:ok, sleep_ms} end}
    ]

    progress("  plain Python: one task of each workload")

    py =
      Support.python_kv(
        Path.join(Support.bench_dir(), "python/work_units.py"),
        [Integer.to_string(iterations), Integer.to_string(reps), Integer.to_string(sleep_ms)],
        @blas_env
      )

    plain = %{
      cpu: Support.number(py["cpu_ms"]),
      numpy: Support.number(py["numpy_ms"]),
      sleep: Support.number(py["sleep_ms"])
    }

    # Every pool is started first and the runs are interleaved (repeat → workload → pool), so
    # that a burst of outside load falls on all the cells alike rather than on one.
    profiles =
      [:thread, :process] ++ if(Pools.subinterpreters?(), do: [:subinterpreter], else: [])

    pools =
      for profile <- profiles, n <- p.threads do
        pool =
          case profile do
            :thread ->
              Pools.start!(:thread,
                name: :"bench_scale_t#{n}",
                adapter: @bench_adapter,
                pool_size: 1,
                threads_per_worker: n
              )

            :process ->
              Pools.start!(:process,
                name: :"bench_scale_p#{n}",
                adapter: @bench_adapter,
                pool_size: n
              )

            :subinterpreter ->
              Pools.start!(:subinterpreter,
                name: :"bench_scale_s#{n}",
                adapter: @bench_adapter,
                pool_size: n,
                threads_per_worker: 1
              )
          end

        # Every thread / worker builds its matrices before the clock starts (NumPy does not
        # load in a subinterpreter: those pools run no NumPy workload).
        if profile != :subinterpreter do
          Measure.batch(
            fn -> match?({:ok, _}, Pools.call(pool, "numpy_dot", %{reps: 1})) end,
            n,
            n
          )
        end

        {{profile, n}, pool}
      end

    bg = quiet(p)

    runs =
      try do
        for r <- 1..p.scaling_repeats, {id, _label, check} <- workloads do
          progress(
            "  run #{r}/#{p.scaling_repeats}, #{id}: #{p.tasks} tasks on each pool " <>
              "(thread 1×N, process N×1, N = #{Enum.join(p.threads, ", ")})"
          )

          for {{profile, n}, pool} <- pools, not (profile == :subinterpreter and id == :numpy) do
            {{profile, id, n}, Measure.batch(fn -> check.(pool) end, n, p.tasks)}
          end
        end
        |> List.flatten()
      after
        for {_, pool} <- pools, do: Pools.stop(pool)
      end

    measured =
      runs
      |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
      |> Map.new(fn {key, rs} ->
        {key,
         %{
           seconds: rs |> Enum.map(& &1.seconds) |> Support.median(),
           bad: rs |> Enum.map(& &1.bad) |> Enum.sum()
         }}
      end)

    bad = measured |> Map.values() |> Enum.map(& &1.bad) |> Enum.sum()
    rate = fn key -> p.tasks / measured[key].seconds end
    speedup = fn profile, id, n -> rate.({profile, id, n}) / rate.({profile, id, 1}) end

    rows =
      for {id, label, _} <- workloads,
          profile <- profiles,
          not (profile == :subinterpreter and id == :numpy) do
        shape =
          case profile do
            :thread -> "thread 1×N"
            :process -> "process N×1"
            :subinterpreter -> "subinterpreter N×1"
          end

        one_ms = 1000 * measured[{profile, id, 1}].seconds / p.tasks

        cells =
          Enum.map_join(p.threads, " | ", fn n ->
            "#{Support.fixed(speedup.(profile, id, n), 2)}× (#{Support.sig(rate.({profile, id, n}))}/s)"
          end)

        "| #{label} | #{shape} | #{Support.ms(plain[id])} | #{Support.ms(one_ms)} | #{cells} |"
      end

    f = ctx.facts
    blas = f.blas
    n_cols = Enum.map_join(p.threads, " | ", &"N = #{&1}")
    n_align = Enum.map_join(p.threads, " | ", fn _ -> "---:" end)
    top = List.last(p.threads)

    build_note =
      if f.free_threaded do
        "This run used a **free-threaded** CPython (#{f.python_version}): pure-Python CPU work (a) " <>
          "can run on several cores at once in the :thread profile, so it should scale up to the core count."
      else
        "This run used a **GIL build** of CPython (#{f.python_version}): in the :thread profile only one " <>
          "thread runs Python bytecode at a time, so (a) does not scale with threads there (about 1×); " <>
          "the :process profile runs one interpreter per worker and scales with cores."
      end

    %{
      bad: bad,
      lines:
        [
          "Speed-up = tasks/s with N threads (:thread, 1 worker × N threads) or N worker processes " <>
            "(:process, N × 1), over tasks/s with one, same profile; tasks/s in parentheses. Each cell: " <>
            "#{p.tasks} tasks made by N concurrent callers (#{p.tasks} / N each, back to back), median of " <>
            "#{p.scaling_repeats} run(s). \"Plain Python\": one task in a plain Python process (no Elixir), " <>
            "median of 5. OpenBLAS: #{blas["lib"] || "not found"}, #{blas["threads"] || "?"} thread(s) in the " <>
            "BEAM's interpreter (set with openblas_set_num_threads by the bench adapter, since NumPy may " <>
            "already be imported; OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1 in the first pool's adapter_env, " <>
            "in the :process workers' environment and in the plain-Python baseline).",
          "",
          "| workload (one task) | pool | one task, plain Python (ms) | one task, pool, N = 1 (ms) | #{n_cols} |",
          "| --- | --- | ---: | ---: | #{n_align} |"
          | rows
        ] ++
          [
            "",
            "Notes:",
            "- #{build_note}",
            "- This machine has #{f.logical_processors} CPUs: CPU-bound work, (a) in :process pools " <>
              "and (b) everywhere, cannot go beyond about #{f.logical_processors}× however many " <>
              "threads or processes run it; above #{f.logical_processors} they only take turns. " <>
              "Sleeping (c) uses no CPU, so it scales with N.",
            "- NumPy's np.dot releases the GIL while OpenBLAS (one thread per call here) computes, so on a " <>
              "GIL build too (b) runs on several cores at once; the Python around each product is serialised.",
            "- :subinterpreter N×1 (CPython >= 3.12, when this Python has it): N subinterpreters, " <>
              "each with its own GIL, in this OS process; NumPy does not load in a subinterpreter, so " <>
              "those pools run no (b).",
            "- Other processes' CPU use before the section: #{Support.pct(bg.share)}."
          ] ++ numpy_note(measured, plain, p.tasks),
      headline: %{
        cpu_thread_top: speedup.(:thread, :cpu, top),
        cpu_process_top: speedup.(:process, :cpu, top),
        cpu_sub_2: if(:subinterpreter in profiles, do: speedup.(:subinterpreter, :cpu, 2)),
        cpu_thread_2: speedup.(:thread, :cpu, 2),
        numpy_thread_2: speedup.(:thread, :numpy, 2),
        sleep_thread_top: speedup.(:thread, :sleep, top),
        top: top
      }
    }
  end

  # One NumPy task ran ~30 % slower on a :thread pool than in plain Python or a :process worker
  # when this suite was written; say so (and why) when a run shows it.
  defp numpy_note(measured, plain, tasks) do
    thread_ms = 1000 * measured[{:thread, :numpy, 1}].seconds / tasks
    process_ms = 1000 * measured[{:process, :numpy, 1}].seconds / tasks

    if plain.numpy && thread_ms > 1.15 * plain.numpy do
      [
        "- One NumPy task takes #{Support.ms(thread_ms)} ms on a :thread pool against " <>
          "#{Support.ms(plain.numpy)} ms in plain Python and #{Support.ms(process_ms)} ms on a :process " <>
          "worker. Inside the BEAM every 720 KB `np.dot` result is a fresh mmap, page-faulted anew on " <>
          "each call (176 minor faults per product; none with `np.dot(a, b, out=buf)`), presumably because " <>
          "ERTS sets malloc's trim threshold at start, which turns off glibc's adaptive mmap threshold. " <>
          "`ERL_FLAGS=\"+MYtt 65536\"` together with `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=8388608` " <>
          "removed the gap in a test; see bench/README.md."
      ]
    else
      []
    end
  end

  defp best_ms(fun) do
    for(_ <- 1..3, do: Measure.timed(fun) |> elem(0)) |> Enum.min() |> Kernel.*(1000)
  end

  # sum(i * i % 7 for i in range(n)): i*i mod 7 repeats 0 1 4 2 2 4 1 (sum 14).
  defp cpu_expected(n) do
    pattern = [0, 1, 4, 2, 2, 4, 1]
    div(n, 7) * 14 + (pattern |> Enum.take(rem(n, 7)) |> Enum.sum())
  end

  ## 3. Data

  defp data(p, _ctx) do
    thread =
      Pools.start!(:thread, name: :bench_data_t, adapter: @bench_adapter, threads_per_worker: 1)

    process = Pools.start!(:process, name: :bench_data_p, adapter: @bench_adapter, pool_size: 1)
    port = open_echo_port()
    echo_pid = spawn_link(fn -> echo_loop() end)

    # The port's Python must be up before anything is timed. And after an idle spell (the wait
    # for a quiet CPU) a :thread pool answers ~10× slower for some tens of ms: calls back to back
    # for a while bring it back to its usual pace.
    Port.command(port, "ready?")
    receive do: ({^port, {:data, "ready?"}} -> :ok)
    bg = quiet(p)
    Measure.warm_for(fn -> Pools.call(thread, "ping", %{}) end, p.warm_ms)
    Measure.warm_for(fn -> Pools.call(process, "ping", %{}) end, p.warm_ms)

    results =
      try do
        for size <- p.sizes, kind <- ["binary", "floats", "map"] do
          count = Payload.count_for(kind, size)
          value = Payload.build(kind, count)
          etf = Payload.etf_size(value)
          expected_len = Payload.length_of(value)
          calls = p.data_calls[size]
          label = "#{kind} #{Support.size_label(size)}"
          progress("  #{label} (#{Support.rate(etf)} bytes as ETF), #{calls} call(s) per figure")

          per_pool =
            for pool <- [thread, process], into: %{} do
              {:ok, true} = Pools.call(pool, "prepare", %{kind: kind, count: count}, @long)

              directions = [
                sink: fn ->
                  Pools.call(pool, "sink", %{value: value}, @long) == {:ok, expected_len}
                end,
                source: fn ->
                  Pools.call(pool, "source", %{kind: kind, count: count}, @long) == {:ok, value}
                end,
                echo: fn -> Pools.call(pool, "echo", %{value: value}, @long) == {:ok, value} end
              ]

              figures = directions_mbps(etf, calls, directions)
              Pools.call(pool, "clear_cache", %{}, @long)
              {pool.profile, figures}
            end

          port_echo =
            mbps(etf, calls, fn ->
              bin = :erlang.term_to_binary(value)
              Port.command(port, bin)

              receive do
                {^port, {:data, data}} -> :erlang.binary_to_term(data) == value
              end
            end)

          msg_echo =
            mbps(etf, calls, fn ->
              send(echo_pid, {self(), value})

              receive do
                {:echoed, v} -> v == value
              end
            end)

          :erlang.garbage_collect()
          %{label: label, etf: etf, pools: per_pool, port: port_echo, msg: msg_echo}
        end
      after
        Port.close(port)
        Process.unlink(echo_pid)
        Process.exit(echo_pid, :kill)
        Pools.stop(thread)
        Pools.stop(process)
      end

    bad =
      for r <- results, reduce: 0 do
        acc ->
          pool_bad = Enum.sum(for {_, d} <- r.pools, {_, m} <- d, do: m.bad)
          acc + pool_bad + r.port.bad + r.msg.bad
      end

    rows =
      for r <- results do
        t = r.pools.thread
        pr = r.pools.process

        "| #{r.label} | #{Support.rate(r.etf)} | " <>
          Enum.map_join(
            [t.sink, t.source, t.echo, pr.sink, pr.source, pr.echo, r.port, r.msg],
            " | ",
            &Support.sig(&1.mbps)
          ) <>
          " |"
      end

    big = List.last(p.sizes)
    find = fn label -> Enum.find(results, &(&1.label == label)) end
    big_bin = find.("binary #{Support.size_label(big)}")
    big_floats = find.("floats #{Support.size_label(big)}")

    %{
      bad: bad,
      lines:
        [
          "MB/s (10^6 bytes per second) of payload = payload size / median time of one call; one caller, " <>
            "calls back to back. Payload size = its " <>
            "Erlang external term format size (`byte_size(:erlang.term_to_binary(value))`, the \"ETF bytes\" " <>
            "column); KB/MB in the first column are approximate. in: `sink(value)` returns `len(value)`; " <>
            "out: `source(kind, count)` returns a value cached in Python (built before timing); echo: " <>
            "`echo(value)` returns its argument (the payload crosses twice; MB/s counts it once). " <>
            "The three directions of a pool are interleaved call by call. " <>
            "Pools: :thread 1×1, :process 1×1. Calls per figure: " <>
            Enum.map_join(p.sizes, ", ", &"#{p.data_calls[&1]} at #{Support.size_label(&1)}") <>
            ", after one untimed warm-up call. Every result is compared with the value " <>
            "built in Elixir.",
          "",
          "Payloads: binary = N bytes 0xAB (bytes in Python); floats = list of N floats; map = N records " <>
            "`%{\"id\", \"name\", \"score\", \"tags\" => [..], \"pos\" => %{\"x\", \"y\"}}` in a tree of maps of " <>
            "at most 100 keys (see the notes).",
          "",
          "| payload | ETF bytes | thread in | thread out | thread echo | process in | process out | process echo | baseline: port echo | baseline: BEAM message echo |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        ] ++
          rows ++
          [
            "",
            "Baselines, same value, same run: port echo = `term_to_binary`, a raw `{:packet, 4}` port to a " <>
              "Python process that writes every frame back without decoding it (bench/port_echo.py), " <>
              "`binary_to_term`: what moving the bytes to another OS process costs before any Python " <>
              "object is built. BEAM message echo = send the term to an Erlang process that sends it back " <>
              "(two copies between process heaps, no Python).",
            "",
            "Notes:",
            "- Nested maps are trees of maps with at most 100 keys each (see bench/README.md, " <>
              "\"Maps of more than 128 keys\").",
            "- :thread in for large maps is held back by Python's cyclic GC, which runs again and again " <>
              "while the conversion creates the dicts (a 64 MB `sink` took 2.8 s with it, 1.05 s without, " <>
              "in a test); see bench/README.md.",
            "- Other processes' CPU use before the section: #{Support.pct(bg.share)}."
          ],
      headline: %{
        big: big,
        bin_thread_out: big_bin && big_bin.pools.thread.source.mbps,
        bin_process_out: big_bin && big_bin.pools.process.source.mbps,
        floats_thread_in: big_floats && big_floats.pools.thread.sink.mbps,
        floats_process_in: big_floats && big_floats.pools.process.sink.mbps
      }
    }
  end

  # One untimed warm-up call first: the first call of a size pays for growing both heaps
  # (page faults), which made single 64 MB figures inconsistent (echo faster than sink). Then
  # `calls` calls, each timed; MB/s from the median time of one call, so that one stall (a GC,
  # a wake-up that comes late) does not decide a figure made of many short calls.
  defp mbps(bytes, calls, call) do
    warm_bad = if call.(), do: 0, else: 1

    samples =
      for _ <- 1..calls do
        {seconds, ok?} = Measure.timed(call)
        {seconds, if(ok?, do: 0, else: 1)}
      end

    seconds = samples |> Enum.map(&elem(&1, 0)) |> Support.median()
    bad = samples |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    %{mbps: bytes / seconds / 1.0e6, bad: bad + warm_bad}
  end

  # The three directions of one pool, interleaved call by call (sink, source, echo, sink, ...)
  # after one untimed warm-up call each, so that a slow spell of the pool falls on all three
  # alike. MB/s from the median time of one call of each direction.
  defp directions_mbps(bytes, calls, directions) do
    warm_bad = Enum.count(directions, fn {_, call} -> not call.() end)

    samples =
      for _ <- 1..calls, {dir, call} <- directions do
        {seconds, ok?} = Measure.timed(call)
        {dir, seconds, if(ok?, do: 0, else: 1)}
      end

    figures =
      for {dir, _} <- directions, into: %{} do
        mine = Enum.filter(samples, &(elem(&1, 0) == dir))
        seconds = mine |> Enum.map(&elem(&1, 1)) |> Support.median()
        {dir, %{mbps: bytes / seconds / 1.0e6, bad: mine |> Enum.map(&elem(&1, 2)) |> Enum.sum()}}
      end

    # Charge the warm-up's wrong replies to the first direction.
    {first, _} = hd(directions)
    update_in(figures, [first, :bad], &(&1 + warm_bad))
  end

  defp open_echo_port do
    script = Path.join(Support.bench_dir(), "port_echo.py")

    Port.open({:spawn_executable, Support.python_executable()}, [
      :binary,
      {:packet, 4},
      args: ["-u", script]
    ])
  end

  defp echo_loop do
    receive do
      {from, value} ->
        send(from, {:echoed, value})
        echo_loop()
    end
  end

  ## 4. Memory

  defp memory(p, _ctx) do
    bg = quiet(p)
    cap = p.mem_capacity

    runs =
      for i <- 1..p.mem_runs do
        progress("  fresh BEAM #{i}/#{p.mem_runs}: pools of capacity #{cap}")
        fresh_node(["memory", Integer.to_string(cap), Integer.to_string(p.mem_settle_ms)])
      end

    med = fn key ->
      runs |> Enum.map(&Support.number(&1[key])) |> Enum.reject(&is_nil/1) |> Support.median()
    end

    bad = runs |> Enum.map(&(Support.number(&1["bad"]) || 1)) |> Enum.sum() |> round()
    half = max(div(cap, 2), 1)
    big_n = round(med.("big_threads"))

    first = med.("first")
    one_1 = med.("one_1")
    one_c = med.("one_c")
    one_2c = med.("one_2c")
    big = med.("big")
    two = med.("two")
    proc_rss = med.("proc_rss_sum")
    proc_pss = med.("proc_pss_sum")
    proc_beam = med.("proc_beam")
    sub_c = if Enum.any?(runs, &Support.number(&1["sub_c"])), do: med.("sub_c")
    per_thread = (one_2c - one_c) / cap
    per_thread_big = (big - one_1) / (big_n - 1)

    kb = fn bytes -> Support.fixed(bytes / 1024, 0) end

    %{
      bad: bad,
      lines:
        [
          "Resident memory (VmRSS) in MB (2^20 bytes), median of #{p.mem_runs} fresh BEAM(s) " <>
            "(`mix run --no-start bench/lib/fresh_node.exs memory #{cap}`: no pool has started Python " <>
            "before). Adapter: bench_adapter.BenchAdapter (imports NumPy). :thread figures are growth of " <>
            "the BEAM's VmRSS when the pool starts, read after every thread has served one call " <>
            "(#{cap} concurrent `time.sleep(50 ms)` calls), with the pools started before it still " <>
            "running; before each reading the embedded Python runs gc.collect() and malloc_trim(0) and " <>
            "every Erlang process is garbage-collected. 1×#{cap} and 1×#{2 * cap} are each started three " <>
            "times per BEAM (medians). :process figures add up the workers' own OS processes.",
          "",
          "| pool | capacity | resident memory (MB) | per unit |",
          "| --- | ---: | ---: | --- |",
          "| first pool of the node, :thread 1×1 (embedded CPython, NumPy, adapter: paid once per BEAM) | 1 | #{Support.mib(first)} | — |",
          "| :thread 1×1 (another pool: one adapter instance and one thread) | 1 | #{Support.mib(one_1)} | — |",
          "| :thread 1×#{cap} | #{cap} | #{Support.mib(one_c)} | — |",
          "| :thread 2×#{half} | #{2 * half} | #{Support.mib(two)} | — |",
          "| :thread 1×#{2 * cap} | #{2 * cap} | #{Support.mib(one_2c)} | — |",
          "| :thread 1×#{big_n} | #{big_n} | #{Support.mib(big)} | — |",
          "| :process #{cap}×1: sum of the workers' VmRSS | #{cap} | #{Support.mib(proc_rss)} | #{Support.mib(proc_rss / cap)} MB per worker |",
          "| :process #{cap}×1: sum of the workers' Pss (shared pages split between them) | #{cap} | #{Support.mib(proc_pss)} | #{Support.mib(proc_pss / cap)} MB per worker |",
          "| :process #{cap}×1: growth of the BEAM itself | #{cap} | #{Support.mib(proc_beam)} | — |"
        ] ++
          if(sub_c,
            do: [
              "| :subinterpreter #{cap}×1: growth of the BEAM (#{cap} interpreters with their own GIL) | #{cap} | #{Support.mib(sub_c)} | #{Support.mib(sub_c / cap)} MB per worker |"
            ],
            else: []
          ) ++
          [
            "| per extra thread, (1×#{2 * cap} − 1×#{cap}) / #{cap} | — | — | #{kb.(per_thread)} KB |",
            "| per extra thread, (1×#{big_n} − 1×1) / #{big_n - 1} | — | — | #{kb.(per_thread_big)} KB |",
            "",
            "Notes:",
            "- A :thread pool of capacity #{cap}, the interpreter included, costs " <>
              "#{Support.mib(first + one_c)} MB (first pool + 1×#{cap}); a :process pool of #{cap} costs " <>
              "#{Support.mib(proc_rss)} MB of RSS (#{Support.mib(proc_pss)} MB Pss): every worker is a whole " <>
              "interpreter with its own NumPy.",
            "- Single readings of a few hundred KB move by up to ±2 MB with the order in which pools start " <>
              "(some memory is released now and then), hence the medians; the 1×#{big_n} row gives a " <>
              "per-thread figure that no such jump can blur. The BEAM's own growth for the :process pool is " <>
              "within that noise.",
            "- Other processes' CPU use before the section: #{Support.pct(bg.share)}."
          ],
      headline: %{
        cap: cap,
        sub_c: sub_c,
        thread_total: first + one_c,
        process_rss: proc_rss,
        process_pss: proc_pss,
        per_thread: per_thread_big
      }
    }
  end

  defp fresh_node(args) do
    mix = System.find_executable("mix") || raise "mix not found on PATH"

    case System.cmd(mix, ["run", "--no-start", "bench/lib/fresh_node.exs" | args],
           cd: Support.project_dir(),
           stderr_to_stdout: false
         ) do
      {out, 0} ->
        Support.parse_kv(out)

      {out, status} ->
        raise "bench/lib/fresh_node.exs #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    end
  end

  ## 5. Start-up

  defp startup(p, _ctx) do
    bg = quiet(p)
    n = p.startup_repeats

    warm = fn profile, size, threads, label ->
      progress("  #{label}: #{n} start(s)")

      samples =
        for i <- 1..n do
          name = :"bench_start_#{profile}_#{size}_#{threads}_#{i}"
          opts = [name: name, adapter: @showcase, pool_size: size]

          opts =
            if profile == :thread, do: Keyword.put(opts, :threads_per_worker, threads), else: opts

          t0 = System.monotonic_time(:microsecond)
          pool = Pools.start!(profile, opts)
          ok? = first_ping(pool)
          ms = (System.monotonic_time(:microsecond) - t0) / 1000
          Pools.stop(pool)
          {ms, if(ok?, do: 0, else: 1)}
        end

      %{
        label: label,
        ms: Enum.map(samples, &elem(&1, 0)),
        bad: samples |> Enum.map(&elem(&1, 1)) |> Enum.sum()
      }
    end

    cold =
      (fn ->
         label = ":thread 1×8 in a fresh BEAM (interpreter start, imports, threads)"
         progress("  #{label}: #{n} fresh BEAM(s)")
         runs = for _ <- 1..n, do: fresh_node(["cold_start"])

         %{
           label: label,
           ms: Enum.map(runs, &Support.number(&1["ms"])),
           bad: runs |> Enum.map(&(Support.number(&1["bad"]) || 1)) |> Enum.sum() |> round()
         }
       end).()

    plain =
      (fn ->
         label =
           "baseline: plain `python -c 'import <showcase module>'` (a new interpreter with NumPy, no Snakepit)"

         progress("  #{label}: #{n} run(s)")

         ms =
           for _ <- 1..n do
             {s, {_, 0}} =
               Measure.timed(fn ->
                 System.cmd(
                   Support.python_executable(),
                   ["-c", "import snakepit_bridge.adapters.threaded_showcase"],
                   env: [
                     {"PYTHONPATH", Path.join(Support.project_dir(), "priv/python")} | @blas_env
                   ]
                 )
               end)

             s * 1000
           end

         %{label: label, ms: ms, bad: 0}
       end).()

    rows = [
      warm.(:thread, 1, 1, ":thread 1×1, interpreter already running in this BEAM"),
      warm.(:thread, 1, 8, ":thread 1×8, interpreter already running in this BEAM"),
      cold,
      warm.(:process, 1, 1, ":process 1×1"),
      warm.(:process, 2, 1, ":process 2×1"),
      warm.(:process, 8, 1, ":process 8×1"),
      plain
    ]

    bad = rows |> Enum.map(& &1.bad) |> Enum.sum()
    get = fn i -> rows |> Enum.at(i) |> Map.fetch!(:ms) |> Support.median() end

    %{
      bad: bad,
      lines:
        [
          "Time from `start_pool` until the first right `ping` reply, ThreadedShowcaseAdapter (imports " <>
            "NumPy), median of #{n} (min–max). The fresh-BEAM row is timed inside a new " <>
            "`mix run --no-start` OS process, from before `Application.ensure_all_started(:snakepit)`; " <>
            ":process workers start in parallel, each a new interpreter (the OS file cache is warm in every row).",
          "",
          "| pool | ms (median) | min–max |",
          "| --- | ---: | ---: |"
        ] ++
          for r <- rows do
            "| #{r.label} | #{Support.ms(Support.median(r.ms))} | #{Support.ms(Enum.min(r.ms))}–#{Support.ms(Enum.max(r.ms))} |"
          end ++
          ["", "Other processes' CPU use before the section: #{Support.pct(bg.share)}."],
      headline: %{thread_warm: get.(1), thread_cold: get.(2), process_8: get.(5)}
    }
  end

  defp first_ping(pool, tries \\ 1000) do
    case Pools.call(pool, "ping", %{}) do
      {:ok, "pong"} -> true
      _ when tries > 0 -> first_ping(pool, tries - 1)
      _ -> false
    end
  end

  ## 6. Python calling Elixir, async commands

  defp callbacks(p, _ctx) do
    bg = quiet(p)
    n = p.callback_calls
    :ok = Snakepit.register_function(:bench_echo, fn x -> x end)

    shapes = [
      {:thread, "thread 1×2", [pool_size: 1, threads_per_worker: 2]},
      {:process, "process 1×2", [pool_size: 1, threads_per_worker: 2]}
    ]

    round_trips =
      for {profile, label, opts} <- shapes do
        pool =
          Pools.start!(profile, [name: :"bench_cb_#{profile}", adapter: @bench_adapter] ++ opts)

        reenter = :"bench_reenter_#{profile}"

        :ok =
          Snakepit.register_function(reenter, fn x ->
            {:ok, r} = Pools.call(pool, "ping", %{message: x})
            r
          end)

        try do
          progress("  #{label}: #{n} elixir.call round trips (echo, then re-entrant)")

          loop = fn name ->
            Pools.call(pool, "elixir_loop", %{name: name, n: n, arg: "x"}, @long)
          end

          {echo_us, bad1} =
            case loop.("bench_echo") do
              {:ok, %{"median_ns" => ns, "last" => "x"}} -> {ns / 1000, 0}
              _ -> {nil, 1}
            end

          {re_us, bad2} =
            case loop.(Atom.to_string(reenter)) do
              {:ok, %{"median_ns" => ns, "last" => "x"}} -> {ns / 1000, 0}
              _ -> {nil, 1}
            end

          ping = fn -> Pools.call(pool, "ping", %{}) == {:ok, "pong"} end
          rtt = Measure.round_trip(ping, n, div(n, 10))

          %{
            label: label,
            echo: echo_us,
            re: re_us,
            ping: rtt.median_us,
            bad: bad1 + bad2 + rtt.bad
          }
        after
          Pools.stop(pool)
        end
      end

    pool =
      Pools.start!(:thread,
        name: :bench_async,
        adapter: @bench_adapter,
        pool_size: 1,
        threads_per_worker: 2,
        max_queue: max(p.sleepers * 2, 10_000)
      )

    try do
      rates =
        for c <- p.async_callers do
          progress("  thread 1×2: #{c} caller(s), async `asleep(0)` and sync `ping`")
          async = fn -> Pools.call(pool, "asleep", %{ms: 0}) == {:ok, 0} end
          sync = fn -> Pools.call(pool, "ping", %{}) == {:ok, "pong"} end
          a = Measure.throughput(async, c, p.duration_ms)
          s = Measure.throughput(sync, c, p.duration_ms)
          %{callers: c, async: a.calls_per_s, sync: s.calls_per_s, bad: a.bad + s.bad}
        end

      progress("  thread 1×2: #{p.sleepers} concurrent `await asyncio.sleep(#{p.sleeper_ms} ms)`")
      me = self()

      {wall, replies} =
        Measure.timed(fn ->
          for _ <- 1..p.sleepers do
            spawn_link(fn ->
              send(me, {:slept, Pools.call(pool, "asleep", %{ms: p.sleeper_ms}, @long)})
            end)
          end

          for _ <- 1..p.sleepers do
            receive do
              {:slept, r} -> r
            end
          end
        end)

      sleeper_bad = Enum.count(replies, &(&1 != {:ok, p.sleeper_ms}))
      bad = Enum.sum(Enum.map(round_trips, & &1.bad)) + Enum.sum(Enum.map(rates, & &1.bad))

      %{
        bad: bad + sleeper_bad,
        lines:
          [
            "`elixir.call` from inside a command (bench adapter `elixir_loop`: #{n} calls back to " <>
              "back, each timed in Python, median): to an echo function, and to a function that " <>
              "calls the same pool back (`Snakepit.execute(pool, \"ping\")`, served by the " <>
              "waiting thread). Beside it, the `ping` round trip from Elixir on the same pool.",
            "",
            "| pool | Python → Elixir echo (µs) | Python → Elixir → Python (µs) | `ping` from Elixir (µs) |",
            "| --- | ---: | ---: | ---: |"
          ] ++
            for r <- round_trips do
              "| #{r.label} | #{Support.us(r.echo)} | #{Support.us(r.re)} | #{Support.us(r.ping)} |"
            end ++
            [
              "",
              "Calls/s of an `async def` command (`asleep(0)`: one `await asyncio.sleep(0)`) beside " <>
                "the sync `ping`, :thread 1×2, N callers back to back for #{p.duration_ms} ms.",
              "",
              "| callers | async `asleep(0)` calls/s | sync `ping` calls/s |",
              "| ---: | ---: | ---: |"
            ] ++
            for r <- rates do
              "| #{r.callers} | #{Support.rate(r.async)} | #{Support.rate(r.sync)} |"
            end ++
            [
              "",
              "#{p.sleepers} concurrent calls of `await asyncio.sleep(#{p.sleeper_ms / 1000} s)` on " <>
                ":thread 1×2: all done in #{Support.fixed(wall, 2)} s (held pool threads would need " <>
                "#{Support.fixed(p.sleepers * p.sleeper_ms / 1000 / 2, 0)} s).",
              "",
              "Other processes' CPU use before the section: #{Support.pct(bg.share)}."
            ],
        headline: %{}
      }
    after
      Pools.stop(pool)
    end
  end

  ## Report

  defp headlines(by, f) do
    %{"1" => h1, "2" => h2, "3" => h3, "4" => h4, "5" => h5} = by
    h6 = by["6"]
    h8 = by["8"]
    h9 = by["9"]

    [
      "- `ping` round trip: #{Support.us(h1.t_rtt)} µs on a :thread pool vs #{Support.us(h1.p_rtt)} µs " <>
        "on a :process pool (#{Support.fixed(h1.p_rtt / h1.t_rtt, 1)}× shorter); the plain Python call itself " <>
        "takes #{Support.us(h1.loop_ns / 1000)} µs.",
      "- Calls/s with 64 callers: #{Support.rate(h1.t64)} (:thread 1×8) vs #{Support.rate(h1.p64)} " <>
        "(:process 8×1); with #{h1.top}: #{Support.rate(h1.t_top)} vs #{Support.rate(h1.p_top)}.",
      "- #{h2.top} threads vs 1 on this #{if f.free_threaded, do: "free-threaded", else: "GIL"} build: " <>
        "pure-Python CPU #{Support.fixed(h2.cpu_thread_top, 2)}× (:process #{h2.top}×1: " <>
        "#{Support.fixed(h2.cpu_process_top, 2)}×, #{f.logical_processors} cores), NumPy at 2 threads " <>
        "#{Support.fixed(h2.numpy_thread_2, 2)}×, time.sleep #{Support.fixed(h2.sleep_thread_top, 2)}×.",
      "- #{Support.size_label(h3.big)} payloads: binary out #{Support.sig(h3.bin_thread_out)} MB/s (:thread) vs " <>
        "#{Support.sig(h3.bin_process_out)} MB/s (:process); list of floats in #{Support.sig(h3.floats_thread_in)} " <>
        "vs #{Support.sig(h3.floats_process_in)} MB/s.",
      "- Capacity #{h4.cap}: #{Support.mib(h4.thread_total)} MB for a :thread pool (interpreter included) vs " <>
        "#{Support.mib(h4.process_rss)} MB RSS (#{Support.mib(h4.process_pss)} MB Pss) for #{h4.cap} :process " <>
        "workers; an extra thread costs about #{Support.fixed(h4.per_thread / 1024, 0)} KB. Ready in " <>
        "#{Support.ms(h5.thread_warm)} ms (:thread 1×8; #{Support.ms(h5.thread_cold)} ms in a fresh BEAM) vs " <>
        "#{Support.ms(h5.process_8)} ms (:process 8×1)."
    ] ++
      if h6 do
        [
          "- Objects and eval (:thread 1×8): `call_method` on a ref #{Support.us(h6.thread.method)} µs and " <>
            "`eval(\"1+1\")` #{Support.us(h6.thread.eval)} µs beside `ping` #{Support.us(h6.thread.ping)} µs; " <>
            "creating and releasing a ref #{Support.us(h6.thread.create_release)} µs " <>
            "(:process 2×1: #{Support.us(h6.process.method)}, #{Support.us(h6.process.eval)}, " <>
            "#{Support.us(h6.process.ping)}, #{Support.us(h6.process.create_release)} µs)."
        ]
      else
        []
      end ++
      if h8 do
        [
          "- 64 MB on a :thread pool, as a share of a memcpy of the same size: `{:buffer, _}` in " <>
            "#{Support.fixed(h8.buffer_in, 2)}×, bytes out #{Support.fixed(h8.bytes_out, 2)}×, NDArray to NumPy " <>
            "and back #{Support.fixed(h8.nd_echo, 2)}× (a writable array out: #{Support.fixed(h8.nd_out, 2)}×); " <>
            "#{h8.stalls} long_schedule event(s) over the large-data section."
        ] ++
          if h8.process do
            pr = fn k ->
              {warm, fresh} = Map.fetch!(h8.process, k)

              "#{Support.fixed(warm, 2)}× (#{Support.fixed(fresh, 2)}× of a copy into fresh pages)"
            end

            [
              "- 64 MB on a :process pool (shared memory): `{:buffer, _}` in #{pr.(:buffer_in)}, " <>
                "bytes out #{pr.(:bytes_out)}, NDArray echo #{pr.(:nd_echo)}."
            ]
          else
            []
          end
      else
        []
      end ++
      if h9 do
        ratio = fn {t, inline, port} ->
          "#{Support.us(t)} µs handed off, #{Support.us(inline)} µs inline, vs " <>
            "#{Support.us(port)} µs port echo (#{Support.fixed(inline / port, 2)}×)"
        end

        [
          "- `echo` on a :thread 2×8 pool under load: idle #{ratio.(h9.idle)}; two CPU-bound OS " <>
            "processes #{ratio.(h9.os)}; two busy Elixir processes #{ratio.(h9.vm)}."
        ]
      else
        []
      end ++
      subinterpreter_headline(h1, h2, h4)
  end

  defp subinterpreter_headline(h1, h2, h4) do
    if h1.s_rtt && h2.cpu_sub_2 && h4.sub_c do
      [
        "- :subinterpreter (own GIL per worker): pure-Python CPU from 2 callers on 2×1 " <>
          "#{Support.fixed(h2.cpu_sub_2, 2)}× one caller (:thread 1×2: #{Support.fixed(h2.cpu_thread_2, 2)}×); " <>
          "`ping` round trip #{Support.us(h1.s_rtt)} µs (#{Support.fixed(h1.s_rtt / h1.t_rtt, 2)}× :thread's); " <>
          "capacity #{h4.cap} in #{Support.mib(h4.sub_c)} MB (#{Support.fixed(h4.sub_c / h4.process_rss, 2)}× " <>
          ":process's RSS)."
      ]
    else
      []
    end
  end

  ## 6. Objects and eval

  # Round trips of one caller, as in section 1: `ping`; `call_method` on a ref to a Python dict
  # (`d.get("k")`); `eval("1+1")`; `execute(..., return: :ref)` of `ping` followed by
  # `Snakepit.release/1` of the ref (the object is let go on the release thread, or by the
  # worker).
  defp objects(p, _ctx) do
    pools = [
      {:thread,
       Pools.start!(:thread, name: :bench_obj_t8, adapter: @showcase, threads_per_worker: 8)},
      {:process, Pools.start!(:process, name: :bench_obj_p2, adapter: @showcase, pool_size: 2)}
    ]

    measured =
      try do
        for {id, pool} <- pools, into: %{} do
          bg = quiet(p)
          name = pool.name
          {:ok, dict} = Snakepit.eval("{'k': 1}", %{}, pool: name, return: :ref)

          calls = [
            ping: fn -> Pools.call(pool, "ping", %{}) == {:ok, "pong"} end,
            method: fn -> Snakepit.call_method(dict, "get", ["k"]) == {:ok, 1} end,
            eval: fn -> Snakepit.eval("1+1", %{}, pool: name) == {:ok, 2} end,
            create_release: fn ->
              case Snakepit.execute(name, "ping", %{}, return: :ref) do
                {:ok, %Snakepit.Ref{type: "str"} = ref} -> Snakepit.release(ref) == :ok
                _ -> false
              end
            end
          ]

          results =
            for {what, call} <- calls, into: %{} do
              progress("  #{Pools.shape(pool)}: #{what}, #{p.rtt_calls} calls")
              Measure.warm_for(call, p.warm_ms)
              {what, Measure.round_trip(call, p.rtt_calls, p.warmup)}
            end

          {id, %{pool: pool, results: results, bg: bg}}
        end
      after
        for {_, pool} <- pools, do: Pools.stop(pool)
      end

    bad = for {_, m} <- measured, {_, r} <- m.results, reduce: 0, do: (acc -> acc + r.bad)
    med = fn id, what -> measured[id].results[what].median_us end

    rows =
      for {id, _} <- pools do
        m = measured[id]

        "| #{Pools.shape(m.pool)} | " <>
          Enum.map_join([:ping, :method, :eval, :create_release], " | ", fn what ->
            "#{Support.us(med.(id, what))} (p99 #{Support.us(m.results[what].p99_us)})"
          end) <> " |"
      end

    headline =
      for {id, _} <- pools, into: %{} do
        {id,
         %{
           ping: med.(id, :ping),
           method: med.(id, :method),
           eval: med.(id, :eval),
           create_release: med.(id, :create_release)
         }}
      end

    %{
      bad: bad,
      headline: headline,
      lines:
        [
          "Round trips of one caller (µs, median and p99 of #{p.rtt_calls} timed calls after #{p.warm_ms} ms and " <>
            "#{p.warmup} calls of warm-up): the showcase adapter's `ping`; `Snakepit.call_method(ref, \"get\", [\"k\"])` " <>
            "on a ref to a Python dict; `Snakepit.eval(\"1+1\")`; `Snakepit.execute(pool, \"ping\", %{}, return: :ref)` " <>
            "then `Snakepit.release(ref)`, timed together.",
          "",
          "| path | `ping` | `call_method` on a ref | `eval(\"1+1\")` | create + release a ref |",
          "| --- | ---: | ---: | ---: | ---: |"
        ] ++
          rows ++
          [
            "",
            "Other processes' CPU use before each pool: " <>
              Enum.map_join(pools, ", ", fn {id, _} -> Support.pct(measured[id].bg.share) end) <>
              "."
          ]
    }
  end

  defp render(p, f, results, elapsed_s, smoke?) do
    by = Map.new(results, &{&1.title |> String.first(), &1.headline})
    bad = results |> Enum.map(& &1.bad) |> Enum.sum()

    headlines =
      if Enum.all?(~w(1 2 3 4 5), &Map.has_key?(by, &1)),
        do: headlines(by, f),
        else: ["- (partial run: sections #{Enum.join(Enum.sort(Map.keys(by)), ", ")})"]

    blas = f.blas

    facts = [
      "- Date: #{f.date} UTC; #{p.mode} run, #{Support.fixed(elapsed_s, 0)} s; load average at the start " <>
        "#{f.loadavg} (1, 5, 15 min).",
      "- Machine: #{f.cpu}, #{f.logical_processors} logical CPUs, #{Support.mib(f.mem_total)} MB RAM, #{f.kernel}.",
      "- BEAM: Erlang/OTP #{f.otp_version} (ERTS #{f.erts_version}), Elixir #{f.elixir_version}, " <>
        "#{f.schedulers_online} schedulers online (#{f.dirty_cpu} dirty CPU).",
      "- Python: CPython #{f.python_version}, **#{f.python_build}** (#{f.python}); NumPy " <>
        "#{blas["numpy"] || "?"}, #{blas["lib"] || "no OpenBLAS found"} at #{blas["threads"] || "?"} thread(s).",
      "- :process pools driven through #{f.process_route}." <>
        if(f.stopped_hpc,
          do: " `:hpc_pool` (config/config.exs) was stopped for the run.",
          else: ""
        )
    ]

    Enum.join(
      [
        "# Snakepit benchmark results#{if smoke?, do: " (smoke run: tiny sizes, not for quoting)", else: ""}",
        "",
        "Produced by `mix run bench/suite.exs#{if smoke?, do: " --smoke", else: ""}` (see bench/README.md). " <>
          "Timings on a small shared VM vary by ±30 % from run to run; compare figures of the same run.",
        "",
        "## Headlines",
        ""
      ] ++
        headlines ++
        ["", "## Machine", ""] ++
        facts ++
        Enum.flat_map(results, fn r -> ["", "## #{r.title}", "" | r.lines] end) ++
        [
          "",
          if(bad == 0,
            do: "Every reply was checked: all correct.",
            else: "**#{bad} replies were wrong.**"
          ),
          ""
        ],
      "\n"
    )
  end
end

Bench.Suite.main(System.argv())
