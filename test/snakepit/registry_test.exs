defmodule Snakepit.RegistryTest do
  # Registration and supervision of pools, under faults: killed pools (no terminate/2),
  # concurrent starts of one name, names that are not atoms. Kills the configured :hpc_pool,
  # so it runs alone.
  use ExUnit.Case, async: false

  import Snakepit.PoolCase

  alias Snakepit.Error

  @profiles [:thread, :process]

  defp start_named!(profile) do
    start_test_pool!(worker_profile: profile, pool_size: 1, threads_per_worker: threads(profile))
  end

  # The process profile runs one thread per worker (for now).
  defp threads(:thread), do: 2
  defp threads(:process), do: 1

  # Kills `pid` and waits until it is gone.
  defp kill!(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 30_000
  end

  defp await_new_pid(name, old) do
    wait_until(fn -> Snakepit.whereis(name) not in [nil, old] end, 60_000)
    Snakepit.whereis(name)
  end

  defp threads_named(prefix),
    do: Enum.count(pool_thread_names(), &String.starts_with?(&1, prefix))

  test "a killed configured pool is restarted with its config and the others are untouched" do
    other = start_named!(:thread)
    other_pid = Snakepit.whereis(other)
    old = Snakepit.whereis(:hpc_pool)
    assert is_pid(old)

    kill!(old)
    new = await_new_pid(:hpc_pool, old)

    assert {:ok, "pong"} = Snakepit.execute(:hpc_pool, "ping", %{}, timeout: 30_000)
    {:ok, stats} = Snakepit.stats(:hpc_pool)
    assert stats.max_workers == 4 * 16
    assert Snakepit.whereis(other) == other_pid
    assert {:ok, _} = Snakepit.execute(other, "echo", %{value: 1})

    # The killed pool's native threads were stopped when its owner died: one pool's worth of
    # threads of that name remains (thread names are cut to 15 characters by Linux).
    wait_until(fn -> threads_named("snakepit-hpc_po") == 64 end, 60_000)

    # It is a supervised child like before: killing it again restarts it again.
    kill!(new)
    await_new_pid(:hpc_pool, new)
    assert {:ok, _} = Snakepit.execute(:hpc_pool, "ping", %{}, timeout: 30_000)
  end

  for profile <- @profiles do
    @tag profile: profile
    test "#{profile}: a killed pool started at run time is restarted, and stop_pool stops it",
         %{profile: profile} do
      name = start_named!(profile)
      old = Snakepit.whereis(name)
      kill!(old)
      new = await_new_pid(name, old)
      assert {:ok, 1} = Snakepit.execute(name, "echo", %{value: 1}, timeout: 30_000)
      assert :ok = Snakepit.stop_pool(name)
      refute Process.alive?(new)
      assert Snakepit.whereis(name) == nil
      assert {:error, %Error{category: :pool}} = Snakepit.execute(name, "echo", %{value: 1})
    end

    @tag profile: profile
    test "#{profile}: a pool in the user's own supervision tree is restarted by it",
         %{profile: profile} do
      name = :"own_tree_#{profile}_#{System.unique_integer([:positive])}"

      config = [
        name: name,
        worker_profile: profile,
        adapter: adapter(),
        pool_size: 1,
        threads_per_worker: threads(profile)
      ]

      sup =
        start_supervised!(%{
          id: :own_tree,
          type: :supervisor,
          start: {Supervisor, :start_link, [[{Snakepit.Pool, config}], [strategy: :one_for_one]]}
        })

      old = Snakepit.whereis(name)
      assert [{_, ^old, _, _}] = Supervisor.which_children(sup)

      kill!(old)
      new = await_new_pid(name, old)
      assert [{_, ^new, _, _}] = Supervisor.which_children(sup)
      assert {:ok, 2} = Snakepit.execute(name, "echo", %{value: 2}, timeout: 30_000)
    end

    @tag profile: profile
    test "#{profile}: a registration never outlives its process", %{profile: profile} do
      name = :"unsupervised_#{profile}_#{System.unique_integer([:positive])}"
      config = [name: name, worker_profile: profile, adapter: adapter(), pool_size: 1]
      Process.flag(:trap_exit, true)
      {:ok, pid} = Snakepit.Pool.start_link(config)
      kill!(pid)
      assert_receive {:EXIT, ^pid, :killed}, 30_000

      # At once, before the registry has necessarily seen the exit: no pid for the name, and
      # the name can be taken again.
      assert Snakepit.whereis(name) == nil
      assert {:ok, _} = Snakepit.start_pool(config)
      assert {:ok, 3} = Snakepit.execute(name, "echo", %{value: 3}, timeout: 30_000)
      assert :ok = Snakepit.stop_pool(name)
      wait_until(fn -> name not in Snakepit.Pool.running() end)
    end

    @tag profile: profile
    test "#{profile}: of concurrent starts of one name exactly one wins; the rest get :pool",
         %{profile: profile} do
      name = :"race_#{profile}_#{System.unique_integer([:positive])}"
      config = [name: name, worker_profile: profile, adapter: adapter(), pool_size: 1]
      parent = self()

      # Half through Snakepit.Pool.start_link (the caller traps the loser's exit and stays
      # alive, since a start_link pool ends with its parent), half through start_pool, all
      # released at once.
      callers =
        for i <- 1..8 do
          spawn_link(fn ->
            Process.flag(:trap_exit, true)
            send(parent, {:ready, self()})

            receive do
              :go -> :ok
            end

            result =
              if rem(i, 2) == 0,
                do: Snakepit.Pool.start_link(config),
                else: Snakepit.start_pool(config)

            send(parent, {:started, self(), result})

            receive do
              :done -> :ok
            end
          end)
        end

      for c <- callers, do: assert_receive({:ready, ^c}, 30_000)
      for c <- callers, do: send(c, :go)
      results = for c <- callers, do: assert_receive({:started, ^c, result}, 60_000) && result

      assert [{:ok, winner}] = Enum.filter(results, &match?({:ok, _}, &1))
      losers = Enum.reject(results, &match?({:ok, _}, &1))
      assert length(losers) == 7

      for loser <- losers do
        assert {:error, %Error{category: :pool, message: message}} = loser
        assert message =~ "already running"
      end

      assert Snakepit.whereis(name) == winner
      assert {:ok, 4} = Snakepit.execute(name, "echo", %{value: 4}, timeout: 30_000)

      # The winner is supervised (start_pool) or ends with its caller (start_link).
      if Snakepit.stop_pool(name) != :ok, do: GenServer.stop(winner)
      for c <- callers, do: send(c, :done)
    end

    @tag profile: profile
    test "#{profile}: a pool joins its :pg group and leaves it when stopped",
         %{profile: profile} do
      name = start_named!(profile)
      assert node() in Snakepit.Cluster.members(name)
      :ok = Snakepit.stop_pool(name)
      assert Snakepit.Cluster.members(name) == []
    end
  end

  describe "pool names that are not atoms" do
    test "execute, execute!, execute_stream, stats, tools and stop_pool answer :pool" do
      for bad <- ["no_such_pool", 123, {:a, :b}] do
        assert {:error, %Error{category: :pool, message: msg}} =
                 Snakepit.execute(bad, "ping", %{})

        assert msg =~ "pool names are atoms"
        assert {:error, %Error{category: :pool}} = Snakepit.execute(bad, "ping", %{}, [])
        assert {:error, %Error{category: :pool}} = Snakepit.execute(bad, "ping", [1, 2])

        assert_raise Error, ~r/pool names are atoms/, fn ->
          Snakepit.execute!(bad, "ping", %{})
        end

        assert_raise Error, ~r/pool names are atoms/, fn ->
          Snakepit.execute_stream(bad, "count", %{}) |> Enum.to_list()
        end

        assert {:error, %Error{category: :pool}} = Snakepit.stats(bad)
        assert {:error, %Error{category: :pool}} = Snakepit.tools(bad)
        assert {:error, %Error{category: :pool}} = Snakepit.stop_pool(bad)
        assert Snakepit.whereis(bad) == nil
      end
    end

    test "a string that names a running pool gets a did-you-mean" do
      assert {:error, %Error{category: :pool, message: msg}} =
               Snakepit.execute("hpc_pool", "ping", %{})

      assert msg =~ "did you mean :hpc_pool?"
    end
  end
end
