defmodule Snakepit.Config do
  @moduledoc """
  Validates and normalizes Snakepit configuration.

  Pools are configured under `config :snakepit, pools: [...]`, one map (or keyword list) per
  pool. `validate_pool/1` checks one pool config and returns a `%Snakepit.Config{}` struct with
  every default filled in; `pools/0` does the same for every configured pool. A bad key or value
  is a `%Snakepit.Error{category: :validation}` whose message names the pool and the key, and
  whose `details` hold `:key`, `:value` and `:pool`:

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

    * `:name` (`t:atom/0`, required) — the pool's name, as in `Snakepit.execute(:hpc_pool, ...)`.
    * `:worker_profile` (`:thread | :process`, default `:thread`) — `:thread` runs the adapter on
      native threads inside the BEAM's embedded interpreter; `:process` runs single-threaded
      Python OS processes. When absent, `--mode` in `:adapter_args` may set it.
    * `:pool_size` (`t:pos_integer/0`, default `1` for `:thread`, `System.schedulers_online/0`
      for `:process`) — the number of workers (adapter instances).
    * `:threads_per_worker` (`t:pos_integer/0`, default `8`) — the native threads that call each
      worker's adapter. Always `1` for `:process`: giving more there is an error. When absent,
      `--max-workers` in `:adapter_args` may set it.
    * `:adapter_module` (`t:module/0`, default `Snakepit.Adapters.Python`) — the Elixir side of
      the adapter. `Snakepit.Adapters.GRPCPython` is accepted as an alias and normalized to
      `Snakepit.Adapters.Python`; any other module is an error.
    * `:adapter` (`t:String.t/0`, default
      `"snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"`) — the Python
      adapter class as a dotted path `"package.module.Class"`. `--adapter` in `:adapter_args` may
      set it instead.
    * `:adapter_args` (`[String.t()]`, default `[]`) — the guide's command-line flags, kept as
      given in the struct and applied to the keys above:
      * `--adapter CLASS` sets `:adapter`;
      * `--mode threaded | process` sets `:worker_profile` (`threaded` goes with `:thread`,
        `process` with `:process`);
      * `--max-workers N` sets `:threads_per_worker`;
      * `--thread-safety-check` sets `:thread_safety_check` to `true`
        (`--thread-safety-check=false` is accepted too).

      Each flag also takes the `--flag=value` form. A flag that disagrees with a key given in the
      same config is an error naming both, as is an unknown flag or a flag missing its value. The
      gRPC server flags `--port`, `--elixir-address`, `--host` and `--grpc-port` belonged to
      `grpc_server_threaded.py`, which Snakepit replaces with an in-process NIF: they are an
      error asking for their removal.
    * `:adapter_env` (`[{String.t(), String.t()}]`, default `[]`) — environment variables set
      before the adapter module is imported, such as `{"OMP_NUM_THREADS", "16"}`. Names and
      values are strings (charlists are converted; a map is accepted and sorted by name). A name
      may appear once.
    * `:worker_ttl` (`:infinity | {n, :milliseconds | :seconds | :minutes | :hours}`, default
      `:infinity`) — recycle a worker's adapter instance after this long. Normalized to
      milliseconds (`{3600, :seconds}` becomes `3_600_000`). A bare integer is an error, since
      its unit would be a guess.
    * `:worker_max_requests` (`:infinity | pos_integer`, default `:infinity`) — recycle a
      worker's adapter instance after this many requests.
    * `:max_queue` (`t:pos_integer/0`, default `10_000`) — jobs waiting for a thread; a call to a
      full queue gets `{:error, %Snakepit.Error{category: :pool}}` at once.
    * `:thread_safety_check` (`t:boolean/0`, default `false`) — run the adapter under
      `snakepit_bridge.thread_safety_checker`.
    * `:python` (`String.t() | nil`, default `nil`) — the interpreter of a `:process` pool's
      workers; `nil` means the interpreter Snakepit was built for. A `:thread` pool always runs in
      the node's embedded interpreter (chosen at build time with `SNAKEPIT_PYTHON` or
      `config :snakepit, python: ...`), so setting `:python` on it is an error.
    * `:startup_timeout` (`t:pos_integer/0` milliseconds, default `60_000`) — how long a worker
      may take to import and construct its adapter.

  Global keys of `config :snakepit`:

    * `:pools` (a list of pool configs, default `[]`) — read by `pools/0`.
    * `:default_pool` (`t:atom/0`, default the first configured pool's name) — the pool of
      `Snakepit.execute/3` without `:pool_name`; read by `default_pool/0`.
    * `:python_path` (`String.t() | [String.t()]`, default `[]`) — extra directories put on
      Python's `sys.path`, expanded to absolute paths (relative ones against the current
      directory; in a release, build them with `Application.app_dir/2` in `config/runtime.exs`).
      The entries of the `PYTHONPATH` environment variable follow. Read by `python_path/0`.
    * `:python` — the interpreter to build against; read at build time, not here.
  """

  alias Snakepit.Error

  @default_adapter "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"
  @adapter_module Snakepit.Adapters.Python
  @adapter_module_aliases [Snakepit.Adapters.Python, Snakepit.Adapters.GRPCPython]

  @keys [
    :name,
    :worker_profile,
    :pool_size,
    :threads_per_worker,
    :adapter_module,
    :adapter,
    :adapter_args,
    :adapter_env,
    :worker_ttl,
    :worker_max_requests,
    :max_queue,
    :thread_safety_check,
    :python,
    :startup_timeout
  ]

  @ttl_units [milliseconds: 1, seconds: 1_000, minutes: 60_000, hours: 3_600_000]

  @value_flags ["--adapter", "--mode", "--max-workers"]
  @bool_flags ["--thread-safety-check"]
  @known_flags @value_flags ++ @bool_flags
  @grpc_flags ["--port", "--elixir-address", "--host", "--grpc-port"]
  @flag_usage "--adapter CLASS, --mode threaded|process, --max-workers N, --thread-safety-check"

  @suggestion_threshold 0.8

  @type worker_profile :: :thread | :process

  @type t :: %__MODULE__{
          name: atom(),
          worker_profile: worker_profile(),
          pool_size: pos_integer(),
          threads_per_worker: pos_integer(),
          adapter_module: module(),
          adapter: String.t(),
          adapter_args: [String.t()],
          adapter_env: [{String.t(), String.t()}],
          worker_ttl: :infinity | pos_integer(),
          worker_max_requests: :infinity | pos_integer(),
          max_queue: pos_integer(),
          thread_safety_check: boolean(),
          python: String.t() | nil,
          startup_timeout: pos_integer()
        }

  @typedoc "One pool's configuration as written by the user: a map or a keyword list."
  @type pool_config :: map() | keyword()

  defstruct name: nil,
            worker_profile: :thread,
            pool_size: 1,
            threads_per_worker: 8,
            adapter_module: @adapter_module,
            adapter: @default_adapter,
            adapter_args: [],
            adapter_env: [],
            worker_ttl: :infinity,
            worker_max_requests: :infinity,
            max_queue: 10_000,
            thread_safety_check: false,
            python: nil,
            startup_timeout: 60_000

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
    config
    |> Map.from_struct()
    |> Map.update!(:worker_ttl, fn
      ms when is_integer(ms) -> {ms, :milliseconds}
      other -> other
    end)
    |> validate_pool()
  end

  def validate_pool(config) when is_map(config) and not is_struct(config) do
    validate_entries(Map.to_list(config))
  end

  def validate_pool(config) when is_list(config) do
    if Keyword.keyword?(config) do
      validate_entries(config)
    else
      {:error, invalid_config(config)}
    end
  end

  def validate_pool(config), do: {:error, invalid_config(config)}

  @doc """
  Validates every pool of `config :snakepit, pools: [...]`.

  Returns the normalized pools in their configured order, or the first error. Two pools with the
  same name are an error naming the pool.
  """
  @spec pools() :: {:ok, [t()]} | {:error, Error.t()}
  def pools do
    case Application.get_env(:snakepit, :pools, []) do
      pools when is_list(pools) ->
        validate_pools(pools, [], MapSet.new())

      other ->
        {:error,
         error(
           "invalid config :snakepit, :pools: expected a list of pool configs, got " <>
             show(other),
           %{key: :pools, value: other, pool: nil}
         )}
    end
  end

  @doc """
  The default pool's name: `config :snakepit, default_pool: name`, else the name of the first
  configured pool, else `nil`.

  Raises `Snakepit.Error` (`:validation`) when `:default_pool` is set to something other than
  an atom.
  """
  @spec default_pool() :: atom() | nil
  def default_pool do
    case Application.get_env(:snakepit, :default_pool) do
      nil ->
        first_pool_name()

      name when is_atom(name) and not is_boolean(name) ->
        name

      other ->
        raise error(
                "invalid config :snakepit, :default_pool: expected a pool name (an atom), got " <>
                  show(other),
                %{key: :default_pool, value: other, pool: nil}
              )
    end
  end

  @doc """
  The extra directories for Python's `sys.path`, as absolute paths.

  `config :snakepit, python_path: ...` (one path or a list; strings or charlists) comes first,
  each entry expanded with `Path.expand/1`, then the entries of the `PYTHONPATH` environment
  variable. Empty entries and duplicates are dropped.

  Raises `Snakepit.Error` (`:validation`) when an entry is not a path.
  """
  @spec python_path() :: [String.t()]
  def python_path do
    configured =
      case Application.get_env(:snakepit, :python_path, []) do
        nil -> []
        path when is_binary(path) -> [path]
        list when is_list(list) -> if charlist?(list) and list != [], do: [list], else: list
        other -> raise python_path_error(other)
      end

    from_env =
      case System.get_env("PYTHONPATH") do
        nil -> []
        value -> String.split(value, path_separator())
      end

    configured
    |> Enum.map(fn
      path when is_binary(path) ->
        path

      path when is_list(path) ->
        if charlist?(path), do: List.to_string(path), else: raise(python_path_error(path))

      other ->
        raise python_path_error(other)
    end)
    |> Kernel.++(from_env)
    |> Enum.reject(&(&1 == ""))
    |> Enum.map(&Path.expand/1)
    |> Enum.uniq()
  end

  @doc """
  The number of calls a pool runs at once: `pool_size * threads_per_worker`.

      iex> Snakepit.Config.capacity(%Snakepit.Config{name: :p, pool_size: 4, threads_per_worker: 16})
      64
  """
  @spec capacity(t()) :: pos_integer()
  def capacity(%__MODULE__{pool_size: pool_size, threads_per_worker: threads}),
    do: pool_size * threads

  ## Pools

  defp validate_pools([], acc, _seen), do: {:ok, Enum.reverse(acc)}

  defp validate_pools([pool | rest], acc, seen) do
    with {:ok, config} <- validate_pool(pool) do
      if MapSet.member?(seen, config.name) do
        {:error,
         error(
           "pool #{inspect(config.name)} is configured more than once in config :snakepit, :pools",
           %{key: :name, value: config.name, pool: config.name}
         )}
      else
        validate_pools(rest, [config | acc], MapSet.put(seen, config.name))
      end
    end
  end

  defp first_pool_name do
    case Application.get_env(:snakepit, :pools, []) do
      [first | _] when is_map(first) or is_list(first) ->
        name = if is_map(first), do: Map.get(first, :name), else: safe_keyword_get(first, :name)
        if pool_name?(name), do: name, else: nil

      _ ->
        nil
    end
  end

  defp safe_keyword_get(list, key) do
    Enum.find_value(list, fn
      {^key, value} -> value
      _ -> nil
    end)
  end

  ## One pool

  defp validate_entries(entries) do
    name = Enum.find_value(entries, fn {key, value} -> key == :name && value end)
    pool = if pool_name?(name), do: name, else: nil

    with :ok <- check_unknown_keys(entries, pool),
         :ok <- check_repeated_keys(entries, pool),
         {:ok, name} <- fetch_name(entries),
         {:ok, given} <- validate_values(Map.delete(Map.new(entries), :name), name),
         args = Map.get(given, :adapter_args, []),
         {:ok, flags} <- parse_adapter_args(args, %{}, name, args),
         {:ok, profile} <- resolve_profile(given, flags, name, args),
         {:ok, threads} <- resolve_threads(given, flags, profile, name, args),
         {:ok, adapter} <- resolve_adapter(given, flags, name, args),
         {:ok, check?} <- resolve_thread_safety_check(given, flags, name, args),
         :ok <- check_python(given, profile, name) do
      defaults = %{
        pool_size: if(profile == :process, do: System.schedulers_online(), else: 1)
      }

      fields =
        defaults
        |> Map.merge(given)
        |> Map.merge(%{
          name: name,
          worker_profile: profile,
          threads_per_worker: threads,
          adapter: adapter,
          thread_safety_check: check?
        })

      {:ok, struct!(__MODULE__, fields)}
    end
  end

  defp check_unknown_keys(entries, pool) do
    case Enum.find(entries, fn {key, _} -> key not in @keys end) do
      nil ->
        :ok

      {key, value} ->
        suggestion = suggest(key, @keys)
        hint = if suggestion, do: "; did you mean #{inspect(suggestion)}?", else: ""
        valid = Enum.map_join(@keys, ", ", &inspect/1)

        {:error,
         error(
           "#{prefix(pool)}unknown key #{inspect(key)}#{hint} (valid keys: #{valid})",
           %{key: key, value: value, pool: pool, valid_keys: @keys, suggestion: suggestion}
         )}
    end
  end

  defp check_repeated_keys(entries, pool) do
    keys = Enum.map(entries, &elem(&1, 0))

    case keys -- Enum.uniq(keys) do
      [] ->
        :ok

      [key | _] ->
        values = Keyword.get_values(entries, key)
        shown = Enum.map_join(values, ", ", &show/1)

        {:error,
         error(
           "#{prefix(pool)}key #{inspect(key)} is given more than once (#{shown})",
           %{key: key, value: values, pool: pool}
         )}
    end
  end

  defp fetch_name(entries) do
    case List.keyfind(entries, :name, 0) do
      nil ->
        {:error,
         error("pool config: missing required key :name (an atom)", %{
           key: :name,
           value: nil,
           pool: nil
         })}

      {:name, name} ->
        if pool_name?(name) do
          {:ok, name}
        else
          {:error, invalid(nil, :name, name, "expected an atom")}
        end
    end
  end

  defp pool_name?(name), do: is_atom(name) and name not in [nil, true, false]

  defp validate_values(given, pool) do
    Enum.reduce_while(@keys -- [:name], {:ok, %{}}, fn key, {:ok, acc} ->
      case Map.fetch(given, key) do
        :error ->
          {:cont, {:ok, acc}}

        {:ok, value} ->
          case validate_value(key, value) do
            {:ok, normalized} ->
              {:cont, {:ok, Map.put(acc, key, normalized)}}

            {:error, description} ->
              {:halt, {:error, invalid(pool, key, value, description)}}

            {:error, description, extra} ->
              {:halt, {:error, invalid_as_is(pool, key, value, description, extra)}}
          end
      end
    end)
  end

  ## Values

  defp validate_value(:worker_profile, profile) when profile in [:thread, :process],
    do: {:ok, profile}

  defp validate_value(:worker_profile, _), do: {:error, "expected :thread or :process"}

  defp validate_value(key, value)
       when key in [:pool_size, :threads_per_worker, :max_queue, :startup_timeout] do
    if pos_integer?(value), do: {:ok, value}, else: {:error, "expected a positive integer"}
  end

  defp validate_value(:adapter_module, module) when module in @adapter_module_aliases,
    do: {:ok, @adapter_module}

  defp validate_value(:adapter_module, _),
    do:
      {:error, "expected #{inspect(@adapter_module)} (or its alias Snakepit.Adapters.GRPCPython)"}

  defp validate_value(:adapter, adapter) do
    if python_class_path?(adapter) do
      {:ok, adapter}
    else
      {:error, "expected a Python class path such as \"package.module.Class\""}
    end
  end

  defp validate_value(:adapter_args, args) do
    if is_list(args) and Enum.all?(args, &is_binary/1) do
      {:ok, args}
    else
      {:error, "expected a list of strings"}
    end
  end

  defp validate_value(:adapter_env, env) when is_map(env) and not is_struct(env),
    do: validate_value(:adapter_env, Enum.sort(Map.to_list(env)))

  defp validate_value(:adapter_env, env) when is_list(env), do: validate_env(env, [], %{})

  defp validate_value(:adapter_env, _),
    do: {:error, "expected a list of {name, value} string tuples"}

  defp validate_value(:worker_ttl, :infinity), do: {:ok, :infinity}

  defp validate_value(:worker_ttl, {n, unit}) when is_atom(unit) do
    case Keyword.fetch(@ttl_units, unit) do
      {:ok, factor} when is_integer(n) and n > 0 -> {:ok, n * factor}
      {:ok, _} -> {:error, "expected a positive integer count in {n, unit}"}
      :error -> {:error, ttl_expectation()}
    end
  end

  defp validate_value(:worker_ttl, n) when is_integer(n),
    do:
      {:error,
       ttl_expectation() <>
         ", got #{n} (a bare integer has no unit: write {#{n}, :seconds} or {#{n}, :milliseconds})",
       %{}}

  defp validate_value(:worker_ttl, _), do: {:error, ttl_expectation()}

  defp validate_value(:worker_max_requests, :infinity), do: {:ok, :infinity}

  defp validate_value(:worker_max_requests, n) do
    if pos_integer?(n), do: {:ok, n}, else: {:error, "expected :infinity or a positive integer"}
  end

  defp validate_value(:thread_safety_check, bool) when is_boolean(bool), do: {:ok, bool}
  defp validate_value(:thread_safety_check, _), do: {:error, "expected true or false"}

  defp validate_value(:python, nil), do: {:ok, nil}

  defp validate_value(:python, path) when is_binary(path) and path != "" do
    if String.contains?(path, <<0>>),
      do: {:error, "expected an interpreter path without NUL bytes"},
      else: {:ok, path}
  end

  defp validate_value(:python, _), do: {:error, "expected nil or an interpreter path (a string)"}

  defp ttl_expectation do
    units = Enum.map_join(Keyword.keys(@ttl_units), " | ", &inspect/1)
    "expected :infinity or {n, #{units}} with n a positive integer"
  end

  defp pos_integer?(value), do: is_integer(value) and value > 0

  @python_class_path ~r/^[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)+$/u

  defp python_class_path?(value),
    do: is_binary(value) and String.valid?(value) and Regex.match?(@python_class_path, value)

  defp validate_env([], acc, _seen), do: {:ok, Enum.reverse(acc)}

  defp validate_env([entry | rest], acc, seen) do
    with {:ok, {name, value}} <- env_entry(entry),
         :ok <- env_name(name, entry),
         :ok <- env_value(value, entry),
         :ok <- env_unique(name, seen, entry) do
      validate_env(rest, [{name, value} | acc], Map.put(seen, name, true))
    end
  end

  defp env_entry({name, value} = entry) do
    with {:ok, name} <- env_string(name, "name", entry),
         {:ok, value} <- env_string(value, "value", entry) do
      {:ok, {name, value}}
    end
  end

  defp env_entry(entry),
    do: env_error(entry, "is not a {name, value} tuple")

  defp env_string(string, _what, _entry) when is_binary(string), do: {:ok, string}

  defp env_string(list, what, entry) when is_list(list) do
    if charlist?(list),
      do: {:ok, List.to_string(list)},
      else: env_error(entry, "has a #{what} that is not a string")
  end

  defp env_string(number, what, entry) when is_number(number),
    do: env_error(entry, "has a #{what} that is not a string (write \"#{number}\")")

  defp env_string(_other, what, entry),
    do: env_error(entry, "has a #{what} that is not a string")

  defp env_name(name, entry) do
    cond do
      name == "" ->
        env_error(entry, "has an empty name")

      String.contains?(name, ["=", <<0>>]) ->
        env_error(entry, "has a name containing \"=\" or NUL")

      true ->
        :ok
    end
  end

  defp env_value(value, entry) do
    if String.contains?(value, <<0>>),
      do: env_error(entry, "has a value containing NUL"),
      else: :ok
  end

  defp env_unique(name, seen, entry) do
    if Map.has_key?(seen, name),
      do: env_error(entry, "sets #{name} a second time"),
      else: :ok
  end

  defp env_error(entry, problem),
    do:
      {:error, "entry #{show(entry)} #{problem}; expected {name, value} strings", %{entry: entry}}

  ## adapter_args

  defp parse_adapter_args([], flags, _pool, _args), do: {:ok, flags}

  defp parse_adapter_args([arg | rest], flags, pool, args) do
    {flag, inline} = split_flag(arg)

    cond do
      flag in @value_flags ->
        with {:ok, value, rest} <- flag_value(flag, inline, rest, pool, args),
             {:ok, parsed} <- parse_flag_value(flag, value, pool, args),
             {:ok, flags} <- put_flag(flags, flag, value, parsed, pool, args) do
          parse_adapter_args(rest, flags, pool, args)
        end

      flag in @bool_flags ->
        with {:ok, parsed} <- parse_bool_flag(flag, inline, pool, args),
             {:ok, flags} <- put_flag(flags, flag, inline || "true", parsed, pool, args) do
          parse_adapter_args(rest, flags, pool, args)
        end

      flag in @grpc_flags ->
        {:error,
         args_error(
           pool,
           args,
           flag,
           "#{flag} belonged to grpc_server_threaded.py, which Snakepit replaces with an " <>
             "in-process NIF; remove it (and its value) from adapter_args"
         )}

      String.starts_with?(flag, "-") ->
        suggestion = suggest(flag, @known_flags)
        hint = if suggestion, do: " (did you mean #{suggestion}?)", else: ""

        {:error,
         args_error(
           pool,
           args,
           flag,
           "unknown flag #{inspect(flag)}#{hint}; known flags: #{@flag_usage}"
         )}

      true ->
        {:error,
         args_error(
           pool,
           args,
           arg,
           "unexpected argument #{inspect(arg)}: flags take the form --flag value or " <>
             "--flag=value; known flags: #{@flag_usage}"
         )}
    end
  end

  defp split_flag("--" <> _ = arg) do
    case String.split(arg, "=", parts: 2) do
      [flag, value] -> {flag, value}
      [flag] -> {flag, nil}
    end
  end

  defp split_flag(arg), do: {arg, nil}

  defp flag_value(flag, nil, [value | rest], pool, args) do
    if String.starts_with?(value, "--"),
      do: {:error, missing_value(flag, pool, args)},
      else: {:ok, value, rest}
  end

  defp flag_value(flag, nil, [], pool, args), do: {:error, missing_value(flag, pool, args)}
  defp flag_value(flag, "", _rest, pool, args), do: {:error, missing_value(flag, pool, args)}
  defp flag_value(_flag, inline, rest, _pool, _args), do: {:ok, inline, rest}

  defp missing_value(flag, pool, args),
    do: args_error(pool, args, flag, "#{flag} is missing its value (#{flag_usage(flag)})")

  defp flag_usage("--adapter"), do: "--adapter CLASS"
  defp flag_usage("--mode"), do: "--mode threaded|process"
  defp flag_usage("--max-workers"), do: "--max-workers N"

  defp parse_flag_value("--adapter", value, pool, args) do
    if python_class_path?(value) do
      {:ok, value}
    else
      {:error,
       args_error(
         pool,
         args,
         "--adapter",
         "--adapter expects a Python class path such as \"package.module.Class\", " <>
           "got #{inspect(value)}"
       )}
    end
  end

  defp parse_flag_value("--mode", "threaded", _pool, _args), do: {:ok, :thread}
  defp parse_flag_value("--mode", "process", _pool, _args), do: {:ok, :process}

  defp parse_flag_value("--mode", value, pool, args),
    do:
      {:error,
       args_error(
         pool,
         args,
         "--mode",
         "--mode expects threaded or process, got #{inspect(value)}"
       )}

  defp parse_flag_value("--max-workers", value, pool, args) do
    case Integer.parse(value) do
      {n, ""} when n > 0 ->
        {:ok, n}

      _ ->
        {:error,
         args_error(
           pool,
           args,
           "--max-workers",
           "--max-workers expects a positive integer, got #{inspect(value)}"
         )}
    end
  end

  defp parse_bool_flag(_flag, nil, _pool, _args), do: {:ok, true}
  defp parse_bool_flag(_flag, "true", _pool, _args), do: {:ok, true}
  defp parse_bool_flag(_flag, "false", _pool, _args), do: {:ok, false}

  defp parse_bool_flag(flag, value, pool, args),
    do:
      {:error,
       args_error(
         pool,
         args,
         flag,
         "#{flag} takes no value (or =true / =false), got #{inspect(value)}"
       )}

  defp put_flag(flags, flag, text, parsed, pool, args) do
    case Map.fetch(flags, flag) do
      :error ->
        {:ok, Map.put(flags, flag, {text, parsed})}

      {:ok, {_, ^parsed}} ->
        {:ok, flags}

      {:ok, {previous, _}} ->
        {:error,
         args_error(
           pool,
           args,
           flag,
           "#{flag} is given twice with different values (#{inspect(previous)} and #{inspect(text)})"
         )}
    end
  end

  ## Flags against keys

  defp resolve_profile(given, flags, pool, args) do
    case {Map.fetch(given, :worker_profile), Map.fetch(flags, "--mode")} do
      {:error, :error} ->
        {:ok, :thread}

      {{:ok, profile}, :error} ->
        {:ok, profile}

      {:error, {:ok, {_, profile}}} ->
        {:ok, profile}

      {{:ok, profile}, {:ok, {_, profile}}} ->
        {:ok, profile}

      {{:ok, profile}, {:ok, {text, _}}} ->
        {:error,
         conflict(
           pool,
           args,
           "--mode",
           :worker_profile,
           "adapter_args --mode #{text} conflicts with worker_profile: #{inspect(profile)} " <>
             "(--mode threaded goes with :thread, --mode process with :process)"
         )}
    end
  end

  defp resolve_threads(given, flags, profile, pool, args) do
    case {Map.fetch(given, :threads_per_worker), Map.fetch(flags, "--max-workers")} do
      {{:ok, threads}, {:ok, {text, n}}} when threads != n ->
        {:error,
         conflict(
           pool,
           args,
           "--max-workers",
           :threads_per_worker,
           "adapter_args --max-workers #{text} conflicts with threads_per_worker: #{threads}; " <>
             "drop one of them or give the same value"
         )}

      {{:ok, threads}, _} ->
        {:ok, threads}

      {:error, {:ok, {_, n}}} ->
        {:ok, n}

      {:error, :error} ->
        {:ok, if(profile == :process, do: 1, else: 8)}
    end
  end

  defp resolve_adapter(given, flags, pool, args) do
    case {Map.fetch(given, :adapter), Map.fetch(flags, "--adapter")} do
      {{:ok, adapter}, {:ok, {text, flag_adapter}}} when adapter != flag_adapter ->
        {:error,
         conflict(
           pool,
           args,
           "--adapter",
           :adapter,
           "adapter_args --adapter #{text} conflicts with adapter: #{inspect(adapter)}; " <>
             "drop one of them or give the same value"
         )}

      {{:ok, adapter}, _} ->
        {:ok, adapter}

      {:error, {:ok, {_, adapter}}} ->
        {:ok, adapter}

      {:error, :error} ->
        {:ok, @default_adapter}
    end
  end

  defp resolve_thread_safety_check(given, flags, pool, args) do
    case {Map.fetch(given, :thread_safety_check), Map.fetch(flags, "--thread-safety-check")} do
      {{:ok, check?}, {:ok, {_, flag?}}} when check? != flag? ->
        {:error,
         conflict(
           pool,
           args,
           "--thread-safety-check",
           :thread_safety_check,
           "adapter_args --thread-safety-check#{if flag?, do: "", else: "=false"} conflicts " <>
             "with thread_safety_check: #{check?}"
         )}

      {{:ok, check?}, _} ->
        {:ok, check?}

      {:error, {:ok, {_, flag?}}} ->
        {:ok, flag?}

      {:error, :error} ->
        {:ok, false}
    end
  end

  defp check_python(%{python: python}, :thread, pool) when is_binary(python) do
    {:error,
     invalid_as_is(
       pool,
       :python,
       python,
       "a per-pool interpreter applies only to worker_profile :process; a :thread pool runs " <>
         "in the node's embedded interpreter (chosen at build time by SNAKEPIT_PYTHON or " <>
         "config :snakepit, python: ...)",
       %{}
     )}
  end

  defp check_python(_given, _profile, _pool), do: :ok

  ## Errors

  defp error(message, details), do: Error.new(:validation, message, details: details)

  defp prefix(nil), do: "pool config: "
  defp prefix(pool), do: "pool #{inspect(pool)}: "

  # `description` says what was expected; the value given is appended.
  defp invalid(pool, key, value, description),
    do: invalid_as_is(pool, key, value, description <> ", got " <> show(value), %{})

  # `sentence` already says what was given.
  defp invalid_as_is(pool, key, value, sentence, extra) do
    error(
      "#{prefix(pool)}invalid #{key}: #{sentence}",
      Map.merge(%{key: key, value: value, pool: pool}, extra)
    )
  end

  defp args_error(pool, args, flag, description) do
    error(
      "#{prefix(pool)}invalid adapter_args: #{description}",
      %{key: :adapter_args, value: args, pool: pool, flag: flag}
    )
  end

  defp conflict(pool, args, flag, other_key, description) do
    error(
      "#{prefix(pool)}#{description}",
      %{key: :adapter_args, value: args, pool: pool, flag: flag, conflicts_with: other_key}
    )
  end

  defp invalid_config(config) do
    error(
      "pool config: expected a map or a keyword list, got #{show(config)}",
      %{key: nil, value: config, pool: nil}
    )
  end

  defp python_path_error(value) do
    error(
      "invalid config :snakepit, :python_path: expected a path or a list of paths, got " <>
        show(value),
      %{key: :python_path, value: value, pool: nil}
    )
  end

  defp show(value), do: inspect(value, limit: 20, printable_limit: 200)

  defp suggest(key, candidates) do
    name = key |> to_string_safe() |> String.trim_leading(":")

    candidates
    |> Enum.map(fn candidate -> {candidate, String.jaro_distance(name, to_string(candidate))} end)
    |> Enum.max_by(fn {_, distance} -> distance end, fn -> {nil, 0.0} end)
    |> case do
      {candidate, distance} when distance >= @suggestion_threshold -> candidate
      _ -> nil
    end
  end

  defp to_string_safe(key) when is_atom(key) or is_binary(key), do: to_string(key)
  defp to_string_safe(key), do: inspect(key)

  defp charlist?(list), do: is_list(list) and :io_lib.printable_unicode_list(list)

  defp path_separator do
    case :os.type() do
      {:win32, _} -> ";"
      _ -> ":"
    end
  end
end
