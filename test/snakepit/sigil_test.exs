defmodule Snakepit.SigilTest do
  # ~P (every Elixir) and ~PY (Elixir >= 1.15) run on the default pool (config/config.exs).
  use ExUnit.Case, async: true

  import Snakepit.Sigil

  test "the caller's variables that the code names are its globals" do
    x = [1, 2, 3]
    factor = 2
    assert ~P"sum(x) * factor" == 12
    assert ~P"x" == [1, 2, 3]
  end

  test "variables the code does not name are not passed" do
    unrelated = 5
    _ = unrelated
    assert ~P"('unrel' + 'ated') in globals()" == false
    # A name in a string literal still passes the variable (documented; harmless).
    assert ~P"'unrelated' in globals()" == true
  end

  test "multi-line code: the last expression's value, nil after a statement" do
    n = 4

    assert ~P"""
           total = 0
           for i in range(n):
               total += i
           total
           """ == 6

    assert ~P"y = n" == nil
  end

  test "a failure raises Snakepit.Error with the snippet's line" do
    error =
      assert_raise Snakepit.Error, ~r/division by zero/, fn ->
        ~P"""
        a = 1
        a / 0
        """
      end

    assert error.python_traceback =~ ~r/File "<snakepit-eval-\d+>", line 2/
  end

  test "the names are found at compile time" do
    x = 1
    other = 2
    _ = {x, other}
    names = Snakepit.Sigil.free_names("x + y + 'other'", __ENV__)
    assert Enum.sort(names) == [:other, :x]
  end

  if Version.match?(System.version(), ">= 1.15.0") do
    test "~PY is the same as ~P" do
      {value, _} =
        Code.eval_string(~S'''
        import Snakepit.Sigil
        x = [1, 2, 3]
        ~PY"sum(x) * 2"
        ''')

      assert value == 12
    end
  else
    test "~PY is not defined before Elixir 1.15" do
      refute macro_exported?(Snakepit.Sigil, :sigil_PY, 2)
      assert macro_exported?(Snakepit.Sigil, :sigil_P, 2)
    end
  end
end
