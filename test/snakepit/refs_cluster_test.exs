defmodule Snakepit.RefsClusterTest do
  # A ref is only usable on the node whose interpreter (or worker) holds its object.
  use ExUnit.Case, async: false

  import Snakepit.ClusterCase

  alias Snakepit.{Error, Ref}

  setup_all do
    distribution = ensure_distributed()
    {peer, node} = start_snakepit_peer!()

    for {name, profile} <- [remote_refs_thread: :thread, remote_refs_process: :process] do
      {:ok, _} =
        :erpc.call(node, Snakepit, :start_pool, [
          [
            name: name,
            worker_profile: profile,
            adapter: Snakepit.ConformanceRefsCase.adapter(),
            pool_size: 1,
            threads_per_worker: 1
          ]
        ])
    end

    on_exit(fn ->
      stop_peer(peer)
      stop_distribution(distribution)
    end)

    %{node: node}
  end

  defp stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  test "a ref made on another node is a clear error here", %{node: node} do
    for pool <- [:remote_refs_thread, :remote_refs_process] do
      assert {:ok, %Ref{} = ref} =
               :erpc.call(node, Snakepit, :execute, [pool, "make_ref", %{value: 1}])

      # (Sent back to its node it would not work either: a NIF resource that went through
      # another node is a plain reference when it comes back.)
      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.call_method(ref, "get")

      assert msg =~ "was made on node #{inspect(node)}"
      assert {:error, %Error{category: :validation}} = Snakepit.release(ref)
    end
  end
end
