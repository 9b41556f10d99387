defmodule Snakepit.Registry do
  @moduledoc false
  # The one writer of pool registrations (docs/architecture.md, "Registration").
  #
  # A pool process claims its name when it starts (before it starts threads or OS workers) and
  # publishes its handle once it is ready; `Snakepit.execute/4` reads the published entry from
  # `:persistent_term` without a message. The entry also carries the pool's `ndarray:` mode,
  # which the caller finishes results with (Snakepit.CallOptions), in that same read. Only this
  # process puts or erases those terms, one request at a time, so two pools can never both
  # hold a name, and it monitors every owner, so a pool that is killed (no `terminate/2`)
  # loses its entry and a restarted pool can claim the name again at once. Publishing also
  # joins the pool's `:pg` group (Snakepit.Cluster), so every profile is visible to other
  # nodes the same way.
  use GenServer

  alias Snakepit.Error

  @type handle :: term()
  @type entry :: {pid(), handle(), map()}

  @doc false
  def child_spec(_), do: %{id: __MODULE__, start: {__MODULE__, :start_link, []}}

  @doc false
  def start_link, do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Claims `name` for the calling process. `{:error, %Snakepit.Error{category: :pool}}` when a
  live process holds it; a dead holder's claim (its DOWN not handled yet) is taken over.
  """
  @spec claim(atom()) :: :ok | {:error, Error.t()}
  def claim(name) when is_atom(name), do: GenServer.call(__MODULE__, {:claim, name}, :infinity)

  @doc """
  Makes the caller's claimed `name` visible to `lookup/1` and to other nodes; `ndarray` is the
  pool's `ndarray:` option (`lookup_call/1`).
  """
  @spec publish(atom(), handle(), map(), atom(), term()) :: :ok | {:error, Error.t()}
  def publish(name, handle, info, ndarray \\ :list, extra \\ nil),
    do: GenServer.call(__MODULE__, {:publish, name, handle, info, ndarray, extra}, :infinity)

  @doc """
  The `extra` term the live pool process `pid` published (the `:process` profile's argument
  arena: Snakepit.Pool.Process.Shm), or nil; one `:persistent_term` read, erased with the
  pool's name.
  """
  @spec extra(pid()) :: term()
  def extra(pid), do: :persistent_term.get({__MODULE__, {:extra, pid}}, nil)

  @doc """
  Gives up the caller's `name` (a pool that stops: new calls then find no pool). Harmless when
  the registry itself is down (its restart wipes every entry).
  """
  @spec release(atom()) :: :ok
  def release(name) do
    GenServer.call(__MODULE__, {:release, name}, :infinity)
  catch
    :exit, _ -> :ok
  end

  @doc "The published handle of `name` (one `:persistent_term` read)."
  @spec lookup(term()) :: {:ok, handle()} | {:error, Error.t()}
  def lookup(name) do
    with {:ok, handle, _ndarray} <- lookup_call(name), do: {:ok, handle}
  end

  @doc "`lookup/1` plus the pool's `ndarray:` mode, from the same read (the call path)."
  @spec lookup_call(term()) :: {:ok, handle(), atom()} | {:error, Error.t()}
  def lookup_call(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      {_pid, handle, _info, ndarray} -> {:ok, handle, ndarray}
      nil -> {:error, not_running(name)}
    end
  end

  def lookup_call(name), do: {:error, not_running(name)}

  @doc "`{pid, handle, info}` of a live pool named `name`, or nil."
  @spec entry(term()) :: entry() | nil
  def entry(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      {pid, handle, info, _ndarray} -> if Process.alive?(pid), do: {pid, handle, info}
      nil -> nil
    end
  end

  def entry(_name), do: nil

  @doc "The pid of the pool named `name`, or nil."
  @spec whereis(term()) :: pid() | nil
  def whereis(name) do
    case entry(name) do
      {pid, _, _} -> pid
      nil -> nil
    end
  end

  @doc "Names of the pools running in this node, sorted."
  @spec running() :: [atom()]
  def running do
    names =
      for {{__MODULE__, name}, {pid, _, _, _}} <- :persistent_term.get(),
          Process.alive?(pid),
          do: name

    Enum.sort(names)
  end

  @doc "The `:pool` error for a name that has no running pool, with a hint where one fits."
  @spec not_running(term()) :: Error.t()
  def not_running(name) when is_atom(name) do
    Error.new(:pool, "no pool named #{inspect(name)} is running",
      details: %{pool: name, running: running()}
    )
  end

  def not_running(name) do
    running = running()
    hint = Enum.find(running, &(is_binary(name) and Atom.to_string(&1) == name))

    message =
      "pool names are atoms, got: #{inspect(name)}" <>
        if(hint, do: " (did you mean #{inspect(hint)}?)", else: "")

    Error.new(:pool, message, details: %{pool: name, running: running})
  end

  ## Server

  @impl true
  def init(nil) do
    # A restarted registry starts from nothing: entries of the previous one are stale (the
    # pools that owned them are restarted after it by Snakepit.Supervisor's rest_for_one).
    for {{__MODULE__, _} = key, _} <- :persistent_term.get(), do: :persistent_term.erase(key)
    {:ok, %{names: %{}, monitors: %{}}}
  end

  @impl true
  def handle_call({:claim, name}, {pid, _}, state) do
    case state.names do
      %{^name => {^pid, _mon}} ->
        {:reply, :ok, state}

      %{^name => {other, mon}} ->
        if Process.alive?(other) do
          {:reply, {:error, already_running(name)}, state}
        else
          Process.demonitor(mon, [:flush])
          state = forget(state, name, mon)
          {:reply, :ok, hold(state, name, pid)}
        end

      _ ->
        {:reply, :ok, hold(state, name, pid)}
    end
  end

  def handle_call({:publish, name, handle, info, ndarray, extra}, {pid, _}, state) do
    case state.names do
      %{^name => {^pid, _mon}} ->
        if extra != nil, do: :persistent_term.put({__MODULE__, {:extra, pid}}, extra)
        :persistent_term.put({__MODULE__, name}, {pid, handle, info, ndarray})
        Snakepit.Cluster.join(name, pid)
        {:reply, :ok, state}

      _ ->
        {:reply, {:error, Error.new(:pool, "#{inspect(name)} is not claimed by this process")},
         state}
    end
  end

  def handle_call({:release, name}, {pid, _}, state) do
    case state.names do
      %{^name => {^pid, mon}} ->
        Process.demonitor(mon, [:flush])
        Snakepit.Cluster.leave(name, pid)
        {:reply, :ok, forget(state, name, mon)}

      _ ->
        {:reply, :ok, state}
    end
  end

  @impl true
  def handle_info({:DOWN, mon, :process, _pid, _reason}, state) do
    case state.monitors do
      %{^mon => name} -> {:noreply, forget(state, name, mon)}
      _ -> {:noreply, state}
    end
  end

  defp hold(state, name, pid) do
    mon = Process.monitor(pid)

    %{
      state
      | names: Map.put(state.names, name, {pid, mon}),
        monitors: Map.put(state.monitors, mon, name)
    }
  end

  defp forget(state, name, mon) do
    with {pid, _mon} <- state.names[name], do: :persistent_term.erase({__MODULE__, {:extra, pid}})
    :persistent_term.erase({__MODULE__, name})
    %{state | names: Map.delete(state.names, name), monitors: Map.delete(state.monitors, mon)}
  end

  defp already_running(name) do
    Error.new(:pool, "a pool named #{inspect(name)} is already running",
      details: %{pool: name, reason: :already_running}
    )
  end
end
