# Python calling Elixir and async def commands (test/support/conformance_elixir_case.ex)
# against every worker profile.

defmodule Snakepit.ConformanceElixirThreadTest do
  use Snakepit.ConformanceElixirCase, profile: :thread, async: true
end

defmodule Snakepit.ConformanceElixirProcessTest do
  use Snakepit.ConformanceElixirCase, profile: :process, async: true
end

defmodule Snakepit.ConformanceElixirProcessThreadedTest do
  use Snakepit.ConformanceElixirCase, profile: :process_threaded, async: true
end
