# Measurements that need a BEAM whose embedded Python has not started yet, run by bench/suite.exs
# as a child OS process:
#
#     mix run --no-start bench/lib/fresh_node.exs cold_start
#     mix run --no-start bench/lib/fresh_node.exs memory CAPACITY [SETTLE_MS]
#
# `--no-start` keeps the configured pools (`:hpc_pool`) from starting: the application is
# started here with no pools, so nothing has touched Python before the first measured pool.
# Prints key=value lines on stdout (read by the suite); `bad=N` counts wrong replies.
#
# cold_start: time from before `Application.ensure_all_started(:snakepit)` to the first right
#   `ping` of a new :thread pool (1 worker x 8 threads, ThreadedShowcaseAdapter): interpreter
#   start, imports (NumPy), adapter construction, thread start. RSS of the BEAM before and after.
#
# memory CAPACITY: VmRSS of this BEAM (/proc/self/status) before and after starting, in turn,
#   while the earlier ones keep running (so no pool reuses memory freed by another):
#     first  — a 1x1 pool: the embedded interpreter, NumPy and the bench adapter, paid once;
#     1x1    — another 1x1 pool: one adapter instance and one thread;
#     1xC    — a :thread pool of 1 worker x C threads;
#     1x2C   — 1 worker x 2C threads (per extra thread: (1x2C - 1xC) / C); these two are each
#              started three times, interleaved, and the medians reported;
#     1x16C  — 1 worker x 16C threads (a per-thread figure less blurred by RSS noise:
#              (1x16C - 1x1) / (16C - 1));
#     2xC/2  — 2 workers x C/2 threads;
#     subinterpreter C — a :subinterpreter pool of C workers x 1 thread (CPython >= 3.12);
#     process C — a :process pool of C workers: the BEAM's own delta, and the sum of VmRSS and
#     of Pss (/proc/<pid>/smaps_rollup) of the worker OS processes.
#   Every thread of a pool serves one call (C concurrent time.sleep(50 ms) calls) before RSS is
#   read, so each has run Python once. Before each reading the embedded Python runs gc.collect()
#   and malloc_trim(0) (through the first pool), every Erlang process is garbage-collected and
#   the node idles SETTLE_MS (default 300).

Code.require_file("support.exs", __DIR__)
Logger.configure(level: :error)

defmodule Bench.FreshNode do
  alias Bench.{Measure, Pools, Support}

  @bench_adapter "bench_adapter.BenchAdapter"
  @showcase "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"
  @blas_env [{"OPENBLAS_NUM_THREADS", "1"}, {"OMP_NUM_THREADS", "1"}]

  def main(["cold_start"]) do
    rss0 = Support.vm_rss()
    t0 = System.monotonic_time(:microsecond)
    start_app()

    {:ok, _} =
      Snakepit.start_pool(name: :fresh_showcase, adapter: @showcase, threads_per_worker: 8)

    ok? = first_ping(fn -> Snakepit.execute(:fresh_showcase, "ping", %{}) end)
    t1 = System.monotonic_time(:microsecond)
    rss1 = Support.vm_rss()
    out(ms: (t1 - t0) / 1000, rss_before: rss0, rss_after: rss1, bad: if(ok?, do: 0, else: 1))
  end

  def main(["memory", cap | settle]) do
    cap = String.to_integer(cap)
    Process.put(:settle_ms, settle |> List.first("300") |> String.to_integer())
    start_app()
    Support.settle()
    rss0 = Support.vm_rss()

    {first, bad1} =
      grow(:thread, name: :mem_first, pool_size: 1, threads_per_worker: 1, adapter_env: @blas_env)

    {one_1, bad6} = grow(:thread, name: :mem_1x1, pool_size: 1, threads_per_worker: 1)
    # 1xC and 1x2C three times each, interleaved, all kept running: a single reading of a few
    # hundred KB moves by up to 2 MB with the order of the pools (some memory is released now
    # and then while a pool starts), so each figure is the median of three.
    {pairs, bad2} =
      Enum.map_reduce(1..3, 0, fn i, bad ->
        {c, b1} = grow(:thread, name: :"mem_1xc_#{i}", pool_size: 1, threads_per_worker: cap)

        {c2, b2} =
          grow(:thread, name: :"mem_1x2c_#{i}", pool_size: 1, threads_per_worker: 2 * cap)

        {{c, c2}, bad + b1 + b2}
      end)

    bad3 = 0
    one_c = %{delta: pairs |> Enum.map(&elem(&1, 0).delta) |> Support.median()}
    one_2c = %{delta: pairs |> Enum.map(&elem(&1, 1).delta) |> Support.median()}
    extra = Enum.flat_map(pairs, fn {a, b} -> [a, b] end)

    {big, bad7} = grow(:thread, name: :mem_big, pool_size: 1, threads_per_worker: 16 * cap)

    {two, bad4} =
      grow(:thread, name: :mem_2x, pool_size: 2, threads_per_worker: max(div(cap, 2), 1))

    {proc, bad5} = grow(:process, name: :mem_proc, pool_size: cap)

    {sub, bad8} =
      if Pools.subinterpreters?(),
        do: grow(:subinterpreter, name: :mem_sub, pool_size: cap, threads_per_worker: 1),
        else: {nil, 0}

    pids = Pools.os_pids(proc.pool)
    rss_sum = pids |> Enum.map(&(Support.vm_rss(&1) || 0)) |> Enum.sum()
    pss = Enum.map(pids, &Support.pss/1)
    pss_sum = if Enum.any?(pss, &is_nil/1), do: "", else: Enum.sum(pss)

    out(
      rss_start: rss0,
      first: first.delta,
      one_1: one_1.delta,
      one_c: one_c.delta,
      one_2c: one_2c.delta,
      big: big.delta,
      big_threads: 16 * cap,
      two: two.delta,
      proc_beam: proc.delta,
      proc_workers: length(pids),
      proc_rss_sum: rss_sum,
      proc_pss_sum: pss_sum,
      sub_c: if(sub, do: sub.delta, else: ""),
      bad: bad1 + bad2 + bad3 + bad4 + bad5 + bad6 + bad7 + bad8
    )

    for p <-
          Enum.reject([sub, proc, two, big], &is_nil/1) ++ Enum.reverse(extra) ++ [one_1, first],
        do: Pools.stop(p.pool)
  end

  defp start_app do
    Application.put_env(:snakepit, :pools, [])
    Application.put_env(:snakepit, :python_path, [Path.join(Support.bench_dir(), "adapters")])
    {:ok, _} = Application.ensure_all_started(:snakepit)
  end

  # Starts a pool, has every thread serve one call, and returns the growth of this BEAM's RSS.
  defp grow(profile, opts) do
    settle()
    before = Support.vm_rss()
    pool = Pools.start!(profile, Keyword.put_new(opts, :adapter, @bench_adapter))
    if Process.get(:first_pool) == nil, do: Process.put(:first_pool, pool)
    capacity = pool.size * pool.threads
    call = fn -> Pools.call(pool, "sleep", %{ms: 50}) == {:ok, 50} end
    %{bad: bad} = Measure.batch(call, capacity, capacity)
    settle()
    {%{pool: pool, delta: Support.vm_rss() - before}, bad}
  end

  # Garbage-collects the Erlang processes and the embedded Python (gc.collect, malloc_trim
  # through the first pool), then idles, so that RSS shows live memory.
  defp settle do
    case Process.get(:first_pool) do
      nil -> :ok
      pool -> {:ok, true} = Pools.call(pool, "settle", %{})
    end

    Support.settle(Process.get(:settle_ms))
  end

  defp first_ping(call, tries \\ 1000) do
    case call.() do
      {:ok, "pong"} -> true
      _ when tries > 0 -> first_ping(call, tries - 1)
      _ -> false
    end
  end

  defp out(kv), do: Enum.each(kv, fn {k, v} -> IO.puts("#{k}=#{v}") end)
end

Bench.FreshNode.main(System.argv())
