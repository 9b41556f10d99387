defmodule Mix.Tasks.Snakepit.Setup do
  @shortdoc "Creates the app's Python venv, installs its python_deps, builds the NIF for it"

  @moduledoc """
  Creates the app's Python venv, installs the Python dependencies declared in
  `config :snakepit` into it, and builds the NIF for its interpreter.

      mix snakepit.setup [--venv PATH] [--python PYTHON] [--force]

  The dependencies are `python_deps` (pip requirements, such as `"numpy>=2"`) and the file
  `python_requirements` (a path relative to the app):

      config :snakepit,
        python_deps: ["numpy>=2", "pillow"],
        python_requirements: "requirements.txt"

  The venv is `--venv PATH`, else `SNAKEPIT_VENV`, else `config :snakepit, venv: ...`, else
  `.venv` in the app. It is made with `uv` when `uv` is on `PATH` (`uv venv`,
  `uv pip install`), else with `python -m venv` and pip, from PyPI. Its interpreter comes from
  `--python`, else `SNAKEPIT_PYTHON`, else `config :snakepit, python: ...`, else the first
  Python on `PATH` of the README's list ("Choosing the Python"). An existing venv is kept,
  unless `--python` names another Python version than its own: it is then made again.

  The venv records a hash of what was declared (`snakepit-deps.txt` in the venv): when nothing
  changed and the venv works, nothing is installed and the task takes a second. `--force`
  installs again.

  Then the NIF is rebuilt: unless `SNAKEPIT_PYTHON` or `config :snakepit, python:` names
  another interpreter, `mix compile` builds it for this venv's Python from now on (cargo
  builds against the Python the venv was made from, so a new venv of the same Python does not
  recompile the Rust code).

  `mix compile` warns, naming this task, when the Python it builds for lacks a declared
  dependency.
  """
  use Mix.Task

  alias Snakepit.Build

  @switches [venv: :string, python: :string, force: :boolean]

  @impl true
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: @switches)
    root = Build.app_root()
    {venv, source} = Build.venv_setting(root, opts[:venv])
    declared = Build.declared(root)

    if declared.requirements && not File.regular?(declared.requirements) do
      Mix.raise(
        "snakepit: config :snakepit, python_requirements: #{declared.requirements} " <>
          "does not exist"
      )
    end

    hash = Build.deps_hash(declared)
    python = Build.venv_python(venv)
    uv = System.find_executable("uv")

    # --python naming another Python version than the venv's: the venv is made again.
    base = if opts[:python], do: base_python!(opts)
    exists? = Build.runnable?(python)
    version = if base && exists?, do: Build.probe!(base)["version"]
    other_python? = version != nil and Build.venv_version(venv) != version

    cond do
      !opts[:force] and exists? and not other_python? and Build.recorded_hash(venv) == hash ->
        Mix.shell().info("snakepit: #{venv} is up to date")

      true ->
        if other_python? do
          Mix.shell().info("snakepit: #{venv} is not of Python #{version}: making it again")
          File.rm_rf!(venv)
        end

        unless exists? and not other_python?,
          do: create_venv!(venv, base || base_python!(opts), uv)

        install!(python, declared, root, uv)
        Build.write_record!(venv, hash, declared)

        case Build.missing_deps(python, declared) do
          [] ->
            :ok

          missing ->
            Mix.shell().error(
              "warning: snakepit: still missing from #{venv} after installing: " <>
                Enum.join(missing, ", ")
            )
        end
    end

    build_nif!(venv, source)
  end

  defp base_python!(opts) do
    cond do
      opts[:python] ->
        Build.resolve!(opts[:python], "--python")

      explicit = Build.explicit_python() ->
        {path, source} = explicit
        Build.resolve!(path, source)

      true ->
        Build.first_candidate() || Build.no_python!()
    end
  end

  defp create_venv!(venv, base, uv) do
    Mix.shell().info("snakepit: creating #{venv} from #{base}")
    File.mkdir_p!(Path.dirname(venv))

    {cmd, args} =
      if uv,
        do: {uv, ["venv", "--python", base, venv]},
        else: {base, ["-m", "venv", venv]}

    case System.cmd(cmd, args, stderr_to_stdout: true) do
      {_, 0} ->
        :ok

      {out, status} ->
        Mix.raise("""
        snakepit: creating the venv #{venv} failed (exit #{status}):
        #{out}
        (Debian: apt-get install python3-venv gives python -m venv its ensurepip.)
        """)
    end
  end

  defp install!(python, %{deps: deps, requirements: req} = declared, root, uv) do
    if Build.declared?(declared) do
      what = Enum.join(deps ++ if(req, do: ["-r #{Path.relative_to(req, root)}"], else: []), " ")
      Mix.shell().info("snakepit: installing #{what}")
      req_args = if req, do: ["-r", req], else: []

      {cmd, args} =
        if uv,
          do: {uv, ["pip", "install", "--python", python] ++ req_args ++ deps},
          else:
            {python, ["-m", "pip", "install", "--disable-pip-version-check"] ++ req_args ++ deps}

      status =
        case System.cmd(cmd, args,
               cd: root,
               stderr_to_stdout: true,
               into: IO.stream(:stdio, :line)
             ) do
          {_, status} -> status
        end

      if status != 0 do
        Mix.raise(
          "snakepit: installing the Python dependencies failed (exit #{status}); see above"
        )
      end
    else
      Mix.shell().info(
        "snakepit: config :snakepit declares no python_deps or python_requirements: " <>
          "nothing to install"
      )
    end
  end

  # Rebuilds the NIF (cargo has nothing to do unless the Python changed). A --venv that the
  # configuration does not name is passed as SNAKEPIT_VENV for this build only.
  defp build_nif!(venv, source) do
    previous = System.get_env("SNAKEPIT_VENV")
    if source == "--venv", do: System.put_env("SNAKEPIT_VENV", venv)

    try do
      if Mix.Project.config()[:app] == :snakepit,
        do: Mix.Task.rerun("compile.snakepit_native", []),
        else: Mix.Task.rerun("deps.compile", ["snakepit"])
    after
      if previous,
        do: System.put_env("SNAKEPIT_VENV", previous),
        else: System.delete_env("SNAKEPIT_VENV")
    end

    python = Build.venv_python(venv)

    case built_for() do
      ^python ->
        Mix.shell().info("snakepit: the NIF is built for #{python}")

      other ->
        {_, why} = Build.explicit_python() || {nil, "the configuration"}

        Mix.shell().info(
          "snakepit: the NIF is built for #{other}, because #{why} names it; unset it to " <>
            "build for #{python}"
        )
    end

    if source == "--venv" do
      Mix.shell().info(
        "snakepit: add `config :snakepit, venv: #{inspect(Path.relative_to_cwd(venv))}` " <>
          "(or set SNAKEPIT_VENV) so that mix compile and the app keep using this venv"
      )
    end
  end

  defp built_for do
    record = Path.join(Mix.Project.build_path(), "lib/snakepit/priv/nif/python.term")

    case :file.consult(String.to_charlist(record)) do
      {:ok, [%{executable: exe}]} -> exe
      _ -> nil
    end
  end
end
