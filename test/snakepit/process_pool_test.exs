defmodule Snakepit.ProcessPoolTest do
  # The :process profile's own guarantees: crash isolation, killing stuck workers, no orphan
  # OS processes, recycling, the worker environment. The behaviour it shares with the :thread
  # profile is in conformance_test.exs.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, ProcessPool}

  @adapter "snakepit_process_adapters.ProcessAdapter"

  defp start(opts) do
    name = :"proc_pool_#{System.unique_integer([:positive])}"
    opts = Keyword.merge([name: name, adapter: @adapter, pool_size: 1], opts)

    spec = %{
      id: name,
      start: {ProcessPool, :start_link, [opts]},
      restart: :temporary,
      shutdown: 15_000
    }

    case DynamicSupervisor.start_child(Snakepit.PoolSupervisor, spec) do
      {:ok, pid} -> {:ok, pid}
      {:error, %Error{} = e} -> {:error, e}
    end
  end

  defp start!(opts) do
    {:ok, pool} = start(opts)
    on_exit(fn -> DynamicSupervisor.terminate_child(Snakepit.PoolSupervisor, pool) end)
    pool
  end

  defp exec(pool, command, args \\ %{}, timeout \\ 30_000),
    do: ProcessPool.execute(pool, command, args, timeout)

  defp os_pids(pool), do: Enum.map(ProcessPool.stats(pool).workers, & &1.os_pid)

  defp alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      # A zombie is gone already; only its parent has not reaped it yet.
      {:ok, stat} -> stat |> String.split(")") |> List.last() |> String.split() |> hd() != "Z"
      {:error, _} -> false
    end
  end

  # Polls until `fun` is true; the timeout only bounds a failure, it orders nothing.
  defp wait_until(fun, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait(fun, deadline)
  end

  defp do_wait(fun, deadline) do
    cond do
      fun.() ->
        true

      System.monotonic_time(:millisecond) > deadline ->
        false

      true ->
        Process.sleep(50)
        do_wait(fun, deadline)
    end
  end

  defp all_idle?(pool), do: Enum.all?(ProcessPool.stats(pool).workers, &(&1.status == :idle))

  # Events instead of sleeps: `started_*` calls send {tag, os_pid, thread} to the test process
  # once they run; `started_hold` then returns only when its release file exists.
  defp release_file do
    path =
      Path.join(
        System.tmp_dir!(),
        "snakepit_release_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    on_exit(fn -> File.rm(path) end)
    path
  end

  defp release(path), do: File.write!(path, "")

  # A task running `started_hold`; its started message comes to the caller (the test).
  defp async_hold(pool, tag, path) do
    test = self()

    Task.async(fn -> exec(pool, "started_hold", %{pid: test, tag: tag, path: path}, :infinity) end)
  end

  defp assert_started(tag) do
    assert_receive {^tag, os_pid, _thread}, 30_000
    os_pid
  end

  describe "crash isolation" do
    for crash <- ["os_exit", "segfault", "sigsegv", "sigkill", "break_loop"] do
      test "#{crash}: only the in-flight call fails, with :worker; the worker restarts" do
        pool = start!(pool_size: 2)
        before = os_pids(pool)
        # Keep one worker busy: it must finish its call whatever happens to the other one.
        release = release_file()
        other = async_hold(pool, "other", release)
        busy = assert_started("other")

        assert {:error, %Error{category: :worker} = e} = exec(pool, unquote(crash))
        assert e.message =~ "died while running the call"
        assert is_integer(e.details.os_pid) and e.details.os_pid in before
        assert e.details.os_pid != busy

        release(release)
        assert {:ok, %{"os_pid" => ^busy}} = Task.await(other, 30_000)
        assert wait_until(fn -> not alive?(e.details.os_pid) end)

        # The crashed slot is back: both workers serve at once, from two processes (both
        # calls are running before either is released).
        assert wait_until(fn -> all_idle?(pool) end)
        release = release_file()
        both = for tag <- ["a", "b"], do: async_hold(pool, tag, release)
        a = assert_started("a")
        b = assert_started("b")
        assert a != b
        release(release)

        assert [{:ok, %{"os_pid" => ^a}}, {:ok, %{"os_pid" => ^b}}] =
                 Task.await_many(both, 30_000)

        stats = ProcessPool.stats(pool)
        assert Enum.sum(Enum.map(stats.workers, & &1.restarts)) == 1
        assert stats.failed == 1
        after_pids = os_pids(pool)
        assert length(after_pids -- before) == 1
        assert Enum.sort([a, b]) == Enum.sort(after_pids)
      end
    end

    test "a worker crash is counted once and reported with the signal" do
      pool = start!([])
      assert {:error, %Error{details: details, message: msg}} = exec(pool, "sigsegv")
      assert details.signal == 11
      assert msg =~ "SIGSEGV"
      assert {:ok, "pong"} = exec(pool, "ping", nil)
    end
  end

  describe "timeouts" do
    test "a worker stuck in C is killed on timeout and replaced; the next call is prompt" do
      pool = start!([])
      [stuck] = os_pids(pool)

      # The sleep outlasts the test's own timeout: returning at all shows it was not waited for.
      attempts = time_out_call_stuck_in_c(pool, [200, 1_000, 5_000, 20_000], 1)

      assert {:ok, %{"os_pid" => fresh}} = exec(pool, "whoami")
      assert fresh != stuck
      assert wait_until(fn -> not alive?(stuck) end)

      stats = ProcessPool.stats(pool)
      assert stats.cancelled == attempts
      assert [%{restarts: 1}] = stats.workers
    end

    test "a caller that dies while its call runs gets its worker killed and replaced" do
      pool = start!([])
      [stuck] = os_pids(pool)
      test = self()

      caller =
        spawn(fn ->
          exec(pool, "started_sleep", %{pid: test, tag: "running", seconds: 3_600}, :infinity)
        end)

      assert assert_started("running") == stuck
      Process.exit(caller, :kill)
      assert {:ok, %{"os_pid" => fresh}} = exec(pool, "whoami")
      assert fresh != stuck
      assert wait_until(fn -> not alive?(stuck) end)
    end
  end

  describe "threads_per_worker" do
    test "one OS process runs threads_per_worker calls at once over one adapter instance" do
      pool = start!(pool_size: 1, threads_per_worker: 4)
      stats = ProcessPool.stats(pool)
      assert {stats.max_workers, stats.threads_per_worker} == {4, 4}

      # Each call waits at a barrier of 4: they can only return if all 4 run together.
      results =
        1..4
        |> Enum.map(fn _ -> Task.async(fn -> exec(pool, "rendezvous", %{parties: 4}) end) end)
        |> Enum.map(&Task.await(&1, 60_000))

      [os_pid] = os_pids(pool)
      assert Enum.all?(results, &match?({:ok, %{"os_pid" => ^os_pid}}, &1))
      threads = for {:ok, %{"thread" => t}} <- results, do: t

      assert threads |> Enum.map(&String.replace(&1, ~r/^snakepit-.*-w0-/, "")) |> Enum.sort() ==
               ["t0", "t1", "t2", "t3"]
    end

    test "a cancelled call on one thread leaves the others' calls running" do
      pool = start!(pool_size: 1, threads_per_worker: 2)
      [os_pid] = os_pids(pool)
      # The other call runs on the other thread until released, after the cancellation.
      release = release_file()
      other = async_hold(pool, "other", release)
      assert assert_started("other") == os_pid

      # The busy loop was interrupted in its thread (Cancelled), not by killing the process.
      assert interrupt_running_loop(pool, [300, 1_000, 5_000, 20_000], 1) == "Cancelled"
      release(release)
      assert {:ok, %{"os_pid" => ^os_pid}} = Task.await(other, 30_000)
      assert os_pids(pool) == [os_pid]
    end
  end

  # Times out `started_sleep` calls (an hour in C), one timeout after the other, until one
  # times out once its sleep is certain (it said it started: from there it sleeps whatever the
  # cancellation does); returns the number of attempts. A timer cannot wait for the call to
  # start: on a loaded machine the cancellation may end the call before it began (then there is
  # nothing to kill). Each attempt waits until its job is over (ended, or its worker killed)
  # before it looks for the message, which the pool delivered before it.
  defp time_out_call_stuck_in_c(_pool, [], _attempt),
    do: flunk("no started_sleep call started before it timed out")

  defp time_out_call_stuck_in_c(pool, [timeout | longer], attempt) do
    tag = "stuck-#{attempt}"

    assert {:error, %Error{category: :timeout}} =
             exec(pool, "started_sleep", %{pid: self(), tag: tag, seconds: 3_600}, timeout)

    assert wait_until(fn ->
             stats = ProcessPool.stats(pool)
             stats.cancelled == attempt and stats.active_requests == 0
           end)

    receive do
      {^tag, _os_pid, _thread} -> attempt
    after
      0 -> time_out_call_stuck_in_c(pool, longer, attempt + 1)
    end
  end

  # Times out `tracked_busy` calls, one timeout after the other, until one interrupts a loop
  # that had started, and returns how it ended. A timer cannot wait for the loop to start: on a
  # loaded machine the timeout may end the job before its loop runs, and tracked_outcome says
  # so (nil). Each attempt waits until the job is over (its thread is free again: the loop
  # would run an hour) before it asks.
  defp interrupt_running_loop(_pool, [], _attempt),
    do: flunk("no tracked_busy loop started before its call timed out")

  defp interrupt_running_loop(pool, [timeout | longer], attempt) do
    tag = "busy-#{System.unique_integer([:positive])}"
    before = ProcessPool.stats(pool).active_requests

    assert {:error, %Error{category: :timeout}} =
             exec(pool, "tracked_busy", %{tag: tag, seconds: 3_600}, timeout)

    assert wait_until(fn ->
             stats = ProcessPool.stats(pool)
             stats.cancelled == attempt and stats.active_requests == before
           end)

    case exec(pool, "tracked_outcome", %{tag: tag}) do
      {:ok, nil} -> interrupt_running_loop(pool, longer, attempt + 1)
      {:ok, outcome} -> outcome
    end
  end

  describe "streams" do
    test "a stream whose generator is stuck in C: halting kills the worker after a grace" do
      pool = start!([])
      [stuck] = os_pids(pool)

      # Halt only once the generator is past its first item; from there it ends up in a C
      # sleep past the test's own timeout, even when the cancellation lands before the sleep
      # began (a loaded machine): only a killed worker lets whoami in.
      assert [1] =
               ProcessPool.execute_stream(pool, "surely_stuck_stream", %{notify: self()},
                 window: 1
               )
               |> Stream.each(fn _ -> assert_receive "stuck", 30_000 end)
               |> Enum.take(1)

      assert {:ok, %{"os_pid" => fresh}} = exec(pool, "whoami")
      assert fresh != stuck
      assert ProcessPool.stats(pool).cancelled == 1
    end

    test "a stream item that times out raises :timeout" do
      pool = start!([])

      assert_raise Error, ~r/no stream item within 200 ms/, fn ->
        ProcessPool.execute_stream(pool, "stuck_stream", %{}, timeout: 200) |> Enum.to_list()
      end

      assert {:ok, "pong"} = exec(pool, "ping", nil)
    end

    test "a worker that dies mid-stream raises :worker in the consumer after the items" do
      pool = start!([])
      parent = self()

      error =
        assert_raise Error, fn ->
          ProcessPool.execute_stream(pool, "crashing_stream", %{})
          |> Enum.each(&send(parent, {:item, &1}))
        end

      assert error.category == :worker
      assert_received {:item, 1}
      assert {:ok, "pong"} = exec(pool, "ping", nil)
    end
  end

  describe "no orphan Python processes" do
    test "stopping the pool ends every worker, a worker stuck in C included" do
      {:ok, pool} = start(pool_size: 3)
      pids = os_pids(pool)
      assert Enum.all?(pids, &alive?/1)
      test = self()

      # Two workers stuck in C past the stop's grace period (and past the test's timeout)...
      stuck =
        for tag <- ["stuck1", "stuck2"] do
          Task.async(fn ->
            exec(pool, "started_sleep", %{pid: test, tag: tag, seconds: 3_600}, :infinity)
          end)
        end

      # ...and one that finishes within it: it is released once the stop has begun, which the
      # queued calls' errors show (the pool answers them before it waits for running calls).
      release = release_file()
      short = async_hold(pool, "short", release)
      for tag <- ["stuck1", "stuck2", "short"], do: assert_started(tag)

      queued =
        Task.async(fn ->
          results =
            for(_ <- 1..2, do: Task.async(fn -> exec(pool, "ping", nil, :infinity) end))
            |> Task.await_many(:infinity)

          release(release)
          results
        end)

      assert wait_until(fn -> ProcessPool.stats(pool).queued == 2 end)

      :ok = DynamicSupervisor.terminate_child(Snakepit.PoolSupervisor, pool)

      assert Enum.all?(pids, &(not alive?(&1)))
      assert {:ok, _} = Task.await(short, 30_000)

      for result <- Task.await(queued, 30_000) do
        assert {:error, %Error{category: :pool, message: msg}} = result
        assert msg =~ "pool stopped before the call ran"
      end

      # The same error as in the thread profile (test/snakepit/stop_test.exs).
      for t <- stuck do
        assert {:error, %Error{category: :pool, message: msg}} = Task.await(t, 30_000)
        assert msg =~ "pool stopped while the call ran"
      end
    end

    test "stop/1 runs each adapter's cleanup()" do
      dir =
        Path.join(
          System.tmp_dir!(),
          "snakepit_cleanup_#{System.pid()}_#{System.unique_integer([:positive])}"
        )

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)

      {:ok, pool} =
        ProcessPool.start_link(
          name: :"cleanup_#{System.unique_integer([:positive])}",
          adapter: @adapter,
          pool_size: 2,
          adapter_env: [{"SNAKEPIT_CLEANUP_DIR", dir}]
        )

      pids = os_pids(pool)
      :ok = ProcessPool.stop(pool)
      assert Enum.sort(File.ls!(dir)) == Enum.sort(Enum.map(pids, &"cleanup-#{&1}"))
    end

    for how <- [:halt, :kill] do
      @tag timeout: 120_000
      test "a VM that exits (#{how}) leaves no worker behind" do
        {beam, workers} = start_vm(unquote(how))
        assert length(workers) == 2

        if unquote(how) == :kill do
          System.cmd("kill", ["-KILL", beam])
        end

        assert wait_until(fn -> Enum.all?(workers, &(not alive?(&1))) end),
               "workers still running: #{inspect(Enum.filter(workers, &alive?/1))}"
      end
    end
  end

  # Starts a separate `elixir` VM with a 2-worker pool, one worker stuck in time.sleep (in C),
  # and returns its OS pid and the workers' OS pids. With :halt the VM calls System.halt/1
  # right away (no terminate/2 runs); with :kill it waits to be killed with SIGKILL.
  defp start_vm(how) do
    ebin = Path.join(:code.lib_dir(:snakepit), "ebin")
    support = Path.expand("../support/python", __DIR__)

    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    {:ok, pool} = Snakepit.ProcessPool.start_link(name: :vm_exit, pool_size: 2,
      adapter: "#{@adapter}")
    parent = self()
    spawn(fn ->
      Snakepit.ProcessPool.execute(pool, "started_sleep",
        %{pid: parent, tag: "started", seconds: 120}, :infinity)
    end)
    receive do
      {"started", _, _} -> :ok
    after
      60_000 -> System.halt(3)
    end
    pids = Enum.map_join(Snakepit.ProcessPool.stats(pool).workers, ",", & &1.os_pid)
    IO.puts("BEAM " <> System.pid() <> " WORKERS " <> pids)
    #{if how == :halt, do: "System.halt(0)", else: "Process.sleep(:infinity)"}
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        {:args, ["-pa", ebin, "-e", script]},
        {:env, [{~c"PYTHONPATH", String.to_charlist(support)}]}
      ])

    read_pids(port, "")
  end

  defp read_pids(port, acc) do
    receive do
      {^port, {:data, {:eol, "BEAM " <> rest}}} ->
        [beam, "WORKERS", workers] = String.split(rest, " ")
        {beam, workers |> String.split(",") |> Enum.map(&String.to_integer/1)}

      {^port, {:data, {_, line}}} ->
        read_pids(port, acc <> line <> "\n")

      {^port, {:exit_status, status}} ->
        flunk("the VM exited with #{status} before starting its pool:\n#{acc}")
    after
      60_000 -> flunk("the VM printed no worker pids:\n#{acc}")
    end
  end

  describe "recycling" do
    test "worker_max_requests replaces the process after n calls; cleanup() runs" do
      dir =
        Path.join(
          System.tmp_dir!(),
          "snakepit_recycle_#{System.pid()}_#{System.unique_integer([:positive])}"
        )

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)
      pool = start!(worker_max_requests: 3, adapter_env: [{"SNAKEPIT_CLEANUP_DIR", dir}])

      seen = for _ <- 1..7, do: exec(pool, "whoami") |> elem(1) |> Map.fetch!("os_pid")
      assert [a, a, a, b, b, b, c] = seen
      assert length(Enum.uniq([a, b, c])) == 3
      # Each retired process runs cleanup() on its own: wait for both markers.
      assert wait_until(fn -> File.exists?(Path.join(dir, "cleanup-#{b}")) end)
      assert wait_until(fn -> File.exists?(Path.join(dir, "cleanup-#{a}")) end)
      assert [%{recycles: 2, restarts: 0, requests: 7}] = ProcessPool.stats(pool).workers
      assert wait_until(fn -> not alive?(a) and not alive?(b) end)
    end

    test "worker_ttl recycles one worker at a time; running calls finish first" do
      pool = start!(pool_size: 2, worker_ttl: {300, :milliseconds})
      # A call running across the ttl finishes on its old process.
      assert {:ok, _} = exec(pool, "sleep", %{seconds: 0.5})

      # Calls keep succeeding while the workers are replaced, never both at once; the calls go
      # on until processes other than the first two served some and two recycles are done
      # (however slowly a loaded machine starts Python processes).
      deadline = System.monotonic_time(:millisecond) + 60_000
      results = ttl_calls(pool, deadline, [])

      assert Enum.all?(results, fn {result, serving} ->
               match?({:ok, _}, result) and serving >= 1
             end)

      assert length(served_by(results)) > 2
      assert Enum.sum(Enum.map(ProcessPool.stats(pool).workers, & &1.recycles)) >= 2
    end

    test "while a replacement cannot start, the workers due meanwhile keep serving" do
      marker = Path.join(System.tmp_dir!(), "snakepit_down_#{System.unique_integer([:positive])}")

      on_exit(fn -> File.rm(marker) end)

      pool =
        start!(
          adapter: "snakepit_process_adapters.FailsWhenMarked",
          adapter_env: [{"SNAKEPIT_FAIL_MARKER", marker}],
          pool_size: 2,
          threads_per_worker: 2,
          worker_max_requests: 3
        )

      File.write!(marker, "")
      [a, b] = Enum.map(ProcessPool.stats(pool).workers, & &1.os_pid)

      # Both workers pass worker_max_requests; the first one due is retired and its
      # replacement fails (and is retried with backoff); the other, due too, serves on.
      # Before, it took no calls and these waited for ever.
      results =
        1..40
        |> Task.async_stream(fn i -> exec(pool, "echo", %{value: i}, 10_000) end,
          max_concurrency: 4,
          timeout: 20_000
        )
        |> Enum.map(fn {:ok, r} -> r end)

      assert results == Enum.map(1..40, &{:ok, &1})
      stats = ProcessPool.stats(pool)
      assert Enum.any?(stats.workers, &(&1.status in [:down, :starting] and &1.restarts >= 1))
      assert Enum.any?(stats.workers, &(&1.os_pid in [a, b] and &1.status in [:idle, :busy]))

      # The store is back: the replacement starts, then the due worker is replaced too.
      File.rm!(marker)

      assert wait_until(fn ->
               ws = ProcessPool.stats(pool).workers
               Enum.all?(ws, &(&1.status == :idle and &1.os_pid not in [a, b]))
             end)

      assert {:ok, 1} = exec(pool, "echo", %{value: 1})
    end
  end

  defp served_by(results),
    do: results |> Enum.map(fn {{:ok, %{"os_pid" => p}}, _} -> p end) |> Enum.uniq()

  defp ttl_calls(pool, deadline, acc) do
    stats = ProcessPool.stats(pool)
    recycled = Enum.sum(Enum.map(stats.workers, & &1.recycles))

    failed? =
      Enum.any?(acc, fn {result, serving} -> not match?({:ok, _}, result) or serving < 1 end)

    if failed? or (recycled >= 2 and length(served_by(acc)) > 2) or
         System.monotonic_time(:millisecond) > deadline do
      Enum.reverse(acc)
    else
      # Pacing only: the calls are spread over the workers' lifetimes.
      Process.sleep(25)
      serving = Enum.count(stats.workers, &(&1.status in [:idle, :busy]))
      ttl_calls(pool, deadline, [{exec(pool, "whoami"), serving} | acc])
    end
  end

  describe "worker environment" do
    test "BLAS thread counts default to 1" do
      pool = start!([])

      for var <- ~w(OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS) do
        assert exec(pool, "getenv", %{name: var}) == {:ok, "1"}
      end
    end

    test "adapter_env overrides the defaults and adds variables" do
      pool = start!(adapter_env: [{"OMP_NUM_THREADS", "4"}, {"SNAKEPIT_PROC_VAR", "x y"}])
      assert exec(pool, "getenv", %{name: "OMP_NUM_THREADS"}) == {:ok, "4"}
      assert exec(pool, "getenv", %{name: "OPENBLAS_NUM_THREADS"}) == {:ok, "1"}
      assert exec(pool, "getenv", %{name: "SNAKEPIT_PROC_VAR"}) == {:ok, "x y"}
    end

    test "print() in adapter code does not disturb the frames" do
      pool = start!([])
      assert exec(pool, "noisy", %{lines: 3}) == {:ok, 3}
      assert exec(pool, "ping", nil) == {:ok, "pong"}
    end

    test "the worker's threads carry the pool's name, as the :thread profile's do" do
      pool = start!(name: :proc_named_pool)
      assert {:ok, "snakepit-proc_named_pool-w0-t0"} = exec(pool, "thread_name")
    end

    test "python: picks the interpreter of the workers, not necessarily the NIF's" do
      {:ok, %{executable: nif_python}} = Snakepit.Runtime.build_info()
      # Debian's own python3 when there is one (the NIF is built for the project's venv).
      python = if File.exists?("/usr/bin/python3"), do: "/usr/bin/python3", else: nif_python
      pool = start!(python: python)
      assert ProcessPool.stats(pool).python.executable == python

      assert {:error, %Error{category: :validation, message: msg}} =
               start(python: "/no/such/python")

      assert msg =~ "python"
    end

    test "Python logging reaches Logger" do
      name = :"proc_log_#{System.unique_integer([:positive])}"
      Snakepit.LogTap.attach(&match?(%{meta: %{pool: ^name}}, &1))
      pool = start!(name: name)

      assert {:ok, "heads up"} = exec(pool, "warn", %{message: "heads up"})
      # The pool logs the record before it forwards the reply; the filter runs as it logs.
      assert_receive {:log_event, %{level: :warning, msg: {:string, text}, meta: meta}}, 30_000
      assert IO.chardata_to_string(text) =~ ~r/^\[snakepit-.*\] heads up$/
      assert meta.python_thread =~ "snakepit-"
      assert meta.python_logger == "snakepit_process_adapters"
    end
  end

  describe "start-up" do
    test "an exception in __init__ fails the start with type, message and traceback" do
      assert {:error, %Error{python_type: "RuntimeError", message: msg} = e} =
               start(adapter: "snakepit_test_adapters.BrokenInit", pool_size: 2)

      assert msg =~ "cannot load the model"
      assert e.python_traceback =~ "__init__"
      assert e.python_traceback =~ "Traceback (most recent call last)"
    end

    test "an import error fails the start" do
      assert {:error, %Error{python_type: "ImportError", message: msg}} =
               start(adapter: "no_such_module.Adapter")

      assert msg =~ "no_such_module"
    end

    test "a worker slower than startup_timeout fails the start and is killed" do
      # SlowInit takes 30 s to construct: a start that waited for it would succeed.
      assert {:error, %Error{category: :worker, message: msg}} =
               start(adapter: "snakepit_process_adapters.SlowInit", startup_timeout: 500)

      assert msg =~ "startup_timeout"
    end

    test "a second pool under a running name is refused" do
      pool = start!(name: :proc_dup_pool)
      assert is_pid(pool)
      assert {:error, %Error{category: :pool, message: msg}} = start(name: :proc_dup_pool)
      assert msg =~ "already running"
    end

    test "only worker_profile :process is accepted" do
      {:ok, config} = Snakepit.Config.validate_pool(name: :proc_thread_cfg)

      assert {:error, %Error{category: :validation}} = ProcessPool.start_link(config)
    end
  end

  describe "queue" do
    test "a full queue answers at once with a :pool error" do
      pool = start!(max_queue: 2)
      release = release_file()
      # One call running until released, then two queued: the queue is full.
      busy = for tag <- ["b1", "b2", "b3"], do: async_hold(pool, tag, release)
      assert wait_until(fn -> ProcessPool.stats(pool).queued == 2 end)
      assert {:error, %Error{category: :pool, message: msg}} = exec(pool, "ping", nil)
      assert msg =~ "max_queue"
      release(release)
      assert Enum.all?(Task.await_many(busy, 30_000), &match?({:ok, _}, &1))
      assert ProcessPool.stats(pool).rejected == 1
    end
  end
end
