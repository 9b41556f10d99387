defmodule Snakepit.Build do
  @moduledoc false
  # Build-time facts shared by the NIF compiler below and the snakepit.* Mix tasks
  # (lib/mix/tasks): which Python to build for, the app's venv, the Python dependencies declared
  # in `config :snakepit`. They live here, not in lib/, because the compiler runs before lib/ is
  # compiled; mix.exs requires this file, so they exist whenever Snakepit's project is loaded.

  @candidates ~w(python3.14t python3.14 python3.13 python3.12 python3.11 python3.10 python3)

  # The file in a venv that records what `mix snakepit.setup` installed (first line: the hash).
  @record "snakepit-deps.txt"

  # Prints one "key=value" line per fact; site_packages joined with os.pathsep. `base` is the
  # interpreter a venv was made from (the interpreter itself when it is not a venv): cargo
  # builds against it, so every venv of one Python shares one build.
  @probe """
  import os, site, sys, sysconfig
  v = sysconfig.get_config_var
  try:
      sp = site.getsitepackages()
  except Exception:
      sp = []
  ft = "t" if v("Py_GIL_DISABLED") else ""
  base = sys.executable
  if sys.prefix != sys.base_prefix:
      guess = os.path.join(sys.base_prefix, "bin", "python%d.%d%s" % (sys.version_info[:2] + (ft,)))
      other = getattr(sys, "_base_executable", "") or ""
      base = guess if os.path.exists(guess) else (other if os.path.exists(other) else base)
  facts = {
      "version": "%d.%d.%d" % sys.version_info[:3],
      "free_threaded": "true" if ft else "false",
      "shared": "true" if v("Py_ENABLE_SHARED") else "false",
      "libdir": v("LIBDIR") or "",
      "ldlibrary": v("LDLIBRARY") or "",
      "home": sys.base_prefix,
      "prefix": sys.prefix,
      "base_executable": base,
      "site_packages": os.pathsep.join(sp),
  }
  for k, val in facts.items():
      print("%s=%s" % (k, val))
  """

  # Prints the requirements (argv) that are not installed, one per line: a missing
  # distribution, or an installed one whose version is outside the specifier (checked when
  # `packaging` is importable, pip's vendored copy included). Markers are ignored.
  @missing_probe """
  import re, sys
  import importlib.metadata as md
  try:
      from packaging.specifiers import SpecifierSet
  except ImportError:
      try:
          from pip._vendor.packaging.specifiers import SpecifierSet
      except ImportError:
          SpecifierSet = None
  for req in sys.argv[1:]:
      m = re.match(r"\\s*([A-Za-z0-9][A-Za-z0-9._-]*)\\s*(\\[[^\\]]*\\])?\\s*(@.*)?([^;@]*)", req)
      if not m:
          continue
      try:
          version = md.version(m.group(1))
      except md.PackageNotFoundError:
          print(req.strip())
          continue
      spec = (m.group(4) or "").strip()
      if spec and not m.group(3) and SpecifierSet is not None:
          try:
              if not SpecifierSet(spec).contains(version, prereleases=True):
                  print("%s (%s is installed)" % (req.strip(), version))
          except Exception:
              pass
  """

  def candidates, do: @candidates

  # The root of the project being built: where its mix.lock is. A dependency inherits the
  # lockfile of the project that depends on it, so this is the app, not Snakepit's checkout.
  def app_root do
    Path.dirname(Path.expand(Mix.Project.config()[:lockfile] || "mix.lock"))
  end

  # {venv, source}: SNAKEPIT_VENV, else `config :snakepit, venv:`, else the app's `.venv`;
  # relative paths are taken from `root`. `given` (a --venv option) comes first.
  def venv_setting(root, given \\ nil) do
    cond do
      given not in [nil, ""] ->
        {Path.expand(given, root), "--venv"}

      (env = System.get_env("SNAKEPIT_VENV")) not in [nil, ""] ->
        {Path.expand(env, root), "SNAKEPIT_VENV"}

      (conf = Application.get_env(:snakepit, :venv)) not in [nil, ""] ->
        {Path.expand(to_string(conf), root), "config :snakepit, venv:"}

      true ->
        {Path.join(root, ".venv"), :default}
    end
  end

  def venv_python(venv), do: Path.join(venv, "bin/python")

  # The Python version in the venv's pyvenv.cfg (`version`, or uv's `version_info`), or nil.
  def venv_version(venv) do
    case File.read(Path.join(venv, "pyvenv.cfg")) do
      {:ok, cfg} ->
        cfg
        |> String.split("\n")
        |> Enum.find_value(fn line ->
          case String.split(line, "=", parts: 2) do
            [k, v] -> if String.trim(k) in ["version", "version_info"], do: String.trim(v)
            _ -> nil
          end
        end)

      {:error, _} ->
        nil
    end
  end

  # SNAKEPIT_PYTHON, else `config :snakepit, python:`: {path, source} or nil.
  def explicit_python do
    cond do
      (p = System.get_env("SNAKEPIT_PYTHON")) not in [nil, ""] ->
        {p, "SNAKEPIT_PYTHON"}

      (p = Application.get_env(:snakepit, :python)) not in [nil, ""] ->
        {to_string(p), "config :snakepit, python:"}

      true ->
        nil
    end
  end

  # The Python the NIF is built for: SNAKEPIT_PYTHON, `python:`, the app's venv when it
  # exists, then the first runnable candidate on PATH.
  def choose_python!(root) do
    {venv, _} = venv_setting(root)

    cond do
      explicit = explicit_python() ->
        {path, source} = explicit
        resolve!(path, source)

      runnable?(venv_python(venv)) ->
        venv_python(venv)

      true ->
        first_candidate() || no_python!()
    end
  end

  def first_candidate do
    Enum.find_value(@candidates, fn name ->
      with path when is_binary(path) <- System.find_executable(name),
           true <- runnable?(path) do
        path
      else
        _ -> nil
      end
    end)
  end

  def no_python! do
    Mix.raise("""
    snakepit: no Python found. Snakepit needs CPython 3.10 or newer with a shared libpython.
    Install one (Debian: apt-get install python3 python3-dev python3-venv) or point
    SNAKEPIT_PYTHON at an interpreter or a venv's bin/python.
    """)
  end

  def resolve!(path, source) do
    found =
      if String.contains?(path, "/"), do: Path.expand(path), else: System.find_executable(path)

    if found && File.exists?(found) && runnable?(found),
      do: found,
      else: Mix.raise("snakepit: #{source} is #{inspect(path)}, which is not a runnable Python")
  end

  def runnable?(path) do
    File.exists?(path) and
      match?({_, 0}, System.cmd(path, ["-c", "import sys"], stderr_to_stdout: true))
  rescue
    _ -> false
  end

  def probe!(python) do
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

  ## Declared Python dependencies

  # %{deps: [requirement], requirements: absolute path | nil} from config :snakepit.
  def declared(root) do
    deps =
      case Application.get_env(:snakepit, :python_deps, []) do
        nil ->
          []

        list when is_list(list) ->
          if Enum.all?(list, &is_binary/1),
            do: list,
            else: bad_key!(:python_deps, list, "a list of strings")

        other ->
          bad_key!(:python_deps, other, "a list of strings")
      end

    requirements =
      case Application.get_env(:snakepit, :python_requirements) do
        nil -> nil
        path when is_binary(path) -> Path.expand(path, root)
        other -> bad_key!(:python_requirements, other, "a path (a string)")
      end

    %{deps: deps, requirements: requirements}
  end

  def declared?(%{deps: deps, requirements: req}), do: deps != [] or req != nil

  defp bad_key!(key, value, expected) do
    Mix.raise(
      "snakepit: invalid config :snakepit, #{inspect(key)}: expected #{expected}, " <>
        "got #{inspect(value)}"
    )
  end

  # What identifies the declared dependencies: the list and the requirements file's content.
  def deps_hash(%{deps: deps, requirements: req}) do
    content = if req && File.regular?(req), do: File.read!(req), else: nil

    :erlang.term_to_binary({deps, req, content})
    |> :erlang.md5()
    |> Base.encode16(case: :lower)
  end

  def record_path(venv), do: Path.join(venv, @record)

  def recorded_hash(venv) do
    case File.read(record_path(venv)) do
      {:ok, content} -> content |> String.split("\n", parts: 2) |> hd() |> String.trim()
      {:error, _} -> nil
    end
  end

  def write_record!(venv, hash, %{deps: deps, requirements: req}) do
    lines =
      [hash, "# written by mix snakepit.setup: what config :snakepit declared"] ++
        deps ++ if(req, do: ["-r #{req}"], else: [])

    File.write!(record_path(venv), Enum.join(lines, "\n") <> "\n")
  end

  # The requirements to look for: python_deps, then the requirement lines of the file (options,
  # includes, editable installs and bare paths or URLs are skipped: they name no distribution).
  def requirement_lines(%{deps: deps, requirements: req}) do
    from_file =
      if req && File.regular?(req) do
        for line <- String.split(File.read!(req), "\n"),
            line = line |> String.replace(~r/(^|\s)#.*$/, "") |> String.trim(),
            line != "",
            not String.starts_with?(line, ["-", ".", "/", "~"]),
            not String.contains?(line, "://") or String.contains?(line, "@"),
            do: line
      else
        []
      end

    deps ++ from_file
  end

  # The declared requirements that `python` does not have.
  def missing_deps(python, declared) do
    case requirement_lines(declared) do
      [] ->
        []

      lines ->
        case System.cmd(python, ["-c", @missing_probe | lines], stderr_to_stdout: true) do
          {out, 0} -> String.split(out, "\n", trim: true)
          {_out, _} -> lines
        end
    end
  end

  # Warns, once per Mix run, when `python` lacks dependencies declared in config :snakepit.
  # `info` is probe!/1's result for it: when it is a venv that mix snakepit.setup filled with
  # exactly what is declared now, nothing is checked.
  def warn_missing_deps(root, python, info) do
    declared = declared(root)

    with true <- declared?(declared),
         hash = deps_hash(declared),
         false <- recorded_hash(info["prefix"]) == hash,
         key = {__MODULE__, :warned, python, hash},
         false <- :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      problems =
        if(declared.requirements && not File.regular?(declared.requirements),
          do: ["python_requirements: #{declared.requirements} does not exist"],
          else: []
        ) ++ missing_deps(python, declared)

      if problems != [] do
        {venv, _} = venv_setting(root)

        where =
          if Path.expand(python) == venv_python(venv),
            do: "",
            else:
              " into #{venv} (the NIF is built for that venv when SNAKEPIT_PYTHON and " <>
                "config :snakepit, python: are unset)"

        Mix.shell().error(
          "warning: snakepit: #{python} lacks Python packages declared in config :snakepit: " <>
            Enum.join(problems, ", ") <> ".\nRun `mix snakepit.setup` to install them#{where}."
        )
      end
    end

    :ok
  end
end

defmodule Mix.Tasks.Compile.SnakepitNative do
  @moduledoc """
  Builds the Rust NIF under `native/snakepit` with cargo (release) and installs it, with a
  record of the Python it was built for, into `priv/nif` of Snakepit's build directory
  (`_build/ENV/lib/snakepit/priv/nif` of the app that is being built).

  Mix links that `priv` to the source's `priv/` (a dependency's checkout) at first; this
  compiler makes it a real directory of its own, with copies of the source's entries (such as
  `python/`, kept in step on each compile), so nothing lands in the source tree: two apps, or
  `dev` and `test`, with different Pythons can share one checkout, and the checkout may be
  read-only. Files are installed by renaming, so a VM that has the previous library loaded
  keeps running.

  The Python is, in order: `SNAKEPIT_PYTHON` (an interpreter or a venv's python), the
  `config :snakepit, python: ...` setting, the app's venv when it exists (`SNAKEPIT_VENV`,
  `config :snakepit, venv: ...`, else `.venv` in the app: what `mix snakepit.setup` makes), then
  the first runnable of #{inspect(Snakepit.Build.candidates())} on PATH. Changing it rebuilds
  the NIF. Cargo builds against the interpreter a venv was made from, in a target directory per
  Python under `_build/snakepit_cargo` (or `$CARGO_TARGET_DIR/snakepit_cargo`), so switching
  between venvs of one Python does not rebuild, and switching Pythons back and forth does not
  rebuild from scratch.

  When `config :snakepit` declares `python_deps` or `python_requirements` that the chosen
  Python lacks, it warns and names the fix, `mix snakepit.setup`.
  """
  use Mix.Task.Compiler

  alias Snakepit.Build

  @impl true
  def run(_args) do
    root = Path.expand("..", __DIR__)
    app_root = Build.app_root()
    python = Build.choose_python!(app_root)
    info = Build.probe!(python)
    check_shared!(python, info)

    base = build_python(python, info)
    key = build_key(base, info)
    target_dir = Path.join([cargo_root(), "snakepit_cargo", key])
    built = cargo_build!(root, base, target_dir, info)

    priv = ensure_priv!(Mix.Project.app_path(), Path.join(root, "priv"))
    nif = Path.join(priv, "nif")
    File.mkdir_p!(nif)
    so = Path.join(nif, "libsnakepit.so")
    stale? = not File.exists?(so) or File.read!(built) != File.read!(so)
    if stale?, do: install!(so, &File.cp!(built, &1))

    term = %{
      executable: python,
      version: info["version"],
      free_threaded: info["free_threaded"],
      home: info["home"],
      prefix: info["prefix"],
      base_executable: base,
      libdir: info["libdir"],
      site_packages: info["site_packages"]
    }

    record = Path.join(nif, "python.term")
    content = :io_lib.format(~c"~p.~n", [term]) |> IO.iodata_to_binary()

    changed? = stale? or not File.exists?(record) or File.read!(record) != content
    if changed?, do: install!(record, &File.write!(&1, content))

    if stale?, do: Mix.shell().info("snakepit: NIF built for Python #{info["version"]} (#{python})")
    Build.warn_missing_deps(app_root, python, info)
    {if(changed?, do: :ok, else: :noop), []}
  end

  # Writes `path` through a temporary file renamed into place: a VM that has the old file
  # loaded keeps its (unlinked) copy; a library is never overwritten in place.
  defp install!(path, write) do
    tmp = "#{path}.#{System.pid()}.#{System.unique_integer([:positive])}.tmp"
    write.(tmp)
    File.rename!(tmp, path)
  end

  # Snakepit's build priv/ as a real directory (docs/architecture.md, "Where the build goes"):
  # Mix makes it a link to the source's priv/, which would put the NIF into the source tree.
  # Its entries (python/, ...) are copies of the source's, kept in step on each compile
  # (links would dangle when the source moves, and Mix then fails before this compiler runs);
  # `nif/` is this build's. Once it is a directory, Mix also copies newer files of the source
  # priv/ into it on each compile; the source never has a nif/ of its own, so no library is
  # ever copied over. A priv/native/ of older builds is skipped (and dropped when it can be).
  defp ensure_priv!(app_path, source_priv) do
    priv = Path.join(app_path, "priv")
    drop_old_layout(source_priv, priv)
    entries = if File.dir?(source_priv), do: File.ls!(source_priv) -- ["native", "nif"], else: []

    case File.lstat(priv) do
      {:ok, %File.Stat{type: :directory}} ->
        for entry <- entries, do: sync!(Path.join(source_priv, entry), Path.join(priv, entry))

      _symlink_or_missing ->
        staging = Path.join(app_path, ".priv-#{System.unique_integer([:positive])}.tmp")
        File.rm_rf!(staging)
        File.mkdir_p!(staging)
        for entry <- entries, do: sync!(Path.join(source_priv, entry), Path.join(staging, entry))
        _ = File.rm(priv)
        File.rename!(staging, priv)
    end

    priv
  end

  # Older builds installed the NIF into the source's priv/native (through Mix's link), and Mix
  # copies it into a real build priv/: both are removed when they hold only those files (a VM
  # that has that library loaded keeps its copy). A read-only source keeps its own.
  defp drop_old_layout(source_priv, priv) do
    for dir <- [Path.join(source_priv, "native"), Path.join(priv, "native")],
        {:ok, %File.Stat{type: :directory}} <- [File.lstat(dir)],
        {:ok, files} <- [File.ls(dir)],
        Enum.all?(files, &(&1 in ["libsnakepit.so", "python.term"] or &1 =~ ~r/\.tmp$/)),
        do: File.rm_rf(dir)
  end

  # Makes `dest` a copy of `src` (a file or a directory tree), Python's bytecode caches left
  # out: changed files are installed by rename, files gone from `src` are removed.
  defp sync!(src, dest) do
    {:ok, %File.Stat{type: type}} = File.stat(src)

    case File.lstat(dest) do
      {:ok, %File.Stat{type: ^type}} -> :ok
      {:ok, _other} -> File.rm_rf!(dest)
      {:error, _} -> :ok
    end

    if type == :directory do
      File.mkdir_p!(dest)
      keep = File.ls!(src) -- ["__pycache__"]
      for entry <- keep, do: sync!(Path.join(src, entry), Path.join(dest, entry))
      for entry <- File.ls!(dest) -- ["__pycache__" | keep], do: File.rm_rf!(Path.join(dest, entry))
    else
      if File.exists?(dest) and File.read!(src) == File.read!(dest) do
        writable!(dest)
      else
        install!(dest, fn tmp ->
          File.cp!(src, tmp)
          writable!(tmp)
        end)
      end
    end
  end

  # Copies keep the source's mode, read-only in a read-only checkout; Mix overwrites files of a
  # real priv/ in place when the source changes, which needs them writable.
  defp writable!(path) do
    %File.Stat{mode: mode} = File.stat!(path)
    import Bitwise
    if (mode &&& 0o200) == 0, do: File.chmod!(path, mode ||| 0o200)
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

  # The interpreter cargo builds against: the one a venv was made from, when it runs and is the
  # same version (a venv links its base's libpython), else `python` itself.
  defp build_python(python, info) do
    base = info["base_executable"]

    cond do
      base in [nil, "", python] -> python
      Build.runnable?(base) and Build.probe!(base)["version"] == info["version"] -> base
      true -> python
    end
  end

  defp build_key(base, info) do
    # :erlang.md5/1 needs no application: since Elixir 1.15 Mix prunes the code path of a
    # compiler to the applications the project declares, and :crypto is not one of them.
    hash = :erlang.md5(base) |> Base.encode16(case: :lower) |> binary_part(0, 8)
    ft = if info["free_threaded"], do: "t", else: ""
    strict = if strict_drops?(), do: "-strict", else: ""
    "py#{info["version"]}#{ft}-#{hash}#{strict}"
  end

  # Snakepit's own test build has pyo3 without its process-wide pool of deferred decrefs
  # (docs/architecture.md, "Dropping Python objects"): a `Py<T>` dropped while detached then
  # aborts, so the suite finds any such drop. Other builds keep pyo3's pool, where such a drop
  # is only deferred. RUSTFLAGS is always passed, so the repository's .cargo/config.toml
  # (read when cargo runs in the checkout) never applies here.
  defp pyo3_cfgs do
    if strict_drops?(), do: "--cfg pyo3_disable_reference_pool", else: ""
  end

  defp strict_drops?, do: Mix.env() == :test and Mix.Project.config()[:app] == :snakepit

  defp cargo_root do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir not in [nil, ""] -> Path.expand(dir)
      _ -> Path.expand("..", Mix.Project.build_path())
    end
  end

  defp cargo_build!(root, python, target_dir, info) do
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

    env = [
      {"PYO3_PYTHON", python},
      {"SNAKEPIT_PYTHON", python},
      {"RUSTFLAGS", String.trim("#{System.get_env("RUSTFLAGS", "")} #{pyo3_cfgs()}")}
    ]
    built = Path.join(target_dir, "release/libsnakepit.so")
    [major, minor | _] = String.split(info["version"], ".")
    version = "#{major}.#{minor}#{if info["free_threaded"], do: "t"}"

    # Say what is happening when cargo works for a while: at once for a first build, after a
    # few seconds otherwise (a no-op build stays silent).
    first? = not File.exists?(built)
    task = Task.async(fn -> System.cmd(cargo, args, env: env, stderr_to_stdout: true) end)

    if first? do
      Mix.shell().info(
        "snakepit: building the NIF for Python #{version} (first build takes a few minutes)..."
      )
    end

    {out, status} =
      case Task.yield(task, 3_000) do
        {:ok, result} ->
          result

        nil ->
          if not first?,
            do: Mix.shell().info("snakepit: rebuilding the NIF for Python #{version}...")

          Task.await(task, :infinity)
      end

    if status != 0, do: Mix.raise("snakepit: cargo build failed (exit #{status}):\n#{out}")
    built
  end
end
