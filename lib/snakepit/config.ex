defmodule Snakepit.Config do
  # Each key is declared once, in @pool_keys or @global_keys: the struct, its type, the
  # validation and the "## Options" part of the moduledoc are generated from those lists. A key
  # has a `type` (a key of @types, or {:or, literal, type}), a `doc`, and `required: true`, a
  # `default`, or `by_profile: [thread: v, process: v]` (v may be a zero-arity remote function,
  # called when a config is validated). `profiles: [...]` limits a key to those worker profiles
  # (`profile_error` says why). A new key is one more entry; a new kind of value is one more
  # entry of @types and clause of cast/2. The adapter_args flags are declared in @flags and all
  # applied by apply_flags/2.

  alias Snakepit.Error

  @ttl_units [milliseconds: 1, seconds: 1_000, minutes: 60_000, hours: 3_600_000]
  units = Enum.reduce(Enum.reverse(Keyword.keys(@ttl_units)), &{:|, [], [&1, &2]})

  # type => {what a value must be, its typespec normalized, its typespec as written if different}
  @types %{
    pool_name: {"an atom", quote(do: atom())},
    profile:
      {":thread, :process or :subinterpreter", quote(do: :thread | :process | :subinterpreter)},
    pos_integer: {"a positive integer", quote(do: pos_integer())},
    non_neg_integer: {"a non-negative integer", quote(do: non_neg_integer())},
    boolean: {"true or false", quote(do: boolean())},
    ndarray_mode: {":list, :struct or :nx", quote(do: :list | :struct | :nx)},
    adapter_module:
      {"Snakepit.Adapters.Python (or its alias Snakepit.Adapters.GRPCPython)",
       quote(do: module())},
    python_class: {~s(a Python class path such as "package.module.Class"), quote(do: String.t())},
    strings: {"a list of strings", quote(do: [String.t()])},
    env: {"a list of {name, value} string tuples", quote(do: [{String.t(), String.t()}])},
    duration:
      {":infinity or {n, #{Macro.to_string(units)}} with n a positive integer",
       quote(do: :infinity | pos_integer()),
       quote(do: :infinity | {pos_integer(), unquote(units)})},
    interpreter: {"an interpreter path (a string)", quote(do: String.t())},
    path: {"a path", quote(do: String.t())},
    paths:
      {"a path, an {app, path} tuple, or a list of those",
       quote(do: [String.t() | {atom(), String.t()}]),
       quote(do: String.t() | {atom(), String.t()} | [String.t() | {atom(), String.t()}])},
    pools: {"a list of pool configs", quote(do: [t()]), quote(do: [pool_config()])},
    reload_mode: {":manual or :auto", quote(do: :manual | :auto)},
    functions:
      {"a keyword list of name: function (a fun or a {module, function} tuple)",
       quote(do: [{atom(), function() | {module(), atom()}}])}
  }

  # flag, the key it sets, and its argument: a placeholder (the value is read as the key's
  # type), a list of {word, value}, or :switch (no value, or =true / =false).
  @flags [
    {"--adapter", :adapter, "CLASS"},
    {"--mode", :worker_profile, [{"threaded", :thread}, {"process", :process}]},
    {"--max-workers", :threads_per_worker, "N"},
    {"--thread-safety-check", :thread_safety_check, :switch}
  ]

  # The flags of the gRPC server that the in-process NIF replaces: errors asking for removal.
  @grpc_flags ["--port", "--elixir-address", "--host", "--grpc-port"]

  usage = fn
    {flag, _, :switch} -> flag
    {flag, _, words} when is_list(words) -> "#{flag} #{Enum.map_join(words, "|", &elem(&1, 0))}"
    {flag, _, placeholder} -> "#{flag} #{placeholder}"
  end

  @usage Map.new(@flags, &{elem(&1, 0), usage.(&1)})
  @all_usage Enum.map_join(@flags, ", ", usage)

  flags_doc =
    Enum.map_join(@flags, ";\n", fn
      {flag, key, :switch} ->
        "* `#{flag}` sets `#{inspect(key)}` to `true` (`#{flag}=false` is accepted too)"

      {_, key, words} = f when is_list(words) ->
        meaning = Enum.map_join(words, ", ", fn {word, v} -> "`#{word}` is `#{inspect(v)}`" end)
        "* `#{usage.(f)}` sets `#{inspect(key)}` (#{meaning})"

      {_, key, _} = f ->
        "* `#{usage.(f)}` sets `#{inspect(key)}`"
    end)

  @pool_keys [
    name: [
      type: :pool_name,
      required: true,
      doc: "the pool's name, as in `Snakepit.execute(:hpc_pool, ...)`."
    ],
    worker_profile: [
      type: :profile,
      default: :thread,
      doc: """
      `:thread` runs the adapter on native threads inside the BEAM's embedded interpreter;
      `:process` runs it in Python OS processes (`python -m snakepit_bridge.worker`);
      `:subinterpreter` (CPython 3.12 or later) runs each worker in its own subinterpreter
      with its own GIL, inside the BEAM (README, "Subinterpreter workers").
      """
    ],
    pool_size: [
      type: :pos_integer,
      by_profile: [
        thread: 1,
        process: &System.schedulers_online/0,
        subinterpreter: &System.schedulers_online/0
      ],
      doc: "the number of workers (adapter instances)."
    ],
    threads_per_worker: [
      type: :pos_integer,
      by_profile: [thread: 8, process: 1, subinterpreter: 1],
      doc: """
      the threads that call each worker's adapter instance, in either profile: native threads
      for `:thread`, threads of the worker's OS process for `:process`. A pool runs
      `pool_size * threads_per_worker` calls at once (`capacity/1`).
      """
    ],
    adapter_module: [
      type: :adapter_module,
      default: Snakepit.Adapters.Python,
      doc: """
      the Elixir side of the adapter. `Snakepit.Adapters.GRPCPython` is accepted as an alias
      and normalized to `Snakepit.Adapters.Python`; any other module is an error.
      """
    ],
    adapter: [
      type: :python_class,
      default: "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter",
      doc: "the Python adapter class as a dotted path `\"package.module.Class\"`."
    ],
    adapter_args: [
      type: :strings,
      default: [],
      doc: """
      the guide's command-line flags, kept as given in the struct and applied to the keys they
      stand for:

      #{flags_doc}.

      Each flag also takes the `--flag=value` form. A flag that disagrees with a key given in
      the same config is an error naming both, as is an unknown flag or a flag missing its
      value. The gRPC server flags #{Enum.map_join(@grpc_flags, ", ", &"`#{&1}`")} belonged
      to `grpc_server_threaded.py`, which Snakepit replaces with an in-process NIF: they are an
      error asking for their removal.
      """
    ],
    adapter_env: [
      type: :env,
      default: [],
      doc: """
      environment variables set before the adapter module is imported, such as
      `{"OMP_NUM_THREADS", "16"}`. Names and values are strings (charlists are converted; a
      map is accepted and sorted by name). A name may appear once.
      """
    ],
    worker_ttl: [
      type: :duration,
      default: :infinity,
      doc: """
      recycle a worker's adapter instance after this long. Normalized to milliseconds
      (`{3600, :seconds}` becomes `3_600_000`). A bare integer is an error, since its unit
      would be a guess.
      """
    ],
    worker_max_requests: [
      type: {:or, :infinity, :pos_integer},
      default: :infinity,
      doc: "recycle a worker's adapter instance after this many requests."
    ],
    max_queue: [
      type: :pos_integer,
      default: 10_000,
      doc: """
      jobs waiting for a thread; a call to a full queue gets
      `{:error, %Snakepit.Error{category: :pool}}` at once.
      """
    ],
    thread_safety_check: [
      type: :boolean,
      default: false,
      doc: "run the adapter under `snakepit_bridge.thread_safety_checker`."
    ],
    ndarray: [
      type: :ndarray_mode,
      default: :list,
      doc: """
      how NumPy arrays in results (and stream items) cross: `:list` as (nested) lists,
      `:struct` as `%Snakepit.NDArray{}`, `:nx` as `%Nx.Tensor{}` (`:struct` in Python,
      converted in Elixir; Nx must be loaded when the pool starts, else
      `Snakepit.start_pool/1` returns a `:validation` error). README, "Large data". A call's
      `ndarray:` option overrides it.
      """
    ],
    python: [
      type: {:or, nil, :interpreter},
      default: nil,
      profiles: [:process],
      profile_error:
        "a per-pool interpreter applies only to worker_profile :process; a :thread pool runs " <>
          "in the node's embedded interpreter (chosen at build time by SNAKEPIT_PYTHON or " <>
          "config :snakepit, python: ...)",
      doc: """
      the interpreter of the pool's worker processes; `nil` means the interpreter Snakepit
      was built for. A `:thread` pool always runs in the node's embedded interpreter (chosen
      at build time with `SNAKEPIT_PYTHON` or `config :snakepit, python: ...`).
      """
    ],
    startup_timeout: [
      type: :pos_integer,
      default: 60_000,
      doc: "how long, in milliseconds, a worker may take to import and construct its adapter."
    ]
  ]

  @global_keys [
    pools: [
      type: :pools,
      default: [],
      doc: """
      the pools started with the application, each validated like `validate_pool/1`; two
      pools may not share a name. Read by `pools/0`.
      """
    ],
    default_pool: [
      type: {:or, nil, :pool_name},
      default: nil,
      doc: """
      the pool of `Snakepit.execute/3` without `:pool_name`; `nil` means the first configured
      pool. Read by `default_pool/0`.
      """
    ],
    python_path: [
      type: :paths,
      default: [],
      doc: """
      extra directories put on Python's `sys.path`. An `{app, path}` entry such as
      `{:my_app, "priv/python"}` is a directory of an application, resolved with
      `Application.app_dir/2` when a pool starts, so it follows a release wherever it is
      installed; a string is expanded to an absolute path (relative ones against the current
      directory). The entries of the `PYTHONPATH` environment variable follow. Read by
      `python_path/0`.
      """
    ],
    python: [
      type: {:or, nil, :path},
      default: nil,
      doc: """
      the interpreter to build the NIF for (the `SNAKEPIT_PYTHON` environment variable wins);
      read at build time. Unset, the NIF is built for the app's venv when it exists (see
      `:venv`), else for the first Python on `PATH`.
      """
    ],
    venv: [
      type: {:or, nil, :path},
      default: nil,
      doc: """
      the app's Python venv: `mix snakepit.setup` creates it and installs `:python_deps`
      into it, and the NIF is built for its interpreter unless `:python` or `SNAKEPIT_PYTHON`
      names another. `nil` means `.venv` in the app for those two. When it is set (or the
      `SNAKEPIT_VENV` environment variable is, which wins), it is also the venv used at run
      time: its site-packages are on `sys.path` and `:process` workers run its python, so
      `config/runtime.exs` or `SNAKEPIT_VENV` can point a release at the venv of the machine it
      runs on. A venv set so that does not exist, or was made from another Python version than
      the NIF's, stops the application from starting with an error naming it. Relative paths
      are taken from the app's directory by Mix tasks and from the current directory at run
      time. Read by `venv/0`.
      """
    ],
    python_deps: [
      type: :strings,
      default: [],
      doc: """
      the Python packages the app needs, as pip requirements (`["numpy>=2", "pillow"]`),
      installed from PyPI into the app's venv by `mix snakepit.setup`. `mix compile` warns when
      the Python it builds for lacks one.
      """
    ],
    python_requirements: [
      type: {:or, nil, :path},
      default: nil,
      doc: """
      a pip requirements file, relative to the app's directory (`"requirements.txt"`),
      installed like `:python_deps` (which may be used with it).
      """
    ],
    reload: [
      type: :reload_mode,
      default: :manual,
      doc: """
      `:auto` (for development) watches the `.py` files under `:python_path` and reloads the
      pools whose adapter depends on a changed file (`Snakepit.Reloader`); `:manual` leaves it
      to `Snakepit.reload/1`.
      """
    ],
    reload_interval: [
      type: :pos_integer,
      default: 1_000,
      doc: "how often `reload: :auto` looks at the files, in milliseconds."
    ],
    large_data_shm: [
      type: :boolean,
      default: true,
      doc: """
      `:process` pools move binaries of `:large_data_shm_min` bytes and more through
      shared-memory files instead of the worker's port (Linux; README "Large data"); `false`
      sends everything through the port.
      """
    ],
    large_data_shm_min: [
      type: :pos_integer,
      default: 1_048_576,
      doc: "the size in bytes from which a binary goes through a shared-memory file."
    ],
    large_data_shm_dir: [
      type: :path,
      default: "/dev/shm",
      doc: "where those files are made (a tmpfs); without it everything goes through the port."
    ],
    large_data_arena: [
      type: :non_neg_integer,
      default: 1_073_741_824,
      doc: """
      the size in bytes of the shared-memory arenas through which `:process` pools move
      binaries of `:large_data_shm_min` bytes and more at memory speed: one per pool for
      arguments, one per worker for results (docs/architecture.md, "Large data"). The size is
      virtual: pages are allocated as they are used. A binary that does not fit goes through
      a fresh shared-memory file; `0` turns the arenas off.
      """
    ],
    large_data_arena_retain: [
      type: :non_neg_integer,
      default: 134_217_728,
      doc: """
      how many bytes of an arena's freed space keep their pages, so that the next large call
      does not pay for new ones; freed space above that goes back to the kernel.
      """
    ],
    large_data_arena_idle: [
      type: :pos_integer,
      default: 10_000,
      doc: """
      after how many milliseconds without a large argument or result a pool gives all the
      free pages of its arenas back to the kernel.
      """
    ],
    functions: [
      type: :functions,
      default: [],
      doc: """
      Elixir functions Python may call with `snakepit_bridge.elixir.call(name, ...)`, as
      `[fetch_user: {MyApp.Users, :fetch}, now: &DateTime.utc_now/0]`; registered when the
      application starts (see `Snakepit.register_function/2`). Read by `functions/0`.
      """
    ]
  ]

  @profiles [:thread, :process, :subinterpreter]
  @default_profile @pool_keys[:worker_profile][:default]
  @pool_types Map.new(@pool_keys, fn {key, opts} -> {key, opts[:type]} end)

  for {key, opts} <- @pool_keys, by = opts[:by_profile] do
    if Keyword.keys(by) != @profiles, do: raise("#{key}: by_profile needs #{inspect(@profiles)}")
  end

  # The typespec of a type: `which` is 1 for the normalized value, 2 for the value as written.
  type_spec = fn type, which -> elem(@types[type], min(which, tuple_size(@types[type]) - 1)) end

  spec = fn
    {:or, literal, type}, which -> {:|, [], [literal, type_spec.(type, which)]}
    type, which -> type_spec.(type, which)
  end

  show = fn
    fun when is_function(fun) -> "`#{String.trim_leading(inspect(fun), "&")}`"
    value -> "`#{inspect(value)}`"
  end

  options_doc = fn keys ->
    Enum.map_join(keys, "\n\n", fn {key, opts} ->
      default =
        cond do
          opts[:required] ->
            "required"

          by = opts[:by_profile] ->
            Enum.map_join(by, ", ", &"#{show.(elem(&1, 1))} for `:#{elem(&1, 0)}`")

          true ->
            show.(opts[:default])
        end

      only = if p = opts[:profiles], do: ", #{Enum.map_join(p, " or ", &"`#{inspect(&1)}`")} only"

      flag =
        with {flag, _, _} <- List.keyfind(@flags, key, 1),
             do: " When absent, `#{flag}` in `:adapter_args` may set it."

      # One line per paragraph or list item (IEx rewraps them), indented under this item.
      text =
        (String.trim(opts[:doc]) <> "#{flag}")
        |> String.replace(~r/(?<!\n)\n(?![\n*])/, " ")
        |> String.replace("\n", "\n    ")

      "  * `#{inspect(key)}` (`#{Macro.to_string(spec.(opts[:type], 2))}`, " <>
        "#{if opts[:required], do: "", else: "default "}#{default}#{only}) — #{text}"
    end)
  end

  @moduledoc """
  Validates and normalizes Snakepit configuration.

  Pools are configured under `config :snakepit, pools: [...]`, one map (or keyword list) per
  pool. `validate_pool/1` checks one pool config and returns a `%Snakepit.Config{}` struct with
  every default filled in; `pools/0` does the same for every configured pool. A bad key or value
  is a `%Snakepit.Error{category: :validation}` whose message names the pool and the key, and
  whose `details` hold `:key`, `:value` and `:pool`; an unknown key also gets the closest valid
  key as a suggestion:

      iex> {:error, error} = Snakepit.Config.validate_pool(%{name: :hpc_pool, threads_per_worker: 0})
      iex> error.message
      "pool :hpc_pool: invalid threads_per_worker: expected a positive integer, got 0"
      iex> error.details
      %{key: :threads_per_worker, value: 0, pool: :hpc_pool}

  The configuration of the threaded workers guide validates as written:

      config :snakepit,
        pools: [
          %{
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
        ]

  ## Options

  Keys of one pool config (validated when the pool starts):

  #{options_doc.(@pool_keys)}

  Global keys of `config :snakepit`, validated by `validate_global/0` when the application
  starts (which fails with the error). Only Snakepit reads this environment, so any other key
  is an error too, naming the closest valid key when there is one:

  #{options_doc.(@global_keys)}
  """

  @typedoc "A worker profile: see `:worker_profile` under Options."
  @type worker_profile :: unquote(spec.(:profile, 1))

  @typedoc "A validated pool config: every key of one pool config, defaults filled in."
  @type t :: %__MODULE__{
          unquote_splicing(for {key, opts} <- @pool_keys, do: {key, spec.(opts[:type], 1)})
        }

  @typedoc "One pool's configuration as written by the user: a map or a keyword list."
  @type pool_config :: map() | keyword()

  # The default profile's defaults (nil for those computed when a config is validated).
  defstruct (for {key, opts} <- @pool_keys do
               default = Keyword.get(opts[:by_profile] || [], @default_profile, opts[:default])
               {key, if(is_function(default), do: nil, else: default)}
             end)

  ## Public API

  @doc """
  Validates one pool config (a map or a keyword list) and returns it normalized.

  Every key is described in the module's `## Options`. A `%Snakepit.Config{}` is accepted too
  and validates to itself.

  ## Examples

      iex> {:ok, config} = Snakepit.Config.validate_pool(name: :p, worker_ttl: {1, :hours})
      iex> {config.worker_ttl, config.pool_size, config.threads_per_worker}
      {3_600_000, 1, 8}

      iex> {:error, error} = Snakepit.Config.validate_pool(name: :p, thread_per_worker: 4)
      iex> error.message =~ "did you mean :threads_per_worker?"
      true
  """
  @spec validate_pool(pool_config() | t()) :: {:ok, t()} | {:error, Error.t()}
  def validate_pool(%__MODULE__{} = config) do
    # Back to what a user writes, so that a struct validates to itself.
    for {key, value} <- Map.from_struct(config), into: %{} do
      if @pool_types[key] == :duration and is_integer(value),
        do: {key, {value, :milliseconds}},
        else: {key, value}
    end
    |> validate_pool()
  end

  def validate_pool(config) when is_map(config) and not is_struct(config),
    do: validate_entries(Map.to_list(config))

  def validate_pool(config) when is_list(config) do
    if Keyword.keyword?(config),
      do: validate_entries(config),
      else: {:error, invalid_config(config)}
  end

  def validate_pool(config), do: {:error, invalid_config(config)}

  @doc """
  Validates every key of `config :snakepit` (see the module's `## Options`), pools included.

  Called when the application starts, which fails with the error. Returns the first
  `%Snakepit.Error{category: :validation}`; its `details` hold `:key` and `:value`, and for an
  unknown key `:suggestion` (the closest valid key, or `nil`) and `:valid_keys`.
  """
  @spec validate_global() :: :ok | {:error, Error.t()}
  def validate_global do
    with :ok <- check_keys(Application.get_all_env(:snakepit), @global_keys, :global) do
      Enum.find_value(@global_keys, :ok, fn {key, _} -> with {:ok, _} <- global(key), do: nil end)
    end
  end

  @doc """
  Validates every pool of `config :snakepit, pools: [...]`.

  Returns the normalized pools in their configured order, or the first error. Two pools with the
  same name are an error naming the pool.
  """
  @spec pools() :: {:ok, [t()]} | {:error, Error.t()}
  def pools, do: global(:pools)

  @doc """
  Validates `config :snakepit, functions: [...]`: `{:ok, [{name_string, function}]}` or the
  error naming the bad entry.
  """
  @spec functions() ::
          {:ok, [{String.t(), function() | {module(), atom()}}]} | {:error, Error.t()}
  def functions, do: global(:functions)

  @doc """
  The default pool's name: `config :snakepit, default_pool: name`, else the name of the first
  configured pool, else `nil`.

  Raises `Snakepit.Error` (`:validation`) when `:default_pool` is set to something other than
  an atom.
  """
  @spec default_pool() :: atom() | nil
  def default_pool do
    case global!(:default_pool) do
      nil ->
        # The first configured pool's name, if it has a valid one.
        with [first | _] when is_map(first) or is_list(first) <-
               Application.get_env(:snakepit, :pools, []),
             {:name, name} <- Enum.find(first, &match?({:name, _}, &1)),
             {:ok, name} <- cast(:pool_name, name) do
          name
        else
          _ -> nil
        end

      name ->
        name
    end
  end

  @doc """
  The extra directories for Python's `sys.path`, as absolute paths.

  `config :snakepit, python_path: ...` (one entry or a list) comes first, then the entries of
  the `PYTHONPATH` environment variable. A string (or charlist) entry is expanded with
  `Path.expand/1`; an `{app, path}` entry is `Application.app_dir(app, path)`, resolved now
  (a pool calls this when it starts), so in a release it is the directory of the installed
  application. Empty entries and duplicates are dropped.

  Raises `Snakepit.Error` (`:validation`) when an entry is not a path, or names an application
  that is not installed.

      config :snakepit, python_path: [{:my_app, "priv/python"}, "/opt/shared/python"]
  """
  @spec python_path() :: [String.t()]
  def python_path do
    separator = if match?({:win32, _}, :os.type()), do: ";", else: ":"
    from_env = String.split(System.get_env("PYTHONPATH", ""), separator)

    (global!(:python_path) ++ from_env)
    |> Enum.reject(&(&1 == ""))
    |> Enum.map(&resolve_path/1)
    |> Enum.uniq()
  end

  defp resolve_path({app, path} = entry) do
    Application.app_dir(app, path)
  rescue
    ArgumentError ->
      raise error(
              "invalid config :snakepit, :python_path: #{show(entry)} names the application " <>
                "#{inspect(app)}, which is not installed (not in the code path of this node)",
              %{key: :python_path, value: entry, pool: nil}
            )
  end

  defp resolve_path(path), do: Path.expand(path)

  @doc """
  `config :snakepit, large_data_shm: ..., large_data_shm_min: ..., large_data_shm_dir: ...`:
  `{on?, min_bytes, dir}`. Raises `Snakepit.Error` (`:validation`) on a bad value.
  """
  @spec large_data_shm() :: {boolean(), pos_integer(), String.t()}
  def large_data_shm,
    do: {global!(:large_data_shm), global!(:large_data_shm_min), global!(:large_data_shm_dir)}

  @doc """
  `config :snakepit, large_data_arena: ..., large_data_arena_retain: ...,
  large_data_arena_idle: ...`: `{bytes, retain, idle_ms}` (`bytes` 0: no arenas). Raises
  `Snakepit.Error` (`:validation`) on a bad value.
  """
  @spec large_data_arena() :: {non_neg_integer(), non_neg_integer(), pos_integer()}
  def large_data_arena,
    do:
      {global!(:large_data_arena), global!(:large_data_arena_retain),
       global!(:large_data_arena_idle)}

  @doc "`config :snakepit, reload: ..., reload_interval: ...`: the mode and the poll interval."
  @spec reload() :: {:manual | :auto, pos_integer()}
  def reload, do: {global!(:reload), global!(:reload_interval)}

  @doc """
  The venv to use at run time, as an absolute path, or `nil` for the one the NIF was built
  with: the `SNAKEPIT_VENV` environment variable, else `config :snakepit, venv: ...` (relative
  paths against the current directory). See `:venv` under Options.

  Raises `Snakepit.Error` (`:validation`) when `:venv` is not a path.
  """
  @spec venv() :: String.t() | nil
  def venv do
    case System.get_env("SNAKEPIT_VENV") do
      env when env not in [nil, ""] ->
        Path.expand(env)

      _ ->
        case global!(:venv) do
          nil -> nil
          path -> Path.expand(path)
        end
    end
  end

  @doc """
  The number of calls a pool runs at once: `pool_size * threads_per_worker`.

      iex> Snakepit.Config.capacity(%Snakepit.Config{name: :p, pool_size: 4, threads_per_worker: 16})
      64
  """
  @spec capacity(t()) :: pos_integer()
  def capacity(%__MODULE__{pool_size: pool_size, threads_per_worker: threads}),
    do: pool_size * threads

  ## Validation

  defp global(key) do
    %{type: type, default: default} = Map.new(@global_keys[key])
    value = Application.get_env(:snakepit, key, default)

    case cast(type, value) do
      {:ok, _} = ok -> ok
      error -> {:error, invalid(:global, key, type, value, error)}
    end
  end

  defp global!(key) do
    case global(key) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  defp validate_entries(entries) do
    pool =
      case List.keyfind(entries, :name, 0) do
        {:name, name} -> if match?({:ok, _}, cast(:pool_name, name)), do: name
        nil -> nil
      end

    with :ok <- check_keys(entries, @pool_keys, {:pool, pool}),
         :ok <- check_repeated_keys(entries, pool),
         {:ok, given} <- cast_given(entries, pool),
         {:ok, given} <- apply_flags(given, pool) do
      profile = Map.get(given, :worker_profile, @default_profile)

      Enum.reduce_while(@pool_keys, {:ok, %__MODULE__{}}, fn {key, opts}, {:ok, config} ->
        case Map.fetch(given, key) do
          {:ok, value} ->
            if profile in Keyword.get(opts, :profiles, @profiles) or value == opts[:default],
              do: {:cont, {:ok, Map.put(config, key, value)}},
              else:
                {:halt, {:error, invalid({:pool, pool}, key, nil, value, wrong_profile(opts))}}

          :error ->
            default = Keyword.get(opts[:by_profile] || [], profile, opts[:default])

            {:cont,
             {:ok, Map.put(config, key, if(is_function(default), do: default.(), else: default))}}
        end
      end)
    end
  end

  defp check_keys(entries, schema, scope) do
    case Enum.find(entries, fn {key, _} -> not List.keymember?(schema, key, 0) end) do
      nil ->
        :ok

      {key, value} ->
        valid = Keyword.keys(schema)
        suggestion = suggest(key, valid)
        hint = if suggestion, do: "; did you mean #{inspect(suggestion)}?", else: ""
        where = if scope == :global, do: "config :snakepit: ", else: prefix(elem(scope, 1))

        {:error,
         error(
           "#{where}unknown key #{inspect(key)}#{hint} " <>
             "(valid keys: #{Enum.map_join(valid, ", ", &inspect/1)})",
           %{
             key: key,
             value: value,
             pool: pool_of(scope),
             valid_keys: valid,
             suggestion: suggestion
           }
         )}
    end
  end

  defp check_repeated_keys(entries, pool) do
    keys = Enum.map(entries, &elem(&1, 0))

    case keys -- Enum.uniq(keys) do
      [] ->
        :ok

      [key | _] ->
        values = for {^key, value} <- entries, do: value

        {:error,
         error(
           "#{prefix(pool)}key #{inspect(key)} is given more than once " <>
             "(#{Enum.map_join(values, ", ", &show/1)})",
           %{key: key, value: values, pool: pool}
         )}
    end
  end

  # The keys given, normalized, in the schema's order: the first bad one is the error.
  defp cast_given(entries, pool) do
    Enum.reduce_while(@pool_keys, {:ok, %{}}, fn {key, opts}, {:ok, given} ->
      case {List.keyfind(entries, key, 0), opts[:required]} do
        {nil, true} ->
          message =
            "#{prefix(pool)}missing required key #{inspect(key)} (#{describe(opts[:type])})"

          {:halt, {:error, error(message, %{key: key, value: nil, pool: pool})}}

        {nil, _} ->
          {:cont, {:ok, given}}

        {{^key, value}, _} ->
          case cast(opts[:type], value) do
            {:ok, cast} -> {:cont, {:ok, Map.put(given, key, cast)}}
            error -> {:halt, {:error, invalid({:pool, pool}, key, opts[:type], value, error)}}
          end
      end
    end)
  end

  ## Values

  # {:ok, normalized}, or :error (the message says what describe/1 expects), or
  # {:error, description} (", got <value>" is appended), or {:error, sentence, details} (kept as
  # is), or {:error, %Snakepit.Error{}}.
  defp cast({:or, literal, _type}, literal), do: {:ok, literal}
  defp cast({:or, _literal, type}, value), do: cast(type, value)

  defp cast(:pool_name, name) when is_atom(name) and name not in [nil, true, false],
    do: {:ok, name}

  defp cast(:profile, :subinterpreter), do: Snakepit.Pool.Subinterpreter.check_python()
  defp cast(:profile, profile) when profile in @profiles, do: {:ok, profile}
  defp cast(:pos_integer, n) when is_integer(n) and n > 0, do: {:ok, n}
  defp cast(:non_neg_integer, n) when is_integer(n) and n >= 0, do: {:ok, n}
  defp cast(:reload_mode, mode) when mode in [:manual, :auto], do: {:ok, mode}
  defp cast(:boolean, bool) when is_boolean(bool), do: {:ok, bool}
  defp cast(:ndarray_mode, mode) when mode in [:list, :struct, :nx], do: {:ok, mode}

  defp cast(:adapter_module, module)
       when module in [Snakepit.Adapters.Python, Snakepit.Adapters.GRPCPython],
       do: {:ok, Snakepit.Adapters.Python}

  defp cast(:python_class, value) when is_binary(value) do
    if String.valid?(value) and
         Regex.match?(~r/^[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)+$/u, value),
       do: {:ok, value},
       else: :error
  end

  defp cast(:strings, list) when is_list(list) do
    if Enum.all?(list, &is_binary/1), do: {:ok, list}, else: :error
  end

  defp cast(:interpreter, path) when is_binary(path) and path != "" do
    if String.contains?(path, <<0>>),
      do: {:error, "expected an interpreter path without NUL bytes"},
      else: {:ok, path}
  end

  defp cast(:path, path) when is_binary(path), do: {:ok, path}

  defp cast(:path, path) when is_list(path),
    do: if(charlist?(path), do: {:ok, List.to_string(path)}, else: :error)

  defp cast(:paths, nil), do: {:ok, []}
  defp cast(:paths, path) when is_binary(path), do: {:ok, [path]}
  defp cast(:paths, {app, _} = entry) when is_atom(app), do: cast(:paths, [entry])

  defp cast(:paths, list) when is_list(list) do
    paths =
      Enum.map(if(charlist?(list) and list != [], do: [list], else: list), &cast(:entry, &1))

    if Enum.all?(paths, &match?({:ok, _}, &1)),
      do: {:ok, Enum.map(paths, &elem(&1, 1))},
      else: :error
  end

  # One python_path entry: a path, or {app, path} with the path relative to the app's directory.
  defp cast(:entry, {app, path}) when is_atom(app) and app not in [nil, true, false] do
    with {:ok, path} <- cast(:path, path), do: {:ok, {app, path}}
  end

  defp cast(:entry, path), do: cast(:path, path)

  defp cast(:duration, :infinity), do: {:ok, :infinity}

  defp cast(:duration, {n, unit}) when is_atom(unit) do
    case Keyword.fetch(@ttl_units, unit) do
      {:ok, factor} when is_integer(n) and n > 0 -> {:ok, n * factor}
      {:ok, _} -> {:error, "expected a positive integer count in {n, unit}"}
      :error -> :error
    end
  end

  defp cast(:duration, n) when is_integer(n) do
    {:error,
     "expected #{describe(:duration)}, got #{n} (a bare integer has no unit: write " <>
       "{#{n}, :seconds} or {#{n}, :milliseconds})", %{}}
  end

  defp cast(:env, env) when is_map(env) and not is_struct(env), do: cast(:env, Enum.sort(env))
  defp cast(:env, env) when is_list(env), do: cast_env(env, [])

  defp cast(:pools, pools) when is_list(pools) do
    Enum.reduce_while(pools, {:ok, []}, fn pool, {:ok, acc} ->
      case validate_pool(pool) do
        {:ok, config} ->
          if Enum.any?(acc, &(&1.name == config.name)),
            do: {:halt, {:error, duplicate_pool(config.name)}},
            else: {:cont, {:ok, acc ++ [config]}}

        error ->
          {:halt, error}
      end
    end)
  end

  defp cast(:functions, list) when is_list(list) do
    Enum.reduce_while(list, {:ok, []}, fn
      {name, fun}, {:ok, acc} ->
        case Snakepit.Functions.normalize(name, fun) do
          {:ok, entry} -> {:cont, {:ok, acc ++ [entry]}}
          {:error, message} -> {:halt, {:error, message, %{function: name}}}
        end

      other, _ ->
        {:halt, {:error, "expected {name, function} entries, got #{show(other)}", %{}}}
    end)
  end

  defp cast(_type, _value), do: :error

  defp describe({:or, literal, type}), do: "#{inspect(literal)} or #{describe(type)}"
  defp describe(type), do: elem(Map.fetch!(@types, type), 0)

  defp cast_env([], acc), do: {:ok, Enum.reverse(acc)}

  defp cast_env([entry | rest], acc) do
    result =
      case entry do
        {name, value} ->
          with {:ok, name} <- env_string(name, "name"),
               {:ok, value} <- env_string(value, "value") do
            cond do
              name == "" -> "has an empty name"
              String.contains?(name, ["=", <<0>>]) -> ~s(has a name containing "=" or NUL)
              String.contains?(value, <<0>>) -> "has a value containing NUL"
              List.keymember?(acc, name, 0) -> "sets #{name} a second time"
              true -> {name, value}
            end
          end

        _ ->
          "is not a {name, value} tuple"
      end

    case result do
      {_, _} = pair ->
        cast_env(rest, [pair | acc])

      problem ->
        sentence = "entry #{show(entry)} #{problem}; expected {name, value} strings"
        {:error, sentence, %{entry: entry}}
    end
  end

  defp env_string(string, _what) when is_binary(string), do: {:ok, string}

  defp env_string(n, what) when is_number(n),
    do: "has a #{what} that is not a string (write \"#{n}\")"

  defp env_string(other, what) do
    if charlist?(other), do: {:ok, to_string(other)}, else: "has a #{what} that is not a string"
  end

  ## adapter_args

  # Sets the keys that adapter_args' flags stand for; a key given with another value is a
  # conflict naming both.
  defp apply_flags(given, pool) do
    args = Map.get(given, :adapter_args, [])

    fail =
      &{:error,
       error(
         "#{prefix(pool)}#{&2}",
         Map.merge(%{key: :adapter_args, value: args, pool: pool}, &1)
       )}

    with {:ok, flags} <- read_flags(args, [], &fail.(%{flag: &1}, "invalid adapter_args: #{&2}")) do
      Enum.reduce_while(flags, {:ok, given}, fn {{flag, key, arg}, text, value}, {:ok, acc} ->
        case Map.fetch(acc, key) do
          {:ok, other} when other != value ->
            {shown, hint} =
              case arg do
                :switch ->
                  {if(value, do: flag, else: "#{flag}=false"), ""}

                [{word, v} | more] ->
                  also = Enum.map_join(more, fn {w, v} -> ", #{flag} #{w} with #{inspect(v)}" end)
                  {"#{flag} #{text}", " (#{flag} #{word} goes with #{inspect(v)}#{also})"}

                _placeholder ->
                  {"#{flag} #{text}", "; drop one of them or give the same value"}
              end

            message = "adapter_args #{shown} conflicts with #{key}: #{inspect(other)}#{hint}"
            {:halt, fail.(%{flag: flag, conflicts_with: key}, message)}

          _ ->
            {:cont, {:ok, Map.put(acc, key, value)}}
        end
      end)
    end
  end

  # [{flag spec, text, value}] in order of first appearance; `fail.(flag, description)`.
  defp read_flags([], acc, _fail), do: {:ok, Enum.reverse(acc)}

  defp read_flags([arg | rest], acc, fail) do
    {flag, inline} =
      case String.split(arg, "=", parts: 2) do
        ["--" <> _ = flag, value] -> {flag, value}
        _ -> {arg, nil}
      end

    with {_, key, kind} = spec <- List.keyfind(@flags, flag, 0),
         {:ok, text, rest} <- flag_text(kind, inline, rest),
         {:ok, value} <- flag_value(kind, @pool_types[key], text) do
      case List.keyfind(acc, spec, 0) do
        nil ->
          read_flags(rest, [{spec, text, value} | acc], fail)

        {_, _, ^value} ->
          read_flags(rest, acc, fail)

        {_, previous, _} ->
          fail.(
            flag,
            "#{flag} is given twice with different values " <>
              "(#{inspect(previous)} and #{inspect(text)})"
          )
      end
    else
      :missing ->
        fail.(flag, "#{flag} is missing its value (#{@usage[flag]})")

      {:bad, problem} ->
        fail.(flag, "#{flag} #{problem}")

      nil when flag in @grpc_flags ->
        fail.(
          flag,
          "#{flag} belonged to grpc_server_threaded.py, which Snakepit replaces " <>
            "with an in-process NIF; remove it (and its value) from adapter_args"
        )

      nil ->
        if String.starts_with?(flag, "-") do
          suggestion = suggest(flag, Map.keys(@usage))
          hint = if suggestion, do: " (did you mean #{suggestion}?)", else: ""
          fail.(flag, "unknown flag #{inspect(flag)}#{hint}; known flags: #{@all_usage}")
        else
          fail.(
            arg,
            "unexpected argument #{inspect(arg)}: flags take the form --flag value " <>
              "or --flag=value; known flags: #{@all_usage}"
          )
        end
    end
  end

  defp flag_text(:switch, inline, rest), do: {:ok, inline || "true", rest}
  defp flag_text(_arg, nil, ["--" <> _ | _]), do: :missing
  defp flag_text(_arg, nil, [text | rest]), do: {:ok, text, rest}
  defp flag_text(_arg, inline, rest) when inline not in [nil, ""], do: {:ok, inline, rest}
  defp flag_text(_arg, _inline, _rest), do: :missing

  defp flag_value(:switch, _type, text) when text in ["true", "false"],
    do: {:ok, text == "true"}

  defp flag_value(:switch, _type, text),
    do: {:bad, "takes no value (or =true / =false), got #{inspect(text)}"}

  defp flag_value(words, _type, text) when is_list(words) do
    case List.keyfind(words, text, 0) do
      {_, value} -> {:ok, value}
      nil -> {:bad, "expects #{Enum.map_join(words, " or ", &elem(&1, 0))}, got #{inspect(text)}"}
    end
  end

  defp flag_value(_placeholder, type, text) do
    value =
      case Integer.parse(text) do
        {n, ""} when type == :pos_integer -> n
        _ -> text
      end

    case cast(type, value) do
      {:ok, value} -> {:ok, value}
      _ -> {:bad, "expects #{describe(type)}, got #{inspect(text)}"}
    end
  end

  ## Errors

  defp error(message, details), do: Error.new(:validation, message, details: details)

  defp prefix(nil), do: "pool config: "
  defp prefix(pool), do: "pool #{inspect(pool)}: "

  defp pool_of({:pool, pool}), do: pool
  defp pool_of(:global), do: nil

  defp invalid(_scope, _key, _type, _value, {:error, %Error{} = error}), do: error

  defp invalid(scope, key, type, value, result) do
    {sentence, extra} =
      case result do
        {:error, sentence, extra} -> {sentence, extra}
        {:error, description} -> {"#{description}, got #{show(value)}", %{}}
        _ -> {"expected #{describe(type)}, got #{show(value)}", %{}}
      end

    where =
      case scope do
        {:pool, pool} -> "#{prefix(pool)}invalid #{key}: "
        :global -> "invalid config :snakepit, #{inspect(key)}: "
      end

    error(where <> sentence, Map.merge(%{key: key, value: value, pool: pool_of(scope)}, extra))
  end

  defp wrong_profile(opts) do
    only = Enum.map_join(opts[:profiles], " or ", &inspect/1)
    {:error, opts[:profile_error] || "it applies only to worker_profile #{only}", %{}}
  end

  defp duplicate_pool(name) do
    error(
      "pool #{inspect(name)} is configured more than once in config :snakepit, :pools",
      %{key: :name, value: name, pool: name}
    )
  end

  defp invalid_config(config) do
    error(
      "pool config: expected a map or a keyword list, got #{show(config)}",
      %{key: nil, value: config, pool: nil}
    )
  end

  defp show(value), do: inspect(value, limit: 20, printable_limit: 200)

  defp suggest(key, candidates) do
    name =
      if is_atom(key) or is_binary(key),
        do: key |> to_string() |> String.trim_leading(":"),
        else: inspect(key)

    {candidate, distance} =
      candidates
      |> Enum.map(&{&1, String.jaro_distance(name, to_string(&1))})
      |> Enum.max_by(&elem(&1, 1), fn -> {nil, 0.0} end)

    if distance >= 0.8, do: candidate
  end

  defp charlist?(list), do: is_list(list) and :io_lib.printable_unicode_list(list)
end
