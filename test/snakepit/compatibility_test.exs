defmodule Snakepit.CompatibilityTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias Snakepit.{Compatibility, Config, Error}

  doctest Snakepit.Compatibility

  # The guide's "Library Compatibility" tables: {library, import name, status, note, workaround}.
  # The guide marks all of the first table "✅ Yes"; those whose note is a setting to apply are
  # :conditional, as in the Python side's LIBRARY_MATRIX.
  @guide [
    {"NumPy", "numpy", :safe, "Releases GIL during computation", nil},
    {"SciPy", "scipy", :safe, "Releases GIL for numerical operations", nil},
    {"PyTorch", "torch", :conditional, "Configure with `torch.set_num_threads()`", nil},
    {"TensorFlow", "tensorflow", :conditional, "Use `tf.config.threading` API", nil},
    {"Scikit-learn", "sklearn", :conditional, "Set `n_jobs=1` per estimator", nil},
    {"Requests", "requests", :conditional, "Separate sessions per thread", nil},
    {"HTTPx", "httpx", :safe, "Async-first, thread-safe", nil},
    {"Pandas", "pandas", :unsafe, nil, "Use locking or process mode"},
    {"Matplotlib", "matplotlib", :unsafe, nil, "Use `threading.local()` for figures"},
    {"SQLite3", "sqlite3", :unsafe, nil, "Connection per thread"}
  ]

  @gil_311 %{version: "3.11.7", free_threaded: false, gil_enabled: true}
  @gil_313 %{version: "3.13.1", free_threaded: false, gil_enabled: true}
  @ft_314 %{version: "3.14.0", free_threaded: true, gil_enabled: false}
  @ft_314_gil %{version: "3.14.0", free_threaded: true, gil_enabled: true}

  defp config(opts) do
    {:ok, config} = Config.validate_pool([name: :hpc_pool] ++ opts)
    config
  end

  describe "matrix/0" do
    test "has every row of the guide, in its order, with the guide's status and texts" do
      rows =
        for e <- Compatibility.matrix(),
            do: {e.library, e.module, e.status, e.notes, e.workaround}

      assert length(rows) == length(@guide)

      for {{library, module, status, notes, workaround}, row} <- Enum.zip(@guide, rows) do
        assert {^library, ^module, ^status, actual_notes, ^workaround} = row
        assert is_binary(actual_notes) and actual_notes != ""
        if notes, do: assert(actual_notes == notes)
      end
    end

    test "every unsafe library has a workaround, and only those" do
      for entry <- Compatibility.matrix() do
        assert entry.status in [:safe, :conditional, :unsafe]
        assert Map.keys(entry) |> Enum.sort() == [:library, :module, :notes, :status, :workaround]
        assert is_binary(entry.workaround) == (entry.status == :unsafe), entry.library
      end
    end

    test "the guide's thread-unsafe libraries are exactly Pandas, Matplotlib and SQLite3" do
      unsafe = for %{status: :unsafe, library: l} <- Compatibility.matrix(), do: l
      assert unsafe == ["Pandas", "Matplotlib", "SQLite3"]
    end

    test "agrees with the Python side's LIBRARY_MATRIX (libraries, names, statuses, texts)" do
      {:ok, %{executable: python}} = Snakepit.Runtime.build_info()
      priv_python = Path.join(:code.priv_dir(:snakepit), "python")

      script = """
      import sys
      sys.path.insert(0, sys.argv[1])
      from snakepit_bridge.thread_safety_checker import LIBRARY_MATRIX
      for module, info in LIBRARY_MATRIX.items():
          print(module, info["name"], info["status"], info["notes"], sep="\\t")
      """

      {out, 0} = System.cmd(python, ["-c", script, priv_python], stderr_to_stdout: true)

      python_rows =
        for line <- String.split(out, "\n", trim: true) do
          [module, name, status, notes] = String.split(line, "\t")
          {module, name, status, notes}
        end

      elixir_rows =
        for e <- Compatibility.matrix() do
          # Python keeps one text: the note of a safe library, the workaround of an unsafe one.
          {e.module, e.library, Atom.to_string(e.status), e.workaround || e.notes}
        end

      assert Enum.sort(python_rows) == Enum.sort(elixir_rows)
    end
  end

  describe "check/1" do
    test "finds a library by its usual name" do
      assert {:ok, %{library: "NumPy", module: "numpy", status: :safe}} =
               Compatibility.check("NumPy")

      assert {:ok, %{module: "sklearn", status: :conditional}} =
               Compatibility.check("Scikit-learn")
    end

    test "finds a library by its import name" do
      assert {:ok, %{library: "Scikit-learn"}} = Compatibility.check("sklearn")
      assert {:ok, %{library: "PyTorch"}} = Compatibility.check("torch")
      assert {:ok, %{library: "SQLite3", status: :unsafe}} = Compatibility.check("sqlite3")
    end

    test "takes atoms" do
      assert {:ok, %{library: "NumPy"}} = Compatibility.check(:numpy)
      assert {:ok, %{library: "HTTPx", status: :safe}} = Compatibility.check(:httpx)
      assert {:ok, %{library: "PyTorch"}} = Compatibility.check(:PyTorch)
    end

    test "ignores case" do
      for name <- ["pandas", "Pandas", "PANDAS", "pAnDaS", :PANDAS] do
        assert {:ok, %{library: "Pandas", status: :unsafe}} = Compatibility.check(name)
      end

      assert {:ok, %{library: "Scikit-learn"}} = Compatibility.check("scikit-LEARN")
      assert {:ok, %{library: "SQLite3"}} = Compatibility.check("SQLITE3")
    end

    test "a dotted module path stands for its top-level package" do
      assert {:ok, %{library: "Matplotlib"}} = Compatibility.check("matplotlib.pyplot")
      assert {:ok, %{library: "Scikit-learn"}} = Compatibility.check("sklearn.linear_model")
      assert {:error, %Error{}} = Compatibility.check("scikit-learn.foo")
    end

    test "every matrix entry is found by both names" do
      for entry <- Compatibility.matrix() do
        assert Compatibility.check(entry.library) == {:ok, entry}
        assert Compatibility.check(entry.module) == {:ok, entry}
        assert Compatibility.check(String.to_atom(entry.module)) == {:ok, entry}
      end
    end

    test "returns the guide's notes and workarounds" do
      assert {:ok, %{notes: "Configure with `torch.set_num_threads()`", workaround: nil}} =
               Compatibility.check("torch")

      assert {:ok, %{workaround: "Use `threading.local()` for figures"}} =
               Compatibility.check("matplotlib")

      assert {:ok, %{workaround: "Connection per thread"}} = Compatibility.check(:sqlite3)
    end

    test "an unknown library is a validation error listing the known ones" do
      assert {:error, %Error{category: :validation} = error} = Compatibility.check("polars")

      assert error.message =~ ~s(library "polars" is not in the compatibility matrix)
      assert error.message =~ "known libraries: NumPy (numpy), SciPy (scipy), PyTorch (torch)"
      assert error.message =~ "Scikit-learn (sklearn)"
      assert error.message =~ "SQLite3 (sqlite3)"

      for entry <- Compatibility.matrix(), do: assert(error.message =~ entry.library)

      assert error.details.library == "polars"
      assert error.details.known == Enum.map(Compatibility.matrix(), & &1.module)
      assert Exception.message(error) =~ "[validation] library \"polars\""
    end

    test "an unknown atom, an empty name and a non-name are errors too" do
      assert {:error, %Error{category: :validation} = error} = Compatibility.check(:polars)
      assert error.message =~ "library :polars is not in the compatibility matrix"
      assert error.details.library == :polars

      assert {:error, %Error{category: :validation}} = Compatibility.check("")
      assert {:error, %Error{category: :validation}} = Compatibility.check(nil)
      assert {:error, %Error{category: :validation}} = Compatibility.check(42)
    end
  end

  describe "recommend/1" do
    test "thread profile for safe and conditional libraries" do
      for library <- ["numpy", "scipy", "httpx", :torch, "TensorFlow", "sklearn", "requests"] do
        assert Compatibility.recommend(library) == :thread, inspect(library)
      end
    end

    test "process profile for the guide's thread-unsafe libraries" do
      for library <- ["Pandas", :matplotlib, "sqlite3"] do
        assert Compatibility.recommend(library) == :process, inspect(library)
      end
    end

    test "follows each entry's status" do
      for %{status: status, module: module} <- Compatibility.matrix() do
        expected = if status == :unsafe, do: :process, else: :thread
        assert Compatibility.recommend(module) == expected
      end
    end

    test "the recommendation validates as a worker_profile" do
      profile = Compatibility.recommend("pandas")

      assert {:ok, %Config{worker_profile: :process}} =
               Config.validate_pool(name: :p, worker_profile: profile, threads_per_worker: 1)
    end

    test "an unknown library is the error of check/1" do
      assert Compatibility.recommend("polars") == Compatibility.check("polars")
      assert {:error, %Error{category: :validation}} = Compatibility.recommend("polars")
    end
  end

  describe "gil_warning/2" do
    test "Python 3.11 (GIL) with the guide's 4 x 16 pool" do
      warning = Compatibility.gil_warning(@gil_311, config(pool_size: 4, threads_per_worker: 16))

      assert warning =~ "Python 3.11.7 has a GIL"
      assert warning =~ "64 threads (4 workers × 16 threads per worker)"
      assert warning =~ "one thread at a time"
      assert warning =~ "pure-Python CPU work is serialised"
      assert warning =~ "whatever threads_per_worker says"
      assert warning =~ "NumPy, I/O, time.sleep"
      assert warning =~ "still runs in parallel"
      assert warning =~ "free-threaded CPython 3.14t"
      assert warning =~ "SNAKEPIT_PYTHON"
      assert warning =~ "worker_profile: :process"
    end

    test "Python 3.13, a standard (non-t) build" do
      warning = Compatibility.gil_warning(@gil_313, 8)

      assert warning =~ "Python 3.13.1 has a GIL"
      assert warning =~ "not a free-threaded `t` build"
      assert warning =~ "this :thread pool's 8 threads run Python bytecode one thread at a time"
      assert warning =~ "SNAKEPIT_PYTHON"
    end

    test "a non-t build is a GIL build even if it reports no GIL flag" do
      assert Compatibility.gil_warning(%{version: "3.14.0", free_threaded: false}, 8) =~
               "Python 3.14.0 has a GIL"
    end

    test "Python 3.14t with the GIL disabled: no warning" do
      assert Compatibility.gil_warning(@ft_314, 64) == nil

      assert Compatibility.gil_warning(@ft_314, config(pool_size: 4, threads_per_worker: 16)) ==
               nil
    end

    test "Python 3.14t whose GIL was re-enabled at run time" do
      warning =
        Compatibility.gil_warning(@ft_314_gil, config(pool_size: 2, threads_per_worker: 8))

      assert warning =~ "Python 3.14.0 has a GIL: it is a free-threaded build"
      assert warning =~ "enabled at run time"
      assert warning =~ "PYTHON_GIL=1"
      assert warning =~ "16 threads (2 workers × 8 threads per worker)"
      assert warning =~ "pure-Python CPU work is serialised"
      assert warning =~ "still runs in parallel"
      assert warning =~ "worker_profile: :process"
    end

    test "a free-threaded build with no gil_enabled key is taken as GIL off" do
      assert Compatibility.gil_warning(%{version: "3.14.0", free_threaded: true}, 8) == nil
    end

    test "a single-thread pool: no parallelism expected, no warning" do
      single = config(pool_size: 1, threads_per_worker: 1)

      for info <- [@gil_311, @gil_313, @ft_314_gil, @ft_314] do
        assert Compatibility.gil_warning(info, single) == nil
        assert Compatibility.gil_warning(info, 1) == nil
      end
    end

    test "several single-thread workers in a :thread pool share the GIL: warning" do
      warning = Compatibility.gil_warning(@gil_311, config(pool_size: 4, threads_per_worker: 1))
      assert warning =~ "4 threads (4 workers × 1 thread per worker)"
    end

    test "a :process pool has a GIL per worker process: no warning" do
      process = config(worker_profile: :process, pool_size: 4, threads_per_worker: 1)
      assert Compatibility.gil_warning(@gil_311, process) == nil
    end
  end

  describe "warn_if_gil/3" do
    # Each test has its own "logged once" key, so that pools started by other tests (which
    # use the VM's key) cannot interfere.
    setup do
      once = {__MODULE__, make_ref()}
      on_exit(fn -> :persistent_term.erase(once) end)
      %{once: once}
    end

    test "logs one short notice with the pool name, once per VM", %{once: once} do
      config = config(pool_size: 4, threads_per_worker: 16)

      log =
        capture_log(fn ->
          assert Compatibility.warn_if_gil(:hpc_pool, @gil_311, config, once) == :ok
        end)

      assert log =~ "[warning]" or log =~ "[warn]"

      assert log =~
               "snakepit: pool :hpc_pool: Python 3.11.7 has a GIL: its 64 threads run Python " <>
                 "code one at a time (NumPy, I/O and time.sleep still run in parallel). " <>
                 ~s(Logged once; see "The GIL" in Snakepit.Compatibility.)

      # One or two lines, not the whole explanation (which is in the docs).
      [line] = log |> String.split("\n", trim: true) |> Enum.filter(&(&1 =~ "snakepit:"))
      assert String.length(line) < 260
      refute log =~ "SNAKEPIT_PYTHON"

      # A second pool, or the same one restarted, logs nothing.
      again =
        capture_log(fn ->
          assert Compatibility.warn_if_gil(:other_pool, @gil_311, config, once) == :ok
          assert Compatibility.warn_if_gil(:hpc_pool, @gil_313, 8, once) == :ok
        end)

      refute again =~ "GIL"
    end

    test "a free-threaded build whose GIL was re-enabled says so", %{once: once} do
      log =
        capture_log(fn ->
          assert Compatibility.warn_if_gil(:ft_pool, @ft_314_gil, 8, once) == :ok
        end)

      assert log =~ "pool :ft_pool: Python 3.14.0 runs with its GIL enabled: its 8 threads"
    end

    test "the details are in the moduledoc" do
      {:docs_v1, _, :elixir, _, %{"en" => doc}, _, _} = Code.fetch_docs(Compatibility)
      assert doc =~ "## The GIL"
      assert doc =~ "PYTHON_GIL=1"
      assert doc =~ "SNAKEPIT_PYTHON=/path/to/python3.14t"
      assert doc =~ "worker_profile: :process"
    end

    test "puts the pool in the log metadata", %{once: once} do
      test_pid = self()
      Snakepit.LogTap.attach(fn %{meta: meta} -> meta[:pid] == test_pid end)

      capture_log(fn ->
        assert Compatibility.warn_if_gil(:meta_pool, @gil_313, 8, once) == :ok
      end)

      assert_receive {:log_event, %{level: :warning, msg: msg, meta: %{pool: :meta_pool}}},
                     30_000

      assert text(msg) =~ "snakepit: pool :meta_pool: Python 3.13.1 has a GIL"
    end

    test "logs nothing when the GIL is off or the pool has one thread", %{once: once} do
      log =
        capture_log(fn ->
          assert Compatibility.warn_if_gil(:quiet_pool, @ft_314, 64, once) == :ok
          assert Compatibility.warn_if_gil(:quiet_pool, @gil_311, 1, once) == :ok
        end)

      refute log =~ "quiet_pool"
      # Nothing was logged, so a pool that has something to say still can.
      refute :persistent_term.get(once, false)
    end

    test "the public arity uses one key for the VM" do
      capture_log(fn -> Compatibility.warn_if_gil(:p, @gil_311, 8) end)
      assert :persistent_term.get({Compatibility, :gil_noticed}, false)
    end
  end

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report)
  defp text({format, args}), do: format |> :io_lib.format(args) |> IO.chardata_to_string()
end
