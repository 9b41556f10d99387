defmodule Snakepit.CallOptions do
  @moduledoc false
  # Per-call result options (docs/architecture.md, "Large data"): a call with any of them is
  # submitted as the built-in command "__snakepit_call__" with args [command, args, options]
  # (string keys and values); a plain call is submitted unchanged.

  alias Snakepit.Error

  @ndarray_modes [:list, :struct]

  @doc "The command and args to submit for `command`/`args` under the call's `opts`."
  @spec submission(String.t(), term(), keyword()) ::
          {:ok, {String.t(), term()}} | {:error, Error.t()}
  def submission(command, args, opts) do
    case Keyword.fetch(opts, :ndarray) do
      :error ->
        {:ok, {command, args}}

      {:ok, mode} when mode in @ndarray_modes ->
        {:ok, {"__snakepit_call__", [command, args, %{"ndarray" => Atom.to_string(mode)}]}}

      {:ok, other} ->
        {:error,
         Error.new(
           :validation,
           "the ndarray option must be one of #{Enum.map_join(@ndarray_modes, ", ", &inspect/1)}, got: #{inspect(other)}"
         )}
    end
  end
end
