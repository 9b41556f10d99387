defmodule Snakepit.Cluster do
  # How long past the call's own timeout the caller waits for the remote answer to arrive.
  @margin 5_000

  @moduledoc """
  Pools across connected nodes.

  Every pool joins the `:pg` group `{:snakepit_pool, name}` in the `Snakepit.Cluster` scope,
  which the `:snakepit` application starts. `Snakepit.execute/4` runs on the local pool when this
  node has one; otherwise it runs on another connected node that has a pool of that name,
  through `:erpc`, and the result comes back as if the pool were local.

  ## Usage

  Connect the nodes (`Node.connect/1`, `libcluster`, `--name`/`--cookie` as usual), start the
  same pool name on the nodes that should serve it, and call from any node:

      # on node b@host (config or start_pool)
      {:ok, _} = Snakepit.start_pool(name: :hpc_pool, adapter: "my_app.adapters.Model")

      # on node a@host, which has no :hpc_pool
      true = Node.connect(:"b@host")
      Snakepit.Cluster.members(:hpc_pool)
      #=> [:"b@host"]
      {:ok, result} = Snakepit.execute(:hpc_pool, "compute_intensive", %{data: [1, 2, 3]})

  Membership travels with `:pg`: a pool that starts on a newly connected node shows up in
  `members/1` after a short propagation delay; a pool that stops, or a node that goes down,
  leaves it.

  ## Where a call runs

    * A local pool of that name always wins; the cluster is only the fallback.
    * Otherwise one of the other nodes that has the pool, round robin, preferring nodes that
      are currently connected. The call is made once: a lost connection is reported, never
      retried on another node (the call may have run).
    * The remote node runs the call on its own local pool and never forwards it further (the
      call carries `snakepit_remote: true` in its options).
    * No node has the pool: the usual `{:error, %Snakepit.Error{category: :pool}}`.

  ## What crosses the wire

  The pool name, the command, the arguments and the options go to the remote node as Erlang
  terms, exactly as given (a keyword list of arguments already turned into a map); the result
  comes back as a term, `{:ok, term}` or `{:error, %Snakepit.Error{}}`. Python-side conversion
  happens on the remote node, so the same rules apply as locally. Large arguments and results
  are copied over the distribution connection: send references (paths, keys), not bulk data.
  Errors from a remote pool carry `details.node`, the node that ran the call. One exception to
  "same rules": a pid in the arguments must live on the node that runs the call; the caller's
  own pid fails there with a `:conversion` error (Python's `send()` reaches local processes only).

  `:timeout` is enforced by the remote node, which cancels the job as a local call would; the
  caller additionally waits at most #{@margin} ms beyond it for the answer to travel back.
  Failures of the transport never raise: an unreachable node or a connection lost during the
  call is a `:pool` error, a missing answer a `:timeout` error, both naming the node.

  > #### Local only {: .info}
  >
  > `Snakepit.execute_stream/4`, `Snakepit.stats/1` and `Snakepit.tools/1` work on local pools
  > only.
  """

  alias Snakepit.Error

  @scope __MODULE__
  @default_timeout 60_000

  @doc false
  @spec child_spec(term()) :: Supervisor.child_spec()
  def child_spec(_opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, []}, type: :worker}
  end

  @doc false
  @spec start_link() :: {:ok, pid()} | {:error, term()}
  def start_link do
    if :persistent_term.get({__MODULE__, :next}, nil) == nil do
      :persistent_term.put({__MODULE__, :next}, :atomics.new(1, signed: false))
    end

    :pg.start_link(@scope)
  end

  @doc false
  # Makes pool process `pid` a member of its pool's group. Called by Snakepit.Registry when a
  # pool of any profile publishes its name; :pg drops the member when the process exits.
  @spec join(atom(), pid()) :: :ok
  def join(pool, pid) do
    :pg.join(@scope, {:snakepit_pool, pool}, pid)
  end

  @doc false
  @spec leave(atom(), pid()) :: :ok | :not_joined
  def leave(pool, pid) do
    :pg.leave(@scope, {:snakepit_pool, pool}, pid)
  end

  @doc """
  The nodes that have a pool named `pool`, this one included when it has it, sorted.

  Built from `:pg` membership, so a pool started on another node appears after a short
  propagation delay. `[]` when the `:snakepit` application is not running.
  """
  @spec members(atom()) :: [node()]
  def members(pool) when is_atom(pool) do
    pool |> pids() |> Enum.map(&node/1) |> Enum.uniq() |> Enum.sort()
  end

  @doc """
  Runs the call on another node that has `pool`; `:no_remote` when none has (or when the call
  already came from another node: `opts[:snakepit_remote]`).

  Called by `Snakepit.execute/4` when this node has no pool of that name. Never raises:
  transport failures become `{:error, %Snakepit.Error{category: :pool | :timeout}}` naming
  the node.
  """
  @spec execute_remote(atom(), String.t(), term(), keyword()) ::
          {:ok, term()} | {:error, Error.t()} | :no_remote
  def execute_remote(pool, command, args, opts) do
    if Keyword.get(opts, :snakepit_remote, false) do
      :no_remote
    else
      case remote_nodes(pool) do
        [] -> :no_remote
        nodes -> call(pick(nodes), pool, command, args, opts)
      end
    end
  end

  defp pids(pool) do
    :pg.get_members(@scope, {:snakepit_pool, pool})
  rescue
    # The scope is not running: the :snakepit application is not started.
    ArgumentError -> []
  end

  defp remote_nodes(pool) do
    self = node()
    for pid <- pids(pool), (n = node(pid)) != self, uniq: true, do: n
  end

  # Round robin over the connected nodes; when none is known up, over them all (:erpc will
  # try to connect and report what fails).
  defp pick([node]), do: node

  defp pick(nodes) do
    connected = Node.list(:connected)

    candidates =
      case Enum.filter(nodes, &(&1 in connected)) do
        [] -> nodes
        up -> up
      end
      |> Enum.sort()

    Enum.at(candidates, rem(next(), length(candidates)))
  end

  defp next do
    case :persistent_term.get({__MODULE__, :next}, nil) do
      nil -> :rand.uniform(1_000_000)
      ref -> :atomics.add_get(ref, 1, 1)
    end
  end

  defp call(node, pool, command, args, opts) do
    case Keyword.get(opts, :timeout, @default_timeout) do
      :infinity ->
        call(node, pool, command, args, opts, :infinity)

      timeout when is_integer(timeout) and timeout >= 0 ->
        call(node, pool, command, args, opts, timeout + @margin)

      other ->
        {:error,
         Error.new(
           :validation,
           "invalid :timeout: expected a non-negative integer (ms) or :infinity, got #{inspect(other)}",
           details: %{key: :timeout, value: other}
         )}
    end
  end

  defp call(node, pool, command, args, opts, wait) do
    opts = Keyword.put(opts, :snakepit_remote, true)

    try do
      :erpc.call(node, Snakepit, :execute, [pool, command, args, opts], wait)
    catch
      kind, reason -> {:error, transport_error(kind, reason, node, pool, command, wait)}
    else
      {:ok, _} = ok ->
        ok

      {:error, %Error{} = e} ->
        {:error, %{e | details: Map.put_new(e.details || %{}, :node, node)}}

      other ->
        {:error,
         Error.new(
           :pool,
           "node #{node} answered the call to pool #{inspect(pool)} with #{inspect(other)}",
           details: %{pool: pool, node: node, command: command}
         )}
    end
  end

  defp transport_error(:error, {:erpc, :noconnection}, node, pool, command, _wait) do
    Error.new(
      :pool,
      "node #{node} is unreachable: the connection could not be made or was lost during the " <>
        "call to pool #{inspect(pool)} (the call may or may not have run there)",
      details: %{pool: pool, node: node, command: command, reason: :noconnection}
    )
  end

  defp transport_error(:error, {:erpc, :timeout}, node, pool, command, wait) do
    Error.new(
      :timeout,
      "node #{node} did not answer the call to pool #{inspect(pool)} within #{wait} ms",
      details: %{pool: pool, node: node, command: command, timeout: wait}
    )
  end

  defp transport_error(kind, reason, node, pool, command, _wait) do
    Error.new(
      :pool,
      "the call to pool #{inspect(pool)} on node #{node} failed: #{describe(kind, reason)}",
      details: %{pool: pool, node: node, command: command, reason: {kind, reason}}
    )
  end

  # :erpc wraps what the remote call raised, threw or exited with.
  defp describe(:error, {:exception, reason, stack}),
    do: Exception.format_banner(:error, reason, stack)

  defp describe(:exit, {:exception, reason}), do: "exited: " <> inspect(reason)
  defp describe(:throw, value), do: "threw: " <> inspect(value)
  defp describe(kind, reason), do: Exception.format_banner(kind, reason)
end
