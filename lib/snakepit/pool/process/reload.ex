defmodule Snakepit.Pool.Process.Reload do
  @moduledoc false
  # Snakepit.reload/1 for the :process profile (docs/architecture.md, "Reload"). A fresh
  # worker process imports everything anew, so reloading is replacing the workers — but first
  # a probe worker is started with the pool's init frame, off the pool process: if the new
  # code does not import or its adapter's __init__ raises, the reload fails with that error
  # and no worker has been touched. Then Snakepit.Pool.Process marks its workers due for
  # recycling one at a time (recycling drains a worker, stops it, and starts its replacement;
  # the others keep serving) and answers when the last replacement is ready.

  alias Snakepit.{Caller, Error}
  alias Snakepit.Pool.Process.OS

  # Frame kinds (priv/python/snakepit_bridge/worker.py).
  @init 3
  @stop 2
  @reply_error 1
  @ready 2
  @log 4

  @doc """
  Starts a probe worker linked to the pool process; sends `{:reload_probe, result}` to
  `parent` where result is `:ok` or `{:error, %Snakepit.Error{}}`.
  """
  def start_probe(parent, python, env, init, timeout, on_log) do
    spawn_link(fn -> send(parent, {:reload_probe, probe(python, env, init, timeout, on_log)}) end)
  end

  defp probe(python, env, init, timeout, on_log) do
    {port, os_pid} = OS.open(python, env)
    OS.send(port, [@init | :erlang.term_to_binary(init)])
    deadline = System.monotonic_time(:millisecond) + timeout
    result = await(port, deadline, on_log)

    if result == :ok do
      # Its cleanup() runs on the stop frame; it is killed if it has not exited meanwhile.
      OS.send(port, <<@stop>>)
      await_exit(port, deadline + 5_000)
    end

    OS.close_port(port)
    OS.kill_os_pid(os_pid)
    result
  end

  defp await(port, deadline, on_log) do
    receive do
      {^port, {:data, <<@ready, _::binary>>}} ->
        :ok

      {^port, {:data, <<@reply_error, _id::32, bin::binary>>}} ->
        Caller.result({:etf, bin})

      {^port, {:data, <<@log, bin::binary>>}} ->
        on_log.(bin)
        await(port, deadline, on_log)

      {^port, {:data, _}} ->
        await(port, deadline, on_log)

      {^port, {:exit_status, status}} ->
        {:error,
         Error.new(:worker, "the new worker process exited (#{OS.describe_status(status)})")}
    after
      max(deadline - System.monotonic_time(:millisecond), 0) ->
        {:error, Error.new(:timeout, "the new worker process did not start in time")}
    end
  end

  defp await_exit(port, deadline) do
    receive do
      {^port, {:exit_status, _}} -> :ok
      {^port, {:data, _}} -> await_exit(port, deadline)
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> :ok
    end
  end
end
