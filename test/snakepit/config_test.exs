defmodule Snakepit.ConfigTest do
  use ExUnit.Case, async: true

  alias Snakepit.Config

  doctest Snakepit.Config

  @guide_pool %{
    name: :hpc_pool,
    worker_profile: :thread,
    pool_size: 4,
    threads_per_worker: 16,
    adapter_module: Snakepit.Adapters.GRPCPython,
    adapter_args: ["--mode", "threaded", "--max-workers", "16"],
    adapter_env: [
      {"OPENBLAS_NUM_THREADS", "16"},
      {"OMP_NUM_THREADS", "16"}
    ]
  }

  @default_adapter "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"

  # Validates `config` expecting a :validation error; returns it.
  defp error!(config) do
    assert {:error, %Snakepit.Error{category: :validation} = error} = Config.validate_pool(config)
    error
  end

  defp args_error!(args, extra \\ []) do
    error!([name: :p, adapter_args: args] ++ extra)
  end

  describe "the guide's configurations" do
    test "Configure Pool in Elixir validates to the expected struct" do
      assert {:ok, config} = Config.validate_pool(@guide_pool)

      assert config == %Config{
               name: :hpc_pool,
               worker_profile: :thread,
               pool_size: 4,
               threads_per_worker: 16,
               adapter_module: Snakepit.Adapters.Python,
               adapter: @default_adapter,
               adapter_args: ["--mode", "threaded", "--max-workers", "16"],
               adapter_env: [{"OPENBLAS_NUM_THREADS", "16"}, {"OMP_NUM_THREADS", "16"}],
               worker_ttl: :infinity,
               worker_max_requests: :infinity,
               max_queue: 10_000,
               thread_safety_check: false,
               python: nil,
               startup_timeout: 60_000
             }

      assert Config.capacity(config) == 64
    end

    test "the same config as a keyword list validates the same" do
      assert Config.validate_pool(Map.to_list(@guide_pool)) == Config.validate_pool(@guide_pool)
    end

    test "Worker Recycling validates, ttl in milliseconds" do
      assert {:ok, config} =
               Config.validate_pool(%{
                 name: :hpc_pool,
                 worker_profile: :thread,
                 worker_ttl: {3600, :seconds},
                 worker_max_requests: 1000
               })

      assert config.worker_ttl == 3_600_000
      assert config.worker_max_requests == 1000
    end

    test "a validated struct validates to itself" do
      {:ok, config} = Config.validate_pool(Map.put(@guide_pool, :worker_ttl, {2, :minutes}))
      assert Config.validate_pool(config) == {:ok, config}

      {:ok, process} = Config.validate_pool(name: :p, worker_profile: :process, python: "python3")
      assert Config.validate_pool(process) == {:ok, process}
    end
  end

  describe "defaults" do
    test "a thread pool" do
      assert {:ok, config} = Config.validate_pool(name: :p)

      assert config == %Config{
               name: :p,
               worker_profile: :thread,
               pool_size: 1,
               threads_per_worker: 8,
               adapter_module: Snakepit.Adapters.Python,
               adapter: @default_adapter,
               adapter_args: [],
               adapter_env: [],
               worker_ttl: :infinity,
               worker_max_requests: :infinity,
               max_queue: 10_000,
               thread_safety_check: false,
               python: nil,
               startup_timeout: 60_000
             }

      assert Config.capacity(config) == 8
    end

    test "a process pool: one worker per scheduler, one thread each" do
      assert {:ok, config} = Config.validate_pool(name: :p, worker_profile: :process)
      assert config.pool_size == System.schedulers_online()
      assert config.threads_per_worker == 1
      assert Config.capacity(config) == System.schedulers_online()
    end

    test "a process pool accepts threads_per_worker: 1 and a python path" do
      assert {:ok, config} =
               Config.validate_pool(
                 name: :p,
                 worker_profile: :process,
                 pool_size: 3,
                 threads_per_worker: 1,
                 python: "/opt/venv/bin/python"
               )

      assert {config.pool_size, config.threads_per_worker, config.python} ==
               {3, 1, "/opt/venv/bin/python"}
    end

    test "explicit values are kept" do
      assert {:ok, config} =
               Config.validate_pool(
                 name: :p,
                 pool_size: 2,
                 threads_per_worker: 3,
                 adapter_module: Snakepit.Adapters.Python,
                 adapter: "my_pkg.adapters.Mine",
                 max_queue: 5,
                 thread_safety_check: true,
                 startup_timeout: 1_000,
                 worker_max_requests: 7
               )

      assert %Config{
               pool_size: 2,
               threads_per_worker: 3,
               adapter: "my_pkg.adapters.Mine",
               max_queue: 5,
               thread_safety_check: true,
               startup_timeout: 1_000,
               worker_max_requests: 7
             } = config
    end
  end

  describe "the config itself" do
    test "must be a map or a keyword list" do
      for bad <- [:hpc_pool, "hpc_pool", [1, 2], 42, %URI{}] do
        error = error!(bad)
        assert error.message =~ "expected a map or a keyword list"
      end
    end

    test "unknown key: named, closest key suggested, valid keys listed" do
      error = error!(name: :hpc_pool, thread_per_worker: 4)

      assert error.message =~
               "pool :hpc_pool: unknown key :thread_per_worker; did you mean :threads_per_worker?"

      assert error.message =~ "(valid keys: :name, :worker_profile, :pool_size"
      assert error.details.key == :thread_per_worker
      assert error.details.value == 4
      assert error.details.pool == :hpc_pool
      assert error.details.suggestion == :threads_per_worker
      assert :startup_timeout in error.details.valid_keys
    end

    test "unknown key without a close match gets no suggestion" do
      error = error!(name: :p, colour: :blue)
      assert error.message =~ "pool :p: unknown key :colour (valid keys: :name,"
      refute error.message =~ "did you mean"
      assert error.details.suggestion == nil
    end

    test "unknown key is reported even when name is missing, and string keys are caught" do
      error = error!(nme: :p)
      assert error.message =~ "pool config: unknown key :nme; did you mean :name?"

      error = error!(%{:name => :p, "pool_size" => 2})
      assert error.message =~ ~s(unknown key "pool_size"; did you mean :pool_size?)
    end

    test "a key given twice in a keyword list" do
      error = error!(name: :p, pool_size: 1, pool_size: 2)
      assert error.message == "pool :p: key :pool_size is given more than once (1, 2)"
      assert error.details.key == :pool_size
    end
  end

  describe "name" do
    test "is required" do
      error = error!(pool_size: 2)
      assert error.message == "pool config: missing required key :name (an atom)"
      assert error.details == %{key: :name, value: nil, pool: nil}
    end

    test "must be an atom" do
      for bad <- ["hpc_pool", nil, true, 1] do
        error = error!(name: bad)
        assert error.message == "pool config: invalid name: expected an atom, got #{inspect(bad)}"
        assert error.details == %{key: :name, value: bad, pool: nil}
      end
    end
  end

  test "bad worker_profile" do
    error = error!(name: :p, worker_profile: :threaded)

    assert error.message ==
             "pool :p: invalid worker_profile: expected :thread, :process or :subinterpreter, got :threaded"

    assert error.details == %{key: :worker_profile, value: :threaded, pool: :p}
  end

  describe "sizes" do
    test "threads_per_worker: 0, as in the docs" do
      error = error!(name: :hpc_pool, threads_per_worker: 0)

      assert error.message ==
               "pool :hpc_pool: invalid threads_per_worker: expected a positive integer, got 0"

      assert error.details == %{key: :threads_per_worker, value: 0, pool: :hpc_pool}
    end

    test "pool_size, threads_per_worker, max_queue and startup_timeout take positive integers" do
      for key <- [:pool_size, :threads_per_worker, :max_queue, :startup_timeout],
          bad <- [0, -1, 1.5, "4", nil, :infinity] do
        error = error!([{:name, :p}, {key, bad}])

        assert error.message ==
                 "pool :p: invalid #{key}: expected a positive integer, got #{inspect(bad)}"

        assert error.details == %{key: key, value: bad, pool: :p}
      end
    end

    test "threads_per_worker means the same in both profiles: a process worker may run several" do
      assert {:ok, config} =
               Config.validate_pool(name: :p, worker_profile: :process, threads_per_worker: 4)

      assert {config.worker_profile, config.threads_per_worker} == {:process, 4}
      assert Config.capacity(config) == System.schedulers_online() * 4

      error = error!(name: :p, worker_profile: :process, threads_per_worker: 0)

      assert error.message ==
               "pool :p: invalid threads_per_worker: expected a positive integer, got 0"
    end
  end

  describe "adapter_module and adapter" do
    test "both adapter module names normalize to Snakepit.Adapters.Python" do
      for module <- [Snakepit.Adapters.Python, Snakepit.Adapters.GRPCPython] do
        assert {:ok, %Config{adapter_module: Snakepit.Adapters.Python}} =
                 Config.validate_pool(name: :p, adapter_module: module)
      end
    end

    test "another adapter module is an error" do
      error = error!(name: :p, adapter_module: MyApp.Adapter)
      assert error.message =~ "pool :p: invalid adapter_module: expected Snakepit.Adapters.Python"
      assert error.message =~ "got MyApp.Adapter"
      assert error.details.key == :adapter_module
    end

    test "adapter must be a dotted Python class path" do
      for bad <- ["ThreadedShowcaseAdapter", "", "a..B", "a.b-c.D", :"a.B", nil, ~c"a.B"] do
        error = error!(name: :p, adapter: bad)
        assert error.message =~ "pool :p: invalid adapter: expected a Python class path"
        assert error.details == %{key: :adapter, value: bad, pool: :p}
      end
    end
  end

  describe "worker_ttl" do
    test "converts to milliseconds" do
      for {ttl, ms} <- [
            {:infinity, :infinity},
            {{250, :milliseconds}, 250},
            {{30, :seconds}, 30_000},
            {{5, :minutes}, 300_000},
            {{2, :hours}, 7_200_000}
          ] do
        assert {:ok, %Config{worker_ttl: ^ms}} = Config.validate_pool(name: :p, worker_ttl: ttl)
      end
    end

    test "a bare integer is an error suggesting a unit" do
      error = error!(name: :p, worker_ttl: 3600)
      assert error.message =~ "pool :p: invalid worker_ttl: expected :infinity or {n, "
      assert error.message =~ "got 3600 (a bare integer has no unit: write {3600, :seconds}"
      assert error.details == %{key: :worker_ttl, value: 3600, pool: :p}
    end

    test "bad units and counts" do
      for bad <- [{1, :days}, {1, :hour}, {0, :seconds}, {-5, :minutes}, {1.5, :seconds}] do
        error = error!(name: :p, worker_ttl: bad)
        assert error.message =~ "pool :p: invalid worker_ttl: expected"
        assert error.message =~ "got #{inspect(bad)}"
        assert error.details == %{key: :worker_ttl, value: bad, pool: :p}
      end
    end

    test "other forms" do
      for bad <- ["1h", nil, :never, {1, "seconds"}, {:seconds, 1}] do
        error = error!(name: :p, worker_ttl: bad)

        assert error.message ==
                 "pool :p: invalid worker_ttl: expected :infinity or " <>
                   "{n, :milliseconds | :seconds | :minutes | :hours} with n a positive integer, " <>
                   "got #{inspect(bad)}"
      end
    end
  end

  test "bad worker_max_requests" do
    for bad <- [0, -1, 2.0, :never, nil, "1000"] do
      error = error!(name: :p, worker_max_requests: bad)

      assert error.message ==
               "pool :p: invalid worker_max_requests: expected :infinity or a positive integer, " <>
                 "got #{inspect(bad)}"

      assert error.details == %{key: :worker_max_requests, value: bad, pool: :p}
    end
  end

  test "bad max_queue" do
    error = error!(name: :p, max_queue: :infinity)

    assert error.message ==
             "pool :p: invalid max_queue: expected a positive integer, got :infinity"

    assert error.details == %{key: :max_queue, value: :infinity, pool: :p}
  end

  describe "adapter_env" do
    test "charlists convert to strings and a map is accepted" do
      assert {:ok, %Config{adapter_env: [{"OMP_NUM_THREADS", "4"}, {"EMPTY", ""}]}} =
               Config.validate_pool(
                 name: :p,
                 adapter_env: [{~c"OMP_NUM_THREADS", ~c"4"}, {"EMPTY", ~c""}]
               )

      assert {:ok, %Config{adapter_env: [{"A", "1"}, {"B", "2"}]}} =
               Config.validate_pool(name: :p, adapter_env: %{"B" => "2", "A" => "1"})
    end

    test "an integer value names the entry and suggests a string" do
      env = [{"OPENBLAS_NUM_THREADS", "16"}, {"OMP_NUM_THREADS", 16}]
      error = error!(name: :hpc_pool, adapter_env: env)

      assert error.message ==
               ~s(pool :hpc_pool: invalid adapter_env: entry {"OMP_NUM_THREADS", 16} has a value ) <>
                 ~s(that is not a string (write "16"\); expected {name, value} strings)

      assert error.details == %{
               key: :adapter_env,
               value: env,
               pool: :hpc_pool,
               entry: {"OMP_NUM_THREADS", 16}
             }
    end

    test "each bad entry is named" do
      for {entry, problem} <- [
            {{:OMP_NUM_THREADS, "1"}, "has a name that is not a string"},
            {"OMP_NUM_THREADS=1", "is not a {name, value} tuple"},
            {{"A", "1", "2"}, "is not a {name, value} tuple"},
            {{"", "1"}, "has an empty name"},
            {{"A=B", "1"}, ~s(has a name containing "=" or NUL)},
            {{"A", "x\0y"}, "has a value containing NUL"},
            {{"A", nil}, "has a value that is not a string"}
          ] do
        error = error!(name: :p, adapter_env: [entry])
        assert error.message =~ "pool :p: invalid adapter_env: entry #{inspect(entry)} #{problem}"
        assert error.details.entry == entry
        assert error.details.key == :adapter_env
      end
    end

    test "a name set twice" do
      error = error!(name: :p, adapter_env: [{"A", "1"}, {~c"A", "2"}])
      assert error.message =~ "entry #{inspect({~c"A", "2"})} sets A a second time"
    end

    test "not a list" do
      error = error!(name: :p, adapter_env: "A=1")
      assert error.message =~ "pool :p: invalid adapter_env: expected a list of {name, value}"
      assert error.details == %{key: :adapter_env, value: "A=1", pool: :p}
    end
  end

  test "bad thread_safety_check" do
    for bad <- ["true", nil, 1] do
      error = error!(name: :p, thread_safety_check: bad)

      assert error.message ==
               "pool :p: invalid thread_safety_check: expected true or false, got #{inspect(bad)}"

      assert error.details == %{key: :thread_safety_check, value: bad, pool: :p}
    end
  end

  test "ndarray: :list by default, :struct and :nx accepted, anything else named" do
    assert {:ok, %Config{ndarray: :list}} = Config.validate_pool(name: :p)
    assert {:ok, %Config{ndarray: :struct}} = Config.validate_pool(name: :p, ndarray: :struct)
    # Nx is looked for when the pool starts (test/snakepit/ndarray_test.exs), not here.
    assert {:ok, %Config{ndarray: :nx}} = Config.validate_pool(name: :p, ndarray: :nx)

    for bad <- [:tensor, "struct", nil] do
      error = error!(name: :p, ndarray: bad)

      assert error.message ==
               "pool :p: invalid ndarray: expected :list, :struct or :nx, got #{inspect(bad)}"

      assert error.details == %{key: :ndarray, value: bad, pool: :p}
    end
  end

  describe "python" do
    test "is an error on a thread pool" do
      error = error!(name: :p, python: "/usr/bin/python3")
      assert error.message =~ "pool :p: invalid python: a per-pool interpreter applies only"
      assert error.details == %{key: :python, value: "/usr/bin/python3", pool: :p}
    end

    test "must be a path string" do
      for bad <- ["", 3, :python3] do
        error = error!(name: :p, worker_profile: :process, python: bad)
        assert error.message =~ "pool :p: invalid python: expected nil or an interpreter path"
      end
    end
  end

  describe "adapter_args flags" do
    test "set the keys they stand for" do
      assert {:ok, config} =
               Config.validate_pool(
                 name: :p,
                 adapter_args: [
                   "--adapter",
                   "my_pkg.Adapter",
                   "--mode",
                   "threaded",
                   "--max-workers",
                   "12",
                   "--thread-safety-check"
                 ]
               )

      assert {config.adapter, config.worker_profile, config.threads_per_worker,
              config.thread_safety_check} == {"my_pkg.Adapter", :thread, 12, true}

      assert config.adapter_args == [
               "--adapter",
               "my_pkg.Adapter",
               "--mode",
               "threaded",
               "--max-workers",
               "12",
               "--thread-safety-check"
             ]
    end

    test "the --flag=value form" do
      assert {:ok, config} =
               Config.validate_pool(
                 name: :p,
                 adapter_args: [
                   "--adapter=my_pkg.Adapter",
                   "--mode=threaded",
                   "--max-workers=6",
                   "--thread-safety-check=true"
                 ]
               )

      assert {config.adapter, config.worker_profile, config.threads_per_worker,
              config.thread_safety_check} == {"my_pkg.Adapter", :thread, 6, true}

      assert {:ok, %Config{thread_safety_check: false}} =
               Config.validate_pool(name: :p, adapter_args: ["--thread-safety-check=false"])
    end

    test "--mode process sets the process profile" do
      assert {:ok, config} = Config.validate_pool(name: :p, adapter_args: ["--mode", "process"])
      assert {config.worker_profile, config.threads_per_worker} == {:process, 1}
      assert config.pool_size == System.schedulers_online()
    end

    test "flags that agree with the keys are fine, and a repeated equal flag too" do
      assert {:ok, %Config{threads_per_worker: 4, adapter: "a.B", thread_safety_check: true}} =
               Config.validate_pool(
                 name: :p,
                 threads_per_worker: 4,
                 adapter: "a.B",
                 thread_safety_check: true,
                 adapter_args:
                   ["--max-workers", "4", "--max-workers=4", "--adapter", "a.B"] ++
                     ["--thread-safety-check"]
               )
    end

    test "the gRPC server flags are errors saying why" do
      for flag <- ["--port", "--elixir-address", "--host", "--grpc-port"] do
        for args <- [[flag, "50052"], ["#{flag}=50052"]] do
          error = args_error!(args)

          assert error.message ==
                   "pool :p: invalid adapter_args: #{flag} belonged to grpc_server_threaded.py, " <>
                     "which Snakepit replaces with an in-process NIF; remove it (and its value) " <>
                     "from adapter_args"

          assert error.details == %{key: :adapter_args, value: args, pool: :p, flag: flag}
        end
      end
    end

    test "the guide's server command line fails on its first gRPC flag" do
      error =
        args_error!([
          "--port",
          "50052",
          "--adapter",
          "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter",
          "--elixir-address",
          "localhost:50051",
          "--max-workers",
          "16",
          "--thread-safety-check"
        ])

      assert error.details.flag == "--port"
    end

    test "an unknown flag is named, with a suggestion and the known flags" do
      error = args_error!(["--max-worker", "16"])

      assert error.message ==
               ~s(pool :p: invalid adapter_args: unknown flag "--max-worker" ) <>
                 "(did you mean --max-workers?); known flags: --adapter CLASS, " <>
                 "--mode threaded|process, --max-workers N, --thread-safety-check"

      assert error.details.flag == "--max-worker"

      error = args_error!(["--verbose"])
      assert error.message =~ ~s(unknown flag "--verbose"; known flags: --adapter CLASS)

      error = args_error!(["-v"])
      assert error.message =~ ~s(unknown flag "-v")
    end

    test "a stray positional argument" do
      error = args_error!(["--mode", "threaded", "16"])
      assert error.message =~ ~s(invalid adapter_args: unexpected argument "16")
      assert error.details.flag == "16"
    end

    test "a flag missing its value" do
      for {args, flag} <- [
            {["--max-workers"], "--max-workers"},
            {["--adapter", "--mode", "threaded"], "--adapter"},
            {["--mode="], "--mode"}
          ] do
        error = args_error!(args)
        assert error.message =~ "pool :p: invalid adapter_args: #{flag} is missing its value"
        assert error.details == %{key: :adapter_args, value: args, pool: :p, flag: flag}
      end
    end

    test "bad flag values" do
      error = args_error!(["--mode", "threads"])
      assert error.message =~ ~s(--mode expects threaded or process, got "threads")

      for bad <- ["0", "-2", "sixteen", "16x", "1.5"] do
        error = args_error!(["--max-workers", bad])
        assert error.message =~ "--max-workers expects a positive integer, got #{inspect(bad)}"
      end

      error = args_error!(["--adapter", "NoModule"])
      assert error.message =~ ~s(--adapter expects a Python class path)

      error = args_error!(["--thread-safety-check=maybe"])
      assert error.message =~ ~s(--thread-safety-check takes no value (or =true / =false\))
    end

    test "adapter_args must be a list of strings" do
      for bad <- ["--mode threaded", [:mode, :threaded], [~c"--mode"], nil] do
        error = error!(name: :p, adapter_args: bad)

        assert error.message ==
                 "pool :p: invalid adapter_args: expected a list of strings, got #{inspect(bad)}"
      end
    end

    test "--mode against worker_profile" do
      error = args_error!(["--mode", "threaded"], worker_profile: :process)

      assert error.message ==
               "pool :p: adapter_args --mode threaded conflicts with worker_profile: :process " <>
                 "(--mode threaded goes with :thread, --mode process with :process)"

      assert error.details.conflicts_with == :worker_profile

      error = args_error!(["--mode=process"], worker_profile: :thread)
      assert error.message =~ "--mode process conflicts with worker_profile: :thread"
    end

    test "--max-workers against threads_per_worker" do
      error = args_error!(["--max-workers", "16"], threads_per_worker: 8)

      assert error.message ==
               "pool :p: adapter_args --max-workers 16 conflicts with threads_per_worker: 8; " <>
                 "drop one of them or give the same value"

      assert error.details == %{
               key: :adapter_args,
               value: ["--max-workers", "16"],
               pool: :p,
               flag: "--max-workers",
               conflicts_with: :threads_per_worker
             }
    end

    test "--max-workers sets threads_per_worker on a process pool too" do
      assert {:ok, %Config{worker_profile: :process, threads_per_worker: 4}} =
               Config.validate_pool(
                 name: :p,
                 adapter_args: ["--mode", "process", "--max-workers", "4"]
               )

      assert {:ok, %Config{worker_profile: :process, threads_per_worker: 4}} =
               Config.validate_pool(
                 name: :p,
                 worker_profile: :process,
                 adapter_args: ["--max-workers=4"]
               )

      error = args_error!(["--max-workers", "4"], worker_profile: :process, threads_per_worker: 2)
      assert error.message =~ "--max-workers 4 conflicts with threads_per_worker: 2"
    end

    test "--adapter against adapter" do
      error = args_error!(["--adapter", "a.B"], adapter: "c.D")
      assert error.message =~ ~s(adapter_args --adapter a.B conflicts with adapter: "c.D")
      assert error.details.conflicts_with == :adapter
    end

    test "--thread-safety-check against thread_safety_check: false" do
      error = args_error!(["--thread-safety-check"], thread_safety_check: false)

      assert error.message ==
               "pool :p: adapter_args --thread-safety-check conflicts with thread_safety_check: false"
    end

    test "a flag repeated with different values" do
      error = args_error!(["--max-workers", "4", "--max-workers=8"])

      assert error.message =~
               ~s(--max-workers is given twice with different values ("4" and "8"\))
    end
  end

  test "capacity/1" do
    assert Config.capacity(%Config{name: :p, pool_size: 3, threads_per_worker: 5}) == 15
  end
end

defmodule Snakepit.ConfigEnvTest do
  # Application env and OS env are global: these tests run alone.
  use ExUnit.Case, async: false

  alias Snakepit.Config

  setup do
    saved = Application.get_all_env(:snakepit)
    saved_pythonpath = System.get_env("PYTHONPATH")
    System.delete_env("PYTHONPATH")

    on_exit(fn ->
      for {key, _} <- Application.get_all_env(:snakepit),
          not Keyword.has_key?(saved, key),
          do: Application.delete_env(:snakepit, key)

      for {key, value} <- saved, do: Application.put_env(:snakepit, key, value)

      if saved_pythonpath,
        do: System.put_env("PYTHONPATH", saved_pythonpath),
        else: System.delete_env("PYTHONPATH")
    end)

    for key <- [:pools, :default_pool, :python_path, :venv, :python_deps, :python_requirements],
        do: Application.delete_env(:snakepit, key)

    :ok
  end

  describe "pools/0" do
    test "no pools configured" do
      assert Config.pools() == {:ok, []}
    end

    test "validates every pool in order" do
      Application.put_env(:snakepit, :pools, [
        %{name: :a, pool_size: 2},
        [name: :b, worker_profile: :process, pool_size: 1]
      ])

      assert {:ok, [%Config{name: :a, pool_size: 2}, %Config{name: :b, worker_profile: :process}]} =
               Config.pools()
    end

    test "duplicate names are an error naming the pool" do
      Application.put_env(:snakepit, :pools, [
        %{name: :a},
        %{name: :hpc_pool},
        [name: :hpc_pool, pool_size: 2]
      ])

      assert {:error, %Snakepit.Error{category: :validation} = error} = Config.pools()

      assert error.message ==
               "pool :hpc_pool is configured more than once in config :snakepit, :pools"

      assert error.details == %{key: :name, value: :hpc_pool, pool: :hpc_pool}
    end

    test "returns the first invalid pool's error" do
      Application.put_env(:snakepit, :pools, [%{name: :a}, %{name: :b, pool_size: 0}])
      assert {:error, error} = Config.pools()
      assert error.message == "pool :b: invalid pool_size: expected a positive integer, got 0"
    end

    test "pools must be a list" do
      Application.put_env(:snakepit, :pools, %{name: :a})
      assert {:error, error} = Config.pools()
      assert error.message =~ "invalid config :snakepit, :pools: expected a list"
      assert error.details.key == :pools
    end
  end

  describe "default_pool/0" do
    test "nil without pools" do
      assert Config.default_pool() == nil
    end

    test "the first configured pool" do
      Application.put_env(:snakepit, :pools, [[name: :first], %{name: :second}])
      assert Config.default_pool() == :first
    end

    test "the configured default wins" do
      Application.put_env(:snakepit, :pools, [%{name: :first}, %{name: :second}])
      Application.put_env(:snakepit, :default_pool, :second)
      assert Config.default_pool() == :second
    end

    test "a non-atom default is an error" do
      Application.put_env(:snakepit, :default_pool, "second")

      assert_raise Snakepit.Error,
                   ~r/invalid config :snakepit, :default_pool/,
                   &Config.default_pool/0
    end
  end

  describe "validate_global/0" do
    test "the global keys as this project configures them" do
      Application.put_env(:snakepit, :pools, [%{name: :a}, [name: :b, worker_profile: :process]])
      Application.put_env(:snakepit, :default_pool, :b)
      Application.put_env(:snakepit, :python_path, ["priv/python", ~c"/opt/lib"])
      Application.put_env(:snakepit, :python, "/usr/bin/python3")
      assert Config.validate_global() == :ok

      Application.delete_env(:snakepit, :python)
      for key <- [:pools, :default_pool, :python_path], do: Application.delete_env(:snakepit, key)
      assert Config.validate_global() == :ok
    end

    test "a misspelt key is an error suggesting the key meant" do
      Application.put_env(:snakepit, :pyhton_path, ["priv/python"])
      assert {:error, %Snakepit.Error{category: :validation} = error} = Config.validate_global()

      assert error.message ==
               "config :snakepit: unknown key :pyhton_path; did you mean :python_path? " <>
                 "(valid keys: :pools, :default_pool, :python_path, :python, :venv, " <>
                 ":python_deps, :python_requirements, :reload, :reload_interval, :large_data_shm, " <>
                 ":large_data_shm_min, :large_data_shm_dir, :large_data_arena, " <>
                 ":large_data_arena_retain, :large_data_arena_idle, :functions)"

      assert error.details == %{
               key: :pyhton_path,
               value: ["priv/python"],
               pool: nil,
               suggestion: :python_path,
               valid_keys: [
                 :pools,
                 :default_pool,
                 :python_path,
                 :python,
                 :venv,
                 :python_deps,
                 :python_requirements,
                 :reload,
                 :reload_interval,
                 :large_data_shm,
                 :large_data_shm_min,
                 :large_data_shm_dir,
                 :large_data_arena,
                 :large_data_arena_retain,
                 :large_data_arena_idle,
                 :functions
               ]
             }
    end

    test "an unknown key without a close match is an error without a suggestion" do
      Application.put_env(:snakepit, :colour, :blue)
      assert {:error, error} = Config.validate_global()
      assert error.message =~ "config :snakepit: unknown key :colour (valid keys: :pools,"
      refute error.message =~ "did you mean"
      assert error.details.suggestion == nil

      Application.delete_env(:snakepit, :colour)
      Application.put_env(:snakepit, :default_pol, :a)
      assert {:error, error} = Config.validate_global()
      assert error.message =~ "unknown key :default_pol; did you mean :default_pool?"
    end

    test "bad values name the key" do
      for {key, value, expected} <- [
            {:default_pool, "second", "expected nil or an atom"},
            {:python_path, [:priv], "expected a path, an {app, path} tuple, or a list of those"},
            {:python_path, [{"my_app", "priv"}],
             "expected a path, an {app, path} tuple, or a list of those"},
            {:python, 3, "expected nil or a path"},
            {:venv, :dot_venv, "expected nil or a path"},
            {:python_deps, "numpy", "expected a list of strings"},
            {:python_deps, [:numpy], "expected a list of strings"},
            {:python_requirements, ["requirements.txt"], "expected nil or a path"},
            {:reload, true, "expected :manual or :auto"},
            {:reload_interval, 0, "expected a positive integer"},
            {:large_data_shm, "yes", "expected true or false"},
            {:large_data_shm_min, 0, "expected a positive integer"},
            {:large_data_shm_dir, 5, "expected a path"},
            {:large_data_arena, -1, "expected a non-negative integer"},
            {:large_data_arena_retain, :all, "expected a non-negative integer"},
            {:large_data_arena_idle, 0, "expected a positive integer"},
            {:pools, %{name: :a}, "expected a list of pool configs"}
          ] do
        Application.put_env(:snakepit, key, value)
        assert {:error, %Snakepit.Error{category: :validation} = error} = Config.validate_global()

        assert error.message ==
                 "invalid config :snakepit, #{inspect(key)}: #{expected}, got #{inspect(value)}"

        assert error.details == %{key: key, value: value, pool: nil}
        Application.delete_env(:snakepit, key)
      end
    end

    test "a bad pool is that pool's error" do
      Application.put_env(:snakepit, :pools, [%{name: :a, pool_sise: 2}])
      assert {:error, error} = Config.validate_global()
      assert error.message =~ "pool :a: unknown key :pool_sise; did you mean :pool_size?"
    end

    test "the dependency and venv keys" do
      Application.put_env(:snakepit, :python_deps, ["numpy>=2", "pillow"])
      Application.put_env(:snakepit, :python_requirements, "requirements.txt")
      Application.put_env(:snakepit, :python_path, [{:my_app, "priv/python"}, "/opt/lib"])
      assert Config.validate_global() == :ok

      Application.put_env(:snakepit, :python_dpes, ["numpy"])
      assert {:error, error} = Config.validate_global()
      assert error.message =~ "unknown key :python_dpes; did you mean :python_deps?"
    end

    test "the application does not start with a bad key, and says which, readably" do
      Application.put_env(:snakepit, :pyhton_path, [])

      assert {:error, {%Snakepit.Error{details: %{key: :pyhton_path}} = error, [_ | _] = stack}} =
               Snakepit.Application.start(:normal, [])

      assert error.message =~ "did you mean :python_path?"

      # What Mix prints ("Could not start application snakepit: ...") and the logger logs: the
      # exception's message as text, not an inspected struct.
      text =
        Application.format_error({{error, stack}, {Snakepit.Application, :start, [:normal, []]}})

      assert text =~ "** (Snakepit.Error) [validation] config :snakepit: unknown key :pyhton_path"
      refute text =~ "%Snakepit.Error{"
    end
  end

  describe "python_path/0" do
    test "empty by default" do
      assert Config.python_path() == []
    end

    test "expands configured paths, then PYTHONPATH" do
      Application.put_env(:snakepit, :python_path, ["priv/python", ~c"/opt/lib", "/opt/lib"])
      System.put_env("PYTHONPATH", "/env/one::/env/two")

      assert Config.python_path() == [
               Path.expand("priv/python"),
               "/opt/lib",
               "/env/one",
               "/env/two"
             ]
    end

    test "accepts a single path" do
      Application.put_env(:snakepit, :python_path, "/srv/py")
      assert Config.python_path() == ["/srv/py"]

      Application.put_env(:snakepit, :python_path, ~c"/srv/py")
      assert Config.python_path() == ["/srv/py"]
    end

    test "a bad entry raises" do
      Application.put_env(:snakepit, :python_path, [:priv])
      assert_raise Snakepit.Error, ~r/:python_path: expected a path/, &Config.python_path/0
    end

    test "an {app, path} entry is a directory of the installed application, resolved when read" do
      Application.put_env(:snakepit, :python_path, [{:snakepit, "priv/python"}, "/opt/lib"])
      assert Config.python_path() == [Application.app_dir(:snakepit, "priv/python"), "/opt/lib"]

      Application.put_env(:snakepit, :python_path, {:snakepit, ~c"priv"})
      assert Config.python_path() == [Application.app_dir(:snakepit, "priv")]
    end

    test "an {app, path} entry naming no installed application raises, naming it" do
      Application.put_env(:snakepit, :python_path, [{:no_such_app, "priv/python"}])
      assert Config.validate_global() == :ok

      error = assert_raise Snakepit.Error, &Config.python_path/0

      assert error.message ==
               ~s(invalid config :snakepit, :python_path: {:no_such_app, "priv/python"} names ) <>
                 "the application :no_such_app, which is not installed (not in the code path " <>
                 "of this node)"
    end
  end

  describe "venv/0" do
    test "nil unless configured" do
      if System.get_env("SNAKEPIT_VENV") in [nil, ""], do: assert(Config.venv() == nil)
    end

    test "config :snakepit, venv: expanded" do
      # The venv the NIF is built with, given relative to the current directory, so that pools
      # that start meanwhile in other tests are not disturbed.
      {:ok, %{venv: venv}} = Snakepit.Runtime.build_info()

      if venv && System.get_env("SNAKEPIT_VENV") in [nil, ""] do
        Application.put_env(:snakepit, :venv, Path.relative_to_cwd(venv))
        assert Config.venv() == venv
      end
    end
  end
end
