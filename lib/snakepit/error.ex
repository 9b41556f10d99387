defmodule Snakepit.Error do
  @moduledoc """
  The one error type of Snakepit.

  Every failure of a call comes back as `{:error, %Snakepit.Error{}}` (or is raised by
  `Snakepit.execute!/4`):

    * `:category` — what kind of failure:
      * `:python_error` — the adapter raised (`python_type`, `python_traceback` are set);
        `SystemExit` and `KeyboardInterrupt` raised by adapter code land here too.
      * `:timeout` — the call did not finish within its `:timeout`; the job was cancelled.
      * `:pool` — the pool is unknown, stopped or its queue is full.
      * `:validation` — bad configuration or an unknown command (`details.available` lists the
        commands).
      * `:conversion` — a term could not be converted to Python, or a result back to Elixir.
      * `:worker` — the worker running the call failed (a crashed process or a recycled worker).
    * `:message` — a human sentence.
    * `:python_type` — the Python exception's qualified type name, when there is one.
    * `:python_traceback` — the formatted Python traceback, when there is one.
    * `:details` — a map with more facts (the config key, the available commands, ...).
  """

  @type category :: :python_error | :timeout | :pool | :validation | :conversion | :worker

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          python_type: String.t() | nil,
          python_traceback: String.t() | nil,
          details: map()
        }

  defexception category: :python_error,
               message: "",
               python_type: nil,
               python_traceback: nil,
               details: %{}

  @categories [:python_error, :timeout, :pool, :validation, :conversion, :worker]

  @doc "Builds an error of `category` with `message` and optional fields."
  @spec new(category(), String.t(), keyword()) :: t()
  def new(category, message, fields \\ []) when category in @categories do
    struct!(__MODULE__, [category: category, message: message] ++ fields)
  end

  @doc false
  # Builds the struct from the map the NIF sends back.
  @spec from_native(map()) :: t()
  def from_native(%{} = map) do
    %__MODULE__{
      category: Map.get(map, :category, :python_error),
      message: Map.get(map, :message, ""),
      python_type: Map.get(map, :python_type),
      python_traceback: Map.get(map, :python_traceback),
      details: Map.get(map, :details) || %{}
    }
  end

  @impl true
  def message(%__MODULE__{category: category, message: message, python_type: nil}),
    do: "[#{category}] #{message}"

  def message(%__MODULE__{category: category, message: message, python_type: type} = e) do
    base = "[#{category}] #{type}: #{message}"

    case e.python_traceback do
      nil -> base
      tb -> base <> "\n" <> tb
    end
  end
end
