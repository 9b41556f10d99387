defmodule Snakepit.CallOptions do
  @moduledoc false
  # Per-call result options (docs/architecture.md, "Large data" and "Object refs"): `return:`
  # and `ndarray:`. A call with any of them is submitted as the built-in command
  # "__snakepit_call__" with args [command, args, options] (string keys and values); a plain
  # call is submitted unchanged. `ndarray: :nx` travels as "struct" and finish/2 turns the
  # structs into Nx tensors (Nx detected at run time).

  alias Snakepit.{Error, NDArray}

  @ndarray_modes [:list, :struct, :nx]

  @doc """
  The command and args to submit for `command`/`args` under the call's `opts`: unchanged
  without result options, else the built-in `__snakepit_call__` (`return:`, `ndarray:`).
  """
  @spec submission(String.t(), term(), keyword()) ::
          {:ok, {String.t(), term()}} | {:error, Error.t()}
  def submission(command, args, []), do: {:ok, {command, args}}

  def submission(command, args, opts) do
    case result_options(opts) do
      {:ok, options} when map_size(options) == 0 -> {:ok, {command, args}}
      {:ok, options} -> {:ok, {"__snakepit_call__", [command, args, options]}}
      {:error, _} = error -> error
    end
  end

  @doc """
  The result options of `opts` as the built-ins take them (priv/python/snakepit_bridge/_builtins.py):
  `%{"return" => "ref"}`, `%{"ndarray" => "struct"}` (`:nx` travels as `"struct"`), or none.
  """
  @spec result_options(keyword()) :: {:ok, map()} | {:error, Error.t()}
  def result_options(opts) do
    with {:ok, options} <- return_option(opts), do: ndarray_option(options, opts)
  end

  defp return_option(opts) do
    case Keyword.get(opts, :return, :term) do
      :term ->
        {:ok, %{}}

      :ref ->
        {:ok, %{"return" => "ref"}}

      other ->
        {:error,
         Error.new(:validation, "return: must be :term or :ref, got: #{inspect(other)}",
           details: %{key: :return, value: other}
         )}
    end
  end

  defp ndarray_option(options, opts) do
    case Keyword.fetch(opts, :ndarray) do
      :error ->
        {:ok, options}

      {:ok, :nx} ->
        if NDArray.nx_loaded?(),
          do: {:ok, Map.put(options, "ndarray", "struct")},
          else: {:error, Error.new(:validation, "ndarray: :nx needs Nx, which is not loaded")}

      {:ok, mode} when mode in @ndarray_modes ->
        {:ok, Map.put(options, "ndarray", Atom.to_string(mode))}

      {:ok, other} ->
        {:error,
         Error.new(
           :validation,
           "the ndarray option must be one of #{Enum.map_join(@ndarray_modes, ", ", &inspect/1)}, got: #{inspect(other)}",
           details: %{key: :ndarray, value: other}
         )}
    end
  end

  @doc "The call's result after the options that act in Elixir (`ndarray: :nx`)."
  @spec finish({:ok, term()} | {:error, Error.t()}, keyword()) ::
          {:ok, term()} | {:error, Error.t()}
  def finish({:ok, value}, opts) do
    if Keyword.get(opts, :ndarray) == :nx, do: {:ok, to_nx(value)}, else: {:ok, value}
  end

  def finish(error, _opts), do: error

  defp to_nx(%NDArray{} = a), do: NDArray.to_nx(a)
  defp to_nx(list) when is_list(list), do: Enum.map(list, &to_nx/1)

  defp to_nx(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> to_nx() |> List.to_tuple()

  defp to_nx(map) when is_map(map) and not is_struct(map),
    do: Map.new(map, fn {k, v} -> {k, to_nx(v)} end)

  defp to_nx(other), do: other
end
