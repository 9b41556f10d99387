defmodule :telemetry do
  @moduledoc false
  # A stand-in for the :telemetry library in tests (the real one is a hex package, which this
  # project cannot fetch). Snakepit detects :telemetry at run time, so this exercises the same
  # code path: events go to the processes in the :telemetry_stub_listeners persistent term.

  def execute(event, measurements, metadata) do
    for pid <- :persistent_term.get(:telemetry_stub_listeners, []) do
      send(pid, {:telemetry, event, measurements, metadata})
    end

    :ok
  end
end
