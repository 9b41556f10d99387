defmodule Snakepit.Eval do
  @moduledoc false
  # Snakepit.eval/3: the built-in `__snakepit_eval__` (priv/python/snakepit_bridge/_builtins.py)
  # submitted through Snakepit.Caller like any call, so it works in every profile.

  alias Snakepit.{Caller, Config, Error, Ref}

  @spec eval(term(), term(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def eval(code, bindings, opts) do
    with :ok <- check_code(code),
         {:ok, bindings} <- check_bindings(bindings),
         {:ok, options} <- Ref.result_options(opts),
         {:ok, options} <- globals(options, opts),
         {:ok, pool} <- pool(opts) do
      Caller.execute(
        pool,
        "__snakepit_eval__",
        [code, bindings, options],
        Keyword.drop(opts, [:return, :pool, :globals])
      )
    end
  end

  defp check_code(code) when is_binary(code), do: :ok

  defp check_code(code),
    do: {:error, Error.new(:validation, "eval code must be a string, got: #{inspect(code)}")}

  defp check_bindings(b) when is_map(b), do: {:ok, b}
  defp check_bindings([]), do: {:ok, %{}}

  defp check_bindings(b) when is_list(b) do
    if Keyword.keyword?(b),
      do: {:ok, Map.new(b)},
      else: bad_bindings(b)
  end

  defp check_bindings(b), do: bad_bindings(b)

  defp bad_bindings(b),
    do:
      {:error,
       Error.new(:validation, "eval bindings must be a map or keyword list, got: #{inspect(b)}")}

  defp globals(options, opts) do
    case Keyword.get(opts, :globals) do
      nil ->
        {:ok, options}

      %Ref{} = ref ->
        {:ok, Map.put(options, "globals", ref)}

      other ->
        {:error,
         Error.new(
           :validation,
           "globals: must be a %Snakepit.Ref{} to a Python dict, got: #{inspect(other)}"
         )}
    end
  end

  # pool:, else the pool of the globals ref, else the default pool.
  defp pool(opts) do
    case {Keyword.get(opts, :pool), Keyword.get(opts, :globals)} do
      {nil, %Ref{} = ref} ->
        Ref.pool_for(ref, [])

      {nil, _} ->
        case Config.default_pool() do
          nil -> {:error, Error.new(:pool, "no pool: given and no default pool configured")}
          pool -> {:ok, pool}
        end

      {pool, _} ->
        {:ok, pool}
    end
  end
end
