defmodule Mix.Tasks.Compile.SnakepitNative do
  @moduledoc """
  Builds the Rust NIF under `native/snakepit` with cargo (release) and installs it, with a
  record of the Python it was built for, into the application's `priv/native`.

  The library goes to `priv/native` of the application's build directory, which Mix links to
  the application's source `priv/` (for a dependency: its checkout, as with Rustler); it is
  installed by renaming, so a VM that has the previous library loaded keeps running.

  The Python is, in order: `SNAKEPIT_PYTHON` (an interpreter or a venv's python), the
  `config :snakepit, python: ...` setting, then the first runnable of #{inspect(~w(python3.14t python3.14 python3.13 python3.12 python3.11 python3.10 python3))}
  on PATH. Changing it rebuilds the NIF. Cargo's target directory lives under `_build`, one per
  Python, so switching back and forth does not rebuild from scratch.
  """
  use Mix.Task.Compiler

  @candidates ~w(python3.14t python3.14 python3.13 python3.12 python3.11 python3.10 python3)

  # Prints one "key=value" line per fact; site_packages joined with os.pathsep.
  @probe """
  import os, site, sys, sysconfig
  v = sysconfig.get_config_var
  try:
      sp = site.getsitepackages()
  except Exception:
      sp = []
  facts = {
      "version": "%d.%d.%d" % sys.version_info[:3],
      "free_threaded": "true" if v("Py_GIL_DISABLED") else "false",
      "shared": "true" if v("Py_ENABLE_SHARED") else "false",
      "libdir": v("LIBDIR") or "",
      "ldlibrary": v("LDLIBRARY") or "",
      "home": sys.base_prefix,
      "prefix": sys.prefix,
      "site_packages": os.pathsep.join(sp),
  }
  for k, val in facts.items():
      print("%s=%s" % (k, val))
  """

  @impl true
  def run(_args) do
    root = Path.expand("..", __DIR__)
    python = choose_python!()
    info = probe!(python)
    check_shared!(python, info)

    priv = Path.join(Mix.Project.app_path(), "priv/native")
    so = Path.join(priv, "libsnakepit.so")
    record = Path.join(priv, "python.term")
    key = build_key(python, info)
    target_dir = Path.join([Mix.Project.build_path(), "..", "snakepit_cargo", key]) |> Path.expand()

    built = cargo_build!(root, python, target_dir)

    File.mkdir_p!(priv)
    stale? = not File.exists?(so) or File.read!(built) != File.read!(so)
    # Rename into place: a VM that has the old library loaded keeps its (unlinked) copy.
    if stale? do
      tmp = "#{so}.#{System.pid()}.#{System.unique_integer([:positive])}.tmp"
      File.cp!(built, tmp)
      File.rename!(tmp, so)
    end

    term = %{
      executable: python,
      version: info["version"],
      free_threaded: info["free_threaded"],
      home: info["home"],
      prefix: info["prefix"],
      libdir: info["libdir"],
      site_packages: info["site_packages"]
    }

    content = :io_lib.format(~c"~p.~n", [term]) |> IO.iodata_to_binary()
    if not File.exists?(record) or File.read!(record) != content, do: File.write!(record, content)

    if stale?, do: Mix.shell().info("snakepit: NIF built for Python #{info["version"]} (#{python})")
    {if(stale?, do: :ok, else: :noop), []}
  end

  defp choose_python! do
    cond do
      (p = System.get_env("SNAKEPIT_PYTHON")) not in [nil, ""] ->
        resolve!(p, "SNAKEPIT_PYTHON")

      (p = Application.get_env(:snakepit, :python)) not in [nil, ""] ->
        resolve!(to_string(p), "config :snakepit, python:")

      true ->
        Enum.find_value(@candidates, fn name ->
          with path when is_binary(path) <- System.find_executable(name),
               true <- runnable?(path) do
            path
          else
            _ -> nil
          end
        end) ||
          Mix.raise("""
          snakepit: no Python found. Snakepit needs CPython 3.10 or newer with a shared libpython.
          Install one (Debian: apt-get install python3 python3-dev python3-venv) or point
          SNAKEPIT_PYTHON at an interpreter or a venv's bin/python.
          """)
    end
  end

  defp resolve!(path, source) do
    found =
      if String.contains?(path, "/"), do: Path.expand(path), else: System.find_executable(path)

    cond do
      found && File.exists?(found) && runnable?(found) -> found
      true -> Mix.raise("snakepit: #{source} is #{inspect(path)}, which is not a runnable Python")
    end
  end

  defp runnable?(path) do
    match?({_, 0}, System.cmd(path, ["-c", "import sys"], stderr_to_stdout: true))
  rescue
    _ -> false
  end

  defp probe!(python) do
    case System.cmd(python, ["-c", @probe], stderr_to_stdout: true) do
      {out, 0} ->
        facts =
          for line <- String.split(out, "\n", trim: true),
              [k, v] <- [String.split(line, "=", parts: 2)],
              into: %{},
              do: {k, v}

        facts
        |> Map.update!("free_threaded", &(&1 == "true"))
        |> Map.update!("shared", &(&1 == "true"))
        |> Map.update!("site_packages", &String.split(&1, ":", trim: true))

      {out, _} ->
        Mix.raise("snakepit: cannot inspect #{python}:\n#{out}")
    end
  end

  defp check_shared!(python, info) do
    lib = Path.join(info["libdir"], info["ldlibrary"])

    unless info["shared"] and File.exists?(lib) do
      Mix.raise("""
      snakepit: #{python} (Python #{info["version"]}) has no shared libpython, which the NIF must link.
      Use a Python built with --enable-shared: Debian's python3 with libpython3-dev
      (apt-get install python3-dev), or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared,
      and point SNAKEPIT_PYTHON at it.
      """)
    end
  end

  defp build_key(python, info) do
    # :erlang.md5/1 needs no application: since Elixir 1.15 Mix prunes the code path of a
    # compiler to the applications the project declares, and :crypto is not one of them.
    hash = :erlang.md5(python) |> Base.encode16(case: :lower) |> binary_part(0, 8)
    ft = if info["free_threaded"], do: "t", else: ""
    "py#{info["version"]}#{ft}-#{hash}"
  end

  defp cargo_build!(root, python, target_dir) do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    unless File.exists?(cargo) do
      Mix.raise("snakepit: cargo not found. Install Rust (https://rustup.rs) to build the NIF.")
    end

    args = [
      "build",
      "--release",
      "--manifest-path",
      Path.join(root, "native/snakepit/Cargo.toml"),
      "--features",
      "nif",
      "--target-dir",
      target_dir
    ]

    env = [{"PYO3_PYTHON", python}, {"SNAKEPIT_PYTHON", python}]

    case System.cmd(cargo, args, env: env, stderr_to_stdout: true, into: "") do
      {_, 0} ->
        Path.join(target_dir, "release/libsnakepit.so")

      {out, status} ->
        Mix.raise("snakepit: cargo build failed (exit #{status}):\n#{out}")
    end
  end
end
