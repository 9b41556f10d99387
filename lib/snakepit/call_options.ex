defmodule Snakepit.CallOptions do
  @moduledoc false
  # Per-call result options (docs/architecture.md, "Large data" and "Object refs"): `return:`
  # and `ndarray:`. A call with any of them is submitted as the built-in command
  # "__snakepit_call__" with args [command, args, options] (string keys and values); a plain
  # call is submitted unchanged. `ndarray: :nx` travels as "struct" and finish/3 turns the
  # structs into Nx tensors (Nx detected at run time). A pool's `ndarray: :nx` is `:struct`
  # towards Python (python_ndarray/1) and finished the same way: its mode travels with the
  # pool's registry entry (Snakepit.Registry.lookup_call/1), so a plain call pays nothing.

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

  @doc """
  The command and args of a stream (`Snakepit.execute_stream/4`): as submission/3, but
  `return: :ref` is refused (a stream sends its items; it has no one result to keep).
  """
  @spec stream_submission(String.t(), term(), keyword()) ::
          {:ok, {String.t(), term()}} | {:error, Error.t()}
  def stream_submission(command, args, opts) do
    case Keyword.get(opts, :return, :term) do
      :ref ->
        {:error,
         Error.new(
           :validation,
           "return: :ref does not apply to execute_stream (a stream sends its items as " <>
             "values); call Snakepit.execute/4 with return: :ref for a ref to the iterator",
           details: %{key: :return, value: :ref}
         )}

      _ ->
        submission(command, args, opts)
    end
  end

  @doc """
  Whether results are finished as Nx tensors: the call's `ndarray:` if it has one, else
  `pool_mode` (the pool's `ndarray:`, or what a call relayed from another node was submitted
  with: `:snakepit_ndarray`).
  """
  @spec nx?(keyword(), atom()) :: boolean()
  def nx?([], pool_mode), do: pool_mode == :nx

  def nx?(opts, pool_mode) do
    case Keyword.fetch(opts, :ndarray) do
      {:ok, mode} -> mode == :nx
      :error -> Keyword.get(opts, :snakepit_ndarray, pool_mode) == :nx
    end
  end

  @doc "The call's result after the options that act in Elixir (`ndarray: :nx`, call or pool)."
  @spec finish({:ok, term()} | {:error, Error.t()}, keyword(), atom()) ::
          {:ok, term()} | {:error, Error.t()}
  def finish({:ok, value} = ok, opts, pool_mode) do
    if nx?(opts, pool_mode), do: {:ok, to_nx(value)}, else: ok
  end

  def finish(error, _opts, _pool_mode), do: error

  @doc """
  The options of a call relayed to another node (Snakepit.Cluster): without the result
  options, which the submitted command already carries; the `ndarray:` mode it was submitted
  with goes as `:snakepit_ndarray`, so that node's pool mode does not apply over it.
  """
  @spec remote_opts(keyword()) :: keyword()
  def remote_opts(opts) do
    remote = Keyword.drop(opts, [:return, :ndarray])

    case Keyword.fetch(opts, :ndarray) do
      {:ok, :nx} -> Keyword.put(remote, :snakepit_ndarray, :struct)
      {:ok, mode} -> Keyword.put(remote, :snakepit_ndarray, mode)
      :error -> remote
    end
  end

  @doc "What Python is told of a pool's `ndarray:` (`:nx` is `\"struct\"` there)."
  @spec python_ndarray(:list | :struct | :nx) :: String.t()
  def python_ndarray(:nx), do: "struct"
  def python_ndarray(mode) when mode in [:list, :struct], do: Atom.to_string(mode)

  @doc """
  `:ok`, or the `:validation` error for a pool with `ndarray: :nx` when Nx is not loaded
  (checked when the pool starts; Snakepit.Pool.start_link/1).
  """
  @spec check_pool(Snakepit.Config.t()) :: :ok | {:error, Error.t()}
  def check_pool(%{ndarray: :nx, name: name}) do
    if NDArray.nx_loaded?() do
      :ok
    else
      {:error,
       Error.new(
         :validation,
         "pool #{inspect(name)}: ndarray: :nx needs Nx, which is not loaded " <>
           "(add :nx to your dependencies, or use ndarray: :struct)",
         details: %{key: :ndarray, value: :nx, pool: name}
       )}
    end
  end

  def check_pool(_config), do: :ok

  @doc "`value` with every `%Snakepit.NDArray{}` in it (lists, tuples, map values) a tensor."
  @spec to_nx(term()) :: term()
  def to_nx(%NDArray{} = a), do: NDArray.to_nx(a)
  def to_nx(list) when is_list(list), do: Enum.map(list, &to_nx/1)

  def to_nx(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> to_nx() |> List.to_tuple()

  def to_nx(map) when is_map(map) and not is_struct(map),
    do: Map.new(map, fn {k, v} -> {k, to_nx(v)} end)

  def to_nx(other), do: other
end
