defmodule Snakepit.Compatibility do
  # The matrix, first: the moduledoc's table is generated from it.
  @matrix [
    %{
      library: "NumPy",
      module: "numpy",
      status: :safe,
      notes: "Releases GIL during computation",
      workaround: nil
    },
    %{
      library: "SciPy",
      module: "scipy",
      status: :safe,
      notes: "Releases GIL for numerical operations",
      workaround: nil
    },
    %{
      library: "PyTorch",
      module: "torch",
      status: :conditional,
      notes: "Configure with `torch.set_num_threads()`",
      workaround: nil
    },
    %{
      library: "TensorFlow",
      module: "tensorflow",
      status: :conditional,
      notes: "Use `tf.config.threading` API",
      workaround: nil
    },
    %{
      library: "Scikit-learn",
      module: "sklearn",
      status: :conditional,
      notes: "Set `n_jobs=1` per estimator",
      workaround: nil
    },
    %{
      library: "Requests",
      module: "requests",
      status: :conditional,
      notes: "Separate sessions per thread",
      workaround: nil
    },
    %{
      library: "HTTPx",
      module: "httpx",
      status: :safe,
      notes: "Async-first, thread-safe",
      workaround: nil
    },
    %{
      library: "Pandas",
      module: "pandas",
      status: :unsafe,
      notes: "Not thread-safe: DataFrame operations from several threads race",
      workaround: "Use locking or process mode"
    },
    %{
      library: "Matplotlib",
      module: "matplotlib",
      status: :unsafe,
      notes: "Not thread-safe: pyplot keeps global figure state",
      workaround: "Use `threading.local()` for figures"
    },
    %{
      library: "SQLite3",
      module: "sqlite3",
      status: :unsafe,
      notes: "Not thread-safe: a connection refuses use from a thread other than its creator's",
      workaround: "Connection per thread"
    }
  ]

  @table_rows Enum.map_join(@matrix, "\n", fn entry ->
                "| #{entry.library} | `#{entry.module}` | `#{inspect(entry.status)}` | " <>
                  "#{entry.notes} | #{entry.workaround || "—"} |"
              end)

  @moduledoc """
  Which Python libraries suit the `:thread` profile, and what a threaded pool can expect from
  the interpreter it runs on.

  The library matrix is the one of the threaded workers guide ("Library Compatibility"), kept
  in step with `LIBRARY_MATRIX` in `snakepit_bridge.thread_safety_checker` (the Python side,
  which warns when an `:unsafe` library is imported by a threaded adapter):

  | Library | Import name | Status | Notes | Workaround |
  | --- | --- | --- | --- | --- |
  #{@table_rows}

  Statuses:

    * `:safe` — use it from every pool thread as is.
    * `:conditional` — thread-safe with the setting in `notes` (a session per thread, a
      thread count, `n_jobs=1` per estimator); the guide lists these as thread-safe.
    * `:unsafe` — needs the `:process` profile, or the `workaround` (explicit locking, or one
      object per thread) in the `:thread` profile.

  `check/1` looks one library up, `recommend/1` gives the worker profile the guide advises.

  ## The GIL

  The `:thread` profile runs Python in parallel only on a free-threaded CPython (3.14t, chosen
  with `SNAKEPIT_PYTHON`) whose GIL is off. On any other build the same code works, but one
  thread at a time runs Python bytecode: pure-Python CPU work is serialised however many
  threads the pool has, while work that releases the GIL (NumPy, I/O, `time.sleep`) still
  runs in parallel. `gil_warning/2` says so for a given interpreter and pool, and
  `warn_if_gil/3` logs a short notice once per VM, when the first such pool starts.

  The interpreter has a GIL when its version is 3.12 or older, when it is a standard build
  (not a free-threaded `t` build), or when it is a free-threaded build whose GIL was enabled at
  run time: by `PYTHON_GIL=1`, `-X gil=1`, or an imported C extension that does not declare
  free-threading support (Python then prints a `RuntimeWarning` naming it).

  What to do about it, for parallel pure-Python CPU work:

    * build Snakepit against a free-threaded CPython 3.14t
      (`SNAKEPIT_PYTHON=/path/to/python3.14t`, then recompile), and keep its GIL off (drop
      `PYTHON_GIL=1`, upgrade the extension that re-enabled it to a free-threading release);
    * or use `worker_profile: :process`: separate Python processes, a GIL each.

  For NumPy, I/O and other GIL-releasing work, a GIL build is fine as it is.

  > #### Python ≤3.12 {: .warning}
  >
  > The guide's advice is not to use threaded mode with Python ≤3.12 for CPU-bound pure
  > Python: use `worker_profile: :process`, whose workers are separate Python processes
  > with a GIL each.
  """

  require Logger

  alias Snakepit.{Config, Error}

  @typedoc "How a library behaves when several pool threads use it."
  @type status :: :safe | :conditional | :unsafe

  @typedoc """
  One row of the matrix: the library's usual name, its Python import name, its status, the
  guide's note, and the guide's workaround for an `:unsafe` library (`nil` otherwise).
  """
  @type entry :: %{
          library: String.t(),
          module: String.t(),
          status: status(),
          notes: String.t(),
          workaround: String.t() | nil
        }

  @typedoc "A library, by usual name or import name, as a string or an atom, in any case."
  @type library :: String.t() | atom()

  @typedoc "A worker profile, as in `Snakepit.Config`'s `:worker_profile`."
  @type recommendation :: :thread | :process

  @typedoc "What `Snakepit.python_info/0` returns in its `{:ok, info}`."
  @type python_info :: %{
          optional(:version) => String.t(),
          optional(:free_threaded) => boolean(),
          optional(:gil_enabled) => boolean(),
          optional(atom()) => term()
        }

  @index @matrix
         |> Enum.flat_map(fn entry ->
           [{String.downcase(entry.library), entry}, {entry.module, entry}]
         end)
         |> Map.new()

  @known Enum.map_join(@matrix, ", ", &"#{&1.library} (#{&1.module})")

  @doc """
  The library matrix, in the guide's order: the thread-safe libraries, then the unsafe ones.

      iex> Snakepit.Compatibility.matrix() |> Enum.map(& &1.library)
      ["NumPy", "SciPy", "PyTorch", "TensorFlow", "Scikit-learn", "Requests", "HTTPx",
       "Pandas", "Matplotlib", "SQLite3"]
  """
  @spec matrix() :: [entry()]
  def matrix, do: @matrix

  @doc """
  Looks up one library by its usual name or its import name, case-insensitively, as a string
  or an atom. A dotted module path stands for its top-level package (`"matplotlib.pyplot"` is
  Matplotlib).

  A library the matrix does not know is a `%Snakepit.Error{category: :validation}` whose
  message lists the known ones (`details`: `:library`, the name asked for, and `:known`, the
  import names).

  ## Examples

      iex> {:ok, entry} = Snakepit.Compatibility.check("Scikit-learn")
      iex> {entry.module, entry.status, entry.notes}
      {"sklearn", :conditional, "Set `n_jobs=1` per estimator"}

      iex> {:ok, entry} = Snakepit.Compatibility.check(:pandas)
      iex> {entry.library, entry.workaround}
      {"Pandas", "Use locking or process mode"}

      iex> {:error, error} = Snakepit.Compatibility.check("polars")
      iex> error.message =~ ~s(library "polars" is not in the compatibility matrix)
      true
  """
  @spec check(library()) :: {:ok, entry()} | {:error, Error.t()}
  def check(library) when is_atom(library) and not is_nil(library) and not is_boolean(library),
    do: lookup(Atom.to_string(library), library)

  def check(library) when is_binary(library), do: lookup(library, library)

  def check(other), do: {:error, unknown(other)}

  @doc """
  The worker profile the guide recommends for a library: `:thread` for `:safe` and
  `:conditional` libraries (with the setting of their `notes`), `:process` for `:unsafe` ones
  ("Use process mode when: Thread-unsafe libraries (Pandas, Matplotlib, SQLite3)"). The
  result fits `worker_profile:` as is.

  An unsafe library can still live in a `:thread` pool with its entry's `workaround`
  (see `check/1`). An unknown library is the error of `check/1`.

  ## Examples

      iex> Snakepit.Compatibility.recommend(:numpy)
      :thread
      iex> Snakepit.Compatibility.recommend("torch")
      :thread
      iex> Snakepit.Compatibility.recommend("SQLite3")
      :process
  """
  @spec recommend(library()) :: recommendation() | {:error, Error.t()}
  def recommend(library) do
    case check(library) do
      {:ok, %{status: :unsafe}} -> :process
      {:ok, %{status: _safe_or_conditional}} -> :thread
      {:error, %Error{}} = error -> error
    end
  end

  @doc """
  A warning for a threaded pool that runs on an interpreter with a GIL, or `nil`.

  `python_info` is the map of `Snakepit.python_info/0` (`:version`, `:free_threaded`,
  `:gil_enabled`). The pool is its `%Snakepit.Config{}` or its capacity (the number of threads
  that call Python, `pool_size × threads_per_worker`).

  The interpreter has a GIL when its version is 3.12 or older, when it is not a
  free-threaded (`t`) build, or when it is a free-threaded build whose GIL is enabled at run
  time (`PYTHON_GIL=1`, `-X gil=1`, or an imported C extension that does not declare
  free-threading support). The warning then names the version and the pool's capacity, says
  that pure-Python CPU work runs one thread at a time while GIL-releasing work (NumPy, I/O,
  `time.sleep`) still runs in parallel, and what to do about it.

  `nil` when the GIL is off (a free-threaded build with `gil_enabled: false`), when the pool
  is not threaded (`worker_profile: :process`), or when it has a single thread
  (`pool_size: 1, threads_per_worker: 1`): then nothing runs in parallel to lose.

  ## Examples

      iex> info = %{version: "3.14.0", free_threaded: true, gil_enabled: false}
      iex> Snakepit.Compatibility.gil_warning(info, 16)
      nil

      iex> info = %{version: "3.11.7", free_threaded: false, gil_enabled: true}
      iex> Snakepit.Compatibility.gil_warning(info, 16) =~ "Python 3.11.7 has a GIL"
      true
  """
  @spec gil_warning(python_info(), Config.t() | pos_integer()) :: String.t() | nil
  def gil_warning(python_info, pool)

  def gil_warning(_info, %Config{worker_profile: :process}), do: nil

  def gil_warning(info, %Config{pool_size: size, threads_per_worker: threads} = config)
      when is_map(info) do
    capacity = Config.capacity(config)

    threads_text =
      "#{capacity} #{plural(capacity, "thread")} (#{size} #{plural(size, "worker")} × " <>
        "#{threads} #{plural(threads, "thread")} per worker)"

    warning(info, capacity, threads_text)
  end

  def gil_warning(info, capacity)
      when is_map(info) and is_integer(capacity) and capacity > 0 do
    warning(info, capacity, "#{capacity} #{plural(capacity, "thread")}")
  end

  @doc """
  Logs a short notice with `Logger.warning/2` when `gil_warning/2` has a warning for this pool,
  once per VM: the first threaded pool that runs on a GIL build says so, the others do not. The
  notice is one sentence with `pool: pool_name` in the metadata; the details are in "The GIL"
  above. Called when a pool starts, after its adapter is constructed (an extension imported by
  the adapter may have re-enabled the GIL). Always returns `:ok`.
  """
  @spec warn_if_gil(atom(), python_info(), Config.t() | pos_integer()) :: :ok
  def warn_if_gil(pool_name, python_info, config),
    do: warn_if_gil(pool_name, python_info, config, {__MODULE__, :gil_noticed})

  @doc false
  # `once` is the :persistent_term key that records the notice was logged (tests use their own).
  def warn_if_gil(pool_name, python_info, config, once) do
    with warning when is_binary(warning) <- gil_warning(python_info, config),
         false <- :persistent_term.get(once, false) do
      :persistent_term.put(once, true)

      Logger.warning("snakepit: pool #{inspect(pool_name)}: #{notice(python_info, config)}",
        pool: pool_name
      )
    end

    :ok
  end

  defp notice(info, config) do
    capacity = if is_integer(config), do: config, else: Config.capacity(config)
    version = Map.get(info, :version) || "(unknown version)"

    why =
      if gil(info) == :re_enabled,
        do: "Python #{version} runs with its GIL enabled",
        else: "Python #{version} has a GIL"

    "#{why}: its #{capacity} threads run Python code one at a time (NumPy, I/O and " <>
      "time.sleep still run in parallel). Logged once; see \"The GIL\" in Snakepit.Compatibility."
  end

  ## Private

  # `name` is the string to look up, `library` what the caller gave (for the error).
  defp lookup(name, library) do
    key = name |> String.trim() |> String.downcase()
    top = key |> String.split(".", parts: 2) |> hd()

    case Map.fetch(@index, key) do
      {:ok, entry} ->
        {:ok, entry}

      :error ->
        case Map.fetch(@index, top) do
          {:ok, %{module: ^top} = entry} -> {:ok, entry}
          _ -> {:error, unknown(library)}
        end
    end
  end

  defp unknown(library) do
    Error.new(
      :validation,
      "library #{inspect(library)} is not in the compatibility matrix; " <>
        "known libraries: #{@known}",
      details: %{library: library, known: Enum.map(@matrix, & &1.module)}
    )
  end

  defp warning(_info, 1, _threads_text), do: nil

  defp warning(info, capacity, threads_text) do
    version = Map.get(info, :version) || "(unknown version)"

    case gil(info) do
      :off ->
        nil

      reason ->
        "#{because(reason, version)}, so this :thread pool's #{threads_text} run Python " <>
          "bytecode one thread at a time: pure-Python CPU work is serialised, whatever " <>
          "threads_per_worker says. Work that releases the GIL (NumPy, I/O, time.sleep) " <>
          "still runs in parallel on up to #{capacity} threads. " <> advice(reason)
    end
  end

  # Why the interpreter has a GIL, or :off when it has none.
  defp gil(info) do
    free_threaded = Map.get(info, :free_threaded) == true

    cond do
      before_free_threading?(Map.get(info, :version)) -> :old_version
      not free_threaded -> :standard_build
      Map.get(info, :gil_enabled, false) != false -> :re_enabled
      true -> :off
    end
  end

  # Free-threaded builds exist from 3.13 on.
  defp before_free_threading?(version) when is_binary(version) do
    with [major, minor | _] <- String.split(version, "."),
         {major, _} <- Integer.parse(major),
         {minor, _} <- Integer.parse(minor) do
      {major, minor} < {3, 13}
    else
      _ -> false
    end
  end

  defp before_free_threading?(_version), do: false

  defp because(:old_version, version),
    do: "Python #{version} has a GIL (free-threaded builds start with 3.13t)"

  defp because(:standard_build, version),
    do: "Python #{version} has a GIL (it is a standard build, not a free-threaded `t` build)"

  defp because(:re_enabled, version),
    do:
      "Python #{version} has a GIL: it is a free-threaded build, but its GIL was enabled at " <>
        "run time (PYTHON_GIL=1, -X gil=1, or an imported C extension that does not declare " <>
        "free-threading support)"

  defp advice(:re_enabled),
    do:
      "For parallel pure-Python CPU work, find what enabled the GIL (Python prints a " <>
        "RuntimeWarning naming the extension) and drop PYTHON_GIL=1 or upgrade that " <>
        "extension to a free-threading release, or use worker_profile: :process."

  defp advice(_gil_build),
    do:
      "For parallel pure-Python CPU work, build Snakepit against a free-threaded CPython " <>
        "3.14t (SNAKEPIT_PYTHON=/path/to/python3.14t, then recompile), or use " <>
        "worker_profile: :process."

  defp plural(1, word), do: word
  defp plural(_n, word), do: word <> "s"
end
