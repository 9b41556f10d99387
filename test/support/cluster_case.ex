defmodule Snakepit.ClusterCase do
  @moduledoc false
  # Distributed-node helpers for the cluster tests: this node on loopback, and `:peer` nodes
  # that run this build's Snakepit (each with its own CPython, a separate OS process).

  @doc """
  Makes this node distributed on 127.0.0.1 if it is not, starting epmd when none runs.
  Returns `:started` (stop it with `stop_distribution/1`) or `:already`.
  """
  def ensure_distributed do
    if Node.alive?() do
      :already
    else
      ensure_epmd()
      name = :"snakepit_test_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = :net_kernel.start([name, :longnames])
      :started
    end
  end

  def stop_distribution(:started), do: :net_kernel.stop()
  def stop_distribution(:already), do: :ok

  # `net_kernel:start/1` registers with epmd but, unlike `erl -name`, does not start it.
  defp ensure_epmd do
    epmd =
      System.find_executable("epmd") ||
        Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "bin", "epmd"])

    {_, 0} = System.cmd(epmd, ["-daemon"])
    :ok
  end

  @doc """
  Starts a peer node running Snakepit with no configured pools and this node's `python_path`.
  `env` is extra OS environment for the peer. Returns `{peer_pid, node}`; the peer is linked to
  the caller.
  """
  def start_snakepit_peer!(env \\ []) do
    {pid, node} = start_peer!(env)
    :ok = :erpc.call(node, Application, :load, [:snakepit])
    :ok = :erpc.call(node, Application, :put_env, [:snakepit, :pools, []])

    :ok =
      :erpc.call(node, Application, :put_env, [
        :snakepit,
        :python_path,
        Application.get_env(:snakepit, :python_path, [])
      ])

    :ok = :erpc.call(node, Application, :load, [:logger])
    :ok = :erpc.call(node, Application, :put_env, [:logger, :level, Logger.level()])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit])
    {pid, node}
  end

  @doc "Starts a bare peer node with this build's code paths. Returns `{peer_pid, node}`."
  def start_peer!(env \\ []) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, pid, node} =
      :peer.start_link(%{
        name: :"snakepit_peer_#{System.pid()}_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: paths,
        env: Enum.map(env, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
      })

    {pid, node}
  end
end
