defmodule Snakepit.SpikeTest do
  # The measurement-only calls of bench section 9 (native/snakepit/src/spike.rs): a call run
  # inside the NIF, on the calling scheduler or a dirty one, with no pool thread.
  use ExUnit.Case, async: true

  alias Snakepit.Native

  defp handle(opts) do
    name = :"spike_#{System.unique_integer([:positive])}"

    {:ok, _} =
      Snakepit.start_pool(
        Keyword.merge(
          [name: name, adapter: "snakepit_test_adapters.TestAdapter", pool_size: 1],
          opts
        )
      )

    on_exit(fn -> Snakepit.stop_pool(name) end)
    {_pid, {_mod, handle}, _info} = Snakepit.Registry.entry(name)
    handle
  end

  test "they answer as the pool does, from many callers at once" do
    pool = handle(threads_per_worker: 2)

    results =
      1..200
      |> Task.async_stream(
        fn i ->
          {Native.spike_inline_call(pool, "echo", %{value: i}),
           Native.spike_dirty_call(pool, "echo", %{value: -i})}
        end,
        max_concurrency: 50
      )
      |> Enum.map(fn {:ok, r} -> r end)

    assert results == for(i <- 1..200, do: {{:ok, i}, {:ok, -i}})

    assert {:error, %{category: :validation, message: message}} =
             Native.spike_inline_call(pool, "nope", %{})

    assert message =~ "echo"
  end

  @tag :subinterpreter
  test "they refuse a :subinterpreter pool, whose objects the main interpreter must not touch" do
    pool =
      handle(worker_profile: :subinterpreter, adapter: "snakepit_subinterp_adapters.ProbeAdapter")

    assert {:error, %{message: message}} = Native.spike_inline_call(pool, "echo", %{value: 1})
    assert message =~ ":thread"
  end
end
