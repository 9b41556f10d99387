defmodule Snakepit.RefsGilTest do
  # The Elixir side of a ref never waits for Python (native/snakepit/src/refs.rs): while a pool
  # thread holds the GIL (blocked in C without detaching), dropping, collecting and releasing
  # :thread refs all return; the objects are freed once the GIL is free again. If a destructor
  # attached to Python on a scheduler, the garbage collection below would never return.
  # async: false: while the GIL is held no other test's Python could run.
  use ExUnit.Case, async: false

  import Snakepit.ConformanceRefsCase, only: [adapter: 0, eventually: 1, in_dead_process: 1]

  test "refs are dropped and released without waiting for the GIL" do
    name = :"refs_gil_#{System.unique_integer([:positive])}"

    {:ok, _} =
      Snakepit.start_pool(name: name, adapter: adapter(), pool_size: 1, threads_per_worker: 2)

    on_exit(fn -> Snakepit.stop_pool(name) end)

    fifo =
      Path.join(
        System.tmp_dir!(),
        "snakepit_gil_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    {_, 0} = System.cmd("mkfifo", [fifo])
    on_exit(fn -> File.rm(fifo) end)

    tag = "gil#{System.unique_integer([:positive])}"
    {:ok, kept} = Snakepit.execute(name, "make_refs", %{n: 500})
    test = self()

    dropper =
      spawn(fn ->
        {:ok, refs} = Snakepit.execute(name, "make_refs", %{n: 500})
        send(test, {:made, length(refs)})
        receive do: (:drop -> :ok)
      end)

    assert_receive {:made, 500}, 30_000
    {:ok, box} = Snakepit.execute(name, "make_ref", %{tag: tag})

    holder =
      Task.async(fn -> Snakepit.execute(name, "hold_attached", %{pid: test, path: fifo}) end)

    assert_receive "holding", 30_000

    # Python is held up: all of this must return anyway.
    mon = Process.monitor(dropper)
    send(dropper, :drop)
    assert_receive {:DOWN, ^mon, :process, _, :normal}, 30_000
    :normal = in_dead_process(fn -> :ok end)
    Enum.each(kept, &(:ok = Snakepit.release(&1)))
    :ok = Snakepit.release(box)
    refute Task.yield(holder, 0), "the GIL holder must still be blocked"

    File.write!(fifo, "x")
    assert Task.await(holder, 30_000) == {:ok, true}
    assert eventually(fn -> Snakepit.execute(name, "live", %{tag: tag}) == {:ok, 0} end)
    assert eventually(fn -> Snakepit.execute(name, "live", %{}) == {:ok, 0} end)
  end
end
