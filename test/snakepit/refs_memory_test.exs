defmodule Snakepit.RefsMemoryTest do
  # Refs created and dropped by the million leave memory flat (README, "Python objects and
  # eval"): the objects are freed in Python, and the process does not grow.
  use ExUnit.Case, async: false

  import Snakepit.ConformanceRefsCase, only: [adapter: 0, eventually: 1, in_dead_process: 1]

  @moduletag :integration
  @moduletag timeout: 900_000

  defp start!(opts) do
    name = :"refs_mem_#{System.unique_integer([:positive])}"
    {:ok, _} = Snakepit.start_pool([name: name, adapter: adapter()] ++ opts)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  defp rss_kb(os_pid) do
    "/proc/#{os_pid}/status"
    |> File.read!()
    |> then(&Regex.run(~r/VmRSS:\s+(\d+) kB/, &1, capture: :all_but_first))
    |> hd()
    |> String.to_integer()
  end

  # `batches` calls of make_refs(n: 10_000), each in a process that then exits.
  defp churn(pool, batches, anchor) do
    for _ <- 1..batches do
      :normal =
        in_dead_process(fn ->
          {:ok, refs} = Snakepit.execute(pool, "make_refs", %{n: 10_000, anchor: anchor})
          10_000 = length(refs)
        end)
    end
  end

  test ":thread: 1,000,000 refs created and dropped leave memory flat" do
    pool = start!(pool_size: 1, threads_per_worker: 2)
    {created0, released0} = Snakepit.Ref.counts()
    # Warm up the allocators, then measure.
    churn(pool, 10, nil)
    assert eventually(fn -> Snakepit.execute(pool, "live", %{}) == {:ok, 0} end)
    before = rss_kb(System.pid())

    churn(pool, 100, nil)

    assert eventually(fn -> Snakepit.execute(pool, "live", %{}) == {:ok, 0} end)
    {created, _} = Snakepit.Ref.counts()
    assert created - created0 >= 1_100_000
    # As many objects released in Python as this test made refs.
    assert eventually(fn -> elem(Snakepit.Ref.counts(), 1) - released0 >= created - created0 end)
    growth = rss_kb(System.pid()) - before
    # 1,000,000 leaked objects would be hundreds of MB.
    assert growth < 64_000, "RSS grew by #{growth} kB"
  end

  test ":process: 100,000 refs created and dropped empty the worker's table" do
    pool = start!(worker_profile: :process, pool_size: 1, threads_per_worker: 1)
    {:ok, anchor} = Snakepit.execute(pool, "make_ref", %{})
    {:ok, os_pid} = Snakepit.execute(pool, "os_pid", %{anchor: anchor})
    churn(pool, 2, anchor)
    assert eventually(fn -> Snakepit.execute(pool, "live", %{anchor: anchor}) == {:ok, 1} end)
    before = rss_kb(os_pid)

    churn(pool, 10, anchor)

    assert eventually(fn -> Snakepit.execute(pool, "live", %{anchor: anchor}) == {:ok, 1} end)
    growth = rss_kb(os_pid) - before
    assert growth < 32_000, "the worker's RSS grew by #{growth} kB"
  end
end
