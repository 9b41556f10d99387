defmodule Snakepit.FunctionsTest do
  # Snakepit.register_function/2, the `functions:` config, and what only the :thread profile
  # does: async commands that hold no pool thread while they await. Everything else of
  # Python calling Elixir and async Python is in test/support/conformance_elixir_case.ex.
  use ExUnit.Case, async: true

  import Snakepit.ConformanceCase, only: [start!: 2]

  alias Snakepit.Error

  defp fname(base), do: "#{base}_#{System.unique_integer([:positive])}"

  describe "register_function/2" do
    test "bad names and functions are validation errors naming them" do
      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.register_function(:f, 42)

      assert msg =~ "expected a fun or a {module, function} tuple"

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.register_function("", fn -> 1 end)

      assert msg =~ "name"
    end
  end

  describe "async commands (:thread)" do
    @tag timeout: 300_000
    test "10,000 concurrent sleepers on 2 threads are all in flight at once" do
      pool = start!(:thread, pool_size: 1, threads_per_worker: 2, max_queue: 20_000)
      key = fname("sleepers")
      n = 10_000

      results =
        1..n
        |> Task.async_stream(
          fn i ->
            Snakepit.execute(pool, "async_sleep", %{seconds: 1.0, value: i, key: key},
              timeout: 240_000
            )
          end,
          max_concurrency: n,
          timeout: 250_000
        )
        |> Enum.map(fn {:ok, {:ok, v}} -> v end)

      assert Enum.sort(results) == Enum.to_list(1..n)
      assert {:ok, stats} = Snakepit.execute(pool, "async_stats", %{key: key})
      assert stats["done"] == n
      # Two pool threads: were every await holding one, at most 2 would be in flight.
      assert stats["max_in_flight"] > 1_000
    end
  end
end

defmodule Snakepit.FunctionsConfigTest do
  # Changes the application environment: not async (config_test.exs reads all of it).
  use ExUnit.Case, async: false

  alias Snakepit.Error

  test "config :snakepit, functions: is validated, naming the bad entry" do
    old = Application.get_env(:snakepit, :functions)

    on_exit(fn ->
      if old,
        do: Application.put_env(:snakepit, :functions, old),
        else: Application.delete_env(:snakepit, :functions)
    end)

    Application.put_env(:snakepit, :functions, ok: {Enum, :sum}, bad: "nope")
    assert {:error, %Error{message: msg, details: details}} = Snakepit.Config.functions()
    assert msg =~ ":functions"
    assert msg =~ ":bad"
    assert details.function == :bad

    Application.put_env(:snakepit, :functions, ok: {Enum, :sum})
    assert {:ok, [{"ok", {Enum, :sum}}]} = Snakepit.Config.functions()
    assert :ok = Snakepit.Config.validate_global()
  end
end
