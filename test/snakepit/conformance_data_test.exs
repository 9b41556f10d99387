# The large-data conformance cases (test/support/conformance_data_case.ex) in every profile.

defmodule Snakepit.ConformanceDataThreadTest do
  use Snakepit.ConformanceDataCase, profile: :thread, async: true
end

defmodule Snakepit.ConformanceDataProcessTest do
  use Snakepit.ConformanceDataCase, profile: :process, async: true
end

defmodule Snakepit.ConformanceDataProcessThreadedTest do
  use Snakepit.ConformanceDataCase, profile: :process_threaded, async: true
end
