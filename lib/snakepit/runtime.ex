defmodule Snakepit.Runtime do
  @moduledoc """
  The CPython interpreter hosted in this BEAM node.

  There is one per node, started by the first pool (or by `python_info/0`) and never stopped.
  It is the Python the NIF was built for (see the README, "Choosing the Python"), with the
  site-packages of the venv in use: the run-time venv (`SNAKEPIT_VENV`, or
  `config :snakepit, venv: ...`) when one is set, else the one the NIF was built with.
  `build_info/0` tells which.
  """

  alias Snakepit.Error

  @doc """
  The interpreter to use: what the build recorded (the interpreter path, version, whether it is
  free-threaded, its home and site-packages), with the run-time venv applied.

  When `Snakepit.Config.venv/0` names a venv, `:executable` is its `bin/python`,
  `:site_packages` its site-packages, `:prefix` and `:venv` the venv; `:built_executable` keeps
  the recorded interpreter. The venv must exist and be made from the NIF's Python version,
  else this is a `:validation` error naming it. Without a run-time venv, a recorded venv that
  no longer exists is an error too (its packages would be silently missing).
  """
  @spec build_info() :: {:ok, map()} | {:error, Error.t()}
  def build_info do
    with {:ok, info} <- read_record(), do: apply_venv(info, venv_setting())
  end

  defp read_record do
    path = Path.join(:code.priv_dir(:snakepit), "nif/python.term")

    case :file.consult(String.to_charlist(path)) do
      {:ok, [info]} ->
        {:ok, info}

      {:error, reason} ->
        {:error,
         Error.new(
           :worker,
           "the NIF build record #{path} is missing (#{inspect(reason)}): run mix compile"
         )}
    end
  end

  @doc false
  # The record with the venv `setting` ({path, source} or nil) applied.
  def apply_venv(info, setting) do
    info = Map.put(info, :built_executable, info.executable)

    case setting do
      nil ->
        recorded_venv(info)

      {venv, source} ->
        with :ok <- check_venv(venv, source, info.version) do
          {:ok,
           %{
             info
             | executable: Path.join(venv, "bin/python"),
               prefix: venv,
               site_packages: site_packages(venv, info)
           }
           |> Map.put(:venv, venv)}
        end
    end
  end

  defp recorded_venv(%{prefix: prefix, home: home, executable: exe} = info) do
    if prefix != home and not File.dir?(prefix) do
      {:error,
       Error.new(
         :validation,
         "the NIF was built for #{exe}, in the venv #{prefix}, which does not exist here: " <>
           "set SNAKEPIT_VENV (or config :snakepit, venv: ... in config/runtime.exs) to a venv " <>
           "of this machine made from Python #{info.version}",
         details: %{key: :venv, value: prefix, pool: nil}
       )}
    else
      {:ok, Map.put(info, :venv, if(prefix != home, do: prefix))}
    end
  end

  @doc """
  Checks the run-time venv, when one is set (`SNAKEPIT_VENV` or `config :snakepit, venv:`):
  it must be a venv (with `pyvenv.cfg` and `bin/python`) made from the Python version the NIF
  was built for. The application runs this when it starts.
  """
  @spec check_venv() :: :ok | {:error, Error.t()}
  def check_venv do
    case venv_setting() do
      nil ->
        :ok

      {venv, source} ->
        version =
          case read_record() do
            {:ok, info} -> info.version
            {:error, _} -> nil
          end

        check_venv(venv, source, version)
    end
  end

  @doc false
  def check_venv(venv, source, version) do
    cfg = Path.join(venv, "pyvenv.cfg")
    python = Path.join(venv, "bin/python")

    problem =
      cond do
        not File.regular?(cfg) or not File.exists?(python) ->
          what =
            if File.exists?(venv),
              do: "is not a venv (no pyvenv.cfg or bin/python)",
              else: "does not exist"

          "#{what}: create it (mix snakepit.setup --venv #{venv}, or python -m venv) or " <>
            "point #{source} at an existing venv"

        (made = venv_version(cfg)) && version && minor(made) != minor(version) ->
          "was made from Python #{made}, but the NIF is built for Python #{version}: use a " <>
            "venv of Python #{minor(version)}, or rebuild the NIF for this one"

        true ->
          nil
      end

    if problem,
      do:
        {:error,
         Error.new(:validation, "the venv #{venv} (#{source}) #{problem}",
           details: %{key: :venv, value: venv, pool: nil}
         )},
      else: :ok
  end

  defp venv_setting do
    case Snakepit.Config.venv() do
      nil ->
        nil

      venv ->
        source =
          if System.get_env("SNAKEPIT_VENV") not in [nil, ""],
            do: "SNAKEPIT_VENV",
            else: "config :snakepit, venv:"

        {venv, source}
    end
  end

  # The Python version recorded in pyvenv.cfg (`version` or `version_info`), or nil.
  defp venv_version(cfg) do
    cfg
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn line ->
      case String.split(line, "=", parts: 2) do
        [key, value] -> if String.trim(key) in ["version", "version_info"], do: String.trim(value)
        _ -> nil
      end
    end)
  end

  defp minor(version), do: version |> String.split(".") |> Enum.take(2) |> Enum.join(".")

  defp site_packages(venv, info) do
    dir = "python#{minor(info.version)}#{if info.free_threaded, do: "t"}"
    [Path.join([venv, "lib", dir, "site-packages"])]
  end

  @doc "The runtime configuration handed to the NIF: interpreter, home, sys.path additions."
  @spec native_config() :: {:ok, map()} | {:error, Error.t()}
  def native_config do
    with {:ok, info} <- build_info() do
      {:ok,
       %{
         home: info.home,
         executable: info.executable,
         site_packages: info.site_packages,
         python_path: python_path(),
         log_level: Snakepit.PythonLogger.python_level(),
         mapset_fields: mapset_fields()
       }}
    end
  rescue
    e in Error -> {:error, e}
  end

  @doc false
  # The fields of %MapSet{} besides :__struct__ and :map, as this Elixir lays it out: Elixir
  # 1.14 has `version: 2`, 1.15 and later none. Python sets are built with exactly these, so
  # they are == to MapSet.new/1's on every version. Element values are [] in all of them.
  @spec mapset_fields() :: [{String.t(), integer()}]
  def mapset_fields do
    for {field, value} <- MapSet.new() |> Map.from_struct() |> Map.delete(:map) |> Enum.sort(),
        is_integer(value),
        do: {Atom.to_string(field), value}
  end

  @doc "The directories put first on `sys.path`: Snakepit's `priv/python`, then `python_path`."
  @spec python_path() :: [String.t()]
  def python_path do
    [Path.join(:code.priv_dir(:snakepit), "python") | Snakepit.Config.python_path()]
  end

  @doc """
  Starts the interpreter if it is not running yet. Pools do this themselves.
  """
  @spec ensure_started() :: :ok | {:error, Error.t()}
  def ensure_started do
    with {:ok, config} <- native_config() do
      case Snakepit.Native.start_runtime(config) do
        {:ok, {}} -> :ok
        {:error, map} -> {:error, Error.from_native(map)}
      end
    end
  end

  @doc """
  The interpreter in use: `%{version:, free_threaded:, gil_enabled:, executable:, prefix:, full_version:}`.
  Starts it when needed.
  """
  @spec info() :: {:ok, map()} | {:error, Error.t()}
  def info do
    with :ok <- ensure_started() do
      case Snakepit.Native.python_info() do
        {:ok, info} -> {:ok, info}
        {:error, map} -> {:error, Error.from_native(map)}
      end
    end
  end
end
