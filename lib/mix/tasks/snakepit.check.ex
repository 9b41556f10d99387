defmodule Mix.Tasks.Snakepit.Check do
  @shortdoc "Stress-runs a Python adapter on many threads with the thread-safety checker"

  @moduledoc """
  Runs an adapter under concurrent load with the thread-safety checker on, without starting a
  pool: `python -m snakepit_bridge.check` from the app.

      mix snakepit.check ADAPTER [--threads N] [--calls N] [--method NAME] [--args JSON] [--strict] [--json]

      mix snakepit.check my_app.sentiment.Sentiment --threads 20 --calls 1000 \\
        --method score --args '{"text": "good"}'

  The adapter is created as a threaded pool creates it, then `--calls` calls of `--method`
  (default `ping`) with the JSON object `--args` as keyword arguments run on `--threads`
  threads. The report gives the throughput, the latency, the failures, per-thread statistics
  and the checker's warnings (an adapter without `__thread_safe__ = True`, a method running on
  several threads at once, a thread-unsafe library). `--strict` makes a warning fail the call
  that caused it; `--json` prints the report as JSON.

  The interpreter is the one the app's pools use (`Snakepit.Runtime.build_info/0`: the NIF's
  Python, or the run-time venv), and `PYTHONPATH` is what a pool puts on `sys.path`: Snakepit's
  `priv/python`, then `config :snakepit, python_path: ...` (`{app, path}` entries resolved),
  then the `PYTHONPATH` of the environment. The task compiles the app and loads its
  configuration (`config/runtime.exs` included) first; it exits with the checker's status: 0
  when every call succeeded, 1 when the adapter could not be loaded or a call failed, 2 for a
  usage error.
  """
  use Mix.Task

  @impl true
  def run(args) do
    Mix.Task.run("compile")
    Mix.Task.run("app.config")

    python =
      case Snakepit.Runtime.build_info() do
        {:ok, info} -> info.executable
        {:error, error} -> Mix.raise("snakepit: #{error.message}")
      end

    path = Enum.join(Snakepit.Runtime.python_path(), ":")

    {_, status} =
      System.cmd(python, ["-m", "snakepit_bridge.check" | args],
        env: [{"PYTHONPATH", path}],
        into: IO.stream(:stdio, :line)
      )

    if status != 0, do: exit({:shutdown, status})
  end
end
