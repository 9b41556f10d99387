defmodule Snakepit.RuntimeTest do
  # The run-time venv applied to the build record (Snakepit.Runtime.build_info/0), on records
  # and venvs made up in a temporary directory: nothing global is changed.
  use ExUnit.Case, async: true

  alias Snakepit.Runtime

  setup do
    dir = Path.join(System.tmp_dir!(), "snakepit_runtime_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    record = %{
      executable: "/opt/py/bin/python3.11",
      version: "3.11.7",
      free_threaded: false,
      home: "/opt/py",
      prefix: "/opt/py",
      base_executable: "/opt/py/bin/python3.11",
      site_packages: ["/opt/py/lib/python3.11/site-packages"]
    }

    %{dir: dir, record: record}
  end

  defp venv!(dir, name, version) do
    venv = Path.join(dir, name)
    File.mkdir_p!(Path.join(venv, "bin"))
    File.write!(Path.join(venv, "bin/python"), "")
    File.write!(Path.join(venv, "pyvenv.cfg"), "home = /opt/py/bin\nversion = #{version}\n")
    venv
  end

  test "the record as it is without a venv", %{record: record} do
    assert {:ok, info} = Runtime.apply_venv(record, nil)
    assert info.executable == record.executable
    assert info.built_executable == record.executable
    assert info.site_packages == record.site_packages
    assert info.venv == nil
  end

  test "a run-time venv gives the interpreter and site-packages", %{dir: dir, record: record} do
    venv = venv!(dir, "venv", "3.11.2")

    assert {:ok, info} = Runtime.apply_venv(record, {venv, "SNAKEPIT_VENV"})
    assert info.executable == Path.join(venv, "bin/python")
    assert info.site_packages == [Path.join(venv, "lib/python3.11/site-packages")]
    assert info.prefix == venv
    assert info.venv == venv
    assert info.built_executable == record.executable
    assert info.home == record.home

    ft = %{record | version: "3.14.0", free_threaded: true}
    venv = venv!(dir, "ft", "3.14.0")
    assert {:ok, info} = Runtime.apply_venv(ft, {venv, "SNAKEPIT_VENV"})
    assert info.site_packages == [Path.join(venv, "lib/python3.14t/site-packages")]
  end

  test "a run-time venv that is missing is an error naming it and its source",
       %{dir: dir, record: record} do
    missing = Path.join(dir, "nowhere")

    assert {:error, %Snakepit.Error{category: :validation} = error} =
             Runtime.apply_venv(record, {missing, "SNAKEPIT_VENV"})

    assert error.message ==
             "the venv #{missing} (SNAKEPIT_VENV) does not exist: create it (mix " <>
               "snakepit.setup --venv #{missing}, or python -m venv) or point SNAKEPIT_VENV " <>
               "at an existing venv"

    assert error.details == %{key: :venv, value: missing, pool: nil}

    File.mkdir_p!(missing)

    assert {:error, error} = Runtime.apply_venv(record, {missing, "config :snakepit, venv:"})

    assert error.message =~
             "(config :snakepit, venv:) is not a venv (no pyvenv.cfg or bin/python)"
  end

  test "a venv of another Python version is an error", %{dir: dir, record: record} do
    venv = venv!(dir, "venv312", "3.12.1")

    assert {:error, error} = Runtime.apply_venv(record, {venv, "SNAKEPIT_VENV"})

    assert error.message =~
             "(SNAKEPIT_VENV) was made from Python 3.12.1, but the NIF is built for Python " <>
               "3.11.7: use a venv of Python 3.11"
  end

  test "a NIF built with a venv that is gone is an error, not the base interpreter",
       %{dir: dir, record: record} do
    gone = Path.join(dir, "build_venv")
    record = %{record | prefix: gone, executable: Path.join(gone, "bin/python")}

    assert {:error, error} = Runtime.apply_venv(record, nil)
    assert error.message =~ "the NIF was built for #{gone}/bin/python, in the venv #{gone}"
    assert error.message =~ "which does not exist here: set SNAKEPIT_VENV"

    venv!(dir, "build_venv", "3.11.7")
    assert {:ok, %{venv: ^gone}} = Runtime.apply_venv(record, nil)
  end

  test "check_venv/0 passes when no venv is set" do
    if System.get_env("SNAKEPIT_VENV") in [nil, ""] and
         Application.get_env(:snakepit, :venv) == nil,
       do: assert(Runtime.check_venv() == :ok)
  end
end
