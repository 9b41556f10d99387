# The conformance suite (test/support/conformance_case.ex) against every worker profile.

defmodule Snakepit.ConformanceThreadTest do
  use Snakepit.ConformanceCase, profile: :thread, async: true
end

defmodule Snakepit.ConformanceProcessTest do
  use Snakepit.ConformanceCase, profile: :process, async: true
end

defmodule Snakepit.ConformanceProcessThreadedTest do
  use Snakepit.ConformanceCase, profile: :process_threaded, async: true
end

defmodule Snakepit.ConformanceSubinterpreterTest do
  # Skipped, with the reason, where the NIF's Python is older than 3.12 (test_helper.exs).
  use Snakepit.ConformanceCase, profile: :subinterpreter, async: true
end
