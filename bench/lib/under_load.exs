# Section "9. Under load" of bench/suite.exs: the `echo` round trip of a :thread pool (2×8)
# and a :process pool (2×1) beside a raw port echo to Python (bench/port_echo.py), in three
# conditions measured in the same run: idle; two CPU-bound OS processes (`while :; do :; done`)
# on the 2 cores; two busy Elixir processes in this VM. Conditions and pools are interleaved
# round by round, so a change of machine load hits every column alike. The :thread pool is
# measured twice: `echo`, handed to a pool thread, and `echo_inline`, the same method declared
# `@tool(inline=True)`, which runs on the calling scheduler when the pool's threads are parked
# (native/snakepit/src/inline.rs).

defmodule Bench.UnderLoad do
  @moduledoc false
  alias Bench.{Pools, Support}
  import Support, only: [progress: 1]

  @adapter "bench_adapter.BenchAdapter"
  @conditions [:idle, :os, :vm]

  def run(p, _ctx) do
    {calls, rounds} = if p.mode == "smoke", do: {200, 1}, else: {3_000, 3}

    thread =
      Pools.start!(:thread,
        name: :bench_load_t,
        adapter: @adapter,
        pool_size: 2,
        threads_per_worker: 8
      )

    process = Pools.start!(:process, name: :bench_load_p, adapter: @adapter, pool_size: 2)
    port = open_port()

    try do
      targets = [
        thread: fn -> Snakepit.execute(:bench_load_t, "echo", %{value: 1}) == {:ok, 1} end,
        inline: fn -> Snakepit.execute(:bench_load_t, "echo_inline", %{value: 1}) == {:ok, 1} end,
        process: fn -> Snakepit.execute(:bench_load_p, "echo", %{value: 1}) == {:ok, 1} end,
        port: fn -> port_echo(port) end
      ]

      samples =
        for _round <- 1..rounds, condition <- @conditions, reduce: %{} do
          acc ->
            progress("  #{condition}")

            with_load(condition, fn ->
              Enum.reduce(targets, acc, fn {name, call}, acc ->
                m = Bench.Measure.round_trip(call, calls, div(calls, 10))
                Map.update(acc, {condition, name}, [m], &[m | &1])
              end)
            end)
        end

      {:ok, %{inline_calls: inline_calls}} = Snakepit.stats(:bench_load_t)
      render(samples, calls, rounds, inline_calls)
    after
      Port.close(port)
      Pools.stop(thread)
      Pools.stop(process)
    end
  end

  defp open_port do
    script = Path.join(Support.bench_dir(), "port_echo.py")

    port =
      Port.open({:spawn_executable, Support.python_executable()}, [
        :binary,
        {:packet, 4},
        args: ["-u", script]
      ])

    true = port_echo(port)
    port
  end

  defp port_echo(port) do
    Port.command(port, "1")

    receive do
      {^port, {:data, "1"}} -> true
    end
  end

  # Runs `fun` with the condition's load started, and stops the load after.
  defp with_load(:idle, fun), do: fun.()

  defp with_load(:os, fun) do
    sh = System.find_executable("sh")

    ports =
      for _ <- 1..2,
          do:
            Port.open({:spawn_executable, sh}, [
              :binary,
              args: ["-c", "echo $$; exec sh -c 'while :; do :; done'"]
            ])

    pids =
      for port <- ports do
        receive do
          {^port, {:data, pid}} -> String.trim(pid)
        end
      end

    try do
      fun.()
    after
      for pid <- pids, do: System.cmd("kill", [pid])

      for port <- ports do
        if Port.info(port), do: Port.close(port)
      end
    end
  end

  defp with_load(:vm, fun) do
    busy = for _ <- 1..2, do: spawn(fn -> spin(0) end)

    try do
      fun.()
    after
      Enum.each(busy, &Process.exit(&1, :kill))
    end
  end

  defp spin(n), do: spin(n + 1)

  defp render(samples, calls, rounds, inline_calls) do
    med = fn key ->
      samples |> Map.fetch!(key) |> Enum.map(& &1.median_us) |> Support.median()
    end

    bad = samples |> Map.values() |> List.flatten() |> Enum.map(& &1.bad) |> Enum.sum()

    rows =
      for {condition, label} <- [
            idle: "idle",
            os: "2 CPU-bound OS processes",
            vm: "2 busy Elixir processes"
          ] do
        t = med.({condition, :thread})
        pr = med.({condition, :process})
        port = med.({condition, :port})
        inline = med.({condition, :inline})

        "| #{label} | #{Support.us(t)} | #{Support.us(inline)} | #{Support.us(pr)} | " <>
          "#{Support.us(port)} | #{Support.fixed(t / port, 2)} | " <>
          "#{Support.fixed(inline / port, 2)} | #{Support.fixed(pr / port, 2)} |"
      end

    # Calls made of `echo_inline`, warm-ups included, and how many of them ran inline.
    inline_made = length(@conditions) * rounds * (calls + div(calls, 10))

    %{
      bad: bad,
      headline: %{
        idle: {med.({:idle, :thread}), med.({:idle, :inline}), med.({:idle, :port})},
        os: {med.({:os, :thread}), med.({:os, :inline}), med.({:os, :port})},
        vm: {med.({:vm, :thread}), med.({:vm, :inline}), med.({:vm, :port})}
      },
      lines:
        [
          "Median round trip in µs of `echo(1)`, one caller, #{calls} calls per figure after #{div(calls, 10)} " <>
            "untimed; median of #{rounds} round(s), conditions and targets interleaved. :thread 2×8, " <>
            ":process 2×1; port echo = a raw `{:packet, 4}` port to bench/port_echo.py (no decoding). " <>
            "Goals: under OS contention a :thread call ≤ 1/3 of the port echo, in a busy VM ≤ 2/3. " <>
            "thread = `echo` handed to a pool thread; thread inline = `echo_inline`, declared " <>
            "`@tool(inline=True)`, run on the calling scheduler while the pool's threads are parked " <>
            "(#{inline_calls} of its #{inline_made} calls ran inline; docs/architecture.md, \"Inline calls\").",
          "",
          "| condition | thread | thread inline | process | port echo | thread / port | inline / port | process / port |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        ] ++ rows
    }
  end
end
