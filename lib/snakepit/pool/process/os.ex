defmodule Snakepit.Pool.Process.OS do
  @moduledoc false
  # The operating-system side of a :process worker (docs/architecture.md, "One call,
  # :process profile"): which interpreter runs it, its environment, its port, what its exit
  # status means, and killing it. Snakepit.Pool.Process keeps the jobs and the workers' state.

  alias Snakepit.{Config, Error, Runtime}

  @blas_vars ~w(OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS NUMEXPR_NUM_THREADS
                VECLIB_MAXIMUM_THREADS)

  @doc "The interpreter of a pool's workers: `:python`, else the one the NIF was built for."
  @spec python_executable(Config.t()) :: {:ok, String.t()} | {:error, Error.t()}
  def python_executable(%Config{python: nil, name: name}) do
    case Runtime.build_info() do
      {:ok, %{executable: exe}} -> check_executable(exe, name)
      {:error, _} = error -> error
    end
  end

  def python_executable(%Config{python: python, name: name}), do: check_executable(python, name)

  defp check_executable(path, name) do
    path = to_string(path)

    found =
      cond do
        String.contains?(path, "/") -> if File.regular?(path), do: Path.expand(path)
        true -> System.find_executable(path)
      end

    case found do
      nil ->
        {:error,
         Error.new(
           :validation,
           "pool #{inspect(name)}: invalid python: no interpreter at #{inspect(path)}",
           details: %{key: :python, value: path, pool: name}
         )}

      exe ->
        {:ok, exe}
    end
  end

  @doc """
  A worker's environment: `PYTHONPATH` (Snakepit.Runtime.python_path/0), the BEAM's OS pid
  (the worker exits with it), the MapSet layout, `*_NUM_THREADS=1` unless `adapter_env` sets
  them, then `adapter_env`.
  """
  def worker_env(%Config{adapter_env: adapter_env}) do
    given = MapSet.new(adapter_env, &elem(&1, 0))
    blas = for var <- @blas_vars, not MapSet.member?(given, var), do: {var, "1"}

    base = [
      {"PYTHONPATH", Enum.join(Runtime.python_path(), ":")},
      {"PYTHONUNBUFFERED", "1"},
      {"SNAKEPIT_BEAM_PID", System.pid()},
      {"SNAKEPIT_MAPSET_FIELDS",
       Enum.map_join(Runtime.mapset_fields(), ",", fn {k, v} -> "#{k}=#{v}" end)}
    ]

    for {k, v} <- base ++ blas ++ adapter_env,
        do: {String.to_charlist(k), String.to_charlist(v)}
  end

  @doc "Starts `python -m snakepit_bridge.worker` on a port; returns the port and its OS pid."
  @spec open(String.t(), list()) :: {port(), integer() | nil}
  def open(python, env) do
    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :exit_status,
        :use_stdio,
        :hide,
        {:busy_limits_port, :disabled},
        {:args, ["-m", "snakepit_bridge.worker"]},
        {:env, env}
      ])

    os_pid =
      case Port.info(port, :os_pid) do
        {:os_pid, pid} -> pid
        _ -> nil
      end

    {port, os_pid}
  end

  @doc "Writes a frame; a port that closed meanwhile is reported by its exit message."
  def send(port, data) do
    Port.command(port, data)
  rescue
    ArgumentError -> false
  end

  @doc "The `:worker` error of worker `w` of pool `name` that died with `status`."
  def exit_error(name, w, status, doing) do
    Error.new(
      :worker,
      "worker #{w.index} of pool #{inspect(name)} (OS pid #{w.os_pid}) died #{doing}: " <>
        describe_status(status),
      details: %{
        pool: name,
        worker: w.index,
        os_pid: w.os_pid,
        exit_status: status,
        signal: signal(status)
      }
    )
  end

  defp signal(status) when is_integer(status) and status > 128, do: status - 128
  defp signal(_), do: nil

  def describe_status(status) when is_integer(status) and status > 128 do
    names = %{
      6 => "SIGABRT",
      9 => "SIGKILL",
      11 => "SIGSEGV",
      15 => "SIGTERM",
      7 => "SIGBUS",
      8 => "SIGFPE"
    }

    sig = status - 128
    "killed by signal #{sig}#{if n = names[sig], do: " (#{n})", else: ""}"
  end

  def describe_status(status) when is_integer(status), do: "exit status #{status}"
  def describe_status(nil), do: "exited"
  def describe_status(other), do: "port closed: #{inspect(other)}"

  def close_port(nil), do: :ok

  def close_port(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  def kill_os_pid(nil), do: :ok

  def kill_os_pid(os_pid) do
    spawn(fn -> kill_now(os_pid) end)
    :ok
  end

  def kill_now(os_pids) do
    case for(pid <- List.wrap(os_pids), is_integer(pid), do: Integer.to_string(pid)) do
      [] ->
        :ok

      pids ->
        case System.find_executable("kill") do
          nil -> :os.cmd(String.to_charlist("kill -9 #{Enum.join(pids, " ")} 2>/dev/null"))
          kill -> System.cmd(kill, ["-KILL" | pids], stderr_to_stdout: true)
        end

        :ok
    end
  end

  @doc "Kills `pids` and waits (up to 2 s) until each of `ports` has exited, then closes them."
  def kill_all(ports, pids) do
    kill_now(pids)
    await_exits(ports, System.monotonic_time(:millisecond) + 2_000)
    Enum.each(ports, &close_port/1)
  end

  defp await_exits([], _deadline), do: :ok

  defp await_exits(ports, deadline) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {port, {:exit_status, _}} when is_port(port) ->
        await_exits(List.delete(ports, port), deadline)
    after
      remaining -> :ok
    end
  end
end
