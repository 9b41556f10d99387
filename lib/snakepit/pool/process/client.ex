defmodule Snakepit.Pool.Process.Client do
  @moduledoc false
  # The caller's side of the Snakepit.Pool contract for the :process profile (Snakepit.Caller
  # drives it; Snakepit.Pool.Process delegates here): what runs in the calling process to
  # submit a job to the pool process, cancel it, ask for stream items and end it. The pool
  # process's side, the jobs and the workers are in Snakepit.Pool.Process (its moduledoc,
  # "How a call travels").

  alias Snakepit.{Caller, Error}
  alias Snakepit.Pool.Process.Shm

  @doc false
  def submit(server, command, args, window) do
    {args, files, leases} = shm_args(server, args, window, true)
    body = call_body(command, args, window)
    shm_handle(request(server, body, kind(window), nil, leases), files)
  end

  # Large binaries of a call's arguments go through the pool's argument arena (`leases`,
  # which the pool keeps with the job: a plain call) or shared-memory files (Shm); the call's
  # handle lists the files, so that finished/3 and cancel/3 remove what a worker never mapped.
  defp shm_args(server, args, nil, arena?),
    do: Shm.export_args(server, args, arena? and Process.get(:"$snakepit_chain") == nil)

  defp shm_args(_server, args, _window, _arena?), do: {args, [], []}

  defp shm_handle(result, []), do: result
  defp shm_handle({:ok, tag, {server, :call}}, files), do: {:ok, tag, {server, :call, files}}

  defp call_body(command, args, window) do
    head =
      if window,
        do: [<<window::32, byte_size(command)::32>>, command],
        else: [<<byte_size(command)::32>>, command]

    [head | :erlang.term_to_binary(args)]
  end

  defp kind(nil), do: :call
  defp kind(_window), do: :stream

  @doc false
  def submit_to(server, worker, command, args, window) do
    {args, files, []} = shm_args(server, args, window, false)
    shm_handle(request(server, call_body(command, args, window), kind(window), worker), files)
  end

  # A call from an Elixir function that a worker of this pool called (Snakepit.Functions): it
  # goes to the worker thread that waits for that function (re-entrancy; see
  # priv/python/snakepit_bridge/_worker_elixir.py). A call pinned to a worker (it passes a
  # ref) goes to that worker as usual.
  defp request(server, body, kind, worker, leases \\ []) do
    server = GenServer.whereis(server) || server

    case Process.get(:"$snakepit_chain") do
      {:snakepit_process_chain, ^server, port, call_id} when worker == nil ->
        tag = :erlang.monitor(:process, server, [{:alias, :demonitor}])
        send(server, {:"$snakepit_nested", tag, self(), body, kind, port, call_id})
        {:ok, tag, {server, kind}}

      _ ->
        plain_request(server, body, kind, worker, leases)
    end
  end

  # Sends a request (`body`: its frame after the kind byte and the job id) to the pool; its
  # replies come to a monitor alias, so one that arrives after a timeout is dropped by the
  # runtime and never reaches the caller's mailbox, and a pool that dies (or a name that is
  # not registered) gives :DOWN.
  # A `worker` ({pool, index, os_pid}) pins the job to that worker (submit_to/5).
  defp plain_request(server, body, kind, worker, leases) do
    tag = :erlang.monitor(:process, server, [{:alias, :demonitor}])

    if is_pid(server) do
      cond do
        worker -> send(server, {:"$snakepit_call_to", tag, self(), body, kind, worker})
        leases == [] -> send(server, {:"$snakepit_call", tag, self(), body, kind})
        true -> send(server, {:"$snakepit_call", tag, self(), body, kind, leases})
      end
    end

    {:ok, tag, {server, kind}}
  end

  @doc false
  def cancel(_server, tag, {server, :stream}) do
    # The pool answers with the stream's last message ({tag, :closed}, or :done if it ended).
    if is_pid(server), do: send(server, {:"$snakepit_cancel", tag})
    :cancelled
  end

  def cancel(handle, tag, {server, :call, files}) do
    answer = cancel(handle, tag, {server, :call})
    Shm.remove(files)
    answer
  end

  def cancel(_server, tag, {server, _call}) do
    # Deactivate the alias first: from now on no reply can arrive. One may be here already.
    Process.demonitor(tag, [:flush])

    receive do
      {^tag, _} = reply ->
        send(self(), reply)
        :done
    after
      0 ->
        if is_pid(server), do: send(server, {:"$snakepit_cancel", tag})
        :cancelled
    end
  end

  @doc false
  def demand(_server, tag, {server, :stream}, n) do
    if is_pid(server), do: send(server, {:"$snakepit_demand", tag, n})
    :ok
  end

  @doc false
  def finished(_server, tag, {_pid, :stream}) do
    Process.demonitor(tag, [:flush])
    flush(tag)
  end

  def finished(_server, tag, {_pid, :call, files}) do
    Process.demonitor(tag, [:flush])
    Shm.remove(files)
  end

  # A call's one reply has been received: only the monitor (and its alias) is left to drop.
  def finished(_server, tag, _job) do
    Process.demonitor(tag, [:flush])
    :ok
  end

  defp flush(tag) do
    receive do
      {^tag, _} -> flush(tag)
    after
      0 -> :ok
    end
  end

  @doc false
  def stats(server, _info), do: GenServer.call(server, :stats)

  @doc false
  def reload(server, roots, timeout) do
    GenServer.call(server, {:reload, roots}, timeout)
  catch
    :exit, {:timeout, _} ->
      {:error, Error.new(:timeout, "the reload did not finish within #{timeout} ms")}

    :exit, reason ->
      {:error, Error.new(:pool, "the pool stopped during the reload (#{inspect(reason)})")}
  end

  @doc false
  def tools(server) do
    {:ok, tag, job} = request(server, "", :tools, nil)

    receive do
      {^tag, reply} ->
        Process.demonitor(tag, [:flush])
        Caller.result(reply)

      {:DOWN, ^tag, _, _, reason} ->
        {:error,
         Error.new(:pool, "the pool stopped before the call finished (#{inspect(reason)})")}
    after
      60_000 ->
        cancel(server, tag, job)
        {:error, Error.new(:timeout, "no result within 60000 ms")}
    end
  end
end
