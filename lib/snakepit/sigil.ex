defmodule Snakepit.Sigil do
  @moduledoc """
  Python snippets in Elixir code: `~P"..."` on every Elixir, and `~PY"..."` on Elixir 1.15
  and later (older versions cannot tokenize multi-letter sigils).

      import Snakepit.Sigil

      x = [1, 2, 3]
      ~P"sum(x) * 2"
      #=> 12

  The Elixir variables of the caller's scope that the code names are passed as globals (as
  the `bindings` of `Snakepit.eval/3`); the value of the code's last expression is returned
  (`nil` when it ends with a statement), and a failure raises `Snakepit.Error` with the
  Python traceback. The code runs on the default pool (`config :snakepit, default_pool:`,
  else the first configured pool); use `Snakepit.eval/3` for another pool, a persistent
  namespace or `return: :ref`.

  Names are found in the code's text: a name that only appears inside a Python string literal
  still passes the Elixir variable of that name, which is harmless.
  """

  @doc "Evaluates Python code with the caller's variables that it names. See the moduledoc."
  defmacro sigil_P(code, modifiers), do: expand(code, modifiers, __CALLER__)

  if Version.match?(System.version(), ">= 1.15.0") do
    @doc "The same as `sigil_P/2` (Elixir 1.15 and later)."
    defmacro sigil_PY(code, modifiers), do: expand(code, modifiers, __CALLER__)
  end

  defp expand({:<<>>, _meta, [code]}, [], caller) when is_binary(code) do
    bindings =
      for name <- free_names(code, caller) do
        {Atom.to_string(name), Macro.var(name, nil)}
      end

    quote do
      Snakepit.Sigil.__eval__!(unquote(code), %{unquote_splicing(bindings)})
    end
  end

  defp expand(_code, modifiers, _caller) when modifiers != [] do
    raise ArgumentError, "the Python sigil takes no modifiers, got: #{modifiers}"
  end

  @identifier ~r/[A-Za-z_][A-Za-z0-9_]*/

  @doc false
  # The caller's variables (of the user's own context) that the code names.
  @spec free_names(String.t(), Macro.Env.t()) :: [atom()]
  def free_names(code, caller) do
    vars = for {name, nil} <- Macro.Env.vars(caller), into: MapSet.new(), do: Atom.to_string(name)

    @identifier
    |> Regex.scan(code)
    |> Enum.map(&hd/1)
    |> Enum.uniq()
    |> Enum.filter(&MapSet.member?(vars, &1))
    |> Enum.map(&String.to_atom/1)
  end

  @doc false
  @spec __eval__!(String.t(), map()) :: term()
  def __eval__!(code, bindings) do
    case Snakepit.eval(code, bindings) do
      {:ok, value} -> value
      {:error, %Snakepit.Error{} = e} -> raise e
    end
  end
end
