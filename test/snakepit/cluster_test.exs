defmodule Snakepit.ClusterTest do
  # Peer nodes on loopback, each running Snakepit with its own CPython (a separate OS process).
  use ExUnit.Case, async: false

  import Snakepit.ClusterCase
  import Snakepit.PoolCase, only: [start_test_pool!: 1, wait_until: 1]

  alias Snakepit.{Cluster, Error}

  @adapter "snakepit_test_adapters.TestAdapter"
  @env "SNAKEPIT_CLUSTER_NODE"

  setup_all do
    distribution = ensure_distributed()

    # Two nodes with :remote_only_pool, told apart by an environment variable only they have.
    {peer_a, a} = start_snakepit_peer!([{@env, "a"}])
    {peer_b, b} = start_snakepit_peer!([{@env, "b"}])

    for node <- [a, b] do
      {:ok, _} = :erpc.call(node, Snakepit, :start_pool, [pool_config(:remote_only_pool)])
    end

    {:ok, _} = :erpc.call(a, Snakepit, :start_pool, [pool_config(:shared_pool)])

    # A node that answers for :ghost_pool with a fake Snakepit, for the transport failures.
    {peer_ghost, ghost} = start_ghost_peer!()

    on_exit(fn ->
      for peer <- [peer_a, peer_b, peer_ghost], do: stop_peer(peer)
      stop_distribution(distribution)
    end)

    wait_until(fn -> Cluster.members(:remote_only_pool) == Enum.sort([a, b]) end)
    wait_until(fn -> Cluster.members(:shared_pool) == [a] end)
    wait_until(fn -> Cluster.members(:ghost_pool) == [ghost] end)

    %{a: a, b: b, ghost: ghost}
  end

  defp pool_config(name), do: [name: name, adapter: @adapter, threads_per_worker: 2]

  defp stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  # A bare peer whose `Snakepit.execute/4` raises, or hangs for command "hang", and whose
  # `:pg` scope holds one member of {:snakepit_pool, :ghost_pool}.
  defp start_ghost_peer! do
    {peer, node} = start_peer!()

    source = """
    -module('Elixir.Snakepit').
    -export([execute/4]).
    execute(_Pool, <<"hang">>, _Args, _Opts) -> timer:sleep(infinity);
    execute(_Pool, _Command, _Args, _Opts) -> erlang:error(fake_failure).
    """

    {:ok, tokens, _} = :erl_scan.string(String.to_charlist(source))

    forms =
      tokens
      |> Enum.chunk_while(
        [],
        fn
          {:dot, _} = dot, acc -> {:cont, Enum.reverse([dot | acc]), []}
          token, acc -> {:cont, [token | acc]}
        end,
        fn acc -> {:cont, acc} end
      )
      |> Enum.map(fn form_tokens ->
        {:ok, form} = :erl_parse.parse_form(form_tokens)
        form
      end)

    {:ok, Snakepit, beam} = :compile.forms(forms)
    {:module, Snakepit} = :erpc.call(node, :code, :load_binary, [Snakepit, ~c"ghost", beam])
    {:ok, _} = :erpc.call(node, :pg, :start, [Cluster])
    member = :erlang.spawn(node, :timer, :sleep, [:infinity])
    :ok = :erpc.call(node, :pg, :join, [Cluster, {:snakepit_pool, :ghost_pool}, member])
    {peer, node}
  end

  defp remote_stats(node) do
    {:ok, stats} = :erpc.call(node, Snakepit, :stats, [:remote_only_pool])
    stats
  end

  # Times out `tracked_busy` calls on :remote_only_pool, one timeout after the other, until one
  # interrupts a loop that had started; returns {node, how the loop ended}. A timer cannot wait
  # for the loop to start: on a loaded machine the remote timeout may drop the job before its
  # loop runs, and tracked_outcome says so (nil). Each attempt waits until its job is over on
  # the node (dropped, or interrupted: the loop would run an hour) before it asks.
  defp cancel_running_remote_loop([]),
    do: flunk("no tracked_busy loop started before its call timed out")

  defp cancel_running_remote_loop([timeout | longer]) do
    before = Map.new(Cluster.members(:remote_only_pool), &{&1, remote_stats(&1).cancelled})
    tag = "cluster-busy-#{System.unique_integer([:positive])}"

    assert {:error, %Error{category: :timeout, details: %{node: node} = details}} =
             Snakepit.execute(:remote_only_pool, "tracked_busy", %{tag: tag, seconds: 3_600},
               timeout: timeout
             )

    # The remote pool's own timeout answered, not the transport's (timeout plus a margin).
    assert details.timeout == timeout

    wait_until(fn ->
      stats = remote_stats(node)
      stats.cancelled == before[node] + 1 and stats.active_requests == 0
    end)

    case :erpc.call(node, Snakepit, :execute, [:remote_only_pool, "tracked_outcome", %{tag: tag}]) do
      {:ok, nil} -> cancel_running_remote_loop(longer)
      {:ok, outcome} -> {node, outcome}
    end
  end

  test "a pool on other nodes only: the call runs there and the value comes back", ctx do
    assert {:error, %Error{category: :pool}} = Snakepit.Pool.lookup(:remote_only_pool)
    refute node() in Cluster.members(:remote_only_pool)

    value = [1, "a", %{b: 2}, {:tuple, 3.5}, 12_345_678_901_234_567_890]

    assert Snakepit.execute(:remote_only_pool, "echo", %{value: value}) ==
             {:ok, [1, "a", %{"b" => 2}, {"tuple", 3.5}, 12_345_678_901_234_567_890]}

    # Only the peers have the variable; the pool threads are the peer's.
    assert {:ok, where} = Snakepit.execute(:remote_only_pool, "getenv", %{name: @env})
    assert where in ["a", "b"]
    assert System.get_env(@env) == nil

    assert {:ok, "snakepit-remote_only_pool-w0-t" <> _} =
             Snakepit.execute(:remote_only_pool, "thread_name", %{})

    assert Snakepit.execute!(:remote_only_pool, "echo", value: "kw") == "kw"

    assert {:ok, "ok"} = Snakepit.execute("echo", %{value: "ok"}, pool_name: :remote_only_pool)

    assert ctx.a in Cluster.members(:remote_only_pool)
  end

  test "calls go round robin over the nodes that have the pool" do
    results =
      for _ <- 1..6 do
        {:ok, where} = Snakepit.execute(:remote_only_pool, "getenv", %{name: @env})
        where
      end

    assert Enum.frequencies(results) == %{"a" => 3, "b" => 3}
  end

  test "errors come back as Snakepit.Error, with the node that ran the call", ctx do
    assert {:error, %Error{category: :validation} = e} =
             Snakepit.execute(:remote_only_pool, "no_such_command", %{})

    assert e.message =~ "no_such_command"
    assert "echo" in e.details.available
    assert e.details.node in [ctx.a, ctx.b]

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute(:remote_only_pool, "fail", %{message: "remote boom"})

    assert e.python_type =~ "ValueError"
    assert e.message =~ "remote boom"
    assert e.python_traceback =~ "inner"

    assert_raise Error, ~r/ValueError/, fn ->
      Snakepit.execute!(:remote_only_pool, "fail", %{message: "raised here"})
    end

    assert {:error, %Error{category: :validation, details: %{key: :timeout}}} =
             Snakepit.execute(:remote_only_pool, "echo", %{}, timeout: :soon)
  end

  test "a timeout is honoured and the remote job cancelled" do
    {_node, outcome} = cancel_running_remote_loop([200, 1_000, 5_000, 20_000])

    # The busy loop on that node was interrupted, not left running.
    assert outcome == "Cancelled"
  end

  test "a local pool of the same name takes precedence", ctx do
    start_test_pool!(name: :shared_pool, threads_per_worker: 1)
    wait_until(fn -> Cluster.members(:shared_pool) == Enum.sort([node(), ctx.a]) end)

    assert Snakepit.execute(:shared_pool, "getenv", %{name: @env}) == {:ok, nil}

    :ok = Snakepit.stop_pool(:shared_pool)
    # The pool is gone from this node at once; :pg forgets it when it sees the process exit.
    assert Snakepit.execute(:shared_pool, "getenv", %{name: @env}) == {:ok, "a"}
    wait_until(fn -> Cluster.members(:shared_pool) == [ctx.a] end)
    assert Snakepit.execute(:shared_pool, "getenv", %{name: @env}) == {:ok, "a"}
  end

  test "a pool nobody has is a :pool error" do
    assert Cluster.members(:nobody_has_this_pool) == []
    assert Cluster.execute_remote(:nobody_has_this_pool, "echo", %{}, []) == :no_remote

    assert {:error, %Error{category: :pool, message: message}} =
             Snakepit.execute(:nobody_has_this_pool, "echo", %{value: 1})

    assert message =~ "no pool named :nobody_has_this_pool"
  end

  test "any node can call a pool on another: the peer calls this node's pool", ctx do
    name = start_test_pool!(threads_per_worker: 1)
    wait_until(fn -> :erpc.call(ctx.a, Cluster, :members, [name]) == [node()] end)

    assert {:ok, thread} = :erpc.call(ctx.a, Snakepit, :execute, [name, "thread_name", %{}])
    assert thread =~ "snakepit-#{name}-w0-t"
    assert :erpc.call(ctx.a, Snakepit, :execute, [name, "getenv", %{name: @env}]) == {:ok, nil}
  end

  test "a call that came from another node is not forwarded again", ctx do
    assert Cluster.execute_remote(:remote_only_pool, "echo", %{}, snakepit_remote: true) ==
             :no_remote

    assert {:error, %Error{category: :pool}} =
             Snakepit.execute(:remote_only_pool, "echo", %{value: 1}, snakepit_remote: true)

    # The peer has no :ghost_pool and gets the call as if from another node: it answers for
    # itself instead of passing it on to the ghost node.
    assert {:error, %Error{category: :pool, message: message}} =
             :erpc.call(ctx.a, Snakepit, :execute, [
               :ghost_pool,
               "echo",
               %{},
               [snakepit_remote: true]
             ])

    assert message =~ "no pool named :ghost_pool"
  end

  test "an exception on the remote node is a :pool error naming it, not a raise", ctx do
    assert {:error, %Error{category: :pool} = e} =
             Snakepit.execute(:ghost_pool, "echo", %{value: 1})

    assert e.message =~ Atom.to_string(ctx.ghost)
    assert e.message =~ "fake_failure"
    assert e.details.node == ctx.ghost
  end

  test "a remote node that never answers is a :timeout error naming it", ctx do
    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute(:ghost_pool, "hang", %{}, timeout: 100)

    assert e.message =~ Atom.to_string(ctx.ghost)
    assert e.details.node == ctx.ghost
    # The caller waited the call's own timeout plus the transport margin, no more.
    assert e.details.timeout > 100 and e.details.timeout < 10_000
    assert e.message =~ "within #{e.details.timeout} ms"
  end

  test "when the node stops, calls fail cleanly with a :pool error" do
    {peer, node} = start_snakepit_peer!()
    {:ok, _} = :erpc.call(node, Snakepit, :start_pool, [pool_config(:doomed_pool)])
    wait_until(fn -> Cluster.members(:doomed_pool) == [node] end)

    # The sleep outlasts the call's timeout: a :noconnection answer came from the node's end.
    in_flight =
      Task.async(fn ->
        Snakepit.execute(:doomed_pool, "sleep", %{seconds: 3_600}, timeout: 30_000)
      end)

    wait_until(fn ->
      match?({:ok, %{active_requests: 1}}, :erpc.call(node, Snakepit, :stats, [:doomed_pool]))
    end)

    :ok = :peer.stop(peer)

    assert {:error, %Error{category: :pool} = e} = Task.await(in_flight, 45_000)
    assert e.message =~ Atom.to_string(node)
    assert e.details.reason == :noconnection

    # Later calls: a :pool error whether or not :pg has forgotten the node yet.
    assert {:error, %Error{category: :pool}} = Snakepit.execute(:doomed_pool, "echo", %{})
    wait_until(fn -> Cluster.members(:doomed_pool) == [] end)

    assert {:error, %Error{category: :pool, message: message}} =
             Snakepit.execute(:doomed_pool, "echo", %{})

    assert message =~ "no pool named :doomed_pool"
  end
end
