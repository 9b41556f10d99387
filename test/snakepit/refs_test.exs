defmodule Snakepit.RefsTest do
  # What differs between the profiles for object refs (README, "Python objects and eval"):
  # where the object lives, and what happens when that place goes away. The shared behaviour
  # is in test/support/conformance_refs_case.ex.
  use ExUnit.Case, async: true

  import Snakepit.ConformanceRefsCase, only: [adapter: 0, eventually: 1, in_dead_process: 1]

  alias Snakepit.{Error, Ref}

  defp start!(opts) do
    name = :"refs_#{System.unique_integer([:positive])}"
    {:ok, _} = Snakepit.start_pool([name: name, adapter: adapter()] ++ opts)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  defp tag, do: "t#{System.unique_integer([:positive])}"

  describe ":thread" do
    test "a ref works with every thread pool of the node, and outlives its pool" do
      a = start!(pool_size: 1, threads_per_worker: 2)
      b = start!(pool_size: 1, threads_per_worker: 2)
      {:ok, box} = Snakepit.execute(a, "make_ref", %{value: 3})
      assert box.pool == a
      assert Snakepit.execute(b, "unbox", %{value: [box]}) == {:ok, [3]}
      assert Snakepit.call_method(box, "get", [], pool: b) == {:ok, 3}

      :ok = Snakepit.stop_pool(a)
      assert Snakepit.call_method(box, "get", [], pool: b) == {:ok, 3}
      assert {:error, %Error{category: :pool}} = Snakepit.call_method(box, "get")
    end

    test "recycling a worker keeps the objects of its refs" do
      pool = start!(pool_size: 1, threads_per_worker: 1, worker_max_requests: 2)
      t = tag()
      {:ok, box} = Snakepit.execute(pool, "make_ref", %{value: 9, tag: t})
      {:ok, first} = Snakepit.execute(pool, "instance_id", %{})

      # Each instance serves 2 calls: the adapter instance is replaced.
      assert eventually(fn -> Snakepit.execute(pool, "instance_id", %{}) != {:ok, first} end)
      assert Snakepit.call_method(box, "get") == {:ok, 9}
      assert Snakepit.execute(pool, "live", %{tag: t}) == {:ok, 1}
    end
  end

  describe ":process" do
    test "a ref names its worker; calls that pass it run there" do
      pool = start!(worker_profile: :process, pool_size: 3, threads_per_worker: 1)
      {:ok, box} = Snakepit.execute(pool, "make_ref", %{value: 1})
      assert {index, os_pid} = box.worker
      assert is_integer(index) and is_integer(os_pid)

      for _ <- 1..20 do
        assert Snakepit.execute(pool, "os_pid", %{anchor: box}) == {:ok, os_pid}
      end
    end

    test "the worker died: :worker error, never a wrong object" do
      pool = start!(worker_profile: :process, pool_size: 2, threads_per_worker: 1)
      {:ok, box} = Snakepit.execute(pool, "make_ref", %{value: 1})
      {_index, os_pid} = box.worker
      {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      assert eventually(fn ->
               match?({:error, %Error{category: :worker}}, Snakepit.call_method(box, "get"))
             end)

      assert {:error, %Error{category: :worker, message: msg}} =
               Snakepit.execute(pool, "unbox", %{value: [box]})

      assert msg =~ "the object was lost with its worker"
      # The pool still serves, and new refs work.
      {:ok, fresh} = Snakepit.execute(pool, "make_ref", %{value: 2})
      assert Snakepit.call_method(fresh, "get") == {:ok, 2}
    end

    test "the worker was recycled: :worker error" do
      pool =
        start!(
          worker_profile: :process,
          pool_size: 1,
          threads_per_worker: 1,
          worker_max_requests: 3
        )

      {:ok, box} = Snakepit.execute(pool, "make_ref", %{value: 1})
      {_, os_pid} = box.worker
      assert Snakepit.call_method(box, "get") == {:ok, 1}

      assert eventually(fn ->
               {:ok, pid} = Snakepit.execute(pool, "os_pid", %{})
               pid != os_pid
             end)

      assert {:error, %Error{category: :worker}} = Snakepit.call_method(box, "get")
    end

    test "a ref after its pool stopped, or given to another pool, is a clear error" do
      pool = start!(worker_profile: :process, pool_size: 1, threads_per_worker: 1)
      other = start!(worker_profile: :process, pool_size: 1, threads_per_worker: 1)
      thread = start!(pool_size: 1, threads_per_worker: 1)
      {:ok, box} = Snakepit.execute(pool, "make_ref", %{value: 1})
      {:ok, tbox} = Snakepit.execute(thread, "make_ref", %{value: 1})

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute(other, "unbox", %{value: [box]})

      assert msg =~ "lives in pool #{inspect(pool)}"

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute(other, "unbox", %{value: [tbox]})

      assert msg =~ ":thread pool"

      assert {:error, %Error{category: :conversion, message: msg}} =
               Snakepit.execute(thread, "unbox", %{value: [box]})

      assert msg =~ ":process pool's worker"

      :ok = Snakepit.stop_pool(pool)

      assert {:error, %Error{category: :pool, message: msg}} = Snakepit.call_method(box, "get")
      assert msg =~ "not running"
    end

    test "refs of two workers in one call are refused" do
      pool = start!(worker_profile: :process, pool_size: 2, threads_per_worker: 1)

      {:ok, a} = Snakepit.execute(pool, "make_ref", %{value: 1})
      path = Snakepit.ConformanceCase.release_file()
      test = self()

      # a's worker is busy with a call pinned to it, so the next ref is made by the other.
      holder =
        Task.async(fn ->
          Snakepit.execute(pool, "hold", %{pid: test, tag: :held, path: path, anchor: a})
        end)

      assert_receive {"held", _}, 30_000
      {:ok, b} = Snakepit.execute(pool, "make_ref", %{value: 2})
      Snakepit.ConformanceCase.release(path)
      Task.await(holder)
      refute a.worker == b.worker
      refs = [a, b]

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute(pool, "unbox", %{value: refs})

      assert msg =~ "same worker"
    end

    test "dropping refs empties the worker's table" do
      pool = start!(worker_profile: :process, pool_size: 1, threads_per_worker: 2)
      t = tag()
      {:ok, anchor} = Snakepit.execute(pool, "make_ref", %{})

      in_dead_process(fn ->
        for _ <- 1..200, do: {:ok, %Ref{}} = Snakepit.execute(pool, "make_ref", %{tag: t})
      end)

      assert eventually(fn ->
               Snakepit.execute(pool, "live", %{tag: t, anchor: anchor}) == {:ok, 0}
             end)
    end
  end
end
