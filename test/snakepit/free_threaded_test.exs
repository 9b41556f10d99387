defmodule Snakepit.FreeThreadedTest do
  # What only a free-threaded CPython (3.14t+) can show. On a GIL build these are skipped,
  # saying why; scripts/test runs the suite on every free-threaded interpreter it finds.
  use Snakepit.PoolCase, async: false

  {:ok, info} = Snakepit.python_info()

  unless info.free_threaded do
    @moduletag skip:
                 "needs a free-threaded CPython (3.14t+); this run uses Python #{info.version} " <>
                   "with the GIL (build with SNAKEPIT_PYTHON=/path/to/python3.14t to run it)"
  end

  test "the GIL stays disabled with Snakepit and the showcase adapter loaded" do
    {:ok, info} = Snakepit.python_info()
    assert info.free_threaded
    refute info.gil_enabled
  end

  test "pure-Python CPU work on two threads runs in parallel" do
    pool = start_test_pool!(threads_per_worker: 2)
    # How far one busy loop counts in 0.3 s with a core to itself...
    single = Snakepit.execute!(pool, "busy", %{seconds: 0.3})

    # ...and two at once: in parallel each still gets a core (under a GIL, about half each).
    counts =
      1..2
      |> Task.async_stream(fn _ -> Snakepit.execute!(pool, "busy", %{seconds: 0.3}) end)
      |> Enum.map(fn {:ok, n} -> n end)

    assert Enum.min(counts) > single * 0.7
  end
end
