defmodule Snakepit.PythonLoggerTest do
  # Python logging reaches Elixir's Logger with the thread name and the pool in metadata.
  use Snakepit.PoolCase, async: false

  defmodule Collector do
    @moduledoc false
    # An Erlang :logger handler that sends each event to a test process.
    def log(event, %{config: %{to: pid}}), do: send(pid, {:log_event, event})
  end

  setup do
    :ok = :logger.add_handler(:snakepit_test_collector, Collector, %{config: %{to: self()}})
    on_exit(fn -> :logger.remove_handler(:snakepit_test_collector) end)
    :ok
  end

  test "a record from an adapter arrives with the thread name, logger and pool" do
    pool = start_test_pool!(threads_per_worker: 2)

    {:ok, thread} =
      Snakepit.execute(pool, "log", %{message: "hello from python", level: "warning"})

    assert thread =~ "snakepit-#{pool}-w0-t"

    assert_receive {:log_event, %{level: :warning, msg: msg, meta: %{python_thread: _} = meta}},
                   30_000

    assert message_text(msg) == "[#{thread}] hello from python"
    assert meta.pool == pool
    assert meta.python_thread == thread
    assert meta.python_logger == "snakepit_test_adapters"
  end

  test "levels map both ways" do
    assert Snakepit.PythonLogger.elixir_level(10) == :debug
    assert Snakepit.PythonLogger.elixir_level(20) == :info
    assert Snakepit.PythonLogger.elixir_level(30) == :warning
    assert Snakepit.PythonLogger.elixir_level(40) == :error
    assert Snakepit.PythonLogger.elixir_level(50) == :critical
    assert Snakepit.PythonLogger.python_level() in [10, 20, 30, 40, 50]
  end

  test "an undeclared adapter in a threaded pool logs the guide's warning" do
    start_test_pool!(adapter: "snakepit_test_adapters.Undeclared", threads_per_worker: 2)

    assert_receive {:log_event, %{msg: msg, meta: %{python_logger: "snakepit_bridge"}}}, 30_000
    assert message_text(msg) =~ "Adapter Undeclared does not declare thread safety."
  end

  defp message_text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp message_text({:report, report}), do: inspect(report)
  defp message_text({format, args}), do: :io_lib.format(format, args) |> IO.chardata_to_string()
end
