# The demo of the README's first command: the guide's :hpc_pool (config/config.exs) running
# Python from Elixir. Run with `mix run scripts/demo.exs`.

{:ok, info} = Snakepit.python_info()

IO.puts(
  "Python #{info.version} (free-threaded: #{info.free_threaded}) in this BEAM: #{info.executable}\n"
)

IO.puts(~S|Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})|)
{:ok, result} = Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})
IO.inspect(result, label: "=>")

IO.puts("")
IO.puts(~S|Snakepit.execute("matrix_multiply", %{a: ..., b: ...}, pool_name: :hpc_pool)  # NumPy|)

{:ok, product} =
  Snakepit.execute("matrix_multiply", %{a: [[1, 2], [3, 4]], b: [[5, 6], [7, 8]]},
    pool_name: :hpc_pool
  )

IO.inspect(product, label: "=>", charlists: :as_lists)

IO.puts("\n1,000 concurrent callers, each waiting for its own answer:")

{micros, results} =
  :timer.tc(fn ->
    1..1_000
    |> Task.async_stream(
      fn i ->
        {i, Snakepit.execute(:hpc_pool, "batch_process", %{items: [i], operation: "square"})}
      end,
      max_concurrency: 1_000
    )
    |> Enum.map(fn {:ok, r} -> r end)
  end)

ok = Enum.count(results, fn {i, {:ok, %{"results" => [sq]}}} -> sq == i * i end)
IO.puts("=> #{ok}/1000 correct in #{div(micros, 1000)} ms")

IO.puts("\n10,000 pings, one caller; `ping` is declared short, @tool(inline=True):")
{:ok, %{inline_calls: inline_before}} = Snakepit.stats(:hpc_pool)

{micros, _} =
  :timer.tc(fn ->
    for _ <- 1..10_000, do: {:ok, "pong"} = Snakepit.execute(:hpc_pool, "ping", %{})
  end)

{:ok, %{inline_calls: inline_after}} = Snakepit.stats(:hpc_pool)

IO.puts(
  "=> #{Float.round(micros / 10_000, 1)} µs per call; #{inline_after - inline_before} ran on " <>
    "the calling scheduler, the rest on pool threads"
)

IO.puts("\nErrors are values:")

IO.inspect(Snakepit.execute(:hpc_pool, "batch_process", %{items: [1], operation: "cube"}),
  label: "=>"
)

{:ok, stats} = Snakepit.stats(:hpc_pool)

IO.puts(
  "\nPool :hpc_pool: #{stats.pool_size} workers x #{stats.threads_per_worker} threads, " <>
    "#{stats.completed} calls completed, #{stats.failed} failed"
)

{:ok, tools} = Snakepit.tools(:hpc_pool)
IO.puts("Commands: " <> Enum.map_join(tools, ", ", & &1["name"]))
