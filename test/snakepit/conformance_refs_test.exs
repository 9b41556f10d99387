# Object refs and eval (test/support/conformance_refs_case.ex) against every worker profile.

defmodule Snakepit.ConformanceRefsThreadTest do
  use Snakepit.ConformanceRefsCase, profile: :thread, async: true
end

defmodule Snakepit.ConformanceRefsProcessTest do
  use Snakepit.ConformanceRefsCase, profile: :process, async: true
end

defmodule Snakepit.ConformanceRefsProcessThreadedTest do
  use Snakepit.ConformanceRefsCase, profile: :process_threaded, async: true
end
