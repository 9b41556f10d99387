defmodule Snakepit.StreamTest do
  use Snakepit.PoolCase, async: true

  alias Snakepit.Error

  setup do
    %{pool: start_test_pool!(threads_per_worker: 2)}
  end

  test "chunks arrive in order", %{pool: pool} do
    items = Snakepit.execute_stream(pool, "count_up", %{limit: 100}) |> Enum.to_list()
    assert items == Enum.map(0..99, &%{"i" => &1})
    assert %{"produced" => 100, "closed" => true} = Snakepit.execute!(pool, "stream_state", %{})
  end

  test "taking 5 of a million stops the generator", %{pool: pool} do
    items = Snakepit.execute_stream(pool, "count_up", %{limit: 1_000_000}) |> Enum.take(5)
    assert items == Enum.map(0..4, &%{"i" => &1})
    # The generator ran its finally block and produced no more than 5 + the window (4).
    state = Snakepit.execute!(pool, "stream_state", %{})
    assert state["closed"] == true
    assert state["produced"] <= 5 + 4
    {:messages, messages} = Process.info(self(), :messages)
    assert messages == []
  end

  test "a slow consumer's mailbox stays bounded", %{pool: pool} do
    parent = self()

    consumer =
      spawn_link(fn ->
        Snakepit.execute_stream(pool, "count_up", %{limit: 200}, window: 4)
        |> Stream.each(fn %{"i" => i} ->
          if rem(i, 20) == 0 do
            {:message_queue_len, len} = Process.info(self(), :message_queue_len)
            send(parent, {:queue_len, len})
          end

          Process.sleep(2)
        end)
        |> Stream.run()

        send(parent, :finished)
      end)

    assert_receive :finished, 30_000
    lens = for _ <- 1..10, do: assert_received({:queue_len, len}) && len
    assert Enum.max(lens) <= 4
    refute Process.alive?(consumer)
  end

  test "an error mid-stream raises in the consumer after the items before it", %{pool: pool} do
    stream = Snakepit.execute_stream(pool, "count_up", %{limit: 10, fail_at: 3})
    parent = self()

    assert_raise Error, ~r/ValueError: failed at 3/, fn ->
      Enum.each(stream, fn item -> send(parent, {:item, item}) end)
    end

    for i <- 0..2, do: assert_received({:item, %{"i" => ^i}})
    refute_received {:item, _}
  end

  test "Stream.take with early halt cleans up, and the pool keeps serving", %{pool: pool} do
    for _ <- 1..5 do
      assert [%{"i" => 0}, %{"i" => 1}] =
               Snakepit.execute_stream(pool, "count_up", %{limit: 50})
               |> Stream.take(2)
               |> Enum.to_list()
    end

    assert {:ok, 1} = Snakepit.execute(pool, "echo", %{value: 1})
    {:ok, stats} = Snakepit.stats(pool)
    assert stats.active_requests == 0
  end

  test "a consumer that dies stops the generator", %{pool: pool} do
    test = self()

    consumer =
      spawn(fn ->
        Snakepit.execute_stream(pool, "count_up", %{limit: 1_000_000, delay: 0.001})
        |> Stream.each(fn %{"i" => i} -> if i == 0, do: send(test, :streaming) end)
        |> Stream.run()
      end)

    # Killed once the stream runs.
    assert_receive :streaming, 30_000
    Process.exit(consumer, :kill)
    wait_until(fn -> Snakepit.execute!(pool, "stream_state", %{})["closed"] == true end)
  end

  test "a command that does not return an iterator is a conversion error", %{pool: pool} do
    assert_raise Error, ~r/iterator/, fn ->
      Snakepit.execute_stream(pool, "echo", %{value: 5}) |> Enum.to_list()
    end
  end

  test "unknown pools and commands raise", %{pool: pool} do
    assert_raise Error, ~r/no pool/, fn ->
      Snakepit.execute_stream(:nope, "x", %{}) |> Enum.to_list()
    end

    assert_raise Error, ~r/unknown command/, fn ->
      Snakepit.execute_stream(pool, "nope", %{}) |> Enum.to_list()
    end
  end
end
