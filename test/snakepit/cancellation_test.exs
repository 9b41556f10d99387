defmodule Snakepit.CancellationTest do
  # Cancelling running calls (thread profile): what the interrupted code runs, and whom the
  # interrupt reaches.
  use ExUnit.Case, async: false
  import Snakepit.PoolCase

  alias Snakepit.Error

  describe "a dying caller's cancellation" do
    setup do
      # The interrupter waits before each delivery: a stale cancellation then has time to meet
      # the next call on its thread (the window the bug needs, made wide).
      System.put_env("SNAKEPIT_TEST_INTERRUPT_DELAY_US", "1000")
      on_exit(fn -> System.delete_env("SNAKEPIT_TEST_INTERRUPT_DELAY_US") end)
    end

    # About 5 s: thousands of callers killed while live callers call.
    @tag timeout: 120_000
    test "never reaches another caller's call" do
      pool = start_test_pool!(pool_size: 1, threads_per_worker: 4, max_queue: 100_000)
      parent = self()

      live =
        for _ <- 1..3 do
          spawn_link(fn -> live_caller(pool, parent, []) end)
        end

      for i <- 1..3_000 do
        {pid, mon} =
          spawn_monitor(fn ->
            Snakepit.execute(pool, "notify_busy", %{pid: parent, seconds: 0.0003})
          end)

        if rem(i, 2) == 0 do
          # While its call runs (the cancellation then interrupts it)...
          receive do
            "running" -> :ok
            {:DOWN, ^mon, _, _, _} -> :ok
          end
        else
          # ...or at a random point: before, while queued, while running, or after its call.
          spin(:rand.uniform(20_000))
        end

        Process.exit(pid, :kill)
        Process.demonitor(mon, [:flush])
      end

      for pid <- live, do: send(pid, :stop)

      results =
        for pid <- live do
          receive do
            {:live_results, ^pid, results} -> results
          end
        end
        |> List.flatten()

      assert length(results) > 100
      assert Enum.reject(results, &match?({:ok, _}, &1)) == []
    end
  end

  defp live_caller(pool, parent, acc) do
    receive do
      :stop -> send(parent, {:live_results, self(), acc})
    after
      0 ->
        live_caller(pool, parent, [Snakepit.execute(pool, "busy", %{seconds: 0.001}) | acc])
    end
  end

  defp spin(0), do: :ok
  defp spin(n), do: spin(n - 1)
end
