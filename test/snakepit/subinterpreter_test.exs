defmodule Snakepit.SubinterpreterTest do
  # The :subinterpreter profile's own cases; the conformance suite runs it too
  # (test/snakepit/conformance_test.exs). Tagged :subinterpreter (excluded, saying why, when
  # the NIF's Python is older than 3.12: test_helper.exs), except the version check.
  use ExUnit.Case, async: true

  import Bitwise
  alias Snakepit.Error
  alias Snakepit.Pool.Subinterpreter

  @probe "snakepit_subinterp_adapters.ProbeAdapter"

  defp start!(opts) do
    name = :"subinterp_#{System.unique_integer([:positive])}"
    {:ok, _} = Snakepit.start_pool([name: name, worker_profile: :subinterpreter] ++ opts)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  test "a Python older than 3.12 is a validation error naming the version" do
    assert {:error, message, %{python_version: "3.11.7"}} = Subinterpreter.check_python("3.11.7")
    assert message =~ "3.12"
    assert message =~ "3.11.7"
    assert {:ok, :subinterpreter} = Subinterpreter.check_python("3.12.1")
    assert {:ok, :subinterpreter} = Subinterpreter.check_python("3.13.0")

    {:ok, info} = Snakepit.python_info()

    if Subinterpreter.supported?(info.version) do
      assert {:ok, %Snakepit.Config{worker_profile: :subinterpreter}} =
               Snakepit.Config.validate_pool(name: :v, worker_profile: :subinterpreter)
    else
      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.start_pool(name: :subinterp_old, worker_profile: :subinterpreter)

      assert message =~ info.version
      assert message =~ "3.12"
    end
  end

  @tag :subinterpreter
  test "an adapter importing NumPy fails to start with an error naming the module and the way out" do
    assert {:error, %Error{message: message}} =
             Snakepit.start_pool(
               name: :"subinterp_np_#{System.unique_integer([:positive])}",
               worker_profile: :subinterpreter,
               pool_size: 2,
               adapter: "snakepit_subinterp_adapters.NumpyAdapter"
             )

    assert message =~ "numpy"
    assert message =~ "does not support subinterpreters"
    assert message =~ ":thread or :process"
    # The VM and other pools are fine.
    pool = start!(pool_size: 1, adapter: @probe)
    assert {:ok, _} = Snakepit.execute(pool, "cpu", %{n: 10})
  end

  @tag :subinterpreter
  test "cancelling :thread pool calls while subinterpreter workers run Python leaves them intact" do
    # The :thread profile's interrupter used to find the cancelled thread's frame with
    # sys._current_frames(), which on GIL builds makes frame objects for the frames of every
    # interpreter's threads with the caller's allocator: a worker then freed one with its own
    # and glibc aborted the VM ("free(): invalid pointer"). interrupt.rs `thread_frame`.
    sub = start!(pool_size: 2, threads_per_worker: 2, adapter: @probe)
    thread = :"subinterp_cancel_#{System.unique_integer([:positive])}"

    {:ok, _} =
      Snakepit.start_pool(
        name: thread,
        pool_size: 1,
        threads_per_worker: 2,
        adapter: "snakepit_test_adapters.TestAdapter"
      )

    on_exit(fn -> Snakepit.stop_pool(thread) end)
    expected = Enum.reduce(0..19_999, 0, fn i, acc -> acc + rem(i * i, 7) end)

    workers =
      for _ <- 1..4 do
        Task.async(fn ->
          for _ <- 1..60, do: Snakepit.execute(sub, "cpu", %{n: 20_000}, timeout: :infinity)
        end)
      end

    cancels =
      for _ <- 1..2 do
        Task.async(fn ->
          for _ <- 1..20 do
            Snakepit.execute(thread, "busy", %{seconds: 60}, timeout: 25)
          end
        end)
      end

    for result <- Enum.flat_map(cancels, &Task.await(&1, :infinity)) do
      assert {:error, %Error{category: :timeout}} = result
    end

    for result <- Enum.flat_map(workers, &Task.await(&1, :infinity)) do
      assert result == {:ok, expected}
    end
  end

  @tag :subinterpreter
  test "two workers run pure Python at the same time, each holding its own GIL" do
    pool = start!(pool_size: 2, threads_per_worker: 1, adapter: @probe)
    path = shared_file()

    tasks =
      for me <- [0, 1] do
        Task.async(fn ->
          Snakepit.execute(pool, "together", %{path: path, me: me}, timeout: :infinity)
        end)
      end

    assert Enum.map(tasks, &Task.await(&1, :infinity)) == [{:ok, true}, {:ok, true}]
  end

  @tag :subinterpreter
  test "the probe sees no parallelism where two calls share one GIL (:thread profile)" do
    name = :"subinterp_ctl_#{System.unique_integer([:positive])}"

    {:ok, _} =
      Snakepit.start_pool(
        name: name,
        worker_profile: :thread,
        pool_size: 1,
        threads_per_worker: 2,
        adapter: @probe
      )

    on_exit(fn -> Snakepit.stop_pool(name) end)
    path = shared_file()

    results =
      for me <- [0, 1] do
        Task.async(fn ->
          Snakepit.execute(name, "together", %{path: path, me: me, max_spins: 2_000_000},
            timeout: :infinity
          )
        end)
      end
      |> Enum.map(&Task.await(&1, :infinity))

    assert {:ok, false} in results
  end

  @tag :subinterpreter
  test "each worker is its own interpreter: module state is not shared" do
    pool =
      start!(pool_size: 2, threads_per_worker: 1, adapter: "snakepit_test_adapters.TestAdapter")

    stats = elem(Snakepit.stats(pool), 1)
    assert length(stats.workers) == 2
    assert stats.python.version =~ ~r/^3\.1[2-9]|^3\.[2-9]/
  end

  @tag :subinterpreter
  test "recycling replaces a worker's instance inside its interpreter; no call is lost" do
    pool =
      start!(
        pool_size: 2,
        threads_per_worker: 2,
        worker_max_requests: 5,
        adapter: "snakepit_test_adapters.TestAdapter"
      )

    results =
      1..300
      |> Task.async_stream(fn i -> {i, Snakepit.execute(pool, "echo", %{value: i})} end,
        max_concurrency: 16,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    assert Enum.all?(results, fn {i, r} -> r == {:ok, i} end)

    instances =
      for _ <- 1..12, into: MapSet.new() do
        {:ok, %{"instance" => id}} = Snakepit.execute(pool, "state", %{})
        id
      end

    assert MapSet.size(instances) > 1
    assert elem(Snakepit.stats(pool), 1).completed >= 312
  end

  @tag :subinterpreter
  test "Python logging in a worker reaches Logger with its thread and pool" do
    Snakepit.LogTap.attach()
    pool = start!(pool_size: 1, adapter: "snakepit_test_adapters.TestAdapter")
    text = "hello from a subinterpreter #{System.unique_integer([:positive])}"
    {:ok, thread} = Snakepit.execute(pool, "log", %{message: text, level: "warning"})
    assert thread =~ "snakepit-#{pool}-w0-t"

    meta = receive_log(text)
    assert meta.python_thread == thread
    assert meta.pool == pool
  end

  # The metadata of the first log event whose text contains `text` (the wait bounds a failure).
  defp receive_log(text) do
    receive do
      {:log_event, %{msg: {:string, msg}, meta: meta}} ->
        if IO.chardata_to_string(msg) =~ text, do: meta, else: receive_log(text)

      {:log_event, _} ->
        receive_log(text)
    after
      30_000 -> flunk("no log event with #{inspect(text)}")
    end
  end

  defp shared_file do
    path =
      Path.join(
        System.tmp_dir!(),
        "snakepit_probe_#{System.unique_integer([:positive])}_#{:os.getpid()}"
      )

    File.write!(path, :binary.copy(<<0>>, 16))
    on_exit(fn -> File.rm(path) end)
    path
  end

  @tag :subinterpreter
  test "buffers and large bytes cross as copies; refs, NDArrays and reload are clear errors" do
    pool = start!(adapter: "snakepit_subinterp_adapters.DataAdapter", pool_size: 1)
    data = :binary.copy("ab", 100_000)

    assert {:ok, %{"type" => "memoryview", "len" => 200_000, "bytes" => ^data}} =
             Snakepit.execute(pool, "describe", %{value: Snakepit.buffer(data)})

    big = :binary.copy("x", 1 <<< 20)
    assert {:ok, ^big} = Snakepit.execute(pool, "blob", %{})
    assert {:ok, view} = Snakepit.execute(pool, "view", %{})
    assert view == :binary.copy("y", 1 <<< 20)

    assert {:error, %Error{category: :conversion, message: m}} =
             Snakepit.execute(pool, "obj", %{}, return: :ref)

    assert m =~ "object refs are not supported in a :subinterpreter pool"

    {:ok, ref} = Snakepit.eval("[1, 2]", %{}, pool: :hpc_pool, return: :ref)

    assert {:error, %Error{category: :conversion, message: m}} =
             Snakepit.execute(pool, "describe", %{value: ref})

    assert m =~ "a %Snakepit.Ref{} cannot be used in a :subinterpreter pool"

    nd = Snakepit.NDArray.new(<<1.0::float-64-native>>, {:f, 64}, {1})

    assert {:error, %Error{category: :conversion, message: m}} =
             Snakepit.execute(pool, "describe", %{value: nd})

    assert m =~ "NumPy"

    assert {:error, %Error{category: :validation, message: m}} = Snakepit.reload(pool)
    assert m =~ "stop and start pool"
    # The worker is fine after all that.
    assert {:ok, %{"len" => 3}} = Snakepit.execute(pool, "describe", %{value: [1, 2, 3]})
  end
end
