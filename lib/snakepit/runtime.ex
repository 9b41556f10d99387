defmodule Snakepit.Runtime do
  @moduledoc """
  The CPython interpreter hosted in this BEAM node.

  There is one per node, started by the first pool (or by `python_info/0`) and never stopped.
  It is the Python the NIF was built for (see the README, "Choosing the Python"); what the
  build recorded is in `build_info/0`.
  """

  alias Snakepit.Error

  @doc """
  What the build recorded: the interpreter path, version, whether it is free-threaded, its
  home and site-packages.
  """
  @spec build_info() :: {:ok, map()} | {:error, Error.t()}
  def build_info do
    path = Path.join(:code.priv_dir(:snakepit), "native/python.term")

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
        :ok -> :ok
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
