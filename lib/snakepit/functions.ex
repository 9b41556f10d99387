defmodule Snakepit.Functions do
  @moduledoc """
  Elixir functions that Python code may call (docs/architecture.md, "Python calling Elixir").

  Register a function node-wide with `Snakepit.register_function/2` or in the config:

      config :snakepit, functions: [fetch_user: {MyApp.Users, :fetch}]

  and call it from any adapter method:

      from snakepit_bridge import elixir
      user = elixir.call("fetch_user", 42, timeout=5.0)

  Each call runs the function in a fresh process under `Snakepit.FunctionSupervisor`, whose
  `$callers` is the Elixir process that made the Python call (for `Logger` metadata and
  test allowances). Its result goes back to Python converted as a command's arguments would
  be; an exception, exit or throw becomes `snakepit_bridge.ElixirError` there, with the
  Elixir message and stacktrace.

  The function may itself call `Snakepit.execute/3,4` on the pool that called it: the pool
  thread that waits for the function runs that call (it belongs to the same call chain), so
  this works even on a pool whose every thread is busy, up to 16 nested waits per thread.

  This process (registered as `Snakepit.Functions`) receives the calls from the NIF and starts
  a process for each; the registered functions live in `:persistent_term`.
  """
  use GenServer

  alias Snakepit.{Error, Native}

  @table {__MODULE__, :table}
  @chain :"$snakepit_chain"

  @typedoc "A registered function: any fun, or `{module, function}` (called with the args)."
  @type fun_spec :: function() | {module(), atom()}

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Registers `fun` under `name` (an atom or a string), replacing any function of that name.
  """
  @spec register(atom() | String.t(), fun_spec()) :: :ok | {:error, Error.t()}
  def register(name, fun) do
    case normalize(name, fun) do
      {:ok, entry} ->
        GenServer.call(__MODULE__, {:register, [entry]})

      {:error, message} ->
        {:error, Error.new(:validation, message, details: %{name: name})}
    end
  end

  @doc "The names of the registered functions, sorted."
  @spec names() :: [String.t()]
  def names, do: table() |> Map.keys() |> Enum.sort()

  @doc false
  # `{name_string, fun}` for a valid name and function, else `{:error, message}`.
  @spec normalize(term(), term()) :: {:ok, {String.t(), fun_spec()}} | {:error, String.t()}
  def normalize(name, fun) do
    cond do
      not (is_atom(name) and name not in [nil, true, false]) and
          not (is_binary(name) and name != "") ->
        {:error, "a function's name must be an atom or a non-empty string, got #{inspect(name)}"}

      is_function(fun) ->
        {:ok, {to_string(name), fun}}

      match?({m, f} when is_atom(m) and is_atom(f), fun) ->
        {:ok, {to_string(name), fun}}

      true ->
        {:error,
         "function #{inspect(name)}: expected a fun or a {module, function} tuple, got " <>
           inspect(fun)}
    end
  end

  defp table, do: :persistent_term.get(@table, %{})

  ## The dispatcher

  @impl true
  def init(:ok) do
    Process.flag(:trap_exit, true)

    with {:ok, configured} <- Snakepit.Config.functions() do
      :persistent_term.put(@table, Map.merge(table(), Map.new(configured)))
    end

    try do
      Native.set_function_dispatcher(self())
    rescue
      # The NIF is not loaded (its load failure was logged): Python cannot call anyway.
      _ -> :ok
    end

    # calls: id => {pid, monitor, reply}; monitors: monitor => id
    {:ok, %{calls: %{}, monitors: %{}}}
  end

  @impl true
  def handle_call({:register, entries}, _from, state) do
    :persistent_term.put(@table, Map.merge(table(), Map.new(entries)))
    {:reply, :ok, state}
  end

  @impl true
  def handle_info({:snakepit_elixir_call, id, name, args, caller}, state) do
    reply = fn reply -> Native.function_reply(id, reply) end
    start(id, name, args, caller, id, reply, state)
  end

  # From an OS worker (Snakepit.Pool.Process): `reply` sends the answer down its port.
  def handle_info({:snakepit_elixir_call, id, name, args, caller, chain, reply}, state)
      when is_function(reply, 1) do
    start(id, name, args, caller, chain, reply, state)
  end

  def handle_info({:snakepit_elixir_cancel, id}, state) do
    case Map.pop(state.calls, id) do
      {nil, _} ->
        {:noreply, state}

      {{pid, mon, _reply}, calls} ->
        Process.demonitor(mon, [:flush])
        Process.exit(pid, :kill)
        {:noreply, %{state | calls: calls, monitors: Map.delete(state.monitors, mon)}}
    end
  end

  def handle_info({:DOWN, mon, :process, _pid, reason}, state) do
    case Map.pop(state.monitors, mon) do
      {nil, _} ->
        {:noreply, state}

      {id, monitors} ->
        {{_pid, _mon, reply}, calls} = Map.pop(state.calls, id)

        # Only a process killed from outside ends without replying (run/5 catches the rest).
        if reason != :normal do
          reply.(
            {:error, {"exit", "the process running the function exited: #{inspect(reason)}", ""}}
          )
        end

        {:noreply, %{state | calls: calls, monitors: monitors}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp start(id, name, args, caller, chain, reply, state) do
    task = fn -> run(name, args, caller, chain, reply) end

    case Task.Supervisor.start_child(Snakepit.FunctionSupervisor, task) do
      {:ok, pid} ->
        mon = Process.monitor(pid)

        {:noreply,
         %{
           state
           | calls: Map.put(state.calls, id, {pid, mon, reply}),
             monitors: Map.put(state.monitors, mon, id)
         }}

      {:error, reason} ->
        reply.({:error, {"exit", "cannot start a process: #{inspect(reason)}", ""}})
        {:noreply, state}
    end
  end

  @doc false
  # Runs in the fresh process: `{:ok, result}` or `{:error, {kind, message, stacktrace}}`.
  def run(name, args, caller, chain, reply) do
    if is_pid(caller), do: Process.put(:"$callers", [caller])
    Process.put(@chain, chain)
    reply.(apply_named(to_string(name), args))
  end

  defp apply_named("__snakepit_functions__", _args), do: {:ok, names()}

  defp apply_named(name, args) do
    case Map.fetch(table(), name) do
      {:ok, fun} ->
        try do
          {:ok, call(fun, args)}
        catch
          kind, reason ->
            st = __STACKTRACE__

            {:error,
             {Atom.to_string(kind), Exception.format_banner(kind, reason, st),
              Exception.format_stacktrace(st)}}
        end

      :error ->
        registered =
          case names() do
            [] -> "none are registered (Snakepit.register_function/2)"
            names -> "registered: " <> Enum.join(names, ", ")
          end

        {:error, {"unknown", "unknown Elixir function #{inspect(name)}; #{registered}", ""}}
    end
  end

  defp call({m, f}, args), do: apply(m, f, args)
  defp call(fun, args), do: apply(fun, args)
end
