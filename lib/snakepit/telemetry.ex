defmodule Snakepit.Telemetry do
  @moduledoc """
  `:telemetry` events, when the `:telemetry` library is present at run time.

  Snakepit has no compile-time dependency on `:telemetry`: if your application has it, these
  events are emitted; if not, nothing is, and the check costs one `:persistent_term` read per
  call.

  | event | measurements | metadata |
  | --- | --- | --- |
  | `[:snakepit, :execute, :start]` | `system_time` | `pool`, `command` |
  | `[:snakepit, :execute, :stop]` | `duration` (native units) | `pool`, `command`, `result` (`:ok` or `:error`) |
  | `[:snakepit, :execute, :exception]` | `duration` | `pool`, `command`, `kind`, `reason` |
  | `[:snakepit, :worker, :recycled]` | `requests` (calls the old instance served) | `pool`, `worker`, `reason` (`:max_requests` or `:ttl`) |
  | `[:snakepit, :pool, :saturated]` | `max_queue` | `pool` |

  Without `:telemetry`, recycling and saturation are still logged through `Logger`.
  """

  @key {__MODULE__, :enabled}

  @doc "Whether `:telemetry` was found (checked when Snakepit starts, and by `refresh/0`)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@key, false)

  @doc "Looks for `:telemetry` again (after loading it at run time)."
  @spec refresh() :: boolean()
  def refresh do
    found = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
    if found != :persistent_term.get(@key, nil), do: :persistent_term.put(@key, found)
    found
  end

  @doc "Emits an event when `:telemetry` is present."
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if enabled?(), do: apply(:telemetry, :execute, [event, measurements, metadata])
    :ok
  end
end
