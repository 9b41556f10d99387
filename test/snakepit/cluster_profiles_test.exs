defmodule Snakepit.ClusterProfilesTest do
  # Every worker profile is reachable from other nodes: a pool of each profile on a peer node,
  # called from this node, which has none. (cluster_test.exs covers routing and failures.)
  use ExUnit.Case, async: false

  import Snakepit.ClusterCase
  import Snakepit.PoolCase, only: [wait_until: 2]

  alias Snakepit.{Cluster, Error}

  @adapter "snakepit_test_adapters.TestAdapter"
  @env "SNAKEPIT_CLUSTER_PROFILE_NODE"
  @profiles [thread: [threads_per_worker: 2], process: [pool_size: 2]]

  setup_all do
    distribution = ensure_distributed()
    {peer, node} = start_snakepit_peer!([{@env, "peer"}])

    for {profile, opts} <- @profiles do
      config = [name: pool(profile), adapter: @adapter, worker_profile: profile] ++ opts
      {:ok, _} = :erpc.call(node, Snakepit, :start_pool, [config])
    end

    on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end

      stop_distribution(distribution)
    end)

    %{node: node}
  end

  defp pool(profile), do: :"cluster_#{profile}_pool"

  for {profile, _} <- @profiles do
    @profile profile
    test "#{profile}: a pool on another node is found and called from here", %{node: node} do
      pool = pool(@profile)
      assert Snakepit.whereis(pool) == nil
      wait_until(fn -> Cluster.members(pool) == [node] end, 30_000)

      assert {:ok, "peer"} = Snakepit.execute(pool, "getenv", %{name: @env}, timeout: 30_000)

      assert {:error, %Error{category: :python_error, details: %{node: ^node}}} =
               Snakepit.execute(pool, "fail", %{message: "remote"}, timeout: 30_000)

      # 50 concurrent remote calls, each answered with its own value.
      results =
        1..50
        |> Task.async_stream(&Snakepit.execute(pool, "echo", %{value: &1}, timeout: 30_000),
          max_concurrency: 50,
          timeout: 60_000
        )
        |> Enum.map(fn {:ok, r} -> r end)

      assert results == Enum.map(1..50, &{:ok, &1})
    end

    # Large binaries (the :process profile's shared-memory files, Snakepit.Pool.Process.Shm,
    # are local to the pool's machine): they cross both ways with their bytes.
    test "#{profile}: large binaries to and from a pool on another node", %{node: node} do
      pool = pool(@profile)
      wait_until(fn -> Cluster.members(pool) == [node] end, 30_000)
      big = :binary.copy(<<1, 2, 3, 255>>, 600_000)

      assert {:ok, ^big} =
               Snakepit.execute(pool, "echo", %{value: {:buffer, big}}, timeout: 30_000)

      assert {:ok, [^big, 1]} =
               Snakepit.execute(pool, "echo", %{value: [big, 1]}, timeout: 30_000)
    end
  end
end
