defmodule Snakepit.DependencyTest do
  # Snakepit as a path dependency of a new Mix app, as a user has it: the checkout is
  # read-only, the NIF goes into the app's _build (one per build directory), the app's adapter
  # is found through python_path, `mix snakepit.setup` makes the app's venv, `mix release`
  # gives a release that runs after it is moved and its sources are gone. One app serves every
  # test (setup_all builds it); cargo's target directory is this checkout's
  # (test/support/test_app.ex), so only the Snakepit crate itself is compiled again. Slow:
  # tagged :integration.
  use ExUnit.Case, async: true

  import Snakepit.TestApp

  @moduletag :integration
  @moduletag timeout: 600_000

  setup_all do
    dir = tmp_dir!("snakepit_dep")
    src = readonly_checkout!(Path.join(dir, "snakepit"))
    app = Path.join(dir, "dep_app")
    wheels = Path.join(app, "wheels")

    write!(app, "mix.exs", """
    defmodule DepApp.MixProject do
      use Mix.Project

      def project do
        [app: :dep_app, version: "0.1.0", elixir: "~> 1.14",
         deps: [{:snakepit, path: #{inspect(src)}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    write!(app, "config/config.exs", """
    import Config

    config :snakepit,
      python_path: [{:dep_app, "priv/python"}],
      pools: [%{name: :app_pool, adapter: "greeter.Greeter", threads_per_worker: 2}]

    config :logger, level: :warning

    if config_env() == :test do
      config :snakepit, python_deps: ["tinypkg>=1"], python_requirements: "requirements.txt"
    end
    """)

    write!(app, "config/runtime.exs", """
    import Config

    if System.get_env("BAD_POOL") do
      config :snakepit, pools: [%{name: :bad_pool, adapter: "missing_mod.Adapter"}]
    end

    if System.get_env("RELOAD_AUTO") do
      config :snakepit, reload: :auto, reload_interval: 100
    end
    """)

    write!(app, "priv/python/greeter.py", """
    import importlib

    from snakepit_bridge import ThreadSafeAdapter, tool


    class Greeter(ThreadSafeAdapter):
        __thread_safe__ = True

        @tool(description="Greet someone.")
        def greet(self, name: str) -> str:
            return f"hello {name}"

        @tool(description="VALUE of a module, from the venv's site-packages.")
        def value_of(self, module: str) -> str:
            return importlib.import_module(module).VALUE
    """)

    # Python packages for `mix snakepit.setup`, installed without PyPI.
    wheel!(wheels, "tinypkg", "1.0")
    wheel!(wheels, "otherpkg", "1.0")
    write!(app, "requirements.txt", "--no-index\n--find-links #{wheels}\n")

    before = snapshot(src)
    out = mix!(app, ["compile"])
    %{dir: dir, src: src, app: app, before: before, compile_out: out}
  end

  test "the NIF is built into the app's _build, the read-only checkout is left as it was",
       ctx do
    priv = Path.join(ctx.app, "_build/dev/lib/snakepit/priv")
    assert {:ok, %File.Stat{type: :directory}} = File.lstat(priv)
    assert {:ok, %File.Stat{type: :regular}} = File.lstat(Path.join(priv, "nif/libsnakepit.so"))
    assert {:ok, %File.Stat{type: :regular}} = File.lstat(Path.join(priv, "nif/python.term"))
    # Snakepit's Python package is a copy of the checkout's.
    assert {:ok, %File.Stat{type: :directory}} = File.lstat(Path.join(priv, "python"))
    package = "python/snakepit_bridge/_runtime.py"

    assert File.read!(Path.join(priv, package)) ==
             File.read!(Path.join([ctx.src, "priv", package]))

    # Writable, although the checkout's file is not: Mix updates these copies in place.
    assert Bitwise.band(File.stat!(Path.join(priv, package)).mode, 0o200) != 0
    assert Bitwise.band(File.stat!(Path.join([ctx.src, "priv", package])).mode, 0o200) == 0

    assert ctx.compile_out =~ ~r/snakepit: (re)?building the NIF for Python 3\.\d+/
    assert snapshot(ctx.src) == ctx.before

    script = ~S"""
    IO.inspect(Snakepit.execute(:app_pool, "greet", %{name: "elixir"}), label: "RESULT")
    IO.inspect(:code.priv_dir(:snakepit) |> to_string(), label: "PRIV")
    """

    out = mix!(ctx.app, ["run", "-e", script])
    assert out =~ ~s(RESULT: {:ok, "hello elixir"})
    assert out =~ ~s(PRIV: "#{priv}")
    assert snapshot(ctx.src) == ctx.before
  end

  test "mix snakepit.setup makes the app's venv, installs python_deps, builds the NIF for it",
       ctx do
    app = ctx.app
    test_env = [{"MIX_ENV", "test"}, {"SNAKEPIT_PYTHON", nil}]
    venv = Path.join(app, ".venv")
    venv_python = Path.join(venv, "bin/python")
    {:ok, build} = Snakepit.Runtime.build_info()
    pinned = build.built_executable

    # The first run builds Snakepit before the task exists: for SNAKEPIT_PYTHON here, which
    # lacks the declared package, so compile warns and names the fix.
    out = mix!(app, ["snakepit.setup"], [{"MIX_ENV", "test"}])
    assert out =~ "warning: snakepit: #{pinned} lacks Python packages declared in config"
    assert out =~ "tinypkg>=1"
    assert out =~ "Run `mix snakepit.setup` to install them into #{venv}"
    assert out =~ "snakepit: creating #{venv} from #{pinned}"
    assert out =~ "snakepit: installing tinypkg>=1 -r requirements.txt"
    assert out =~ "the NIF is built for #{pinned}, because SNAKEPIT_PYTHON names it"
    assert File.read!(Path.join(venv, "snakepit-deps.txt")) =~ "tinypkg>=1"

    # Without SNAKEPIT_PYTHON, mix compile builds for the venv, and the app finds its packages.
    out = mix!(app, ["compile"], test_env)
    refute out =~ "warning"
    assert record(app, "test").executable == venv_python

    script = ~S"""
    IO.inspect(Snakepit.execute(:app_pool, "value_of", %{module: "tinypkg"}), label: "RESULT")
    """

    out = mix!(app, ["run", "-e", script], test_env)
    assert out =~ ~s(RESULT: {:ok, "tinypkg 1.0"})

    # A new requirement: compile warns, once, with the fix.
    File.write!(Path.join(app, "requirements.txt"), "otherpkg==1.0\n", [:append])
    out = mix!(app, ["compile"], test_env)
    assert [_] = Regex.scan(~r/lacks Python packages/, out)
    assert out =~ "warning: snakepit: #{venv_python} lacks Python packages declared in config"
    assert out =~ "otherpkg==1.0.\nRun `mix snakepit.setup` to install them.\n"

    out = mix!(app, ["snakepit.setup"], test_env)
    assert out =~ "snakepit: installing tinypkg>=1 -r requirements.txt"
    assert out =~ "snakepit: the NIF is built for #{venv_python}"
    out = mix!(app, ["compile"], test_env)
    refute out =~ "warning"

    # Nothing changed: nothing to do.
    out = mix!(app, ["snakepit.setup"], test_env)
    assert out =~ "snakepit: #{venv} is up to date"
    refute out =~ "installing"

    # Two build directories from one checkout, each with its own NIF for its own Python.
    assert record(app, "dev").executable == pinned
    dev = Path.join(app, "_build/dev/lib/snakepit/priv/nif/libsnakepit.so")
    test = Path.join(app, "_build/test/lib/snakepit/priv/nif/libsnakepit.so")
    assert {:ok, %File.Stat{type: :regular, inode: a}} = File.lstat(dev)
    assert {:ok, %File.Stat{type: :regular, inode: b}} = File.lstat(test)
    assert a != b
    assert snapshot(ctx.src) == ctx.before
  end

  test "a release moved elsewhere, its sources hidden, runs Python in the venv it is given",
       ctx do
    app = ctx.app
    mix!(app, ["release"], [{"MIX_ENV", "prod"}])
    assert File.regular?(Path.join(app, "_build/prod/lib/snakepit/priv/nif/libsnakepit.so"))
    assert snapshot(ctx.src) == ctx.before

    release = Path.join(ctx.dir, "installed")
    File.rename!(Path.join(app, "_build/prod/rel/dep_app"), release)

    # The target machine's venv: made from the NIF's Python, with a package of its own.
    {:ok, build} = Snakepit.Runtime.build_info()
    venv = Path.join(ctx.dir, "target_venv")
    {_, 0} = System.cmd(build.base_executable, ["-m", "venv", "--without-pip", venv])
    [major, minor | _] = String.split(build.version, ".")
    site = "lib/python#{major}.#{minor}#{if build.free_threaded, do: "t"}/site-packages"
    write!(venv, Path.join(site, "deployed.py"), ~s(VALUE = "from the target venv"\n))

    script = ~S"""
    case Application.ensure_all_started(:dep_app) do
      {:ok, _} ->
        IO.inspect(Snakepit.execute(:app_pool, "greet", %{name: "release"}), label: "RESULT")
        IO.inspect(Snakepit.execute(:app_pool, "value_of", %{module: "deployed"}), label: "VENV")

      {:error, {_app, reason}} ->
        IO.puts("START FAILED: " <> Application.format_error(reason))
    end
    """

    hidden = for dir <- [app, ctx.src], do: {dir, dir <> ".hidden"}
    for {dir, away} <- hidden, do: File.rename!(dir, away)

    try do
      run = fn env ->
        System.cmd(Path.join(release, "bin/dep_app"), ["eval", script],
          env: [{"MIX_ENV", nil}, {"SNAKEPIT_PYTHON", nil}] ++ env,
          stderr_to_stdout: true
        )
      end

      {out, 0} = run.([{"SNAKEPIT_VENV", venv}])
      assert out =~ ~s(RESULT: {:ok, "hello release"})
      assert out =~ ~s(VENV: {:ok, "from the target venv"})

      # A venv that is not there stops the start, naming it.
      {out, _} = run.([{"SNAKEPIT_VENV", "/nonexistent/venv"}])
      assert out =~ "START FAILED: "
      assert out =~ "** (Snakepit.Error) [validation] the venv /nonexistent/venv (SNAKEPIT_VENV)"
      assert out =~ "does not exist"
    after
      for {dir, away} <- hidden, do: File.rename!(away, dir)
    end
  end

  test "mix snakepit.check runs the checker on the app's adapter", ctx do
    args = ~w(snakepit.check greeter.Greeter --threads 4 --calls 40 --method greet --args)
    out = mix!(ctx.app, args ++ [~s({"name": "x"})])
    assert out =~ "40 calls of 'greet' on 4 threads"
    assert out =~ "succeeded 40, failed 0"

    {out, status} = mix(ctx.app, ~w(snakepit.check nowhere.Adapter))
    assert status == 1
    assert out =~ "no module named 'nowhere'"
    assert out =~ "\n  #{ctx.app}/_build/dev/lib/dep_app/priv/python\n"
  end

  test "an edited adapter is served after Snakepit.reload/1, and by itself with reload: :auto",
       ctx do
    # Both runs edit the app's adapter and put it back (priv is linked into _build).
    script = fn reload ->
      """
      path = "priv/python/greeter.py"
      original = File.read!(path)
      {:ok, "hello a"} = Snakepit.execute(:app_pool, "greet", %{name: "a"})

      try do
        File.write!(path, String.replace(original, ~S(f"hello {name}"), ~S(f"hi there {name}")))
        #{reload}
        IO.inspect(Snakepit.execute(:app_pool, "greet", %{name: "b"}), label: "RELOADED")
      after
        File.write!(path, original)
      end
      """
    end

    out = mix!(ctx.app, ["run", "-e", script.(":ok = Snakepit.reload(:app_pool)")])
    assert out =~ ~s(RELOADED: {:ok, "hi there b"})

    # The file watcher: poll (on events, not time) until the new code answers.
    auto = """
    # (at most 60 s: a broken watcher fails the test instead of hanging it)
    Stream.repeatedly(fn -> Process.sleep(20) end)
    |> Stream.take(3_000)
    |> Enum.find_value(fn _ ->
      match?({:ok, "hi there" <> _}, Snakepit.execute(:app_pool, "greet", %{name: "b"}))
    end)
    """

    out = mix!(ctx.app, ["run", "-e", script.(auto)], [{"RELOAD_AUTO", "1"}])
    assert out =~ ~s(RELOADED: {:ok, "hi there b"})
  end

  test "a pool that fails at start prints its message and traceback as text", ctx do
    {out, status} = mix(ctx.app, ["run", "-e", "IO.puts(:started)"], [{"BAD_POOL", "1"}])
    assert status != 0
    refute out =~ "started"
    assert out =~ "Could not start application snakepit"
    assert out =~ "** (Snakepit.Error)"
    assert out =~ "no module named 'missing_mod'"
    # sys.path, one directory a line, and the fix.
    assert out =~ "\n  #{ctx.app}/_build/dev/lib/dep_app/priv/python\n"
    assert out =~ "python_path"
    refute out =~ "%Snakepit.Error{"
    refute out =~ "\\n"
  end

  defp record(app, env) do
    path = Path.join(app, "_build/#{env}/lib/snakepit/priv/nif/python.term")
    {:ok, [record]} = :file.consult(String.to_charlist(path))
    record
  end

  # A pure-Python wheel with one module whose VALUE is "NAME VERSION".
  defp wheel!(dir, name, version) do
    dist = "#{name}-#{version}.dist-info"

    files = [
      {"#{name}.py", ~s(VALUE = "#{name} #{version}"\n)},
      {"#{dist}/METADATA", "Metadata-Version: 2.1\nName: #{name}\nVersion: #{version}\n"},
      {"#{dist}/WHEEL",
       "Wheel-Version: 1.0\nGenerator: snakepit-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    ]

    record = Enum.map_join(files, "", &"#{elem(&1, 0)},,\n") <> "#{dist}/RECORD,,\n"
    files = files ++ [{"#{dist}/RECORD", record}]
    File.mkdir_p!(dir)
    path = Path.join(dir, "#{name}-#{version}-py3-none-any.whl")
    entries = for {file, content} <- files, do: {String.to_charlist(file), content}
    {:ok, _} = :zip.create(String.to_charlist(path), entries)
  end
end

defmodule Snakepit.DependencyFailureTest do
  # Builds that cannot work fail with what to do.
  use ExUnit.Case, async: true

  import Snakepit.TestApp

  @moduletag :integration

  @root Snakepit.TestApp.root()

  describe "a build without a usable Python fails with what to install" do
    setup do
      app = tmp_dir!("snakepit_nopy_app")

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
end
