defmodule Snakepit.LogTap do
  @moduledoc false
  # Copies log events to a test process through a `:logger` primary filter rather than a
  # handler. `Logger.flush/0` (which `capture_log` calls) reads every handler's config, and on
  # Elixir 1.18 / OTP 27 a handler that another async test removes meanwhile makes it crash (a
  # badmatch in `:logger.get_handler_config/0`), failing unrelated tests; filters are not read
  # there.

  @doc """
  Sends `{:log_event, event}` to the calling process for every log event that `wanted?`
  accepts, until the test ends.
  """
  def attach(wanted? \\ fn _event -> true end) do
    id = :"snakepit_log_tap_#{System.unique_integer([:positive])}"
    :ok = :logger.add_primary_filter(id, {&__MODULE__.filter/2, {self(), wanted?}})
    ExUnit.Callbacks.on_exit(fn -> :logger.remove_primary_filter(id) end)
    id
  end

  @doc false
  # Never decides anything (`:ignore`): the event goes on to the handlers as before.
  def filter(event, {pid, wanted?}) do
    if wanted?.(event), do: send(pid, {:log_event, event})
    :ignore
  rescue
    _ -> :ignore
  end
end
