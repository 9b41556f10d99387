defmodule Snakepit.DependencyTest do
  # Snakepit as a path dependency of a new Mix app: the NIF is built into that app's _build,
  # the app's own adapter is found through python_path. Slow (a cargo build from scratch):
  # tagged :integration, run by scripts/test.
  use ExUnit.Case, async: true

  @moduletag :integration
  @moduletag timeout: 600_000

  @root Path.expand("../..", __DIR__)

  test "a new Mix app uses Snakepit as a path dependency" do
    app = Path.join(System.tmp_dir!(), "snakepit_dep_app_#{System.unique_integer([:positive])}")
    File.rm_rf!(app)
    on_exit(fn -> File.rm_rf!(app) end)

    write!(app, "mix.exs", """
    defmodule DepApp.MixProject do
      use Mix.Project

      def project do
        [app: :dep_app, version: "0.1.0", elixir: "~> 1.14",
         deps: [{:snakepit, path: #{inspect(@root)}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    write!(app, "config/config.exs", """
    import Config

    config :snakepit,
      python_path: [Path.expand("../priv/python", __DIR__)],
      pools: [%{name: :app_pool, adapter: "greeter.Greeter", threads_per_worker: 2}]
    """)

    write!(app, "priv/python/greeter.py", """
    from snakepit_bridge import ThreadSafeAdapter, tool


    class Greeter(ThreadSafeAdapter):
        __thread_safe__ = True

        @tool(description="Greet someone.")
        def greet(self, name: str) -> str:
            return f"hello {name}"
    """)

    {:ok, build} = Snakepit.Runtime.build_info()
    env = [{"SNAKEPIT_PYTHON", build.executable}, {"MIX_ENV", "dev"}]

    {out, status} = System.cmd("mix", ["compile"], cd: app, env: env, stderr_to_stdout: true)
    assert status == 0, out

    so = Path.join(app, "_build/dev/lib/snakepit/priv/native/libsnakepit.so")
    assert File.regular?(so), "the NIF is not reachable from the app's _build:\n#{out}"
    # cargo built it inside the app's _build, for the app's Python.
    assert [key] = File.ls!(Path.join(app, "_build/snakepit_cargo"))
    assert File.regular?(Path.join([app, "_build/snakepit_cargo", key, "release/libsnakepit.so"]))

    script = ~S"""
    IO.inspect(Snakepit.execute(:app_pool, "greet", %{name: "elixir"}), label: "RESULT")
    IO.inspect(:code.priv_dir(:snakepit) |> to_string(), label: "PRIV")
    """

    {out, status} =
      System.cmd("mix", ["run", "-e", script], cd: app, env: env, stderr_to_stdout: true)

    assert status == 0, out
    assert out =~ ~s(RESULT: {:ok, "hello elixir"})
    assert out =~ ~s(PRIV: "#{app}/_build/dev/lib/snakepit/priv")
  end

  defp write!(root, path, content) do
    full = Path.join(root, path)
    File.mkdir_p!(Path.dirname(full))
    File.write!(full, content)
  end
end
