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

  describe "a build without a usable Python fails with what to install" do
    setup do
      app =
        Path.join(System.tmp_dir!(), "snakepit_nopy_app_#{System.unique_integer([:positive])}")

      on_exit(fn -> File.rm_rf!(app) end)

      write!(app, "mix.exs", """
      defmodule NoPyApp.MixProject do
        use Mix.Project
        def project, do: [app: :no_py_app, version: "0.1.0", deps: [{:snakepit, path: #{inspect(@root)}}]]
      end
      """)

      %{app: app}
    end

    test "no Python at the given path", %{app: app} do
      {out, status} =
        System.cmd("mix", ["compile"],
          cd: app,
          env: [{"SNAKEPIT_PYTHON", "/nonexistent/bin/python3"}],
          stderr_to_stdout: true
        )

      assert status != 0

      assert out =~
               "SNAKEPIT_PYTHON is \"/nonexistent/bin/python3\", which is not a runnable Python"
    end

    test "a Python without a shared libpython", %{app: app} do
      # A stand-in interpreter that reports a static-only build.
      fake = Path.join(app, "fake-python")

      write!(app, "fake-python", """
      #!/bin/sh
      case "$2" in
        "import sys") exit 0 ;;
      esac
      echo version=3.12.0
      echo free_threaded=false
      echo shared=false
      echo libdir=/nonexistent
      echo ldlibrary=libpython3.12.a
      echo home=/usr
      echo prefix=/usr
      echo site_packages=
      """)

      File.chmod!(fake, 0o755)

      {out, status} =
        System.cmd("mix", ["compile"],
          cd: app,
          env: [{"SNAKEPIT_PYTHON", fake}],
          stderr_to_stdout: true
        )

      assert status != 0
      assert out =~ "has no shared libpython"
      assert out =~ "python3-dev"
      assert out =~ "--enable-shared"
    end
  end

  defp write!(root, path, content) do
    full = Path.join(root, path)
    File.mkdir_p!(Path.dirname(full))
    File.write!(full, content)
  end
end
