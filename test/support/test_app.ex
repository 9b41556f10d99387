defmodule Snakepit.TestApp do
  @moduledoc false
  # Temporary Mix apps that use Snakepit as a path dependency (test/snakepit/dependency_test.exs).
  #
  # Their builds share cargo's target directory with this checkout's (`CARGO_TARGET_DIR`, see
  # native/snakepit_native.exs): the Rust dependencies are built once, and an app that depends
  # on this checkout itself rebuilds nothing.

  import ExUnit.Assertions

  @root Path.expand("../..", __DIR__)

  # What building Snakepit needs from a checkout (no _build, venv or cargo target).
  @source ~w(mix.exs Cargo.toml Cargo.lock lib native/snakepit_native.exs native/snakepit/Cargo.toml
             native/snakepit/build.rs native/snakepit/src priv/python)

  @mix_vars ~w(MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH MIX_EXS MIX_LOCKFILE MIX_TARGET)

  def root, do: @root

  # A fresh directory under the system's temporary directory, removed when the test (or, from
  # setup_all, the module) ends.
  def tmp_dir!(prefix) do
    # The OS pid too: unique_integer/1 repeats across VMs, and other test runs share /tmp.
    dir =
      Path.join(
        System.tmp_dir!(),
        "#{prefix}_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> rm_rf!(dir) end)
    dir
  end

  def write!(root, path, content) do
    full = Path.join(root, path)
    File.mkdir_p!(Path.dirname(full))
    File.write!(full, content)
    full
  end

  # The environment of a build: the Python this test VM runs (so cargo finds its build done),
  # the shared cargo target directory, and `extra` (a nil value unsets a variable).
  def env(extra \\ []) do
    {:ok, build} = Snakepit.Runtime.build_info()

    base = [
      {"SNAKEPIT_PYTHON", build.built_executable},
      {"CARGO_TARGET_DIR", Path.join(@root, "_build")},
      {"MIX_ENV", "dev"},
      {"SNAKEPIT_VENV", nil},
      {"PYTHONPATH", nil}
    ]

    # The test run's own Mix locations must not leak into the app's build.
    base = base ++ for var <- @mix_vars, do: {var, nil}

    Enum.reduce(extra, base, fn {k, v}, acc -> List.keystore(acc, k, 0, {k, v}) end)
  end

  def mix(app, args, extra_env \\ []) do
    System.cmd("mix", args, cd: app, env: env(extra_env), stderr_to_stdout: true)
  end

  def mix!(app, args, extra_env \\ []) do
    {out, status} = mix(app, args, extra_env)
    assert status == 0, "mix #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    out
  end

  # A copy of this checkout's sources at `dest`, made read-only (chmod -R a-w).
  def readonly_checkout!(dest) do
    for entry <- @source do
      target = Path.join(dest, entry)
      File.mkdir_p!(Path.dirname(target))
      File.cp_r!(Path.join(@root, entry), target)
    end

    for pycache <- Path.wildcard(Path.join(dest, "priv/python/**/__pycache__")),
        do: File.rm_rf!(pycache)

    {_, 0} = System.cmd("chmod", ["-R", "a-w", dest])
    dest
  end

  # Every file and directory under `dir` with its type, size and mtime. A root user writes
  # through chmod a-w, so tests compare snapshots.
  def snapshot(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true), into: %{} do
      {:ok, stat} = File.lstat(path, time: :posix)
      {Path.relative_to(path, dir), {stat.type, stat.size, stat.mtime}}
    end
  end

  def rm_rf!(dir) do
    System.cmd("chmod", ["-R", "u+w", dir], stderr_to_stdout: true)
    File.rm_rf!(dir)
  end
end
