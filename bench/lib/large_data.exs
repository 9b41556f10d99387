# Section "8. Large data" of bench/suite.exs: {:buffer, _} arguments, bytes results and
# %Snakepit.NDArray{} both ways, 1 KB to 256 MB, both profiles, beside `:binary.copy/1` of the
# same size in the same run (the memcpy reference) and a copy into fresh pages
# (bench/python/fresh_copy.py, the floor for data that lands in new memory); peak RSS of 64 MB
# round trips; and the long_schedule events of the caller over the whole section (README,
# "Large data").

defmodule Bench.LargeData do
  @moduledoc false
  alias Bench.{Pools, Support}
  import Support, only: [progress: 1]

  @adapter "bench_adapter.BenchAdapter"
  @long 600_000
  @mb64 67_108_864

  def run(p, _ctx) do
    sizes =
      if p.mode == "smoke", do: [1024, 1_048_576], else: [1024, 1_048_576, @mb64, 268_435_456]

    pools = [
      Pools.start!(:thread, name: :bench_large_t, adapter: @adapter, threads_per_worker: 1),
      Pools.start!(:process, name: :bench_large_p, adapter: @adapter, pool_size: 1)
    ]

    try do
      measured =
        for size <- sizes do
          progress("  #{Support.size_label(size)}")
          calls = calls_for(size, p.mode)
          bin = :binary.copy(<<0xAB>>, size)
          # The reference runs outside the stall monitor: :binary.copy/1 is one long BIF call.
          ref = median_us(calls, fn -> :binary.copy(bin) end, fn _ -> true end)
          fresh = fresh_copy_us(size, calls)

          per_pool =
            for pool <- pools, pool.profile == :thread or size <= @mb64, into: %{} do
              steal = Support.steal_ms()

              {events, figures} =
                Bench.LargeData.Stalls.collect(fn -> directions(pool, bin, size, calls) end)

              stolen = if steal, do: Support.steal_ms() - steal

              {pool.profile, figures |> Map.put(:events, events) |> Map.put(:stolen, stolen)}
            end

          :erlang.garbage_collect()
          %{size: size, ref: ref, fresh: fresh, pools: per_pool}
        end

      rows = measured

      events =
        for r <- rows, {profile, d} <- r.pools, e <- d.events, reduce: %{} do
          acc -> Map.update(acc, profile, [e], &[e | &1])
        end

      stolen =
        for r <- rows, {profile, d} <- r.pools, d.stolen, reduce: %{} do
          acc -> Map.update(acc, profile, d.stolen, &(&1 + d.stolen))
        end

      rss = if p.mode == "smoke", do: [], else: Enum.flat_map(pools, &peak_rss_runs/1)
      render(rows, rss, {events, stolen})
    after
      Enum.each(pools, &Pools.stop/1)
    end
  end

  defp calls_for(size, mode) do
    cond do
      mode == "smoke" -> 3
      size <= 1024 -> 300
      size <= 1_048_576 -> 20
      size <= @mb64 -> 5
      true -> 2
    end
  end

  defp directions(pool, bin, size, calls) do
    name = pool.name
    floats = div(size, 8)
    array = Snakepit.NDArray.new(binary_part(bin, 0, floats * 8), {:f, 64}, {floats})
    call = fn cmd, args, opts -> Snakepit.execute(name, cmd, args, [timeout: @long] ++ opts) end
    {:ok, _} = call.("big_source", %{kind: "bytes", n: size}, [])
    {:ok, _} = call.("big_source", %{kind: "f64", n: floats * 8}, ndarray: :struct)

    # Replies are checked by size and by their first and last bytes: comparing whole 256 MB
    # binaries is itself a long non-yielding operation on the caller's scheduler.
    same? = fn a, b ->
      byte_size(a) == byte_size(b) and edges(a) == edges(b)
    end

    %{
      buffer_in:
        median_us(
          calls,
          fn -> call.("buffer_len", %{buf: {:buffer, bin}}, []) end,
          &(&1 == {:ok, size})
        ),
      bytes_out:
        median_us(
          calls,
          fn -> call.("big_source", %{kind: "bytes", n: size}, []) end,
          &match?({:ok, b} when byte_size(b) == size and binary_part(b, 0, 1) == <<0xAB>>, &1)
        ),
      nd_in:
        median_us(
          calls,
          fn -> call.("buffer_len", %{buf: array}, []) end,
          &(&1 == {:ok, floats * 8})
        ),
      nd_out:
        median_us(
          calls,
          fn -> call.("big_source", %{kind: "f64", n: floats * 8}, ndarray: :struct) end,
          &match?({:ok, %Snakepit.NDArray{shape: {^floats}}}, &1)
        ),
      nd_echo:
        median_us(calls, fn -> call.("echo", %{value: array}, ndarray: :struct) end, fn
          {:ok, %Snakepit.NDArray{} = out} ->
            out.shape == array.shape and same?.(out.data, array.data)

          _ ->
            false
        end)
    }
  end

  # Median microseconds of a memcpy of `size` bytes into fresh (never touched) pages, in a
  # plain Python process (bench/python/fresh_copy.py).
  defp fresh_copy_us(size, calls) do
    script = Path.join(Support.bench_dir(), "python/fresh_copy.py")

    %{
      us:
        Support.number(Support.python_kv(script, [to_string(size), to_string(calls)])["fresh_us"])
    }
  end

  defp edges(bin) when byte_size(bin) <= 128, do: bin
  defp edges(bin), do: {binary_part(bin, 0, 64), binary_part(bin, byte_size(bin), -64)}

  # Median wall time of `calls` calls (after one untimed), and how many replies were wrong.
  defp median_us(calls, fun, ok?) do
    fun.()

    {times, bad} =
      Enum.reduce(1..calls, {[], 0}, fn _, {ts, bad} ->
        t0 = :erlang.monotonic_time(:nanosecond)
        r = fun.()
        t = :erlang.monotonic_time(:nanosecond) - t0
        {[t / 1000 | ts], if(ok?.(r), do: bad, else: bad + 1)}
      end)

    %{us: Support.median(times), bad: bad}
  end

  # The :process pool twice: once its arenas have given their pages back (large_data_arena_idle
  # after the last large call: the first large call of a quiet pool), then at once again (the
  # pages are there: a pool busy with large data).
  defp peak_rss_runs(%{profile: :process} = pool) do
    cold = fn kind ->
      trimmed(pool)
      Map.put(peak_rss(pool, @mb64, kind), :arenas_before, :trimmed)
    end

    [cold.(:echo), cold.(:scale), peak_rss(pool, @mb64, :scale)]
  end

  defp peak_rss_runs(pool), do: [peak_rss(pool, @mb64, :echo), peak_rss(pool, @mb64, :scale)]

  # Waits until the pool's arenas have given their pages back (large_data_arena_idle after the
  # last large call, whenever that was).
  defp trimmed(pool) do
    {_, _, idle} = Snakepit.Config.large_data_arena()

    Enum.reduce_while(1..(div(idle, 100) + 50), nil, fn _, _ ->
      {:ok, pages} = Snakepit.execute(pool.name, "arena_pages", %{})
      if pages <= 65_536, do: {:halt, :ok}, else: {:cont, Process.sleep(100)}
    end)
  end

  # Peak resident memory (VmHWM, reset through /proc/<pid>/clear_refs) of the BEAM and the
  # pool's workers during a round trip of a 64 MB NDArray that Python doubles (`kind` :scale: a
  # new array) or returns as it came (:echo), returned as a struct, above their RSS before the
  # payload was built.
  defp peak_rss(pool, size, kind) do
    pids = [System.pid() |> String.to_integer() | Pools.os_pids(pool)]
    :erlang.garbage_collect()
    Snakepit.execute(pool.name, "settle", %{})
    # Memory the release thread still gives back (the larger sizes before) must not count
    # against the peak: wait until the resident size holds still, then start the peak there.
    rss = fn -> Enum.sum(Enum.map(pids, &(Support.vm_rss(&1) || 0))) end
    steady(rss, rss.(), 40)
    Enum.each(pids, &File.write("/proc/#{&1}/clear_refs", "5"))
    before = rss.()
    floats = div(size, 8)

    array =
      Snakepit.NDArray.new(
        :binary.copy(<<0, 0, 0, 0, 0, 0, 240, 63>>, floats),
        {:f, 64},
        {floats}
      )

    {command, args} =
      if kind == :scale, do: {"scale", %{value: array, k: 2}}, else: {"echo", %{value: array}}

    {:ok, %Snakepit.NDArray{} = out} =
      Snakepit.execute(pool.name, command, args, ndarray: :struct, timeout: @long)

    peak = Enum.sum(Enum.map(pids, &(Support.status_kb(&1, "VmHWM") || 0)))
    true = byte_size(out.data) == size

    arenas =
      if pool.profile == :process,
        do: with({:ok, n} <- Snakepit.execute(pool.name, "arena_pages", %{}), do: n)

    %{profile: pool.profile, extra: peak - before, size: size, arenas: arenas, kind: kind}
  end

  # The pages the :process arenas hold after the round trip: resident before it too (earlier
  # sizes), so the peak above does not show them.
  defp arena_note(%{arenas: n, size: size} = m) when is_integer(n) do
    start =
      if m[:arenas_before] == :trimmed,
        do: "; the first large call after the arenas gave their pages back (idle)",
        else: "; the next call, the arenas' pages already there"

    start <>
      "; the pool's arenas then held #{Support.fixed(n / size, 2)}× the payload in shared pages, " <>
      "kept for the next large call (`large_data_arena_retain`, README \"Large data\")"
  end

  defp arena_note(_), do: ""

  # Polls `rss` every 50 ms (at most `tries` times) until it returns the same twice.
  defp steady(_rss, _last, 0), do: :ok

  defp steady(rss, last, tries) do
    Process.sleep(50)
    now = rss.()
    if now == last, do: :ok, else: steady(rss, now, tries - 1)
  end

  defp render(rows, rss, {events, stolen}) do
    bad =
      for r <- rows,
          {_, d} <- r.pools,
          {k, m} <- d,
          k not in [:events, :stolen],
          reduce: 0,
          do: (acc -> acc + m.bad)

    mbps = fn size, us -> size / us end
    ratio = fn r, m -> if m.us, do: r.ref.us / m.us end
    fresh_ratio = fn r, m -> if m.us && r.fresh.us, do: r.fresh.us / m.us end

    table =
      for r <- rows, {profile, d} <- Enum.sort(r.pools) do
        cells =
          [d.buffer_in, d.bytes_out, d.nd_in, d.nd_out, d.nd_echo]
          |> Enum.map_join(" | ", fn m ->
            "#{Support.sig(mbps.(r.size, m.us))} (#{Support.fixed(ratio.(r, m), 2)}×; " <>
              "#{Support.fixed(fresh_ratio.(r, m), 2)}×)"
          end)

        "| #{Support.size_label(r.size)} | #{profile} | #{Support.sig(mbps.(r.size, r.ref.us))} | " <>
          "#{Support.sig(mbps.(r.size, r.fresh.us))} | #{cells} |"
      end

    big = Enum.find(rows, &(&1.size == @mb64))

    headline =
      if big do
        t = big.pools.thread

        %{
          process:
            Map.new([:buffer_in, :bytes_out, :nd_echo], fn k ->
              m = Map.fetch!(big.pools.process, k)
              {k, {ratio.(big, m), fresh_ratio.(big, m)}}
            end),
          buffer_in: ratio.(big, t.buffer_in),
          bytes_out: ratio.(big, t.bytes_out),
          nd_echo: ratio.(big, t.nd_echo),
          nd_out: ratio.(big, t.nd_out),
          stalls: length(Map.get(events, :thread, []))
        }
      end

    rss_lines =
      for m <- rss do
        "- #{m.profile}: peak resident memory during a #{Support.size_label(m.size)} NDArray round trip " <>
          "(Python returns #{if m.kind == :scale, do: "`a * 2`, a new array", else: "the array as it came"}) = #{Support.fixed(m.extra / m.size, 2)}× the payload " <>
          "(BEAM#{if m.profile == :process, do: " + worker", else: ""}, VmHWM above the RSS before the payload was built)" <>
          arena_note(m) <> "."
      end

    %{
      bad: bad,
      headline: headline,
      lines:
        [
          "MB/s of payload (10^6 bytes/s = size / median time of one call, one caller), and in brackets " <>
            "the ratio to the memcpy reference (`:binary.copy/1` of the same size, same run; ≥ 0.5× is the goal), " <>
            "then to a memcpy into fresh pages (bench/python/fresh_copy.py: an untouched anonymous mapping, " <>
            "so the kernel maps each page as it is written, as it must for data that lands in new memory; " <>
            "`:binary.copy/1` often reuses memory the allocator kept from the previous copy). " <>
            "buffer in: `{:buffer, bin}` to `buffer_len` (a memoryview, not copied); bytes out: `bytes` " <>
            "cached in Python returned as a binary; NDArray in: `%Snakepit.NDArray{}` of float64 to " <>
            "`buffer_len` (a NumPy array over the binary); NDArray out: a cached (writable) float64 array " <>
            "returned with `ndarray: :struct`; NDArray echo: the array back as it came (read-only, over the " <>
            "Erlang binary). :process pools stop at 64 MB.",
          "",
          "| size | profile | memcpy reference | memcpy, fresh pages | buffer in | bytes out | NDArray in | NDArray out | NDArray echo |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        ] ++
          table ++
          ["", "Memory:"] ++
          if(rss_lines == [], do: ["- (not measured in a smoke run)"], else: rss_lines) ++
          [
            "",
            "Scheduler stalls: `:erlang.system_monitor(collector, long_schedule: 1)` from a separate " <>
              "collector process around each profile's calls above (the caller scheduled out once " <>
              "first); events for the calling process, by profile: " <>
              Enum.map_join([:thread, :process], "; ", fn profile ->
                es = Map.get(events, profile, [])
                longest = es |> Enum.map(& &1[:timeout]) |> Enum.max(fn -> 0 end)

                "#{profile} #{length(es)}" <>
                  if(es == [], do: "", else: " (longest #{longest} ms)") <>
                  case stolen[profile] do
                    nil -> ""
                    ms -> ", while the hypervisor took #{ms} ms of CPU from this VM (steal time)"
                  end
              end) <>
              ". On a machine shared with other work the OS, and on a VM the host, also " <>
              "deschedules the BEAM now and then; such events are not caused by a call."
          ]
    }
  end

  defmodule Stalls do
    @moduledoc false
    # long_schedule events of the calling process while `fun` runs (see
    # test/support/conformance_data_case.ex for why a separate collector).
    def collect(fun, ms \\ 1) do
      me = self()
      collector = spawn_link(fn -> loop(me, []) end)
      previous = :erlang.system_monitor(collector, [{:long_schedule, ms}])

      receive do
      after
        1 -> :ok
      end

      result =
        try do
          fun.()
        after
          case previous do
            :undefined -> :erlang.system_monitor(:undefined)
            {pid, opts} -> :erlang.system_monitor(pid, opts)
          end
        end

      send(collector, {:done, me})
      events = receive do: ({:events, e} -> e)
      {events, result}
    end

    defp loop(me, acc) do
      receive do
        {:monitor, ^me, :long_schedule, info} -> loop(me, [info | acc])
        {:monitor, _, _, _} -> loop(me, acc)
        {:done, ^me} -> send(me, {:events, Enum.reverse(acc)})
      end
    end
  end
end
