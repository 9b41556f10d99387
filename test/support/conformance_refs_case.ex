defmodule Snakepit.ConformanceRefsCase do
  @moduledoc false
  # Object refs and eval (README, "Python objects and eval") against every worker profile:
  # `Snakepit.ConformanceRefsTest` (test/snakepit/conformance_refs_test.exs) uses this
  # template with `profile: :thread | :process | :process_threaded`, the profiles and helpers
  # of Snakepit.ConformanceCase.
  use ExUnit.CaseTemplate

  @adapter "snakepit_ref_adapters.RefAdapter"

  def adapter, do: @adapter

  @doc "Polls `fun` until it is true; the timeout only bounds a failure (orders nothing)."
  def eventually(fun), do: Snakepit.ConformanceCase.wait_for(fun, 60_000)

  @doc "Runs `fun` in a process that then exits, and collects garbage everywhere."
  def in_dead_process(fun) do
    {pid, mon} = spawn_monitor(fun)

    receive do
      {:DOWN, ^mon, :process, ^pid, reason} -> reason
    end
  after
    for p <- Process.list(), do: :erlang.garbage_collect(p)
  end

  using opts do
    profile = Keyword.fetch!(opts, :profile)

    quote do
      import Snakepit.ConformanceRefsCase
      import Snakepit.ConformanceCase, only: [capacity: 2, worker_profile: 1]
      alias Snakepit.{Error, Ref}

      @profile unquote(profile)

      setup_all do
        name = :"refs_#{@profile}_#{System.unique_integer([:positive])}"

        opts =
          [name: name, adapter: adapter(), worker_profile: worker_profile(@profile)] ++
            capacity(@profile, 4)

        {:ok, _} = Snakepit.start_pool(opts)
        on_exit(fn -> Snakepit.stop_pool(name) end)
        %{pool: name}
      end

      defp tag, do: "t#{System.unique_integer([:positive])}"

      # A call pinned next to `anchor` (same worker in a :process pool).
      defp live(ctx, tag, anchor),
        do: Snakepit.execute(ctx.pool, "live", %{tag: tag, anchor: anchor})

      describe "refs" do
        test "return: :ref keeps the result in Python; inspect shows type, repr and pool",
             ctx do
          assert {:ok, %Ref{} = ref} =
                   Snakepit.execute(ctx.pool, "make_box", %{value: 7}, return: :ref)

          assert ref.type == "snakepit_ref_adapters.Box"

          assert inspect(ref) ==
                   "#Snakepit.Ref<snakepit_ref_adapters.Box Box(7) @#{inspect(ctx.pool)}>"

          {:ok, array} = Snakepit.execute(ctx.pool, "zeros", %{rows: 3, cols: 3}, return: :ref)

          assert inspect(array) ==
                   "#Snakepit.Ref<numpy.ndarray (3, 3) float64 @#{inspect(ctx.pool)}>"

          assert Snakepit.get_attr(array, "shape") == {:ok, {3, 3}}
          assert {:ok, [[+0.0, +0.0, +0.0] | _]} = Snakepit.decode(array)
        end

        test "without return: :ref the same object is a conversion error", ctx do
          assert {:error, %Error{category: :conversion, message: msg}} =
                   Snakepit.execute(ctx.pool, "make_box", %{value: 7})

          assert msg =~ "snakepit_ref_adapters.Box"
        end

        test "snakepit_bridge.ref forces a ref, anywhere in a result", ctx do
          assert {:ok, %Ref{repr: "Box(1)"}} = Snakepit.execute(ctx.pool, "make_ref", %{value: 1})

          assert {:ok, %{"plain" => [1, 2], "box" => %Ref{} = inner, "boxes" => {%Ref{}, %Ref{}}}} =
                   Snakepit.execute(ctx.pool, "mixed", %{})

          assert Snakepit.call_method(inner, "get") == {:ok, "inner"}

          assert {:ok, [%Ref{}, %Ref{}, %Ref{}]} =
                   Snakepit.execute(ctx.pool, "make_refs", %{n: 3})
        end

        test "a ref inside later arguments, nested anywhere, arrives as the object", ctx do
          {:ok, a} = Snakepit.execute(ctx.pool, "make_ref", %{value: "a"})
          {:ok, b} = Snakepit.execute(ctx.pool, "make_ref", %{value: "b", anchor: a})

          assert Snakepit.execute(ctx.pool, "unbox", %{value: [a, %{"k" => [{b}]}, a]}) ==
                   {:ok, ["a", "b", "a"]}

          assert Snakepit.execute(ctx.pool, "unbox", %{value: [MapSet.new([b]), %{a => 1}]}) ==
                   {:ok, ["b"]}

          assert {:ok, ["a"]} = Snakepit.execute(ctx.pool, "unbox", %{value: MapSet.new([a])})

          # The object itself, not a copy: the same identity every time, and state sticks.
          {:ok, %{"id" => id, "box" => true}} =
            Snakepit.execute(ctx.pool, "identity", %{value: a})

          assert {:ok, %{"id" => ^id}} = Snakepit.execute(ctx.pool, "identity", [a])
          assert Snakepit.call_method(a, "add", [1]) == {:ok, 1}
          assert Snakepit.call_method(a, :add, %{item: 2}) == {:ok, 2}
          assert Snakepit.get_attr(a, "items") == {:ok, [1, 2]}
        end

        test "call_method, get_attr and decode, with return: :ref", ctx do
          {:ok, box} = Snakepit.execute(ctx.pool, "make_ref", %{value: [1, 2, 3]})

          assert {:ok, %Ref{type: "list", repr: "[1, 2, 3]"} = list} =
                   Snakepit.call_method(box, "get", [], return: :ref)

          assert Snakepit.call_method(list, "count", [2]) == {:ok, 1}
          assert {:ok, %Ref{type: "list"}} = Snakepit.get_attr(box, "items", return: :ref)
          assert Snakepit.decode(list) == {:ok, [1, 2, 3]}
          assert {:ok, %Ref{type: "list"}} = Snakepit.decode(list, return: :ref)

          assert {:error, %Error{category: :python_error, python_type: "AttributeError"}} =
                   Snakepit.get_attr(box, "nope")

          assert {:error, %Error{category: :conversion}} = Snakepit.decode(box)

          assert {:error, %Error{category: :validation, message: msg}} =
                   Snakepit.execute(ctx.pool, "make_box", %{}, return: :copy)

          assert msg =~ "return: must be :term or :ref"

          assert {:error, %Error{category: :validation, message: msg, details: details}} =
                   Snakepit.execute(ctx.pool, "nope", %{}, return: :ref)

          assert msg =~ "unknown command" and msg =~ "make_box"
          assert "make_box" in details.available
          refute msg =~ "__snakepit_"
          assert {:error, %Error{category: :validation}} = Snakepit.call_method(:nope, "x")
        end

        test "release/1 frees the object now; later use is a clear error", ctx do
          t = tag()
          {:ok, box} = Snakepit.execute(ctx.pool, "make_ref", %{value: 1, tag: t})
          {:ok, anchor} = Snakepit.execute(ctx.pool, "make_ref", %{tag: "anchor", anchor: box})
          assert live(ctx, t, box) == {:ok, 1}
          assert Snakepit.release(box) == :ok
          assert Snakepit.release(box) == :ok
          assert eventually(fn -> live(ctx, t, anchor) == {:ok, 0} end)

          assert {:error, %Error{category: :conversion, message: msg}} =
                   Snakepit.call_method(box, "get")

          assert msg =~ "was released"

          assert {:error, %Error{category: :conversion}} =
                   Snakepit.execute(ctx.pool, "unbox", %{value: [box]})
        end

        test "an object is freed in Python once Elixir drops its last ref", ctx do
          t = tag()
          parent = self()
          {:ok, anchor} = Snakepit.execute(ctx.pool, "make_ref", %{tag: "anchor"})

          :normal =
            in_dead_process(fn ->
              {:ok, box} = Snakepit.execute(ctx.pool, "make_ref", %{tag: t, anchor: anchor})
              {:ok, 1} = live(ctx, t, box)
              send(parent, :made)
            end)

          assert_received :made
          assert eventually(fn -> live(ctx, t, anchor) == {:ok, 0} end)
        end

        test "a ref kept anywhere (ETS, another process) keeps its object", ctx do
          t = tag()
          table = :ets.new(:refs, [:public])

          in_dead_process(fn ->
            {:ok, box} = Snakepit.execute(ctx.pool, "make_ref", %{value: 5, tag: t})
            :ets.insert(table, {:box, box})
          end)

          [{:box, box}] = :ets.lookup(table, :box)
          assert live(ctx, t, box) == {:ok, 1}
          assert Snakepit.call_method(box, "get") == {:ok, 5}
          :ets.delete(table)
        end

        test "1,000 concurrent callers, each with its own ref", ctx do
          results =
            1..1_000
            |> Enum.map(fn i ->
              Task.async(fn ->
                {:ok, box} = Snakepit.execute(ctx.pool, "make_box", %{value: i}, return: :ref)
                {:ok, 1} = Snakepit.call_method(box, "add", [i * 2])
                {:ok, items} = Snakepit.get_attr(box, "items")
                {:ok, value} = Snakepit.call_method(box, "get")
                {value, items}
              end)
            end)
            |> Task.await_many(120_000)

          assert results == for(i <- 1..1_000, do: {i, [i * 2]})
        end
      end

      describe "eval" do
        test "the value of the last expression, with bindings as globals", ctx do
          assert Snakepit.eval("sum(x) * 2", %{x: [1, 2, 3]}, pool: ctx.pool) == {:ok, 12}
          assert Snakepit.eval("a = 1\nb = a + n\nb * 10", [n: 2], pool: ctx.pool) == {:ok, 30}
          assert Snakepit.eval("y = 5", %{}, pool: ctx.pool) == {:ok, nil}
          assert Snakepit.eval("", %{}, pool: ctx.pool) == {:ok, nil}

          assert Snakepit.eval(
                   "import snakepit_ref_adapters\nsnakepit_ref_adapters.Box(3).get()",
                   %{},
                   pool: ctx.pool
                 ) == {:ok, 3}
        end

        test "errors name the snippet's line and show it", ctx do
          code = "a = 1\nb = 2\nc = a / (b - 2)\n"

          assert {:error, %Error{category: :python_error, python_type: "ZeroDivisionError"} = e} =
                   Snakepit.eval(code, %{}, pool: ctx.pool)

          assert e.python_traceback =~ ~r/File "<snakepit-eval-\d+>", line 3/
          assert e.python_traceback =~ "c = a / (b - 2)"
          refute e.python_traceback =~ "_builtins.py"

          assert {:error, %Error{python_type: "SyntaxError", python_traceback: tb}} =
                   Snakepit.eval("x = 1\nif x\n", %{}, pool: ctx.pool)

          assert tb =~ "line 2"

          assert {:error, %Error{category: :validation}} =
                   Snakepit.eval(:nope, %{}, pool: ctx.pool)

          assert {:error, %Error{category: :validation}} = Snakepit.eval("1", 5, pool: ctx.pool)
        end

        test "return: :ref, and globals: a namespace kept across evals", ctx do
          assert {:ok, %Ref{type: "dict"} = ns} =
                   Snakepit.eval("{}", %{}, pool: ctx.pool, return: :ref)

          assert Snakepit.eval("total = start", %{start: 10}, globals: ns) == {:ok, nil}
          assert Snakepit.eval("total += 5\ntotal", %{}, globals: ns) == {:ok, 15}

          assert Snakepit.eval("def f(v):\n    return v + total\n", %{}, globals: ns) ==
                   {:ok, nil}

          assert Snakepit.eval("f(1)", %{}, globals: ns) == {:ok, 16}

          {:ok, box} = Snakepit.execute(ctx.pool, "make_ref", %{value: 4}, [])

          assert {:ok, %Ref{type: "snakepit_ref_adapters.Box"}} =
                   Snakepit.eval("b", %{b: box}, globals: ns, return: :ref)

          assert {:error, %Error{category: :validation}} =
                   Snakepit.eval("1", %{}, pool: ctx.pool, globals: :nope)
        end
      end
    end
  end
end
